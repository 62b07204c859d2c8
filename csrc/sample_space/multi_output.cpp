// The multi-output sample-space engine (docs/math.md §8): tr H, tr(H²) and their gradients for a
// head of C ≥ 2 logits (softmax cross-entropy, squared error), whose loss Hessian in the logits is
// a C×C matrix S_i per sample. Device-agnostic ATen: the pairwise sums run over T×T blocks of
// sample pairs as matrix products (each block's C×C logit blocks are one (T·C)×(T·C) product), so
// memory is O(N(D + C·H) + (T·C)²) and every device with ATen runs it.
//
// Three stages, as in the one-logit engine (sample_space.h): per-sample features; the pairwise
// sums with, for gradients, their adjoints with respect to the per-sample arrays; one chain from
// those adjoints to x, w1, b1, w2, b2, shared by tr H and tr(H²).
#include "multi_output.h"

#include <algorithm>

namespace torch_ws {
namespace {

using at::Tensor;

// Stage 1 (docs/math.md §8.2). Shapes: N samples, D inputs, H hidden units, C logits.
struct Features {
  Tensor x;                       // (N, D), contiguous
  Tensor phi0, phi1, phi2, phi3;  // φ^(k)(A), (N, H); phi3 only for gradients
  Tensor w2;                      // (C, H)
  OutputTerms terms;              // S (N, C, C), e (N, C): the loss in the logits (losses.h)
  Tensor S_flat;                  // (N, C²)
  Tensor U, SU;                   // U_i = W2 diag(φ'(a_i)) and S_i U_i, (N, C, H)
  Tensor omega;                   // Ω_ik = Σ_c U_ick (S_i U_i)_ck, (N, H)
  Tensor e_hidden, vt;            // ẽ_i = W2ᵀ e_i and ṽ_i = ẽ_i ∘ φ''(a_i), (N, H)
  Tensor lx, rx;                  // φ(a_ik)(S_i U_i)_ck and e_ic φ'(a_ik), flattened (N, C·H)
  bool has_b1, has_b2;

  int64_t num_samples() const { return x.size(0); }
  int64_t num_outputs() const { return w2.size(0); }
  int64_t hidden() const { return w2.size(1); }
};

Features features(const MlpProblem& p, bool for_gradients) {
  Features f;
  f.x = p.x.contiguous();
  f.w2 = p.w2.contiguous();
  const int64_t n = p.num_samples(), c = p.num_outputs(), h = p.hidden();
  Tensor pre = p.b1 ? at::addmm(*p.b1, f.x, p.w1.t()) : at::mm(f.x, p.w1.t());
  ActivationValues<Tensor> act = activation_values(p.activation, pre, for_gradients ? 3 : 2);
  f.phi0 = act.phi0.contiguous();
  f.phi1 = act.phi1.contiguous();
  f.phi2 = act.phi2.contiguous();
  f.phi3 = act.phi3;
  Tensor z = p.b2 ? at::addmm(*p.b2, f.phi0, f.w2.t()) : at::mm(f.phi0, f.w2.t());
  f.terms = output_terms(p.loss, z, p.target, p.loss_scale());
  f.terms.S = f.terms.S.contiguous();
  f.S_flat = f.terms.S.view({n, c * c});
  f.U = f.phi1.unsqueeze(1) * f.w2.unsqueeze(0);
  f.SU = at::bmm(f.terms.S, f.U);
  f.omega = (f.U * f.SU).sum(1);
  f.e_hidden = at::mm(f.terms.e, f.w2);
  f.vt = f.e_hidden * f.phi2;
  f.lx = (f.phi0.unsqueeze(1) * f.SU).view({n, c * h});
  f.rx = (f.terms.e.unsqueeze(2) * f.phi1.unsqueeze(1)).reshape({n, c * h});
  f.has_b1 = p.b1.has_value();
  f.has_b2 = p.b2.has_value();
  return f;
}

// The adjoints of one scalar with respect to the per-sample arrays of Features (undefined: zero).
struct Adjoints {
  Tensor x, phi0, phi1, U, SU, S, e, omega, vt, lx, rx;
};

Adjoints zero_adjoints(const Features& f, bool need_x) {
  auto zeros = [](const Tensor& like) { return at::zeros_like(like, at::MemoryFormat::Contiguous); };
  Adjoints a;
  if (need_x) a.x = zeros(f.x);
  a.phi0 = zeros(f.phi0);
  a.phi1 = zeros(f.phi1);
  a.U = zeros(f.U);
  a.SU = zeros(f.SU);
  a.S = zeros(f.terms.S);
  a.e = zeros(f.terms.e);
  a.omega = zeros(f.omega);
  a.vt = zeros(f.vt);
  a.lx = zeros(f.lx);
  a.rx = zeros(f.rx);
  return a;
}

// Rows [begin, begin + size) of a per-sample array, as a matrix with `columns` columns (a view).
struct Block {
  int64_t begin, size;
  Tensor of(const Tensor& t, int64_t columns) const {
    return t.narrow(0, begin, size).view({-1, columns});
  }
};

// A product P = A[I] B[J]ᵀ with adjoint P̄ sends P̄ B[J] to A's rows I and P̄ᵀ A[I] to B's rows J.
void product_adjoint(const Tensor& P_bar, const Tensor& A, const Tensor& B, Tensor& A_bar,
                     Tensor& B_bar, const Block& I, const Block& J, int64_t columns) {
  I.of(A_bar, columns).addmm_(P_bar, J.of(B, columns));
  J.of(B_bar, columns).addmm_(P_bar.t(), I.of(A, columns));
}

// Stage 2 for the blocks I ≤ J: adds Σ f(i, j) over i ∈ I, j ∈ J and, when I ≠ J, over i ∈ J,
// j ∈ I (docs/math.md §8.3), and with `a` its adjoints. Blocks of a symmetric Gram product serve
// both orders; the non-symmetric residual products X1, X2 are formed in both.
Tensor block_pair(const Features& f, const Block& I, const Block& J, Adjoints* a) {
  const int64_t c = f.num_outputs(), h = f.hidden(), d = f.x.size(1);
  const bool mirrored = I.begin != J.begin;
  const double w = mirrored ? 2.0 : 1.0;

  Tensor K = at::mm(I.of(f.x, d), J.of(f.x, d).t());
  if (f.has_b1) K.add_(1);
  Tensor R = at::mm(I.of(f.phi0, h), J.of(f.phi0, h).t());
  if (f.has_b2) R.add_(1);
  const Tensor T2 = at::mm(I.of(f.SU, c * h), J.of(f.SU, c * h).t());
  const Tensor T0 = at::mm(I.of(f.S_flat, c * c), J.of(f.S_flat, c * c).t());
  // M_IJ[i, c, j, d] = (S_i U_i)_c · (U_j)_d: every pair's S_i Q_ij in one product.
  const Tensor M_IJ = at::mm(I.of(f.SU, h), J.of(f.U, h).t()).view({I.size, c, J.size, c});
  const Tensor M_JI = mirrored
                          ? at::mm(J.of(f.SU, h), I.of(f.U, h).t()).view({J.size, c, I.size, c})
                          : M_IJ;
  const Tensor M_JI_t = M_JI.permute({2, 3, 0, 1});  // [i, c, j, d] = M_JI[j, d, i, c]
  const Tensor T4 = (M_IJ * M_JI_t).sum({1, 3});     // tr(S_i Q_ij S_j Q_ijᵀ)
  const Tensor P3 = at::mm(I.of(f.vt, h), J.of(f.vt, h).t());
  const Tensor E = at::mm(I.of(f.terms.e, c), J.of(f.terms.e, c).t());
  const Tensor P4 = at::mm(I.of(f.phi1, h), J.of(f.phi1, h).t());
  // X1, X2 for the pairs (i ∈ I, j ∈ J), plus, mirrored, those of (j, i) laid out as I × J.
  Tensor X1 = at::mm(I.of(f.omega, h), J.of(f.vt, h).t());
  Tensor X2 = at::mm(I.of(f.lx, c * h), J.of(f.rx, c * h).t());
  if (mirrored) {
    X1 = X1 + at::mm(I.of(f.vt, h), J.of(f.omega, h).t());
    X2 = X2 + at::mm(I.of(f.rx, c * h), J.of(f.lx, c * h).t());
  }

  const Tensor KK = K * K;
  const Tensor symmetric = KK * T4 + 2 * K * R * T2 + R * R * T0 + KK * P3 + 2 * K * E * P4;
  const Tensor value = (w * symmetric + 2 * KK * X1 + 4 * K * X2).sum(at::kDouble);
  if (a == nullptr) return value;

  // Reverse mode, upstream 1 (docs/math.md §8.4).
  const Tensor K_bar = w * (2 * K * T4 + 2 * R * T2 + 2 * K * P3 + 2 * E * P4) + 4 * K * X1 + 4 * X2;
  const Tensor R_bar = w * (2 * K * T2 + 2 * R * T0);
  const Tensor T4_bar = w * KK, X1_bar = 2 * KK, X2_bar = 4 * K;
  if (a->x.defined()) product_adjoint(K_bar, f.x, f.x, a->x, a->x, I, J, d);
  product_adjoint(R_bar, f.phi0, f.phi0, a->phi0, a->phi0, I, J, h);
  product_adjoint(2 * w * K * R, f.SU, f.SU, a->SU, a->SU, I, J, c * h);
  product_adjoint(w * R * R, f.S_flat, f.S_flat, a->S, a->S, I, J, c * c);
  product_adjoint(w * KK, f.vt, f.vt, a->vt, a->vt, I, J, h);
  product_adjoint(2 * w * K * P4, f.terms.e, f.terms.e, a->e, a->e, I, J, c);
  product_adjoint(2 * w * K * E, f.phi1, f.phi1, a->phi1, a->phi1, I, J, h);
  product_adjoint(X1_bar, f.omega, f.vt, a->omega, a->vt, I, J, h);
  product_adjoint(X2_bar, f.lx, f.rx, a->lx, a->rx, I, J, c * h);
  if (mirrored) {
    product_adjoint(X1_bar, f.vt, f.omega, a->vt, a->omega, I, J, h);
    product_adjoint(X2_bar, f.rx, f.lx, a->rx, a->lx, I, J, c * h);
  }
  // T4 = Σ_cd M_IJ[i,c,j,d] M_JI[j,d,i,c]: each M's adjoint is T̄4 times the other.
  const Tensor T4_bar_blocks = T4_bar.unsqueeze(1).unsqueeze(3);  // (I, 1, J, 1)
  const Tensor M_IJ_bar = (T4_bar_blocks * M_JI_t).reshape({I.size * c, J.size * c});
  product_adjoint(M_IJ_bar, f.SU, f.U, a->SU, a->U, I, J, h);
  if (mirrored) {
    const Tensor M_JI_bar =
        (T4_bar_blocks * M_IJ).permute({2, 3, 0, 1}).reshape({J.size * c, I.size * c});
    product_adjoint(M_JI_bar, f.SU, f.U, a->SU, a->U, J, I, h);
  } else {
    // One product serves both factors of T4 on the diagonal blocks: its adjoint counts twice.
    product_adjoint(M_IJ_bar, f.SU, f.U, a->SU, a->U, I, J, h);
  }
  return value;
}

// tr H = Σ_i k_i (Σ_k Ω_ik + Σ_k ṽ_ik) + r_i tr S_i (docs/math.md §8.3), and its adjoints.
struct Diagonal {
  Tensor k, r, trace_S, hidden_sum;  // hidden_sum_i = Σ_k (Ω_ik + ṽ_ik)
};
Diagonal diagonal(const Features& f) {
  Diagonal dg;
  dg.k = (f.x * f.x).sum(1) + (f.has_b1 ? 1 : 0);
  dg.r = (f.phi0 * f.phi0).sum(1) + (f.has_b2 ? 1 : 0);
  dg.trace_S = f.terms.S.diagonal(0, 1, 2).sum(1);
  dg.hidden_sum = f.omega.sum(1) + f.vt.sum(1);
  return dg;
}

Adjoints trace_adjoints(const Features& f, const Diagonal& dg, bool need_x) {
  Adjoints a;
  if (need_x) a.x = (2 * dg.hidden_sum).unsqueeze(1) * f.x;
  a.omega = dg.k.unsqueeze(1).expand_as(f.omega);
  a.vt = a.omega;
  a.S = dg.r.view({-1, 1, 1}) * at::eye(f.num_outputs(), f.x.options());
  a.phi0 = (2 * dg.trace_S).unsqueeze(1) * f.phi0;
  return a;
}

Tensor plus(const Tensor& sum, const Tensor& term) {
  return !term.defined() ? sum : !sum.defined() ? term : sum + term;
}

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
  // U = W2 diag(φ'(a)).
  if (a.U.defined()) {
    a.phi1 = plus(a.phi1, (a.U * f.w2.unsqueeze(0)).sum(1));
    w2_bar.add_((a.U * f.phi1.unsqueeze(1)).sum(0));
  }
  // S and e are functions of the logits z = φ(A) W2ᵀ + b2.
  const Tensor z_bar = output_terms_backward(p.loss, f.terms, a.S, a.e);
  a.phi0 = plus(a.phi0, at::mm(z_bar, f.w2));
  w2_bar.addmm_(z_bar.t(), f.phi0);
  // Φk = φ^(k)(A), A = X W1ᵀ + b1.
  Tensor pre_bar = a.phi0 * f.phi1;
  if (a.phi1.defined()) pre_bar = pre_bar + a.phi1 * f.phi2;
  if (phi2_bar.defined()) pre_bar = pre_bar + phi2_bar * f.phi3;
  InputGradients g;
  g.w1 = at::mm(pre_bar.t(), f.x);
  if (need_x) g.x = a.x.defined() ? at::addmm(a.x, pre_bar, p.w1) : at::mm(pre_bar, p.w1);
  if (p.b1) g.b1 = pre_bar.sum(0);
  g.w2 = w2_bar;
  if (p.b2) g.b2 = z_bar.sum(0);
  return g;
}

}  // namespace

TracesResult multi_output_traces(const MlpProblem& p, Gradients gradients, int64_t tile) {
  const bool with_gradients = gradients != Gradients::None;
  const bool need_x = gradients == Gradients::ParametersAndX;
  const Features f = features(p, with_gradients);
  const int64_t n = f.num_samples();
  TORCH_INTERNAL_ASSERT(tile >= 1, "multi_output_traces: tile ", tile);

  std::optional<Adjoints> pair_adjoints;
  if (with_gradients) pair_adjoints = zero_adjoints(f, need_x);
  Tensor trace_sq = at::zeros({}, f.x.options().dtype(at::kDouble));
  for (int64_t i0 = 0; i0 < n; i0 += tile) {
    const Block I{i0, std::min(tile, n - i0)};
    for (int64_t j0 = i0; j0 < n; j0 += tile) {
      const Block J{j0, std::min(tile, n - j0)};
      trace_sq.add_(block_pair(f, I, J, pair_adjoints ? &*pair_adjoints : nullptr));
    }
  }
  const Diagonal dg = diagonal(f);
  TracesResult out;
  out.trace = (dg.k * dg.hidden_sum + dg.r * dg.trace_S).sum(at::kDouble);
  out.trace_sq = trace_sq;
  if (with_gradients) {
    out.trace_grad = chain(p, f, trace_adjoints(f, dg, need_x), need_x);
    out.trace_sq_grad = chain(p, f, std::move(*pair_adjoints), need_x);
  }
  return out;
}

}  // namespace torch_ws
