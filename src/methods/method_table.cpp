// The method table. A method joins the table when its implementation lands (src/methods/<name>.cpp).
#include <array>
#include <string>

#include "loraq/error.hpp"
#include "loraq/methods.hpp"
#include "methods.hpp"

namespace loraq {
namespace {

constexpr std::array<MethodInfo, 1> kMethods = {{
    {"rtn", "round to nearest: the residual is Q1(W), no branch", false, false, {}, &methods::rtn},
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
