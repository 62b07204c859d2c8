// The hand-derived backward (math.md §6), stage 3: from the adjoints of tr(H²) with respect to
// the per-sample arrays (saved by the forward, see traces.h) and the diagonal formula of tr(H),
// through U, V, s, e, z and A to x, w1, b1, w2, b2. O(N(D+H)): no Gram matrix is recomputed.
#include "traces.h"

#include <cmath>

namespace torch_ws {

namespace {

MlpGrads chain_to_inputs(const MlpProblem& p, const at::Tensor& grad_trace,
                         const at::Tensor& grad_trace_sq, const at::Tensor& trace_sq_adjoints,
                         bool need_grad_x) {
  const SampleFeatures f = sample_features(p, /*for_backward=*/true);
  const at::Tensor& w2 = p.w2;
  const at::Tensor gt = grad_trace.to(p.x.scalar_type());
  const at::Tensor gq = grad_trace_sq.to(p.x.scalar_type());
  const TraceSqAdjoints a2 =
      TraceSqAdjoints::unpack(trace_sq_adjoints, p.w1.size(0), p.w1.size(1));

  // tr(H) = Σ_i s_i (k_i q_i + r_i) + e_i k_i v_i (see Diagonals); tr(H²)'s adjoints arrive
  // scaled by its upstream gradient.
  const auto [k, q, r, v] = diagonals(f);
  at::Tensor s_bar = gt * (k * q + r) + gq * a2.s;
  at::Tensor e_bar = gt * (k * v) + gq * a2.e;
  at::Tensor k_bar = gt * (f.s * q + f.e * v);
  at::Tensor U_bar = (2 * gt * f.s * k).unsqueeze(1) * f.U + gq * a2.U;
  at::Tensor phi0_bar = (2 * gt * f.s).unsqueeze(1) * f.phi0 + gq * a2.phi0;
  at::Tensor V_bar = (gt * f.e * k).unsqueeze(1) + gq * a2.V;

  // U = Φ1 diag(w2), V = Φ2 diag(w2).
  at::Tensor phi1_bar = gq * a2.phi1 + U_bar * w2;
  at::Tensor phi2_bar = V_bar * w2;
  at::Tensor w2_bar = (U_bar * f.phi1).sum(0) + (V_bar * f.phi2).sum(0);

  // s = c·y(1−y), e = c·(y − t), y = σ(z): ds/dz = c·y(1−y)(1−2y), de/dz = c·y(1−y) = s.
  at::Tensor z_bar = f.s * ((1 - 2 * f.y) * s_bar + e_bar);

  // z = Φ0 w2ᵀ + b2.
  phi0_bar = phi0_bar + z_bar.unsqueeze(1) * w2;
  w2_bar = w2_bar + at::mv(f.phi0.t(), z_bar);

  // Φk = φ^(k)(A), A = X W1ᵀ + b1.
  at::Tensor pre_bar = phi0_bar * f.phi1 + phi1_bar * f.phi2 + phi2_bar * f.phi3;
  at::Tensor w1_bar = at::mm(pre_bar.t(), f.x);
  at::Tensor x_bar = at::empty({0}, p.x.options());
  if (need_grad_x) {
    // K_ij = x_i·x_j (+1): the diagonal of tr(H) gives 2k̄_i x_i, tr(H²) its saved X adjoint.
    x_bar = at::mm(pre_bar, p.w1) + (2 * k_bar).unsqueeze(1) * f.x + gq * a2.x;
  }
  at::Tensor b1_bar = p.b1 ? pre_bar.sum(0) : at::empty({0}, p.x.options());
  at::Tensor b2_bar = p.b2 ? z_bar.sum().reshape({1}) : at::empty({0}, p.x.options());
  return {x_bar, w1_bar, b1_bar, w2_bar.reshape({1, -1}), b2_bar};
}

}  // namespace

MlpGrads hessian_traces_backward_kernel(
    const at::Tensor& grad_trace, const at::Tensor& grad_trace_sq,
    const at::Tensor& trace_sq_adjoints, const at::Tensor& x, const at::Tensor& target,
    const at::Tensor& w1, const std::optional<at::Tensor>& b1, const at::Tensor& w2,
    const std::optional<at::Tensor>& b2, c10::string_view activation, c10::string_view reduction,
    bool need_grad_x) {
  MlpProblem p = check_problem("torch_ws._hessian_traces_backward", x, target, w1, b1, w2, b2,
                               activation, reduction, /*check_values=*/false);
  return chain_to_inputs(p, grad_trace, grad_trace_sq, trace_sq_adjoints, need_grad_x);
}

MlpGrads ws_bound_backward_kernel(
    const at::Tensor& grad_bound, const at::Tensor& trace, const at::Tensor& trace_sq,
    const at::Tensor& trace_sq_adjoints, const at::Tensor& x, const at::Tensor& target,
    const at::Tensor& w1, const std::optional<at::Tensor>& b1, const at::Tensor& w2,
    const std::optional<at::Tensor>& b2, c10::string_view activation, c10::string_view reduction,
    bool need_grad_x) {
  MlpProblem p = check_problem("torch_ws._ws_bound_backward", x, target, w1, b1, w2, b2,
                               activation, reduction, /*check_values=*/false);
  const auto [d_trace, d_trace_sq] = bound_trace_grads(
      grad_bound.to(at::kDouble), trace.to(at::kDouble), trace_sq.to(at::kDouble), p.num_params());
  return chain_to_inputs(p, d_trace, d_trace_sq, trace_sq_adjoints, need_grad_x);
}

}  // namespace torch_ws
