// The C++ API of include/torch_ws/torch_ws.h: thin calls through the dispatcher.
#include <torch_ws/torch_ws.h>

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>

#include "dispatch.h"
#include "traces.h"

namespace torch_ws {

at::Tensor ws_bound(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                    const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                    const std::optional<at::Tensor>& b2, std::string_view activation,
                    std::string_view reduction) {
  static auto op = find_op<decltype(ws_bound_kernel)>("torch_ws::ws_bound");
  return op.call(x, target, w1, b1, w2, b2, activation, reduction);
}

std::tuple<at::Tensor, at::Tensor> hessian_traces(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2,
    const std::optional<at::Tensor>& b2, std::string_view activation,
    std::string_view reduction) {
  static auto op = find_op<decltype(hessian_traces_kernel)>("torch_ws::hessian_traces");
  return op.call(x, target, w1, b1, w2, b2, activation, reduction);
}

namespace {

constexpr const char* kSupportedModules =
    "Identity, Sigmoid, Tanh, Softplus(beta=1, threshold=20), GELU (approximate \"none\" or "
    "\"tanh\"), SiLU";

std::string activation_of(const std::shared_ptr<torch::nn::Module>& module) {
  TORCH_CHECK(module, "torch_ws::HSRRegularizer: the activation module is null");
  if (module->as<torch::nn::Identity>()) return "linear";
  if (module->as<torch::nn::Sigmoid>()) return "sigmoid";
  if (module->as<torch::nn::Tanh>()) return "tanh";
  if (module->as<torch::nn::SiLU>()) return "silu";
  if (auto* gelu = module->as<torch::nn::GELU>()) {
    return gelu->options.approximate() == "tanh" ? "gelu_tanh" : "gelu";
  }
  if (auto* softplus = module->as<torch::nn::Softplus>()) {
    TORCH_CHECK(softplus->options.beta() == 1 && softplus->options.threshold() == 20,
                "torch_ws::HSRRegularizer supports Softplus only with beta=1 and threshold=20, "
                "got beta=", softplus->options.beta(), ", threshold=",
                softplus->options.threshold());
    return "softplus";
  }
  TORCH_CHECK(!module->as<torch::nn::ReLU>(),
              "torch_ws::HSRRegularizer: ReLU is not smooth (no second derivative), so the "
              "closed-form Hessian does not apply; use one of: ", kSupportedModules);
  TORCH_CHECK(false, "torch_ws::HSRRegularizer: unsupported activation ", module->name(),
              "; expected one of: ", kSupportedModules);
}

torch::nn::Linear linear_at(const torch::nn::Sequential& model, size_t index) {
  auto linear = std::dynamic_pointer_cast<torch::nn::LinearImpl>(model->ptr(index));
  TORCH_CHECK(linear, "torch_ws::HSRRegularizer: module ", index, " must be Linear, got ",
              model->ptr(index)->name());
  return torch::nn::Linear(linear);
}

torch::nn::Sequential checked_sequential(const torch::nn::Sequential& model) {
  TORCH_CHECK(model && model->size() == 3,
              "torch_ws::HSRRegularizer expects Sequential(Linear(D, H), activation, "
              "Linear(H, 1)), got a Sequential of ", model ? model->size() : 0, " modules");
  return model;
}

}  // namespace

HSRRegularizer::HSRRegularizer(const torch::nn::Sequential& model, std::string reduction)
    : HSRRegularizer(linear_at(checked_sequential(model), 0), model->ptr(1),
                     linear_at(model, 2), std::move(reduction)) {}

HSRRegularizer::HSRRegularizer(torch::nn::Linear hidden,
                               const std::shared_ptr<torch::nn::Module>& activation,
                               torch::nn::Linear output, std::string reduction)
    : hidden_(std::move(hidden)),
      output_(std::move(output)),
      activation_(activation_of(activation)),
      reduction_(std::move(reduction)) {
  TORCH_CHECK(output_->options.out_features() == 1,
              "torch_ws::HSRRegularizer: the output layer must be Linear(H, 1), got out_features=",
              output_->options.out_features());
  TORCH_CHECK(output_->options.in_features() == hidden_->options.out_features(),
              "torch_ws::HSRRegularizer: the hidden layer has ", hidden_->options.out_features(),
              " units but the output layer expects ", output_->options.in_features());
  TORCH_CHECK(reduction_ == "mean" || reduction_ == "sum",
              "torch_ws::HSRRegularizer: unknown reduction '", reduction_,
              "'; expected one of: mean, sum");
}

at::Tensor HSRRegularizer::operator()(const at::Tensor& x, const at::Tensor& target) const {
  auto optional_bias = [](const at::Tensor& b) {
    return b.defined() ? std::optional<at::Tensor>(b) : std::nullopt;
  };
  return ws_bound(x, target.detach().to(x.scalar_type()), hidden_->weight,
                  optional_bias(hidden_->bias), output_->weight, optional_bias(output_->bias),
                  activation_, reduction_);
}

}  // namespace torch_ws
