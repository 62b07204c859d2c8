#include "ops/deep/forward.h"

#include "autograd/support.h"  // functorch_transform_active
#include "core/activations.h"

#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>

namespace torch_ws {
namespace {

// A DeepForward of p's depth with z_0 = x and the weights in place, the rest to fill.
DeepForward forward_frame(const MlpProblem& p) {
  const int64_t out = static_cast<int64_t>(p.layers.size());
  DeepForward f;
  f.z.resize(out + 1);
  f.d1.resize(out + 1);
  f.d2.resize(out + 1);
  f.weight.resize(out + 1);
  f.z[0] = p.x;
  for (int64_t l = 1; l <= out; ++l) f.weight[l] = p.layers[l - 1].weight;
  return f;
}

}  // namespace

DeepForward deep_forward(const MlpProblem& p) {
  const int64_t out = static_cast<int64_t>(p.layers.size());
  DeepForward f = forward_frame(p);
  at::Tensor logits;
  for (int64_t l = 1; l <= out; ++l) {
    const Layer& layer = p.layers[l - 1];
    at::Tensor a = at::matmul(f.z[l - 1], layer.weight.t());
    if (layer.bias) a = a + *layer.bias;
    if (l == out) {
      logits = a;
      break;
    }
    const ActivationValues<at::Tensor> phi = activation_values(p.activation, a, 2);
    f.z[l] = phi.phi0;
    f.d1[l] = phi.phi1;
    f.d2[l] = phi.phi2;
  }
  f.target = p.target.view(logits.sizes());
  f.terms = output_terms(p.loss, logits, f.target, p.loss_scale());
  return f;
}

namespace {

// x, then each layer's weight and bias (where it has one): the tensors the forward pass reads.
std::vector<at::Tensor> parameters_of(const MlpProblem& p) {
  std::vector<at::Tensor> inputs{p.x};
  for (const Layer& layer : p.layers) {
    inputs.push_back(layer.weight);
    if (layer.bias) inputs.push_back(*layer.bias);
  }
  return inputs;
}

}  // namespace
}  // namespace torch_ws

// The forward pass as one autograd node with a hand-derived reverse pass (docs/math.md §12.4):
// outputs z_l, φ'_l, φ''_l (hidden l = 1..L), S and e (and e's magnitude, not differentiable);
// the backward takes ā_l = z̄_l φ'_l + φ̄'_l φ''_l + φ̄''_l φ'''_l at the hidden layers and
// output_terms_backward at the logits (losses.h), then each affine layer's W̄ = āᵀz, b̄ = Σā,
// z̄ = āW. Written in out-of-place ATen operations, so that create_graph records them. At
// global scope for its grad_fn's name (autograd/skeleton.h).
class DeepForwardBackward : public torch::autograd::Function<DeepForwardBackward> {
 public:
  // `p`: the problem (its tensors are `inputs`, parameters_of's order).
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const torch_ws::MlpProblem& p,
                                                at::TensorList inputs) {
    const torch_ws::DeepForward f = torch_ws::deep_forward(p);
    const int64_t out = static_cast<int64_t>(p.layers.size()), L = out - 1;
    torch::autograd::variable_list outputs;
    for (int64_t l = 1; l <= L; ++l) outputs.push_back(f.z[l]);
    for (int64_t l = 1; l <= L; ++l) outputs.push_back(f.d1[l]);
    for (int64_t l = 1; l <= L; ++l) outputs.push_back(f.d2[l]);
    outputs.push_back(f.terms.S);
    outputs.push_back(f.terms.e);
    outputs.push_back(f.terms.e_magnitude);
    ctx->mark_non_differentiable({f.terms.e_magnitude});
    std::vector<at::Tensor> saved = inputs.vec();
    saved.push_back(f.target);
    ctx->save_for_backward(saved);
    std::vector<int64_t> bias;
    for (const torch_ws::Layer& layer : p.layers) bias.push_back(layer.bias ? 1 : 0);
    ctx->saved_data["bias"] = bias;
    ctx->saved_data["activation"] = static_cast<int64_t>(p.activation);
    ctx->saved_data["loss"] = static_cast<int64_t>(p.loss);
    ctx->saved_data["scale"] = p.loss_scale();
    return outputs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const std::vector<int64_t> bias = ctx->saved_data["bias"].toIntVector();
    const auto activation =
        static_cast<torch_ws::Activation>(ctx->saved_data["activation"].toInt());
    const auto loss = static_cast<torch_ws::Loss>(ctx->saved_data["loss"].toInt());
    const double scale = ctx->saved_data["scale"].toDouble();
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const int64_t out = static_cast<int64_t>(bias.size()), L = out - 1;
    // The inputs back in their layers, and the adjoints in the outputs' order.
    const at::Tensor& x = saved[0];
    const at::Tensor& target = saved.back();
    std::vector<at::Tensor> weight(out + 1), b(out + 1);
    std::vector<size_t> weight_at(out + 1), bias_at(out + 1);
    size_t next = 1;
    for (int64_t l = 1; l <= out; ++l) {
      weight_at[l] = next;
      weight[l] = saved[next++];
      if (bias[l - 1] == 1) {
        bias_at[l] = next;
        b[l] = saved[next++];
      }
    }
    std::vector<at::Tensor> z_bar(out + 1), d1_bar(out + 1), d2_bar(out + 1);
    for (int64_t l = 1; l <= L; ++l) {
      z_bar[l] = grad_outputs[l - 1];
      d1_bar[l] = grad_outputs[L + l - 1];
      d2_bar[l] = grad_outputs[2 * L + l - 1];
    }
    const at::Tensor& S_bar = grad_outputs[3 * L];
    const at::Tensor& e_bar = grad_outputs[3 * L + 1];

    // The forward again, per layer: the pre-activations and φ, φ', φ'', φ''' (O(N·H) each).
    std::vector<at::Tensor> z(out + 1), phi1(out + 1), phi2(out + 1), phi3(out + 1);
    z[0] = x;
    at::Tensor logits;
    for (int64_t l = 1; l <= out; ++l) {
      at::Tensor a = at::matmul(z[l - 1], weight[l].t());
      if (b[l].defined()) a = a + b[l];
      if (l == out) {
        logits = a;
        break;
      }
      const torch_ws::ActivationValues<at::Tensor> phi =
          torch_ws::activation_values(activation, a, 3);
      z[l] = phi.phi0;
      phi1[l] = phi.phi1;
      phi2[l] = phi.phi2;
      phi3[l] = phi.phi3;
    }
    const torch_ws::OutputTerms terms = torch_ws::output_terms(loss, logits, target, scale);
    at::Tensor a_bar = (S_bar.defined() || e_bar.defined())
                           ? torch_ws::output_terms_backward(loss, terms, S_bar, e_bar)
                           : at::zeros_like(logits);
    std::vector<at::Tensor> grads(saved.size() - 1);  // x, the weights and biases
    for (int64_t l = out; l >= 1; --l) {
      grads[weight_at[l]] = at::matmul(a_bar.t(), z[l - 1]);
      if (b[l].defined()) grads[bias_at[l]] = a_bar.sum(0);
      at::Tensor below = at::matmul(a_bar, weight[l]);  // z̄_{l-1}
      if (l == 1) {
        grads[0] = below;
        break;
      }
      const int64_t h = l - 1;
      if (z_bar[h].defined()) below = below + z_bar[h];
      a_bar = below * phi1[h];
      if (d1_bar[h].defined()) a_bar = a_bar + d1_bar[h] * phi2[h];
      if (d2_bar[h].defined()) a_bar = a_bar + d2_bar[h] * phi3[h];
    }
    grads.insert(grads.begin(), at::Tensor());  // p
    return grads;
  }
};

namespace torch_ws {

DeepForward deep_forward_recorded(const MlpProblem& p) {
  const std::vector<at::Tensor> inputs = parameters_of(p);
  bool reverse = false, forward = false;
  for (const at::Tensor& t : inputs) {
    reverse = reverse || t.requires_grad();
    forward = forward || t._fw_grad(/*level=*/0).defined();
  }
  // The target's gradient, forward mode and torch.func take the forward pass as ATen operations.
  if (!at::GradMode::is_enabled() || !reverse || forward || p.target.requires_grad() ||
      functorch_transform_active()) {
    return deep_forward(p);
  }
  const torch::autograd::variable_list outputs =
      DeepForwardBackward::apply(p, at::TensorList(inputs));
  const int64_t L = static_cast<int64_t>(p.layers.size()) - 1;
  DeepForward f = forward_frame(p);
  for (int64_t l = 1; l <= L; ++l) {
    f.z[l] = outputs[l - 1];
    f.d1[l] = outputs[L + l - 1];
    f.d2[l] = outputs[2 * L + l - 1];
  }
  f.terms.S = outputs[3 * L];
  f.terms.e = outputs[3 * L + 1];
  f.terms.e_magnitude = outputs[3 * L + 2];
  f.target = p.target.view(f.terms.e.sizes());
  return f;
}

}  // namespace torch_ws
