#include "modules.h"

#include <c10/util/Exception.h>

#include <array>

namespace torch_ws {
namespace {

struct SmoothModule {
  const char* class_name;
  const char* activation;
  const char* condition;  // the options it needs, for the list of supported modules
};

inline constexpr std::array<SmoothModule, 8> kSmoothModules = {{
    {"Identity", "linear", ""},
    {"Sigmoid", "sigmoid", ""},
    {"Tanh", "tanh", ""},
    {"Softplus", "softplus", "(beta=1, threshold=20)"},
    {"GELU", "gelu", " (approximate 'none' or 'tanh')"},
    {"SiLU", "silu", ""},
    // Piecewise linear: the almost-everywhere Hessian (docs/math.md §3).
    {"ReLU", "relu", ""},
    {"LeakyReLU", "leaky_relu", " (negative_slope=0.01)"},
}};

// Not in the activation table: bounded piecewise-linear ones, a learned slope, and the
// exponential-linear family, whose φ'' jumps.
inline constexpr std::array<const char*, 7> kNonSmoothModules = {
    "ReLU6", "Hardtanh", "PReLU", "ELU", "CELU", "SELU", "Hardswish"};

std::string supported_modules(std::string_view prefix) {
  std::string out;
  for (const auto& m : kSmoothModules) {
    if (!out.empty()) out += ", ";
    out += std::string(prefix) + m.class_name + m.condition;
  }
  return out;
}

}  // namespace

std::string activation_for_module(std::string_view caller, std::string_view class_name,
                                  const ActivationModuleOptions& options,
                                  std::string_view module_prefix) {
  const std::string name(class_name);
  if (class_name == "GELU") {
    TORCH_CHECK_VALUE(options.approximate == "none" || options.approximate == "tanh", caller,
                      ": GELU approximation must be 'none' or 'tanh', got '", options.approximate,
                      "'");
    return options.approximate == "tanh" ? "gelu_tanh" : "gelu";
  }
  if (class_name == "Softplus") {
    // Any other beta or threshold is a different function than the table's softplus.
    TORCH_CHECK_VALUE(options.beta == 1 && options.threshold == kSoftplusThreshold, caller,
                      " supports ", module_prefix, "Softplus only with beta=1 and threshold=20 "
                      "(its defaults), got beta=", options.beta, ", threshold=", options.threshold);
  }
  if (class_name == "LeakyReLU") {
    TORCH_CHECK_VALUE(options.negative_slope == kLeakyReluSlope, caller, " supports ",
                      module_prefix, "LeakyReLU only with negative_slope=", kLeakyReluSlope,
                      " (the default), got negative_slope=", options.negative_slope);
  }
  for (const auto& m : kSmoothModules) {
    if (class_name == m.class_name) return m.activation;
  }
  for (const char* non_smooth : kNonSmoothModules) {
    TORCH_CHECK_VALUE(class_name != non_smooth, caller, ": ", name, " is not supported (the "
                      "activation table has no entry for it); use one of: ",
                      supported_modules(module_prefix));
  }
  TORCH_CHECK_VALUE(false, caller, ": unsupported activation ", name, "; expected one of: ",
                    supported_modules(module_prefix));
}

}  // namespace torch_ws
