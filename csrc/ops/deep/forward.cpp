#include "ops/deep/forward.h"

#include "core/activations.h"

namespace torch_ws {

DeepForward deep_forward(const MlpProblem& p) {
  const int64_t out = static_cast<int64_t>(p.layers.size());
  DeepForward f;
  f.z.resize(out + 1);
  f.d1.resize(out + 1);
  f.d2.resize(out + 1);
  f.weight.resize(out + 1);
  f.z[0] = p.x;
  at::Tensor logits;
  for (int64_t l = 1; l <= out; ++l) {
    const Layer& layer = p.layers[l - 1];
    f.weight[l] = layer.weight;
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

}  // namespace torch_ws
