// The hand-derived backward of tr(H) and tr(H²) (math.md §6): reverse mode, written out, through
// every step of compute_intermediates. Each Gram product P = L Rᵀ sends back L̄ = P̄R and R̄ = P̄ᵀL;
// each elementwise product sends the adjoint times its partner.
#include "traces.h"

#include <cmath>

namespace torch_ws {

namespace {

// Adjoints of grad_trace·tr(H) + grad_trace_sq·tr(H²) with respect to every parameter.
MlpGrads traces_backward(const MlpProblem& p, const at::Tensor& grad_trace,
                         const at::Tensor& grad_trace_sq, bool need_grad_x) {
  const Intermediates f = compute_intermediates(p, /*for_backward=*/true);
  const at::Tensor& x = p.x;
  const at::Tensor& w2 = p.w2;
  const at::Tensor gt = grad_trace.to(x.scalar_type());
  const at::Tensor gq = grad_trace_sq.to(x.scalar_type());

  // tr(H) = Σ_i s_i (k_i q_i + r_i) + e_i k_i v_i, with k = diag K, q = diag Q, r = diag R,
  // v = rowsum V: only diagonals, so its adjoints are per-sample.
  at::Tensor k = f.K.diagonal(), q = f.Q.diagonal(), r = f.R.diagonal(), v = f.V.sum(1);
  at::Tensor s_bar = gt * (k * q + r);
  at::Tensor e_bar = gt * (k * v);
  at::Tensor k_bar = gt * (f.s * q + f.e * v);
  at::Tensor U_bar = (2 * gt * f.s * k).unsqueeze(1) * f.U;           // q_i = ‖U_i‖²
  at::Tensor phi0_bar = (2 * gt * f.s).unsqueeze(1) * f.phi0;         // r_i = ‖Φ0_i‖² + [b2]
  at::Tensor V_bar = (gt * f.e * k).unsqueeze(1).expand_as(f.V).clone();

  // tr(H²) = Σ_ij s_i s_j G_ij² + 2 s_i B_ij e_j + e_i C_ij e_j.
  at::Tensor s_col = f.s.unsqueeze(1), s_row = f.s.unsqueeze(0);
  at::Tensor e_col = f.e.unsqueeze(1), e_row = f.e.unsqueeze(0);
  s_bar = s_bar + 2 * gq * (at::mv(f.G * f.G, f.s) + at::mv(f.B, f.e));
  e_bar = e_bar + 2 * gq * (at::mv(f.B.t(), f.s) + at::mv(f.C, f.e));  // C is symmetric
  at::Tensor G_bar = 2 * gq * (s_col * f.G * s_row);  // symmetric
  at::Tensor B_bar = 2 * gq * (s_col * e_row);         // not symmetric
  at::Tensor C_bar = gq * (e_col * e_row);             // symmetric

  // G = K∘Q + R;  B = KK∘P1 + 2K∘P2;  C = KK∘P3 + 2K∘P4 (KK = K∘K).
  at::Tensor K_bar = G_bar * f.Q + 2 * B_bar * (f.K * f.P1 + f.P2) +
                     2 * C_bar * (f.K * f.P3 + f.P4);
  at::Tensor Q_bar = G_bar * f.K;                // symmetric
  const at::Tensor& R_bar = G_bar;               // symmetric
  at::Tensor P1_bar = B_bar * f.KK;
  at::Tensor P2_bar = 2 * B_bar * f.K;
  at::Tensor P3_bar = C_bar * f.KK;              // symmetric
  at::Tensor P4_bar = 2 * C_bar * f.K;           // symmetric

  // Q = UUᵀ, R = Φ0Φ0ᵀ (+1), P1 = (U∘U)Vᵀ, P2 = (U∘Φ0)Φ1ᵀ, P3 = VVᵀ, P4 = Φ1Φ1ᵀ.
  at::Tensor P2_bar_phi1 = at::mm(P2_bar, f.phi1);
  U_bar = U_bar + 2 * at::mm(Q_bar, f.U) + 2 * f.U * at::mm(P1_bar, f.V) + f.phi0 * P2_bar_phi1;
  V_bar = V_bar + at::mm(P1_bar.t(), f.U * f.U) + 2 * at::mm(P3_bar, f.V);
  phi0_bar = phi0_bar + 2 * at::mm(R_bar, f.phi0) + f.U * P2_bar_phi1;
  at::Tensor phi1_bar = at::mm(P2_bar.t(), f.U * f.phi0) + 2 * at::mm(P4_bar, f.phi1);

  // U = Φ1 diag(w2), V = Φ2 diag(w2).
  phi1_bar = phi1_bar + U_bar * w2;
  at::Tensor phi2_bar = V_bar * w2;
  at::Tensor w2_bar = (U_bar * f.phi1).sum(0) + (V_bar * f.phi2).sum(0);

  // s = c·y(1−y), e = c·(y − t), y = σ(z):  ds/dz = c·y(1−y)(1−2y),  de/dz = c·y(1−y).
  // f.s already holds c·y(1−y), computed without cancellation.
  at::Tensor z_bar = f.s * ((1 - 2 * f.y) * s_bar + e_bar);

  // z = Φ0 w2ᵀ + b2.
  phi0_bar = phi0_bar + z_bar.unsqueeze(1) * w2;
  w2_bar = w2_bar + at::mv(f.phi0.t(), z_bar);

  // Φk = φ^(k)(A), A = X W1ᵀ + b1.
  at::Tensor pre_bar = phi0_bar * f.phi1 + phi1_bar * f.phi2 + phi2_bar * f.phi3;
  at::Tensor w1_bar = at::mm(pre_bar.t(), x);

  at::Tensor x_bar = at::empty({0}, x.options());
  if (need_grad_x) {
    // K = XXᵀ (+1): X̄ = (K̄ + K̄ᵀ)X; the tr(H) part of K̄ is diagonal.
    at::Tensor K_sym = K_bar + K_bar.t();
    K_sym.diagonal().add_(2 * k_bar);
    x_bar = at::mm(pre_bar, p.w1) + at::mm(K_sym, x);
  }
  at::Tensor b1_bar = p.b1 ? pre_bar.sum(0) : at::empty({0}, x.options());
  at::Tensor b2_bar = p.b2 ? z_bar.sum().reshape({1}) : at::empty({0}, x.options());
  return {x_bar, w1_bar, b1_bar, w2_bar.reshape({1, -1}), b2_bar};
}

}  // namespace

MlpGrads hessian_traces_backward_kernel(
    const at::Tensor& grad_trace, const at::Tensor& grad_trace_sq, const at::Tensor& x,
    const at::Tensor& target, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
    const at::Tensor& w2, const std::optional<at::Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, bool need_grad_x) {
  MlpProblem p = check_problem("torch_ws._hessian_traces_backward", x, target, w1, b1, w2, b2,
                               activation, reduction, /*check_values=*/false);
  return traces_backward(p, grad_trace, grad_trace_sq, need_grad_x);
}

MlpGrads ws_bound_backward_kernel(
    const at::Tensor& grad_bound, const at::Tensor& trace, const at::Tensor& trace_sq,
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction, bool need_grad_x) {
  MlpProblem p = check_problem("torch_ws._ws_bound_backward", x, target, w1, b1, w2, b2,
                               activation, reduction, /*check_values=*/false);
  // §6: λ = m + √(n−1)·s, so ∂λ/∂tr = 1/n − √(n−1)·m/(n·s) and ∂λ/∂tr(H²) = √(n−1)/(2n·s).
  // Where s = 0 the bound is m and we use the gradient of m: (1/n, 0).
  const double n = static_cast<double>(p.num_params());
  at::Tensor mean = trace.to(at::kDouble) / n;
  at::Tensor spread_sq = trace_sq.to(at::kDouble) / n - mean * mean;
  at::Tensor positive = spread_sq > 0;
  at::Tensor spread = at::where(positive, spread_sq, at::ones_like(spread_sq)).sqrt();
  const double root = std::sqrt(n - 1);
  at::Tensor d_trace = at::where(positive, 1 / n - root * mean / (n * spread),
                                 at::full_like(spread, 1 / n));
  at::Tensor d_trace_sq =
      at::where(positive, root / (2 * n * spread), at::zeros_like(spread));
  at::Tensor g = grad_bound.to(at::kDouble);
  return traces_backward(p, g * d_trace, g * d_trace_sq, need_grad_x);
}

}  // namespace torch_ws
