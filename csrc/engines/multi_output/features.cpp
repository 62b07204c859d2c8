// Stages 1 and 3 of the engines for heads of C ≥ 2 logits (features.h, docs/math.md §8.2, §8.4).
#include "engines/multi_output/features.h"

namespace torch_ws::multi_output {

using at::Tensor;

Features features(const MlpProblem& p, bool for_gradients) {
  Features f;
  f.x = p.x.contiguous();
  f.w2 = p.w2().contiguous();
  const int64_t n = p.num_samples(), c = p.num_outputs(), h = p.hidden();
  Tensor pre = p.b1() ? at::addmm(*p.b1(), f.x, p.w1().t()) : at::mm(f.x, p.w1().t());
  ActivationValues<Tensor> act = activation_values(p.activation, pre, for_gradients ? 3 : 2);
  f.phi0 = act.phi0.contiguous();
  f.phi1 = act.phi1.contiguous();
  f.phi2 = act.phi2.contiguous();
  f.phi3 = act.phi3;
  Tensor z = p.b2() ? at::addmm(*p.b2(), f.phi0, f.w2.t()) : at::mm(f.phi0, f.w2.t());
  f.terms = output_terms(p.loss, z, p.target, p.loss_scale());
  f.terms.S = f.terms.S.contiguous();
  f.S_flat = f.terms.S.view({n, c * c});
  f.U = f.phi1.unsqueeze(1) * f.w2.unsqueeze(0);
  f.SU = at::bmm(f.terms.S, f.U);
  f.Y = factor_times(p.loss, f.terms, f.U);
  f.omega = (f.U * f.SU).sum(1);
  f.e_hidden = at::mm(f.terms.e, f.w2);
  f.vt = f.e_hidden * f.phi2;
  f.lx = (f.phi0.unsqueeze(1) * f.SU).view({n, c * h});
  f.rx = (f.terms.e.unsqueeze(2) * f.phi1.unsqueeze(1)).reshape({n, c * h});
  f.has_b1 = p.b1().has_value();
  f.has_b2 = p.b2().has_value();
  return f;
}

namespace {

Tensor plus(const Tensor& sum, const Tensor& term) {
  return !term.defined() ? sum : !sum.defined() ? term : sum + term;
}

}  // namespace

// Stage 3 (docs/math.md §8.4): from the per-sample adjoints to the inputs.
InputGradients chain(const MlpProblem& p, const Features& f, Adjoints a, bool need_x) {
  const int64_t n = f.num_samples(), c = f.num_outputs(), h = f.hidden();
  Tensor phi2_bar, w2_bar = at::zeros_like(f.w2);
  // lx = φ(a) ∘ SU and rx = e ⊗ φ'(a).
  if (a.lx.defined()) {
    const Tensor lx_bar = a.lx.view({n, c, h});
    a.phi0 = plus(a.phi0, (lx_bar * f.SU).sum(1));
    a.SU = plus(a.SU, lx_bar * f.phi0.unsqueeze(1));
  }
  if (a.rx.defined()) {
    const Tensor rx_bar = a.rx.view({n, c, h});
    a.e = plus(a.e, (rx_bar * f.phi1.unsqueeze(1)).sum(2));
    a.phi1 = plus(a.phi1, (rx_bar * f.terms.e.unsqueeze(2)).sum(1));
  }
  // Ω = Σ_c U ∘ SU.
  if (a.omega.defined()) {
    const Tensor omega_bar = a.omega.unsqueeze(1);
    a.U = plus(a.U, omega_bar * f.SU);
    a.SU = plus(a.SU, omega_bar * f.U);
  }
  // ṽ = ẽ ∘ φ''(a), ẽ = e W2.
  if (a.vt.defined()) {
    const Tensor e_hidden_bar = a.vt * f.phi2;
    phi2_bar = a.vt * f.e_hidden;
    a.e = plus(a.e, at::mm(e_hidden_bar, f.w2.t()));
    w2_bar.addmm_(f.terms.e.t(), e_hidden_bar);
  }
  // SU = S U (S symmetric).
  if (a.SU.defined()) {
    a.S = plus(a.S, at::bmm(a.SU, f.U.transpose(1, 2)));
    a.U = plus(a.U, at::bmm(f.terms.S, a.SU));
  }
  // Y = Lᵀ U, L a factor of S(z) (losses.h).
  Tensor z_bar_factor;
  if (a.Y.defined()) {
    FactorAdjoints factor = factor_times_backward(p.loss, f.terms, f.U, a.Y);
    a.U = plus(a.U, factor.U);
    z_bar_factor = factor.z;
  }
  // U = W2 diag(φ'(a)).
  if (a.U.defined()) {
    a.phi1 = plus(a.phi1, (a.U * f.w2.unsqueeze(0)).sum(1));
    w2_bar.add_((a.U * f.phi1.unsqueeze(1)).sum(0));
  }
  // S and e are functions of the logits z = φ(A) W2ᵀ + b2.
  const Tensor z_bar = plus(output_terms_backward(p.loss, f.terms, a.S, a.e), z_bar_factor);
  a.phi0 = plus(a.phi0, at::mm(z_bar, f.w2));
  w2_bar.addmm_(z_bar.t(), f.phi0);
  // Φk = φ^(k)(A), A = X W1ᵀ + b1.
  Tensor pre_bar = a.phi0 * f.phi1;
  if (a.phi1.defined()) pre_bar = pre_bar + a.phi1 * f.phi2;
  if (phi2_bar.defined()) pre_bar = pre_bar + phi2_bar * f.phi3;
  InputGradients g;
  g.w1 = at::mm(pre_bar.t(), f.x);
  if (need_x) g.x = a.x.defined() ? at::addmm(a.x, pre_bar, p.w1()) : at::mm(pre_bar, p.w1());
  if (p.b1()) g.b1 = pre_bar.sum(0);
  g.w2 = w2_bar;
  if (p.b2()) g.b2 = z_bar.sum(0);
  return g;
}

}  // namespace torch_ws::multi_output
