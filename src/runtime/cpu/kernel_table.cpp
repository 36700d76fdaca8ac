// Which kernel set runs for an instruction set.
#include <cstdlib>
#include <string>

#include "loraq/error.hpp"
#include "runtime/cpu/kernel_layout.hpp"

namespace loraq::runtime {
namespace {

bool has_avx_vnni() { return isa_available(Isa::avx2) && __builtin_cpu_supports("avxvnni"); }
bool has_avx512_vnni() { return isa_available(Isa::avx512) && __builtin_cpu_supports("avx512vnni"); }

}  // namespace

const KernelSet& kernels_for(Isa isa) {
  switch (isa) {
    case Isa::scalar: return scalar_kernels();
    case Isa::avx512:
      if (has_avx512_vnni()) return avx512_kernels();
      [[fallthrough]];  // every AVX-512 CPU has AVX2
    case Isa::avx2: return has_avx_vnni() ? avx_vnni_kernels() : avx2_kernels();
  }
  return scalar_kernels();
}

std::vector<const KernelSet*> available_kernel_sets() {
  std::vector<const KernelSet*> sets{&scalar_kernels()};
  if (isa_available(Isa::avx2)) sets.push_back(&avx2_kernels());
  if (has_avx_vnni()) sets.push_back(&avx_vnni_kernels());
  if (has_avx512_vnni()) sets.push_back(&avx512_kernels());
  return sets;
}

const KernelSet& default_kernels() {
  static const KernelSet& chosen = []() -> const KernelSet& {
    const char* forced = std::getenv("LORAQ_KERNELS");
    if (!forced || !*forced) return kernels_for(default_isa());
    std::string names;
    for (const KernelSet* set : available_kernel_sets()) {
      if (forced == std::string(set->name)) return *set;
      names += (names.empty() ? "" : ", ") + std::string(set->name);
    }
    throw Error("LORAQ_KERNELS=" + std::string(forced) + ": this CPU runs the kernel sets " + names);
  }();
  return chosen;
}

}  // namespace loraq::runtime
