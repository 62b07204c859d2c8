// The C++ API of include/torch_ws/torch_ws.h: thin calls through the dispatcher, so LibTorch users
// get the same kernels, autograd and checks as Python users.
#include <torch_ws/torch_ws.h>

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>

#include "core/modules.h"
#include "core/problem.h"
#include "ops/schemas.h"

namespace torch_ws {

at::Tensor ws_bound(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                    const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                    const std::optional<at::Tensor>& b2, std::string_view activation,
                    std::string_view reduction, std::string_view loss) {
  static auto op = find_op<WsBoundSignature>("torch_ws::ws_bound");
  return op.call(x, target, w1, b1, w2, b2, activation, reduction, loss);
}

at::Tensor ws_bound_batched(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                            const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                            const std::optional<at::Tensor>& b2, std::string_view activation,
                            std::string_view reduction, std::string_view loss) {
  static auto op = find_op<WsBoundBatchedSignature>("torch_ws::ws_bound_batched");
  return op.call(x, target, w1, b1, w2, b2, activation, reduction, loss);
}

std::tuple<at::Tensor, at::Tensor> hessian_traces(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2,
    const std::optional<at::Tensor>& b2, std::string_view activation,
    std::string_view reduction, std::string_view loss) {
  static auto op = find_op<HessianTracesSignature>("torch_ws::hessian_traces");
  return op.call(x, target, w1, b1, w2, b2, activation, reduction, loss);
}

namespace {
c10::List<std::optional<at::Tensor>> bias_list(const std::vector<at::Tensor>& weights,
                                               const std::vector<std::optional<at::Tensor>>& biases) {
  c10::List<std::optional<at::Tensor>> out;
  for (size_t l = 0; l < biases.size(); ++l) out.push_back(biases[l]);
  if (biases.empty()) {
    for (size_t l = 0; l < weights.size(); ++l) out.push_back(std::nullopt);
  }
  return out;
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> deep_hessian_traces(
    const at::Tensor& x, const at::Tensor& target, const std::vector<at::Tensor>& weights,
    const std::vector<std::optional<at::Tensor>>& biases, std::string_view activation,
    std::string_view reduction, std::string_view loss) {
  static auto op = find_op<DeepHessianTracesSignature>("torch_ws::deep_hessian_traces");
  return op.call(x, target, weights, bias_list(weights, biases), activation, reduction, loss);
}

WSBounds deep_ws_bounds(const at::Tensor& x, const at::Tensor& target,
                        const std::vector<at::Tensor>& weights,
                        const std::vector<std::optional<at::Tensor>>& biases,
                        std::string_view activation, std::string_view reduction,
                        std::string_view loss) {
  static auto op = find_op<DeepWsBoundsSignature>("torch_ws::deep_ws_bounds");
  auto [max_upper, max_lower, min_lower, min_upper, spread, trace, trace_sq] =
      op.call(x, target, weights, bias_list(weights, biases), activation, reduction, loss);
  int64_t n = 0;
  for (const at::Tensor& w : weights) n += w.numel();
  for (const auto& b : biases) n += b ? b->numel() : 0;
  return {max_upper, max_lower, min_lower, min_upper, spread, trace, trace_sq, n};
}

at::Tensor deep_hessian_vector_products(const at::Tensor& x, const at::Tensor& target,
                                        const std::vector<at::Tensor>& weights,
                                        const std::vector<std::optional<at::Tensor>>& biases,
                                        const at::Tensor& vectors, std::string_view activation,
                                        std::string_view reduction, std::string_view loss) {
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, at::TensorList,
                               const c10::List<std::optional<at::Tensor>>&, const at::Tensor&,
                               c10::string_view, c10::string_view, c10::string_view);
  static auto op = find_op<Signature>("torch_ws::deep_hessian_vector_products");
  return op.call(x, target, weights, bias_list(weights, biases), vectors, activation, reduction,
                 loss);
}

EigenvalueInterval deep_eigenvalue_interval(
    const at::Tensor& x, const at::Tensor& target, const std::vector<at::Tensor>& weights,
    const std::vector<std::optional<at::Tensor>>& biases, std::string_view activation,
    std::string_view reduction, std::string_view loss, bool largest, int64_t steps,
    const std::optional<at::Tensor>& start, int64_t seed) {
  using Signature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                               at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, at::TensorList,
      const c10::List<std::optional<at::Tensor>>&, c10::string_view, c10::string_view,
      c10::string_view, bool, int64_t, const std::optional<at::Tensor>&, int64_t);
  static auto op = find_op<Signature>("torch_ws::deep_eigenvalue_interval");
  auto [lower, upper, source, values, vectors, products, trace, trace_sq] =
      op.call(x, target, weights, bias_list(weights, biases), activation, reduction, loss,
              largest, steps, start, seed);
  return {lower, upper, source, values, vectors, products};
}

WSBounds ws_bounds(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                   const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                   const std::optional<at::Tensor>& b2, std::string_view activation,
                   std::string_view reduction, std::string_view loss) {
  static auto op = find_op<WsBoundsFromTracesSignature>("torch_ws::_ws_bounds_from_traces");
  auto [trace, trace_sq] =
      hessian_traces(x, target, w1, b1, w2, b2, activation, reduction, loss);
  const int64_t n =
      count_params(w1.size(0), w1.size(1), w2.size(0), b1.has_value(), b2.has_value());
  auto [max_upper, max_lower, min_lower, min_upper, spread] =
      op.call(trace, trace_sq, n, std::nullopt, 0.0, 0.0);
  return {max_upper, max_lower, min_lower, min_upper, spread, trace, trace_sq, n};
}

SpectralBound spectral_bound(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                             const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                             const std::optional<at::Tensor>& b2, std::string_view activation,
                             std::string_view reduction, std::string_view loss) {
  static auto op = find_op<SpectralBoundSignature>("torch_ws::spectral_bound");
  auto [upper, ggn, residual_max, lambda_min, residual, iterations] =
      op.call(x, target, w1, b1, w2, b2, activation, reduction, loss);
  return {upper, ggn, residual_max, lambda_min, residual, iterations};
}

at::Tensor hessian_vector_products(const at::Tensor& x, const at::Tensor& target,
                                   const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                   const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                                   const at::Tensor& vectors, std::string_view activation,
                                   std::string_view reduction, std::string_view loss) {
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, const at::Tensor&,
                               const std::optional<at::Tensor>&, const at::Tensor&,
                               c10::string_view, c10::string_view, c10::string_view);
  static auto op = find_op<Signature>("torch_ws::hessian_vector_products");
  return op.call(x, target, w1, b1, w2, b2, vectors, activation, reduction, loss);
}

EigenvalueInterval eigenvalue_interval(const at::Tensor& x, const at::Tensor& target,
                                       const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                       const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                                       std::string_view activation, std::string_view reduction,
                                       std::string_view loss, bool largest, int64_t steps,
                                       const std::optional<at::Tensor>& start, int64_t seed) {
  using Signature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                               at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
      const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view, c10::string_view,
      c10::string_view, bool, int64_t, const std::optional<at::Tensor>&, int64_t);
  static auto op = find_op<Signature>("torch_ws::eigenvalue_interval");
  auto [lower, upper, source, values, vectors, products] =
      op.call(x, target, w1, b1, w2, b2, activation, reduction, loss, largest, steps, start, seed);
  return {lower, upper, source, values, vectors, products};
}

namespace {

constexpr char kRegularizer[] = "torch_ws::HSRRegularizer";

// The shared module mapping (core/modules.h), by the class name torch::nn gives the module.
std::string activation_of(const std::shared_ptr<torch::nn::Module>& module) {
  TORCH_CHECK_VALUE(module, kRegularizer, ": the activation module is null");
  std::string name = module->name();  // e.g. "torch::nn::Tanh"
  const std::string prefix = "torch::nn::";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  if (name.size() > 4 && name.compare(name.size() - 4, 4, "Impl") == 0) {
    name = name.substr(0, name.size() - 4);
  }
  ActivationModuleOptions options;
  if (auto* gelu = module->as<torch::nn::GELU>()) options.approximate = gelu->options.approximate();
  if (auto* softplus = module->as<torch::nn::Softplus>()) {
    options.beta = softplus->options.beta();
    options.threshold = softplus->options.threshold();
  }
  if (auto* leaky = module->as<torch::nn::LeakyReLU>()) {
    options.negative_slope = leaky->options.negative_slope();
  }
  return activation_for_module(kRegularizer, name, options, prefix);
}

torch::nn::Linear linear_at(const torch::nn::Sequential& model, size_t index) {
  auto linear = std::dynamic_pointer_cast<torch::nn::LinearImpl>(model->ptr(index));
  TORCH_CHECK_VALUE(linear, kRegularizer, ": module ", index, " must be Linear, got ",
                    model->ptr(index)->name());
  return torch::nn::Linear(linear);
}

const torch::nn::Sequential& checked_sequential(const torch::nn::Sequential& model) {
  TORCH_CHECK_VALUE(model && model->size() >= 3 && model->size() % 2 == 1, kRegularizer,
                    " expects Sequential(Linear(D, H), activation, Linear(H, C)), or deeper "
                    "Sequential(Linear, activation, Linear, …, Linear) with L >= 1 hidden layers, "
                    "got a Sequential of ", model ? model->size() : 0, " modules");
  return model;
}

// The Linear layers of the Sequential, at its even positions.
std::vector<torch::nn::Linear> layers_of(const torch::nn::Sequential& model) {
  std::vector<torch::nn::Linear> layers;
  for (size_t i = 0; i < checked_sequential(model)->size(); i += 2) {
    layers.push_back(linear_at(model, i));
  }
  return layers;
}

// The activation of every hidden layer, which must be one (the closed form has one φ), as the
// Python DeepMlpSpec requires.
std::string shared_activation_of(const torch::nn::Sequential& model) {
  std::vector<std::string> names;
  for (size_t i = 1; i < checked_sequential(model)->size(); i += 2) {
    names.push_back(activation_of(model->ptr(i)));
  }
  for (const std::string& name : names) {
    if (name == names.front()) continue;
    std::string listing;
    for (size_t k = 0; k < names.size(); ++k) {
      listing += (k ? ", " : "") + std::to_string(2 * k + 1) + ": " + names[k];
    }
    TORCH_CHECK_VALUE(false, kRegularizer, ": every hidden layer must have the same activation "
                      "(the closed form has one φ), got ", listing);
  }
  return names.front();
}

}  // namespace

HSRRegularizer::HSRRegularizer(const torch::nn::Sequential& model, std::string reduction,
                               std::string loss, std::string bound)
    : HSRRegularizer(layers_of(model), shared_activation_of(model), std::move(reduction),
                     std::move(loss), std::move(bound)) {}

HSRRegularizer::HSRRegularizer(torch::nn::Linear hidden,
                               const std::shared_ptr<torch::nn::Module>& activation,
                               torch::nn::Linear output, std::string reduction, std::string loss,
                               std::string bound)
    : HSRRegularizer({std::move(hidden), std::move(output)}, activation_of(activation),
                     std::move(reduction), std::move(loss), std::move(bound)) {}

HSRRegularizer::HSRRegularizer(std::vector<torch::nn::Linear> layers, std::string activation,
                               std::string reduction, std::string loss, std::string bound)
    : layers_(std::move(layers)),
      activation_(std::move(activation)),
      reduction_(std::move(reduction)),
      loss_(std::move(loss)),
      bound_(std::move(bound)) {
  TORCH_CHECK_VALUE(bound_ == "ws" || bound_ == "spectral", kRegularizer, ": unknown bound '",
                    bound_, "'; expected ws or spectral");
  TORCH_CHECK_VALUE(bound_ == "ws" || layers_.size() == 2, kRegularizer, ": bound 'spectral' is "
                    "for one hidden layer (there is no spectral bound for deeper networks yet); "
                    "this network has ", layers_.size() - 1, " hidden layers, pass bound 'ws'");
  const LossEntry& head = loss_entry(parse_loss(kRegularizer, loss_));
  const torch::nn::Linear& output = layers_.back();
  const int64_t width = output->options.out_features();
  TORCH_CHECK_VALUE(width >= head.min_outputs && (head.max_outputs < 0 || width <= head.max_outputs),
                    kRegularizer, ": loss '", head.name, "' (", head.as_torch, ") needs ",
                    head.max_outputs == 1 ? "Linear(H, 1)"
                                          : "Linear(H, C) with C >= " +
                                                std::to_string(head.min_outputs),
                    " as the output layer, got out_features=", width);
  for (size_t l = 1; l < layers_.size(); ++l) {
    const int64_t given = layers_[l - 1]->options.out_features();
    const int64_t expected = layers_[l]->options.in_features();
    TORCH_CHECK_VALUE(given == expected, kRegularizer, ": ",
                      layers_.size() == 2 ? std::string("the hidden layer has ") + std::to_string(given) +
                                                " units but the output layer expects " +
                                                std::to_string(expected)
                                          : "layer " + std::to_string(l - 1) + " gives " +
                                                std::to_string(given) + " features but layer " +
                                                std::to_string(l) + " expects " +
                                                std::to_string(expected));
  }
  parse_reduction(kRegularizer, reduction_);
}

at::Tensor HSRRegularizer::operator()(const at::Tensor& x, const at::Tensor& target) const {
  auto optional_bias = [](const at::Tensor& b) {
    return b.defined() ? std::optional<at::Tensor>(b) : std::nullopt;
  };
  // Integer class indices stay int64 for the cross-entropy; other targets take x's dtype (integer
  // 0/1 labels for "bce" are fine).
  const bool class_indices = loss_ == "cross_entropy" && !at::isFloatingType(target.scalar_type());
  const at::Tensor labels =
      target.detach().to(class_indices ? at::kLong : x.scalar_type());
  if (layers_.size() > 2) {
    std::vector<at::Tensor> weights;
    std::vector<std::optional<at::Tensor>> biases;
    for (const torch::nn::Linear& layer : layers_) {
      weights.push_back(layer->weight);
      biases.push_back(optional_bias(layer->bias));
    }
    return deep_ws_bounds(x, labels, weights, biases, activation_, reduction_, loss_)
        .lambda_max_upper;
  }
  const torch::nn::Linear &hidden = layers_.front(), &output = layers_.back();
  const auto b1 = optional_bias(hidden->bias), b2 = optional_bias(output->bias);
  if (bound_ == "spectral") {
    return spectral_bound(x, labels, hidden->weight, b1, output->weight, b2, activation_,
                          reduction_, loss_)
        .upper;
  }
  return ws_bound(x, labels, hidden->weight, b1, output->weight, b2, activation_, reduction_,
                  loss_);
}

}  // namespace torch_ws
