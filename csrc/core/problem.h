// The problem every op describes: Linear(D, H) → φ → Linear(H, C) with an output loss, its
// tensors checked once (docs/math.md §1). Validation is one routine for every entry point: the
// CPU and CUDA kernels and the Meta kernels that torch.compile and FakeTensor trace with, so a
// malformed call fails the same way, with the same message, whether it runs or is traced.
#pragma once

#include "activations.h"
#include "losses.h"

#include <ATen/ATen.h>

#include <optional>
#include <vector>
#include <string_view>

namespace torch_ws {

enum class Reduction { Mean, Sum };

// n = H·D + H·[b1] + C·H + C·[b2]: the length of θ and the size of the Hessian.
inline int64_t count_params(int64_t hidden, int64_t in_dim, int64_t num_outputs, bool has_b1,
                            bool has_b2) {
  return hidden * in_dim + (has_b1 ? hidden : 0) + num_outputs * hidden +
         (has_b2 ? num_outputs : 0);
}

// One affine layer, as nn.Linear holds it: weight (out, in), bias (out,) or none.
struct Layer {
  at::Tensor weight;
  std::optional<at::Tensor> bias;
};

// The checked arguments of every op: the data, the network as a list of affine layers with φ
// between them, and the loss.
struct MlpProblem {
  at::Tensor x;       // (N, D)
  at::Tensor target;  // one logit (C = 1): (N,); C logits: (N, C) in x's dtype,
                      // class indices made one-hot
  // Linear(D, H), then Linear(H, C): the engines take one hidden layer; a deeper network is a
  // longer list (check_problem builds two today).
  std::vector<Layer> layers = std::vector<Layer>(2);
  Activation activation;
  Reduction reduction;
  Loss loss;

  // The one-hidden-layer names the engines and docs/math.md use: w1 (H, D), b1 (H,) of the
  // first layer, w2 (C, H), b2 (C,) of the last.
  const at::Tensor& w1() const { return layers.front().weight; }
  at::Tensor& w1() { return layers.front().weight; }
  const std::optional<at::Tensor>& b1() const { return layers.front().bias; }
  std::optional<at::Tensor>& b1() { return layers.front().bias; }
  const at::Tensor& w2() const { return layers.back().weight; }
  at::Tensor& w2() { return layers.back().weight; }
  const std::optional<at::Tensor>& b2() const { return layers.back().bias; }
  std::optional<at::Tensor>& b2() { return layers.back().bias; }

  int64_t num_samples() const { return x.size(0); }
  int64_t in_dim() const { return x.size(1); }
  int64_t hidden() const { return w1().size(0); }
  int64_t num_outputs() const { return w2().size(0); }
  // n, summed over the layers: count_params for one hidden layer, and any depth alike.
  int64_t num_params() const {
    int64_t n = 0;
    for (const Layer& layer : layers) {
      n += layer.weight.size(0) * layer.weight.size(1) + (layer.bias ? layer.weight.size(0) : 0);
    }
    return n;
  }
  // c in L = c·Σ_i ℓ_i (losses.h): 1 for "sum"; for "mean" 1/N, or 1/(N·C) for the squared error.
  double loss_scale() const {
    return torch_ws::loss_scale(loss, reduction == Reduction::Mean, num_samples(), num_outputs());
  }
  // Whether the head has one logit (C = 1): then the loss terms are scalars and both engines of
  // docs/math.md §4 run; with C ≥ 2 the multi-output engine of §8 does.
  bool one_logit() const { return num_outputs() == 1; }
  // The single output row w2 as an (H,) vector, for the one-logit engines.
  at::Tensor output_row() const;
};

// Validates the arguments with TORCH_CHECK; every message starts with `op` (the public op's
// name, e.g. "torch_ws.ws_bound") and says what was expected and what arrived. Shapes are read
// as SymInts, so Meta kernels traced with dynamic shapes check them without specializing.
// Target values (probabilities in [0, 1], class indices in [0, C), rows of class probabilities
// summing to 1) are checked on the CPU at once, on other devices by an asynchronous device-side
// assertion (no host sync), and not at all on meta tensors.
MlpProblem check_problem(std::string_view op, const at::Tensor& x, const at::Tensor& target,
                         const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                         std::string_view activation, std::string_view reduction,
                         std::string_view loss);

// The same checks for a network of any depth (docs/math.md §12): `weights` (L + 1 layers, L ≥ 1
// hidden), `biases` empty or one entry per layer (None where a layer has no bias).
MlpProblem check_deep_problem(std::string_view op, const at::Tensor& x, const at::Tensor& target,
                              at::TensorList weights,
                              const c10::List<std::optional<at::Tensor>>& biases,
                              std::string_view activation, std::string_view reduction,
                              std::string_view loss);

Reduction parse_reduction(std::string_view op, std::string_view name);

}  // namespace torch_ws

namespace torch_ws {

// The gradient of one scalar with respect to the problem's differentiable inputs. `x` is
// undefined unless asked for; `b1`, `b2` are undefined for absent biases.
struct InputGradients {
  at::Tensor x, w1, b1, w2, b2;
};

// Zeros in the inputs' shapes and dtype (x's only with need_grad_x): the gradient of a share
// that holds none of a sum's terms (core/share.h).
InputGradients zero_gradients(const MlpProblem& p, bool need_grad_x);

// The problem with x, a floating target and every layer converted to `dtype` (exactly, when
// widening): the float64 evaluations of the float32 underflow guard and of the eigenvalue
// interval's certificate.
MlpProblem with_dtype(MlpProblem p, at::ScalarType dtype);
// The gradients that exist, converted to `dtype` (back to the inputs' after such an evaluation).
InputGradients with_dtype(InputGradients g, at::ScalarType dtype);

}  // namespace torch_ws
