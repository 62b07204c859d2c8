// The one table of smooth activations φ (math.md §4): names, parsing, and φ, φ', φ'', φ'''.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <string>
#include <string_view>

namespace torch_ws {

enum class Activation { Linear, Sigmoid, Tanh, Softplus, Gelu, Silu, GeluTanh };

struct ActivationEntry {
  Activation activation;
  const char* name;
};

// Single source of truth for the supported names: parsing and error messages read it.
inline constexpr std::array<ActivationEntry, 7> kActivations = {{
    {Activation::Linear, "linear"},
    {Activation::Sigmoid, "sigmoid"},
    {Activation::Tanh, "tanh"},
    {Activation::Softplus, "softplus"},
    {Activation::Gelu, "gelu"},
    {Activation::Silu, "silu"},
    {Activation::GeluTanh, "gelu_tanh"},
}};

// "linear, sigmoid, ..." for error messages.
std::string supported_activations();

// Raises c10::Error naming the supported activations when `name` is not one of them.
Activation parse_activation(std::string_view name);

// φ and its derivatives up to φ''' evaluated elementwise at `a`. Only the first
// `num_derivatives + 1` entries are filled (the forward needs φ..φ'', the backward φ''' too).
struct ActivationValues {
  at::Tensor phi0, phi1, phi2, phi3;
};
ActivationValues activation_values(Activation activation, const at::Tensor& a, int num_derivatives);

}  // namespace torch_ws
