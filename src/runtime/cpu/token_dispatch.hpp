// Calls a kernel template for the run-time token count of a tile: with_tokens<Max>(tokens, f) calls
// f(std::integral_constant<int, T>{}) with T = tokens, or Max for tokens >= Max.
// Included only by the kernel files; everything here is in an anonymous namespace (internal
// linkage), as src/core/simd/README.md requires of code compiled for an instruction set.
#pragma once

#include <type_traits>

namespace {

template <int Max, int T = 1, class F>
inline void with_tokens(int tokens, F&& f) {
  if constexpr (T == Max) {
    f(std::integral_constant<int, T>{});
  } else {
    if (tokens == T) return f(std::integral_constant<int, T>{});
    with_tokens<Max, T + 1>(tokens, f);
  }
}

}  // namespace
