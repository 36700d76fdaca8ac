// Which kernel set runs for an instruction set.
#include "runtime/cpu/kernel_layout.hpp"

namespace loraq::runtime {

const KernelSet& kernels_for(Isa isa) {
  switch (isa) {
    case Isa::scalar: return scalar_kernels();
    case Isa::avx2:
    case Isa::avx512: return avx2_kernels();  // AVX-512 CPUs have AVX2; no AVX-512 VNNI kernel yet
  }
  return scalar_kernels();
}

}  // namespace loraq::runtime
