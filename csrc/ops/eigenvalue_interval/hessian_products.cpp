// Closed-form Hessian-vector products (docs/math.md §11.1). For a direction
// v = (dW1, db1, dW2, db2) the product is the derivative along v of the gradient's chain:
//
//   dz = X dW1ᵀ + db1,   da = φ'(A) ∘ dz,   df = da W2ᵀ + Φ dW2ᵀ + db2,   dg_i = S_i df_i,
//   (Hv)_W2 = dgᵀΦ + eᵀ da,   (Hv)_b2 = Σ_i dg_i,
//   dε = φ'(A) ∘ (dg W2 + e dW2) + φ''(A) ∘ dz ∘ (e W2),
//   (Hv)_W1 = dεᵀ X,   (Hv)_b1 = Σ_i dε_i,
//
// with A = X W1ᵀ + b1, Φ = φ(A) and S_i, e_i the loss's (scaled) Hessian and gradient in the
// logits (losses.h). k directions go through as one batch of matrix products.
#include "ops/eigenvalue_interval/hessian_products.h"

#include "core/activations.h"
#include "core/losses.h"

#include <algorithm>
#include <vector>

namespace torch_ws {

namespace {

// κ of docs/math.md §5.1: the relative error allowed each per-sample coefficient's evaluation.
constexpr double kCoefficientAllowance = 8192;

double unit_roundoff(at::ScalarType dtype) {
  return dtype == at::kDouble ? 0x1p-53 : 0x1p-24;
}

}  // namespace

HessianProducts::HessianProducts(const MlpProblem& p)
    : hidden_(p.hidden()),
      in_dim_(p.in_dim()),
      num_outputs_(p.num_outputs()),
      num_params_(p.num_params()),
      has_b1_(p.b1().has_value()),
      has_b2_(p.b2().has_value()) {
  at::Tensor pre = at::matmul(p.x, p.w1().t());
  if (has_b1_) pre = pre + *p.b1();
  const ActivationValues<at::Tensor> phi = activation_values(p.activation, pre, 2);
  at::Tensor logits = at::matmul(phi.phi0, p.w2().t());
  if (has_b2_) logits = logits + *p.b2();
  const OutputTerms terms = output_terms(p.loss, logits, p.target.view(logits.sizes()),
                                         p.loss_scale());
  values_ = {p.x, p.w2(), phi.phi0, phi.phi1, phi.phi2, terms.S, terms.e,
             at::matmul(terms.e, p.w2())};
  magnitudes_ = {p.x.abs(), p.w2().abs(), phi.phi0.abs(), phi.phi1.abs(), phi.phi2.abs(),
                 terms.S.abs(), terms.e.abs(), at::matmul(terms.e.abs(), p.w2().abs())};
  // The longest chain of sums and products behind one entry of H·v (docs/math.md §11.3): the
  // inner products of lengths D, H, C, C, then the sum over N samples, a dozen operations
  // besides, each coefficient within κu; doubled for the second-order terms.
  const double depth = static_cast<double>(in_dim_ + 2 * hidden_ + 2 * num_outputs_ +
                                           p.num_samples() + 16) +
                       kCoefficientAllowance;
  const double u = unit_roundoff(p.x.scalar_type());
  error_factor_ = 2 * depth * u / (1 - depth * u);
}

at::Tensor HessianProducts::apply(const at::Tensor& directions) const {
  return run(values_, directions);
}

at::Tensor HessianProducts::majorant(const at::Tensor& directions) const {
  return run(magnitudes_, directions.abs());
}

at::Tensor HessianProducts::run(const Chain& c, const at::Tensor& directions) const {
  const int64_t k = directions.size(0), H = hidden_, D = in_dim_, C = num_outputs_;
  // Views of each block of the flat θ order.
  int64_t offset = 0;
  auto block = [&](int64_t length) {
    at::Tensor view = directions.narrow(1, offset, length);
    offset += length;
    return view;
  };
  const at::Tensor d_w1 = block(H * D).reshape({k, H, D});
  const at::Tensor d_b1 = has_b1_ ? block(H) : at::Tensor();
  const at::Tensor d_w2 = block(C * H).reshape({k, C, H});
  const at::Tensor d_b2 = has_b2_ ? block(C) : at::Tensor();

  at::Tensor dz = at::matmul(c.x, d_w1.transpose(1, 2));  // (k, N, H)
  if (has_b1_) dz = dz + d_b1.unsqueeze(1);
  const at::Tensor da = c.phi1 * dz;
  at::Tensor df = at::matmul(da, c.w2.t()) + at::matmul(c.phi0, d_w2.transpose(1, 2));  // (k,N,C)
  if (has_b2_) df = df + d_b2.unsqueeze(1);
  const at::Tensor dg = at::matmul(c.S, df.unsqueeze(-1)).squeeze(-1);  // (k, N, C)
  const at::Tensor h_w2 = at::matmul(dg.transpose(1, 2), c.phi0) +
                          at::matmul(c.e.t(), da);  // (k, C, H)
  const at::Tensor d_eps = c.phi1 * (at::matmul(dg, c.w2) + at::matmul(c.e, d_w2)) +
                           c.phi2 * dz * c.hidden_residual;  // (k, N, H)
  const at::Tensor h_w1 = at::matmul(d_eps.transpose(1, 2), c.x);  // (k, H, D)

  std::vector<at::Tensor> parts = {h_w1.reshape({k, H * D})};
  if (has_b1_) parts.push_back(d_eps.sum(1));
  parts.push_back(h_w2.reshape({k, C * H}));
  if (has_b2_) parts.push_back(dg.sum(1));
  return at::cat(parts, 1);
}

}  // namespace torch_ws
