// The method table. A method joins the table when its implementation lands (src/methods/<name>.cpp).
#include <array>
#include <string>

#include "loraq/error.hpp"
#include "loraq/methods.hpp"
#include "methods.hpp"

namespace loraq {
namespace {

// svd_lowrank and lorc (src/methods/svd_lowrank.cpp, lorc.cpp).
constexpr MethodParam kSvdParams[] = {
    {"exact_svd", ParamType::boolean, 0, 0, 1,
     "full LAPACK SVD; otherwise randomized when the rank is small against the shape (linalg.hpp)"},
};

// loftq (src/methods/loftq.cpp); iterations, early_stop and compensate: deepcompressor's defaults.
constexpr MethodParam kLoftqParams[] = {
    {"iterations", ParamType::integer, 100, 1, 10000, "alternations T (deepcompressor: num_iters 100)"},
    {"early_stop", ParamType::boolean, 1, 0, 1, "stop at the first iterate that does not lower the weight error"},
    {"compensate", ParamType::boolean, 0, 0, 1,
     "start from lorc's branch (SVD of W - Q1(W), LoftQ's init) instead of svd_lowrank's (deepcompressor's default)"},
    {"exact_svd", ParamType::boolean, 0, 0, 1,
     "full LAPACK SVD; otherwise randomized when the rank is small against the shape (linalg.hpp)"},
};

// loraq (src/methods/loraq.cpp; the paper's sections 3.2-3.3, rates and steps from appendix A.2).
constexpr MethodParam kLoraqParams[] = {
    {"steps", ParamType::integer, 1000, 0, 1e6, "Adam steps on eq. 4 (A.2: 1000)"},
    {"lr", ParamType::real, 0, 0, 1,
     "Adam rate at the reference weight scale (RMS 1/sqrt(1152)); 0 = auto: 1e-4 for an integer Q1, 1e-3 for a float Q1 "
     "(A.2), 3e-5 with straight_through (measured)"},
    {"rotation", ParamType::boolean, 1, 0, 1, "learn the rotation Omega of eq. 7 when Q2 is below 16 bits"},
    {"rotation_steps", ParamType::integer, 500, 0, 1e6, "Cayley SGD steps on eq. 7 (A.2: 500)"},
    {"rotation_lr", ParamType::real, 0.1, 0, 10, "Cayley SGD rate on eq. 7 (A.2: 0.1)"},
    {"straight_through", ParamType::boolean, 0, 0, 1,
     "quantize the branch with Q2 inside the Adam loop (straight-through gradient; not in the paper)"},
    {"keep_best", ParamType::boolean, 1, 0, 1, "return the best iterate of each optimization, not the last"},
};

constexpr std::array<MethodInfo, 5> kMethods = {{
    {"rtn", "round to nearest: the residual is Q1(W), no branch", false, false, {}, &methods::rtn},
    {"svd_lowrank", "SVDQuant's weight path: branch = top-r SVD of W in Q2, residual Q1(W - Q2(B))", true, false,
     kSvdParams, &methods::svd_lowrank},
    {"lorc", "ZeroQuant-V2's LoRC: branch = top-r SVD of W - Q1(W) in Q2, residual Q1(W - Q2(B))", true, false,
     kSvdParams, &methods::lorc},
    {"loftq", "LoftQ: alternate B = SVD_r(W - R) and R = Q1(W - Q2(B)), keep the best by weight error", true, false,
     kLoftqParams, &methods::loftq},
    {"loraq", "LoRaQ: SVD-initialized branch trained by Adam to absorb Q1's error (eq. 4), rotated for Q2 (eq. 7)",
     true, false, kLoraqParams, &methods::loraq},
}};

}  // namespace

std::span<const MethodInfo> all_methods() { return kMethods; }

const MethodInfo& method_info(std::string_view name) {
  std::string known;
  for (const MethodInfo& m : kMethods) {
    if (m.name == name) return m;
    known += (known.empty() ? "" : ", ") + std::string(m.name);
  }
  throw Error("unknown method '" + std::string(name) + "': expected one of " + known);
}

const MethodParam* find_param(const MethodInfo& method, std::string_view param) {
  for (const MethodParam& p : method.params)
    if (p.name == param) return &p;
  return nullptr;
}

}  // namespace loraq
