// The parameter-space engine for heads of C ≥ 2 logits (docs/math.md §8.5): the n×n Hessian
//
//     H = Σ_i J_iᵀ S_i J_i + R,    R = Σ_i Σ_c e_ic ∇²_θ z_ic,
//
// assembled from the per-sample Jacobians J_i = ∂z_i/∂θ (C × n) and the sparse blocks of R, and
// tr H and tr(H²) = ‖H‖²_F read off it. O(N·C·n²) work and O(N·C·n + n²) memory: for a small
// network less than the pairwise sums' O(N²·C²·H), and in any case an evaluation order
// independent of the sample-space engine's, which the tests hold the two against.
//
// Gradients (docs/math.md §6, §8.5): for L = ḡ_tr·tr H + ḡ_sq·tr(H²), ∂L/∂H = H̄ = ḡ_tr·I + 2ḡ_sq·H,
// so the reverse mode of the assembly with H̄ = I (tr H) and H̄ = 2H (tr(H²)) gives the adjoints
// with respect to the per-sample arrays, and the chain of features.cpp takes them to the inputs.
//
// Runs in float64 whatever the input dtype, as the one-logit parameter engine does (n is small, and
// the assembled Hessian's sums over N·C rows then lose nothing); gradients come back in the input
// dtype.
#include "multi_output/engines.h"
#include "multi_output/features.h"

namespace torch_ws::multi_output {
namespace {

using at::Tensor;

// θ's layout: hidden unit k's row of W̃1 = [W1_k, b1_k] (D̃ = D + [b1] entries) at k·D̃, then W2
// (C × H, row-major), then b2. The traces do not depend on the order; in this one each block of R
// is a diagonal of a reshaped block of H (the views below).
struct Layout {
  int64_t N, C, H, D, D_ext, w2_offset, b2_offset, n;
  explicit Layout(const Features& f)
      : N(f.num_samples()),
        C(f.num_outputs()),
        H(f.hidden()),
        D(f.x.size(1)),
        D_ext(D + (f.has_b1 ? 1 : 0)),
        w2_offset(H * D_ext),
        b2_offset(w2_offset + C * H),
        n(b2_offset + (f.has_b2 ? C : 0)) {}
};

// Views of an n×n matrix M on the blocks that R occupies:
//   (D̃, D̃, H): [d, d', k] = M[W̃1_kd, W̃1_kd']    (hidden unit k's own W̃1 block)
Tensor w1_own_blocks(const Tensor& M, const Layout& L) {
  const int64_t rows = L.H * L.D_ext;
  return M.narrow(0, 0, rows).narrow(1, 0, rows).view({L.H, L.D_ext, L.H, L.D_ext}).diagonal(0, 0, 2);
}
//   (D̃, C, H): [d, c, k] = M[W̃1_kd, W2_ck]         (unit k's W̃1 row with its outgoing weights)
Tensor w1_w2_blocks(const Tensor& M, const Layout& L) {
  return M.narrow(0, 0, L.H * L.D_ext)
      .narrow(1, L.w2_offset, L.C * L.H)
      .view({L.H, L.D_ext, L.C, L.H})
      .diagonal(0, 0, 3);
}
//   (C, D̃, H): [c, d, k] = M[W2_ck, W̃1_kd]         (the mirror of the above)
Tensor w2_w1_blocks(const Tensor& M, const Layout& L) {
  return M.narrow(0, L.w2_offset, L.C * L.H)
      .narrow(1, 0, L.H * L.D_ext)
      .view({L.C, L.H, L.H, L.D_ext})
      .diagonal(0, 1, 2);
}

// J (N, C, n): ∂z_ic/∂W̃1_kd = U_ick x̃_id, ∂z_ic/∂W2_c'k = δ_cc' φ(a_ik), ∂z_ic/∂b2_c' = δ_cc'.
Tensor jacobian(const Features& f, const Tensor& x_ext, const Layout& L) {
  Tensor J = at::zeros({L.N, L.C, L.n}, x_ext.options());
  J.narrow(2, 0, L.H * L.D_ext)
      .view({L.N, L.C, L.H, L.D_ext})
      .copy_(f.U.unsqueeze(3) * x_ext.view({L.N, 1, 1, L.D_ext}));
  J.narrow(2, L.w2_offset, L.C * L.H)
      .view({L.N, L.C, L.C, L.H})
      .diagonal(0, 1, 2)  // (N, H, C)
      .copy_(f.phi0.unsqueeze(2).expand({L.N, L.H, L.C}));
  if (f.has_b2) J.narrow(2, L.b2_offset, L.C).diagonal(0, 1, 2).fill_(1);
  return J;
}

// H = Σ_i J_iᵀ S_i J_i plus R's blocks (docs/math.md §8.5): ∇²z_ic couples W̃1_k only with itself,
// through e_ic W2_ck φ''(a_ik) x̃_i x̃_iᵀ (summed over c: ṽ_ik x̃_i x̃_iᵀ), and with W2_ck, through
// e_ic φ'(a_ik) x̃_i.
Tensor assemble(const Features& f, const Tensor& x_ext, const Tensor& J, const Layout& L) {
  const Tensor rows = J.view({L.N * L.C, L.n});
  Tensor hessian = at::mm(rows.t(), at::bmm(f.terms.S, J).view({L.N * L.C, L.n}));
  // (H, D̃, N) · (N, D̃) and (N, C): unit k's Σ_i ṽ_ik x̃_i x̃_iᵀ and Σ_i φ'(a_ik) x̃_i e_iᵀ.
  const Tensor own = at::matmul((f.vt.t().unsqueeze(2) * x_ext).transpose(1, 2), x_ext);
  const Tensor cross = at::matmul((f.phi1.t().unsqueeze(2) * x_ext).transpose(1, 2), f.terms.e);
  w1_own_blocks(hessian, L).add_(own.permute({1, 2, 0}));
  w1_w2_blocks(hessian, L).add_(cross.permute({1, 2, 0}));
  w2_w1_blocks(hessian, L).add_(cross.permute({2, 1, 0}));
  return hessian;
}

// The adjoints of ⟨H̄, H⟩ with respect to the per-sample arrays, for a symmetric H̄ (undefined:
// the identity, whose products are skipped).
Adjoints assembly_adjoints(const Features& f, const Tensor& x_ext, const Tensor& J,
                           const Layout& L, const Tensor& hessian_bar, bool need_x) {
  const bool identity = !hessian_bar.defined();
  Adjoints a;
  // Σ_i J_iᵀ S_i J_i: S̄_i = J_i H̄ J_iᵀ, J̄_i = 2 S_i J_i H̄.
  const Tensor JH =
      identity ? J : at::mm(J.view({L.N * L.C, L.n}), hessian_bar).view({L.N, L.C, L.n});
  a.S = at::bmm(JH, J.transpose(1, 2));
  const Tensor J_bar = 2 * at::bmm(f.terms.S, JH);
  // Through J's blocks U_ick x̃_i and δ_cc' φ(a_ik).
  const Tensor J_bar_w1 = J_bar.narrow(2, 0, L.H * L.D_ext).reshape({L.N, L.C * L.H, L.D_ext});
  a.U = at::bmm(J_bar_w1, x_ext.unsqueeze(2)).view({L.N, L.C, L.H});
  Tensor x_ext_bar = at::bmm(f.U.reshape({L.N, 1, L.C * L.H}), J_bar_w1).view({L.N, L.D_ext});
  a.phi0 = J_bar.narrow(2, L.w2_offset, L.C * L.H)
               .view({L.N, L.C, L.C, L.H})
               .diagonal(0, 1, 2)
               .sum(2);
  // R's own blocks Σ_i ṽ_ik x̃_i x̃_iᵀ against B_k = H̄'s (W̃1_k, W̃1_k) block: ṽ̄_ik = x̃_iᵀB_k x̃_i.
  const Tensor own_bar = identity ? at::eye(L.D_ext, x_ext.options()).expand({L.H, L.D_ext, L.D_ext})
                                  : w1_own_blocks(hessian_bar, L).permute({2, 0, 1});
  const Tensor own_x = at::matmul(x_ext, own_bar);  // (H, N, D̃): B_k x̃_i
  a.vt = (own_x * x_ext).sum(2).t();
  x_ext_bar.add_(2 * (f.vt.t().unsqueeze(2) * own_x).sum(0));
  // R's cross blocks Σ_i e_ic φ'(a_ik) x̃_i sit at (W̃1_k, W2_ck) and at its mirror: both H̄ entries.
  if (!identity) {
    const Tensor cross_bar = 2 * w1_w2_blocks(hessian_bar, L).permute({2, 0, 1});  // (H, D̃, C)
    a.rx = at::matmul(x_ext, cross_bar).permute({1, 2, 0}).reshape({L.N, L.C * L.H});
    const Tensor rx = f.rx.view({L.N, L.C, L.H}).permute({2, 0, 1});  // (H, N, C)
    x_ext_bar.add_(at::matmul(rx, cross_bar.transpose(1, 2)).sum(0));
  }
  if (need_x) a.x = x_ext_bar.narrow(1, 0, L.D);
  return a;
}

MlpProblem in_float64(const MlpProblem& p) {
  auto as_double = [](const Tensor& t) { return t.to(at::kDouble); };
  MlpProblem q = p;
  q.x = as_double(p.x);
  q.target = as_double(p.target);
  q.w1 = as_double(p.w1);
  q.w2 = as_double(p.w2);
  if (p.b1) q.b1 = as_double(*p.b1);
  if (p.b2) q.b2 = as_double(*p.b2);
  return q;
}

InputGradients in_dtype(InputGradients g, at::ScalarType dtype) {
  for (Tensor* t : {&g.x, &g.w1, &g.b1, &g.w2, &g.b2}) {
    if (t->defined()) *t = t->to(dtype);
  }
  return g;
}

}  // namespace

TracesResult parameter_space_traces(const MlpProblem& p, Gradients gradients) {
  const bool with_gradients = gradients != Gradients::None;
  const bool need_x = gradients == Gradients::ParametersAndX;
  const MlpProblem q = in_float64(p);
  const Features f = features(q, with_gradients);
  const Layout L(f);
  const Tensor x_ext =
      f.has_b1 ? at::cat({f.x, at::ones({L.N, 1}, f.x.options())}, 1) : f.x;
  const Tensor J = jacobian(f, x_ext, L);
  const Tensor hessian = assemble(f, x_ext, J, L);
  TracesResult out;
  out.trace = hessian.diagonal().sum();
  out.trace_sq = (hessian * hessian).sum();
  if (with_gradients) {
    const at::ScalarType dtype = p.x.scalar_type();
    // H̄ = 2H for tr(H²), symmetrized: the assembled H is symmetric only up to rounding.
    const Tensor twice_hessian = hessian + hessian.t();
    out.trace_grad = in_dtype(chain(q, f, assembly_adjoints(f, x_ext, J, L, Tensor(), need_x), need_x), dtype);
    out.trace_sq_grad = in_dtype(
        chain(q, f, assembly_adjoints(f, x_ext, J, L, twice_hessian, need_x), need_x), dtype);
  }
  return out;
}

}  // namespace torch_ws::multi_output
