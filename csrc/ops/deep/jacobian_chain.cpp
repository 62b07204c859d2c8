#include "ops/deep/jacobian_chain.h"

#include "core/losses.h"
#include "ops/deep/forward.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>

namespace torch_ws {

namespace {

void add_bias_flags(Coefficients& c, const MlpProblem& p) {
  const int64_t out = static_cast<int64_t>(p.layers.size());
  c.bias.assign(out + 1, false);
  for (int64_t l = 1; l <= out; ++l) c.bias[l] = p.layers[l - 1].bias.has_value();
}

}  // namespace

Coefficients coefficient_values(const MlpProblem& p) {
  DeepForward f = deep_forward(p);
  Coefficients c{std::move(f.z), std::move(f.d1), std::move(f.d2), std::move(f.weight), {},
                 f.terms.S, f.terms.e, f.terms.e_magnitude};
  add_bias_flags(c, p);
  return c;
}

CoefficientMagnitudes coefficient_magnitudes(const MlpProblem& p) {
  at::NoGradGuard no_grad;
  DeepForward f = deep_forward(p);
  const int64_t out = static_cast<int64_t>(p.layers.size());
  // The logits' own rounding, as it reaches S and e (losses.h logit_rounding, §11.3).
  const LogitRounding rounding =
      logit_rounding(p.loss, f.terms.e_magnitude, f.z[out - 1], f.weight[out],
                     p.layers.back().bias, f.target, p.loss_scale());
  Coefficients c{std::move(f.z), std::move(f.d1), std::move(f.d2), std::move(f.weight), {},
                 f.terms.S.abs(), rounding.e_magnitude, rounding.e_magnitude};
  for (int64_t l = 0; l <= out; ++l) {
    for (std::vector<at::Tensor>* v : {&c.z, &c.d1, &c.d2, &c.weight}) {
      if ((*v)[l].defined()) (*v)[l] = (*v)[l].abs();
    }
  }
  add_bias_flags(c, p);
  return {std::move(c), rounding.allowance};
}

Coefficients rows_of(const Coefficients& c, int64_t begin, int64_t end) {
  Coefficients out = c;
  const auto rows = [&](const at::Tensor& t) {
    return t.defined() ? t.narrow(0, begin, end - begin) : t;
  };
  for (std::vector<at::Tensor>* v : {&out.z, &out.d1, &out.d2}) {
    for (at::Tensor& t : *v) t = rows(t);
  }
  out.S = rows(c.S);
  out.e = rows(c.e);
  out.e_magnitude = rows(c.e_magnitude);
  return out;
}

JacobianChain::JacobianChain(const Coefficients& coefficients)
    : c(coefficients),
      out(static_cast<int64_t>(coefficients.weight.size()) - 1),
      L(out - 1),
      N(coefficients.z[0].size(0)),
      C(coefficients.e.size(1)) {
  const auto options = c.z[0].options();
  // F_lk = W_l D'_{l-1} F_{l-1,k}. F_kk = I is used as such only where a product with it is
  // free: F_{k+1,k} = W_{k+1} D'_k is a column scaling, and the curvature blocks' l = k terms
  // scale rows (an H³ product each saved per sample).
  F.assign(out + 1, std::vector<at::Tensor>(out + 1));
  for (int64_t k = 1; k <= out; ++k) {
    const int64_t width = c.weight[k].size(0);
    F[k][k] = at::eye(width, options).expand({N, width, width});
    if (k < out) F[k + 1][k] = c.weight[k + 1].unsqueeze(0) * c.d1[k].unsqueeze(1);
    for (int64_t l = k + 2; l <= out; ++l) {
      F[l][k] = at::matmul(c.weight[l], c.d1[l - 1].unsqueeze(2) * F[l - 1][k]);
    }
  }
  p.resize(out + 1);
  r.resize(out + 1);
  for (int64_t l = 1; l <= out; ++l) p[l] = at::bmm(c.e.unsqueeze(1), F[out][l]).squeeze(1);
  for (int64_t l = 1; l <= L; ++l) r[l] = c.d2[l] * at::matmul(p[l + 1], c.weight[l + 1]);
  curvature.assign(out + 1, std::vector<at::Tensor>(out + 1));
  // Only k ≥ k2: N[k2][k] = N[k][k2]ᵀ, and every user reads this orientation (an (N, H, H)
  // array saved per pair, and a transposed layout that Grams would copy).
  for (int64_t k = 1; k <= L; ++k) {
    for (int64_t k2 = 1; k2 <= k; ++k2) {
      if (k == L && k2 == L) continue;
      at::Tensor sum;
      for (int64_t l = k + 1; l <= L; ++l) {
        const at::Tensor term = at::matmul(F[l][k].transpose(1, 2), r[l].unsqueeze(2) * F[l][k2]);
        sum = sum.defined() ? sum + term : term;
      }
      // l = k, where F_kk = I: diag(r_k)·F_{k,k2}, a row scaling; for k = k2 diag(r_k) itself,
      // added to the diagonal of the other terms (a dense diagonal matrix, formed and added,
      // was two passes over an (N, H, H) array).
      if (k2 < k) {
        const at::Tensor term = r[k].unsqueeze(2) * F[k][k2];
        sum = sum.defined() ? sum + term : term;
      } else {  // k = k2 < L (N[L][L] is left unbuilt): the terms l > k are there
        sum.diagonal(0, 1, 2).add_(r[k]);
      }
      curvature[k][k2] = sum;
    }
  }
}

at::Tensor JacobianChain::E(int64_t m, int64_t k) const {
  return at::matmul(F[out][m].transpose(1, 2), at::matmul(c.S, F[out][k]));
}

at::Tensor JacobianChain::features_in(int64_t l) const {
  const at::Tensor& z = c.z[l - 1];
  return c.bias[l] ? at::cat({z, at::ones({N, 1}, z.options())}, 1) : z;
}

}  // namespace torch_ws
