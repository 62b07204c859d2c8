#include "ops/deep/forward.h"

#include "autograd/support.h"  // recording_of
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
  f.d3.resize(out + 1);
  f.weight.resize(out + 1);
  f.z[0] = p.x;
  for (int64_t l = 1; l <= out; ++l) f.weight[l] = p.layers[l - 1].weight;
  return f;
}

}  // namespace

DeepForward deep_forward(const MlpProblem& p, int derivatives) {
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
    const ActivationValues<at::Tensor> phi = activation_values(p.activation, a, derivatives);
    f.z[l] = phi.phi0;
    f.d1[l] = phi.phi1;
    f.d2[l] = phi.phi2;
    f.d3[l] = phi.phi3;
  }
  f.target = p.target.view(logits.sizes());
  f.terms = output_terms(p.loss, logits, f.target, p.loss_scale());
  return f;
}

std::vector<at::Tensor> tensors_of(const MlpProblem& p) {
  std::vector<at::Tensor> tensors{p.x};
  for (const Layer& layer : p.layers) {
    tensors.push_back(layer.weight);
    if (layer.bias) tensors.push_back(*layer.bias);
  }
  return tensors;
}

std::vector<int64_t> kind_of(const MlpProblem& p) {
  std::vector<int64_t> kind{static_cast<int64_t>(p.activation), static_cast<int64_t>(p.reduction),
                            static_cast<int64_t>(p.loss)};
  for (const Layer& layer : p.layers) kind.push_back(layer.bias ? 1 : 0);
  return kind;
}

MlpProblem problem_of(const std::vector<int64_t>& kind, const at::Tensor& target,
                      const std::vector<at::Tensor>& tensors) {
  MlpProblem p;
  p.target = target;
  p.activation = static_cast<Activation>(kind[0]);
  p.reduction = static_cast<Reduction>(kind[1]);
  p.loss = static_cast<Loss>(kind[2]);
  p.layers.resize(kind.size() - 3);
  size_t next = 0;
  p.x = tensors[next++];
  for (size_t l = 0; l < p.layers.size(); ++l) {
    p.layers[l].weight = tensors[next++];
    if (kind[3 + l] == 1) p.layers[l].bias = tensors[next++];
  }
  return p;
}

}  // namespace torch_ws

// The forward pass as one autograd node with a hand-derived reverse pass (docs/math.md §12.4):
// outputs z_l, φ'_l, φ''_l (hidden l = 1..L), S and e (and e's magnitude, not differentiable);
// the backward takes ā_l = z̄_l φ'_l + φ̄'_l φ''_l + φ̄''_l φ'''_l at the hidden layers and
// output_terms_backward at the logits (losses.h), then each affine layer's W̄ = āᵀz, b̄ = Σā,
// z̄ = āW. Written in out-of-place ATen operations, so that create_graph records them. At
// global scope for its grad_fn's name (autograd/skeleton.h).
class DeepForwardBackward : public torch::autograd::Function<DeepForwardBackward> {
 public:
  // `p`: the problem (its tensors are `inputs`, tensors_of's order).
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
    saved.push_back(p.target);
    ctx->save_for_backward(saved);
    ctx->saved_data["kind"] = torch_ws::kind_of(p);
    return outputs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch_ws::MlpProblem p = torch_ws::problem_of(
        ctx->saved_data["kind"].toIntVector(), saved.back(),
        std::vector<at::Tensor>(saved.begin(), saved.end() - 1));
    const int64_t out = static_cast<int64_t>(p.layers.size()), L = out - 1;
    // The forward again (O(N·H) a layer), with φ''' too; the adjoints in the outputs' order.
    const torch_ws::DeepForward f = torch_ws::deep_forward(p, 3);
    const auto adjoint = [&](int64_t index) { return grad_outputs[index]; };
    const at::Tensor &S_bar = adjoint(3 * L), &e_bar = adjoint(3 * L + 1);
    at::Tensor a_bar = (S_bar.defined() || e_bar.defined())
                           ? torch_ws::output_terms_backward(p.loss, f.terms, S_bar, e_bar)
                           : at::zeros_like(f.terms.e);
    // The gradients as a problem of their own, read off in tensors_of's order.
    torch_ws::MlpProblem grads = p;
    for (int64_t l = out; l >= 1; --l) {
      torch_ws::Layer& layer = grads.layers[l - 1];
      layer.weight = at::matmul(a_bar.t(), f.z[l - 1]);
      if (layer.bias) layer.bias = a_bar.sum(0);
      at::Tensor below = at::matmul(a_bar, f.weight[l]);  // z̄_{l-1}
      if (l == 1) {
        grads.x = below;
        break;
      }
      const int64_t h = l - 1;
      const at::Tensor &z_bar = adjoint(h - 1), &d1_bar = adjoint(L + h - 1),
                       &d2_bar = adjoint(2 * L + h - 1);
      if (z_bar.defined()) below = below + z_bar;
      a_bar = below * f.d1[h];
      if (d1_bar.defined()) a_bar = a_bar + d1_bar * f.d2[h];
      if (d2_bar.defined()) a_bar = a_bar + d2_bar * f.d3[h];
    }
    torch::autograd::variable_list out_grads = torch_ws::tensors_of(grads);
    out_grads.insert(out_grads.begin(), at::Tensor());  // p
    return out_grads;
  }
};

namespace torch_ws {

DeepForward deep_forward_recorded(const MlpProblem& p) {
  const std::vector<at::Tensor> inputs = tensors_of(p);
  // The target's gradient, forward mode and torch.func take the forward pass as ATen operations.
  if (!recording_of(at::TensorList(inputs)).reverse_only() || p.target.requires_grad()) {
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
