// Instruction sets of the vectorized codecs, chosen at run time by what the CPU has.
#pragma once

#include <cstdint>
#include <string_view>

namespace loraq {

enum class Isa : std::uint8_t {
  scalar,  // the reference: src/core/block_reference.cpp
  avx2,    // AVX2 + FMA + F16C (Haswell, Zen)
  avx512,  // AVX-512 F/BW/DQ/VL (Skylake-SP, Ice Lake, Zen 4)
};

std::string_view isa_name(Isa isa);
Isa parse_isa(std::string_view name);  // throws Error naming the known ones
bool isa_available(Isa isa);           // compiled in and supported by this CPU
// The best available, unless the environment variable LORAQ_ISA names another (for tests and
// benchmarks); asking for one the CPU lacks throws Error.
Isa default_isa();

}  // namespace loraq
