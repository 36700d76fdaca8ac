#include "loraq/isa.hpp"

#include <cstdlib>
#include <string>

#include "loraq/error.hpp"

namespace loraq {

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "?";
}

Isa parse_isa(std::string_view name) {
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512})
    if (name == isa_name(isa)) return isa;
  throw Error("unknown instruction set '" + std::string(name) + "': expected scalar, avx2 or avx512");
}

bool isa_available(Isa isa) {
  switch (isa) {
    case Isa::scalar: return true;
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
             __builtin_cpu_supports("bmi2");
    case Isa::avx512:
      return isa_available(Isa::avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  }
  return false;
}

Isa default_isa() {
  static const Isa chosen = [] {
    if (const char* forced = std::getenv("LORAQ_ISA"); forced && *forced) {
      const Isa isa = parse_isa(forced);
      if (!isa_available(isa))
        throw Error("LORAQ_ISA=" + std::string(forced) + " but this CPU or build does not support it");
      return isa;
    }
    if (isa_available(Isa::avx512)) return Isa::avx512;
    if (isa_available(Isa::avx2)) return Isa::avx2;
    return Isa::scalar;
  }();
  return chosen;
}

}  // namespace loraq
