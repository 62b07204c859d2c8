// Closed-form Hessian-vector products of a deep MLP (docs/math.md §12.6). For a direction
// v = (dW_l, db_l)_l the product is the derivative along v of the gradient's chain. Forward,
// with da_l the pre-activations' tangent and dz_l = φ'(a_l) ∘ da_l (dz_0 = 0):
//
//   da_l = dz_{l−1} W_lᵀ + z_{l−1} dW_lᵀ + db_l,        dg_o = S_i da_{i,o} per sample;
//
// then backward, l = o..1, with g_l the gradient's adjoint at a_l (g_o = e,
// g_{l−1} = φ'(a_{l−1}) ∘ g_l W_l):
//
//   (Hv)_{W_l} = dg_lᵀ z_{l−1} + g_lᵀ dz_{l−1},   (Hv)_{b_l} = Σ_i dg_{i,l},
//   dg_{l−1} = φ'(a_{l−1}) ∘ (dg_l W_l + g_l dW_l) + φ''(a_{l−1}) ∘ da_{l−1} ∘ (g_l W_l).
//
// k directions run as one set of matrix products (sample-major (N, k, H_l) layout).
#include "ops/deep/deep_products.h"

#include "ops/deep/forward.h"
#include "core/losses.h"
#include "core/ws_bound.h"  // kRoundingAllowance

#include <algorithm>

namespace torch_ws {

DeepHessianProducts::DeepHessianProducts(const MlpProblem& p, Uses uses)
    : num_samples_(p.num_samples()), num_params_(p.num_params()) {
  const int64_t out = static_cast<int64_t>(p.layers.size());
  widths_.push_back(p.in_dim());
  for (const Layer& layer : p.layers) {
    widths_.push_back(layer.weight.size(0));
    has_bias_.push_back(layer.bias.has_value());
  }
  for (Chain* c : {&values_, &magnitudes_}) {
    c->z.resize(out + 1);
    c->d1.resize(out + 1);
    c->second.resize(out + 1);
    c->g.resize(out + 1);
    c->weight.resize(out + 1);
  }
  // The forward pass (forward.h), keeping φ'' for the second-order terms.
  DeepForward f = deep_forward(p);
  values_.z = f.z;
  values_.d1 = f.d1;
  values_.weight = f.weight;
  const std::vector<at::Tensor>& d2 = f.d2;
  const at::Tensor& target = f.target;
  const OutputTerms& terms = f.terms;
  values_.S = terms.S;
  // The adjoints, and φ''(a_l) ∘ (g_{l+1} W_{l+1}): what the second-order term multiplies.
  auto adjoints = [out](Chain& c, const std::vector<at::Tensor>& phi2) {
    for (int64_t l = out; l >= 2; --l) {
      const at::Tensor back = at::matmul(c.g[l], c.weight[l]);  // (N, H_{l−1})
      c.g[l - 1] = c.d1[l - 1] * back;
      c.second[l - 1] = phi2[l - 1] * back;
    }
  };
  values_.g[out] = terms.e;
  adjoints(values_, d2);

  // The longest chain of sums and products behind one entry of H·v (docs/math.md §12.6): the
  // forward pass, its tangent, the adjoints and their tangent each run through every layer
  // (inner products of the layers' widths), then the sum over N samples; a path holds up to
  // four coefficients per layer (z or φ', φ'', g), each within κu of its magnitude (§11.3), plus
  // the logits' share; doubled as in §11.3.
  double logit_allowance = 0;
  if (uses == Uses::Certificate) {
    const LogitRounding rounding = logit_rounding(p.loss, terms.e_magnitude, values_.z[out - 1],
                                                  p.layers.back().weight, p.layers.back().bias,
                                                  target, p.loss_scale());
    logit_allowance = rounding.allowance;
    Chain& m = magnitudes_;
    std::vector<at::Tensor> d2_magnitude(out + 1);
    m.z[0] = p.x.abs();
    for (int64_t l = 1; l <= out; ++l) {
      m.weight[l] = values_.weight[l].abs();
      if (l == out) break;
      m.z[l] = values_.z[l].abs();
      m.d1[l] = values_.d1[l].abs();
      d2_magnitude[l] = d2[l].abs();
    }
    m.S = terms.S.abs();
    m.g[out] = rounding.e_magnitude;
    adjoints(m, d2_magnitude);
  }
  int64_t widths = 0;
  for (const int64_t w : widths_) widths += w;
  const double depth = static_cast<double>(4 * widths + num_samples_ + 16 * out) +
                       4.0 * static_cast<double>(out) * kRoundingAllowance + logit_allowance;
  const double u = p.x.scalar_type() == at::kDouble ? 0x1p-53 : 0x1p-24;
  error_factor_ = 2 * depth * u / (1 - depth * u);
}

int64_t DeepHessianProducts::widest() const {
  return *std::max_element(widths_.begin() + 1, widths_.end());
}

at::Tensor DeepHessianProducts::apply(const at::Tensor& directions) const {
  return in_runs(directions, num_samples_, widest(),
                 [&](const at::Tensor& rows) { return run(values_, rows); });
}

at::Tensor DeepHessianProducts::majorant(const at::Tensor& directions) const {
  TORCH_INTERNAL_ASSERT(magnitudes_.S.defined(), "DeepHessianProducts::majorant: built for products");
  return in_runs(directions.abs(), num_samples_, widest(),
                 [&](const at::Tensor& rows) { return run(magnitudes_, rows); });
}

at::Tensor DeepHessianProducts::run(const Chain& c, const at::Tensor& directions) const {
  const int64_t k = directions.size(0), N = num_samples_;
  const int64_t out = static_cast<int64_t>(widths_.size()) - 1;
  // The direction's blocks, layer by layer: dW_l (k, H_l, H_{l−1}), db_l (k, H_l) or undefined.
  std::vector<at::Tensor> dW(out + 1), db(out + 1);
  int64_t offset = 0;
  for (int64_t l = 1; l <= out; ++l) {
    const int64_t rows = widths_[l], cols = widths_[l - 1];
    dW[l] = directions.narrow(1, offset, rows * cols).reshape({k, rows, cols});
    offset += rows * cols;
    if (has_bias_[l - 1]) {
      db[l] = directions.narrow(1, offset, rows);
      offset += rows;
    }
  }
  // Forward tangent: da[l], dz[l] (N, k, H_l).
  std::vector<at::Tensor> da(out + 1), dz(out + 1);
  for (int64_t l = 1; l <= out; ++l) {
    const int64_t rows = widths_[l], cols = widths_[l - 1];
    at::Tensor a = at::mm(c.z[l - 1], dW[l].reshape({k * rows, cols}).t()).view({N, k, rows});
    if (l >= 2) a = a + at::mm(dz[l - 1].reshape({N * k, cols}), c.weight[l].t()).view({N, k, rows});
    if (db[l].defined()) a = a + db[l].unsqueeze(0);
    da[l] = a;
    if (l < out) dz[l] = c.d1[l].unsqueeze(1) * a;
  }
  // dg_o = S_i da_o (S_i symmetric); one logit: a scalar per sample.
  const int64_t C = widths_[out];
  at::Tensor dg = C == 1 ? da[out] * c.S.view({N, 1, 1}) : at::bmm(da[out], c.S);
  // Backward, collecting the blocks from the last layer to the first.
  std::vector<at::Tensor> blocks(2 * out + 2);
  for (int64_t l = out; l >= 1; --l) {
    const int64_t rows = widths_[l], cols = widths_[l - 1];
    at::Tensor h_w = at::mm(dg.reshape({N, k * rows}).t(), c.z[l - 1]).view({k, rows, cols});
    if (l >= 2) {
      h_w = h_w + at::mm(c.g[l].t(), dz[l - 1].reshape({N, k * cols})).view({rows, k, cols})
                      .transpose(0, 1);
    }
    blocks[2 * l] = h_w.reshape({k, rows * cols});
    if (has_bias_[l - 1]) blocks[2 * l + 1] = dg.sum(0);
    if (l == 1) break;
    const at::Tensor dh =
        at::mm(dg.reshape({N * k, rows}), c.weight[l]).view({N, k, cols}) +
        at::mm(c.g[l], dW[l].transpose(0, 1).reshape({rows, k * cols})).view({N, k, cols});
    dg = c.d1[l - 1].unsqueeze(1) * dh + c.second[l - 1].unsqueeze(1) * da[l - 1];
  }
  std::vector<at::Tensor> parts;
  for (const at::Tensor& b : blocks) {
    if (b.defined()) parts.push_back(b);
  }
  return at::cat(parts, 1);
}

}  // namespace torch_ws
