// torch_ws C++ API: closed-form Hessian traces and Wolkowicz-Styan bounds for
// Linear(D,H) → φ → Linear(H,C) with binary cross-entropy (C = 1), softmax cross-entropy (C ≥ 2)
// or squared error (C ≥ 1), usable from LibTorch without Python.
//
// Every function calls the registered ops through the dispatcher, so LibTorch autograd works:
// `torch_ws::ws_bound(...).backward()` fills the parameters' .grad().
#pragma once

#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/module.h>

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace torch_ws {

// λ_sup = m + s·√(n−1) ≥ λ_max of the loss Hessian (m = tr H / n, s² = tr H²/n − m²).
// x (N, D); w1 (H, D); b1 (H,) or nullopt; w2 (C, H); b2 (C,) or nullopt.
// activation: linear, sigmoid, tanh, softplus, gelu, silu, gelu_tanh, relu, leaky_relu (slope
// 0.01; for these two the almost-everywhere Hessian, docs/math.md §3); reduction: mean or sum.
// loss and its targets:
//   "bce"            BCEWithLogitsLoss, C = 1: target (N,) or (N, 1) in [0, 1];
//   "cross_entropy"  CrossEntropyLoss, C ≥ 2: class indices (N,) int64 or probabilities (N, C);
//   "mse"            MSELoss, C ≥ 1: target (N, C), or (N,) when C = 1 ("mean" divides by N·C).
// Bad input throws c10::Error.
at::Tensor ws_bound(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                    const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                    const std::optional<at::Tensor>& b2, std::string_view activation = "tanh",
                    std::string_view reduction = "mean", std::string_view loss = "bce");

// ws_bound of B networks of one shape on one data set, in one call: w1 (B, H, D), b1 (B, H) or
// nullopt, w2 (B, C, H), b2 (B, C) or nullopt; x, target and the options shared. Returns (B,):
// entry b is ws_bound of model b, differentiable in reverse mode (each model's gradient lands in
// its slice). Cheaper than B calls for small networks: one dispatch, and models run in parallel.
at::Tensor ws_bound_batched(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                            const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                            const std::optional<at::Tensor>& b2,
                            std::string_view activation = "tanh",
                            std::string_view reduction = "mean", std::string_view loss = "bce");

// (tr H, tr H²) of the loss Hessian; arguments as for ws_bound.
std::tuple<at::Tensor, at::Tensor> hessian_traces(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2,
    const std::optional<at::Tensor>& b2, std::string_view activation = "tanh",
    std::string_view reduction = "mean", std::string_view loss = "bce");

// Every Wolkowicz-Styan bound on the loss Hessian's spectrum, with m = tr H / n and
// s = √(tr H²/n − m²): m + s/√(n−1) ≤ λ_max ≤ m + s·√(n−1), m − s·√(n−1) ≤ λ_min ≤ m − s/√(n−1),
// λ_max − λ_min ≤ s·√(2n). Every tensor field is differentiable; arguments as for ws_bound.
struct WSBounds {
  at::Tensor lambda_max_upper, lambda_max_lower, lambda_min_lower, lambda_min_upper, spread_upper;
  at::Tensor trace, trace_sq;
  int64_t num_params;
};
WSBounds ws_bounds(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                   const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                   const std::optional<at::Tensor>& b2, std::string_view activation = "tanh",
                   std::string_view reduction = "mean", std::string_view loss = "bce");

// Networks with L ≥ 1 hidden layers, Linear → φ → … → Linear (docs/math.md §12): `weights` are
// the L + 1 nn.Linear weights (H_1, D), …, (C, H_L); `biases` empty (no biases) or one entry per
// layer (nullopt where a layer has none). Exact (tr H, tr H²), differentiable by autograd.
std::tuple<at::Tensor, at::Tensor> deep_hessian_traces(
    const at::Tensor& x, const at::Tensor& target, const std::vector<at::Tensor>& weights,
    const std::vector<std::optional<at::Tensor>>& biases = {},
    std::string_view activation = "tanh", std::string_view reduction = "mean",
    std::string_view loss = "bce");
// Every Wolkowicz-Styan bound of such a network, with certified rounding (docs/math.md §12.5).
WSBounds deep_ws_bounds(const at::Tensor& x, const at::Tensor& target,
                        const std::vector<at::Tensor>& weights,
                        const std::vector<std::optional<at::Tensor>>& biases = {},
                        std::string_view activation = "tanh",
                        std::string_view reduction = "mean", std::string_view loss = "bce");

// H·v of such a network for each row of `vectors` ((n,) or (k, n), θ in the layers' order, W_l
// row-major then b_l), in closed form (docs/math.md §12.6). Not differentiable.
at::Tensor deep_hessian_vector_products(const at::Tensor& x, const at::Tensor& target,
                                        const std::vector<at::Tensor>& weights,
                                        const std::vector<std::optional<at::Tensor>>& biases,
                                        const at::Tensor& vectors,
                                        std::string_view activation = "tanh",
                                        std::string_view reduction = "mean",
                                        std::string_view loss = "bce");

// The spectral bound (docs/math.md §9): λ_max(H) ≤ λ_max(GGN) + λ_max(R) by Weyl, both parts
// exact (the N·C × N·C dual of the Gauss-Newton matrix, certified Lanczos above 512 rows; R's H
// blocks of size D + [b1] + C). `upper` is the smaller of that and ws_bound, rounded up;
// `lambda_min_lower` = λ_min(R) ≤ λ_min(H). upper, ggn_lambda_max, residual_lambda_max and
// lambda_min_lower are differentiable; arguments as for ws_bound.
struct SpectralBound {
  at::Tensor upper, ggn_lambda_max, residual_lambda_max, lambda_min_lower;
  at::Tensor residual;    // ‖Mv − λv‖ of the Gauss-Newton eigenpair
  at::Tensor iterations;  // int64 Lanczos steps (0: dense eigensolver)
};
SpectralBound spectral_bound(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                             const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                             const std::optional<at::Tensor>& b2,
                             std::string_view activation = "tanh",
                             std::string_view reduction = "mean", std::string_view loss = "bce");

// H·v for each row of `vectors` ((n,) or (k, n), θ = (W1 row-major, b1, W2 row-major, b2) as
// nn.Sequential.parameters() lists them), in closed form (docs/math.md §11.1): matrix products,
// k vectors at once, never the n×n Hessian. Not differentiable.
at::Tensor hessian_vector_products(const at::Tensor& x, const at::Tensor& target,
                                   const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                   const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                                   const at::Tensor& vectors, std::string_view activation = "tanh",
                                   std::string_view reduction = "mean",
                                   std::string_view loss = "bce");

// A certified interval on λ_max (largest) or λ_min of the loss Hessian (docs/math.md §11):
// `steps` Lanczos steps on closed-form Hessian-vector products, lower ≤ λ ≤ upper for the
// computed numbers, both differentiable (the basis held fixed). `source` (int64): 0
// Wolkowicz-Styan, 1 the trace cap, 2 Kato-Temple, 3 Weyl, 4 Kato-Temple with Weyl's bound on
// λ_2, 5 the assembled Hessian's own top eigenvalue (small n, §11.6). Pass `ritz_vectors` as
// `start` to the next call to track the eigenvalue during training.
struct EigenvalueInterval {
  at::Tensor lower, upper;
  at::Tensor source;                     // int64
  at::Tensor ritz_values, ritz_vectors;  // float64, (k,) and (k, n), the extreme one first
  at::Tensor products;                   // int64: the Hessian-vector products used
};
EigenvalueInterval eigenvalue_interval(const at::Tensor& x, const at::Tensor& target,
                                       const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                       const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                                       std::string_view activation = "tanh",
                                       std::string_view reduction = "mean",
                                       std::string_view loss = "bce", bool largest = true,
                                       int64_t steps = 32,
                                       const std::optional<at::Tensor>& start = std::nullopt,
                                       int64_t seed = 0);

// The same interval for a network with L ≥ 1 hidden layers (docs/math.md §12.6): arguments as
// deep_hessian_traces, then as eigenvalue_interval, except `steps`: 0 (the default) takes the
// automatic count (32 where the assembled Hessian closes the interval, else up to 128 as the
// exact traces' cost allows); `source` never 3 or 4 (no Weyl candidate). lower and upper are
// differentiable in x and every layer (§11.4, basis held fixed).
EigenvalueInterval deep_eigenvalue_interval(
    const at::Tensor& x, const at::Tensor& target, const std::vector<at::Tensor>& weights,
    const std::vector<std::optional<at::Tensor>>& biases = {},
    std::string_view activation = "tanh", std::string_view reduction = "mean",
    std::string_view loss = "bce", bool largest = true, int64_t steps = 0,
    const std::optional<at::Tensor>& start = std::nullopt, int64_t seed = 0);

// HSR regularization: the WS bound of a three-layer MLP at its current parameters.
//   torch::nn::Sequential model(torch::nn::Linear(2, 10), torch::nn::Tanh(), torch::nn::Linear(10, 1));
//   torch_ws::HSRRegularizer reg(model);
//   auto loss = bce(model->forward(x).squeeze(-1), y) + rho * reg(x, y);
// `loss` names the training loss as above ("bce", "cross_entropy", "mse"); the output layer's
// width must fit it. Targets are cast to x's dtype, except integer class indices for
// "cross_entropy", which stay int64.
// `bound` is "ws" (ws_bound) or "spectral" (spectral_bound's upper: tighter at large n, dearer).
// A deeper Sequential(Linear, φ, Linear, φ, …, Linear) (L ≥ 2 hidden layers of any widths, one
// activation for all, as the Python HSRRegularizer takes it) is bounded by deep_ws_bounds'
// lambda_max_upper; "spectral" is for one hidden layer only (no deep spectral bound yet).
// Supported activations: Identity, Sigmoid, Tanh, Softplus (beta 1, threshold 20), GELU
// ("none" or "tanh"), SiLU, ReLU, LeakyReLU (negative_slope 0.01), the same as the Python
// HSRRegularizer; anything else (ReLU6, Hardtanh, ELU, … with the reason) throws c10::ValueError
// naming them.
class HSRRegularizer {
 public:
  // model: Sequential(Linear(D, H), φ, Linear(H, C)), or deeper as above.
  explicit HSRRegularizer(const torch::nn::Sequential& model, std::string reduction = "mean",
                          std::string loss = "bce", std::string bound = "ws");
  HSRRegularizer(torch::nn::Linear hidden, const std::shared_ptr<torch::nn::Module>& activation,
                 torch::nn::Linear output, std::string reduction = "mean",
                 std::string loss = "bce", std::string bound = "ws");

  // The bound on the current parameters, differentiable into them (and into x).
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& target) const;

  const std::string& activation() const { return activation_; }
  const std::string& reduction() const { return reduction_; }
  const std::string& loss() const { return loss_; }
  const std::string& bound() const { return bound_; }
  // L, the number of hidden layers.
  int64_t hidden_layers() const { return static_cast<int64_t>(layers_.size()) - 1; }

 private:
  HSRRegularizer(std::vector<torch::nn::Linear> layers, std::string activation,
                 std::string reduction, std::string loss, std::string bound);

  std::vector<torch::nn::Linear> layers_;  // first to last; the output layer last
  std::string activation_, reduction_, loss_, bound_;
};

}  // namespace torch_ws
