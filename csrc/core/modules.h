// Which activation module stands for which activation of the table: the one mapping behind both
// HSRRegularizers (Python's nn.Module and LibTorch's torch::nn::Module), so they accept the same
// models and refuse the same ones with the same reasons.
#pragma once

#include "activations.h"

#include <string>
#include <string_view>

namespace torch_ws {

// The options of the modules whose options matter (GELU's approximation, Softplus's beta and
// threshold); the defaults are those of the modules.
struct ActivationModuleOptions {
  std::string approximate = "none";
  double beta = 1, threshold = 20;
  double negative_slope = kLeakyReluSlope;  // LeakyReLU's
};

// The activation name (of kActivations) for the module class `class_name` ("Tanh", "GELU", …;
// the same names in torch.nn and torch::nn). Raises c10::ValueError, prefixed by `caller`, saying
// why a module is refused: non-smooth ones outside the table (ReLU6, Hardtanh, ELU, …) and
// anything unknown. Module names
// in messages are spelled with `module_prefix` ("nn." for Python, "torch::nn::" for C++).
std::string activation_for_module(std::string_view caller, std::string_view class_name,
                                  const ActivationModuleOptions& options,
                                  std::string_view module_prefix);

}  // namespace torch_ws
