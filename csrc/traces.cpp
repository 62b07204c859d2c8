// Forward: tr(H), tr(H²) and the Wolkowicz-Styan bound in closed form (math.md §2, §4, §5).
#include "traces.h"

#include <cmath>

namespace torch_ws {

Intermediates compute_intermediates(const MlpProblem& p, bool for_backward) {
  Intermediates f;
  const at::Tensor& x = p.x;
  const at::Tensor& w2 = p.w2;  // (H,)

  // A = X W1ᵀ + b1, then φ and its derivatives (φ''' only for the backward's chain through Φ2).
  at::Tensor pre = p.b1 ? at::addmm(*p.b1, x, p.w1.t()) : at::mm(x, p.w1.t());
  ActivationValues act = activation_values(p.activation, pre, for_backward ? 3 : 2);
  f.phi0 = act.phi0;
  f.phi1 = act.phi1;
  f.phi2 = act.phi2;
  f.phi3 = act.phi3;
  f.U = f.phi1 * w2;
  f.V = f.phi2 * w2;

  // §2: z = Φ0 w2ᵀ + b2; s and e are the loss's second and first derivatives in the logit.
  at::Tensor z = at::mv(f.phi0, w2);
  if (p.b2) z = z + *p.b2;
  f.scale = p.reduction == Reduction::Mean ? 1.0 / static_cast<double>(p.num_samples()) : 1.0;
  f.y = at::sigmoid(z);
  f.s = f.scale * (f.y * at::sigmoid(-z));  // σ(z)σ(−z): no cancellation when σ saturates
  f.e = f.scale * (f.y - p.target);

  // §2 Gram matrices; the bias "1" is the constant input that a bias multiplies.
  f.K = at::mm(x, x.t());
  if (p.b1) f.K.add_(1);
  f.Q = at::mm(f.U, f.U.t());
  f.R = at::mm(f.phi0, f.phi0.t());
  if (p.b2) f.R.add_(1);
  f.G = f.K * f.Q + f.R;

  // §4: the residual terms of tr(H²).
  f.P1 = at::mm(f.U * f.U, f.V.t());
  f.P2 = at::mm(f.U * f.phi0, f.phi1.t());
  f.P3 = at::mm(f.V, f.V.t());
  f.P4 = at::mm(f.phi1, f.phi1.t());
  f.KK = f.K * f.K;
  f.B = f.KK * f.P1 + 2 * f.K * f.P2;
  f.C = f.KK * f.P3 + 2 * f.K * f.P4;
  return f;
}

std::tuple<at::Tensor, at::Tensor> traces_float64(const Intermediates& f) {
  // §4: tr(H) = Σ_i s_i G_ii + e_i K_ii (Φ2 w2ᵀ)_i
  at::Tensor trace =
      (f.s * f.G.diagonal() + f.e * f.K.diagonal() * f.V.sum(1)).sum(at::kDouble);
  // §4: tr(H²) = sᵀ(G∘G)s + 2sᵀBe + eᵀCe, summed entry by entry in float64.
  at::Tensor s_col = f.s.unsqueeze(1), s_row = f.s.unsqueeze(0);
  at::Tensor e_col = f.e.unsqueeze(1), e_row = f.e.unsqueeze(0);
  at::Tensor integrand = s_col * (f.G * f.G * s_row + 2 * f.B * e_row) + e_col * f.C * e_row;
  at::Tensor trace_sq = integrand.sum(at::kDouble);
  return {trace, trace_sq};
}

at::Tensor ws_upper_bound_float64(const at::Tensor& trace, const at::Tensor& trace_sq,
                                  int64_t num_params) {
  // §5: m = tr/n, s² = tr(H²)/n − m² (clamped: rounding can make it slightly negative).
  const double n = static_cast<double>(num_params);
  at::Tensor mean = trace / n;
  at::Tensor spread = (trace_sq / n - mean * mean).clamp_min(0).sqrt();
  return mean + std::sqrt(n - 1) * spread;
}

std::tuple<at::Tensor, at::Tensor> hessian_traces_kernel(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction) {
  MlpProblem p = check_problem("torch_ws.hessian_traces", x, target, w1, b1, w2, b2, activation,
                               reduction);
  auto [trace, trace_sq] = traces_float64(compute_intermediates(p, /*for_backward=*/false));
  return {trace.to(x.scalar_type()), trace_sq.to(x.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ws_bound_with_traces_kernel(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction) {
  MlpProblem p =
      check_problem("torch_ws.ws_bound", x, target, w1, b1, w2, b2, activation, reduction);
  auto [trace, trace_sq] = traces_float64(compute_intermediates(p, /*for_backward=*/false));
  at::Tensor bound = ws_upper_bound_float64(trace, trace_sq, p.num_params());
  return {bound.to(x.scalar_type()), trace, trace_sq};
}

at::Tensor ws_bound_kernel(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                           const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                           const std::optional<at::Tensor>& b2, c10::string_view activation,
                           c10::string_view reduction) {
  return std::get<0>(
      ws_bound_with_traces_kernel(x, target, w1, b1, w2, b2, activation, reduction));
}

}  // namespace torch_ws
