// Which kernel set runs for an instruction set.
#include "runtime/cpu/kernel_layout.hpp"

namespace loraq::runtime {

const KernelSet& kernels_for(Isa isa) {
  switch (isa) {
    case Isa::scalar: return scalar_kernels();
    case Isa::avx2: return avx2_kernels();
    case Isa::avx512:
      if (isa_available(Isa::avx512) && __builtin_cpu_supports("avx512vnni")) return avx512_kernels();
      return avx2_kernels();  // every AVX-512 CPU has AVX2
  }
  return scalar_kernels();
}

}  // namespace loraq::runtime
