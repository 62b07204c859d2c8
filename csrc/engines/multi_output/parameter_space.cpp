// The parameter-space engine for heads of C ≥ 2 logits (docs/math.md §8.5): the n×n Hessian
//
//     H = Σ_i J_iᵀ S_i J_i + R,    R = Σ_i Σ_c e_ic ∇²_θ z_ic,
//
// assembled from the per-sample Jacobians J_i = ∂z_i/∂θ (C × n) and the sparse blocks of R, and
// tr H and tr(H²) = ‖H‖²_F read off it. O(N·C·n²) work and O(n² + N(D + C·H)) memory: the
// Jacobians go through in chunks of samples. For a small network that is less work than the
// pairwise sums' O(N²·C²·H), and in any case an evaluation order independent of the sample-space
// engine's, which the tests hold the two against.
//
// Gradients (docs/math.md §6, §8.5): for L = ḡ_tr·tr H + ḡ_sq·tr(H²), ∂L/∂H = H̄ = ḡ_tr·I + 2ḡ_sq·H,
// so the reverse mode of the assembly with H̄ = I (tr H) and H̄ = 2H (tr(H²)) gives the adjoints
// with respect to the per-sample arrays, and the chain of features.cpp takes them to the inputs.
//
// Runs in float64 whatever the input dtype, as the one-logit parameter engine does (n is small, and
// the assembled Hessian's sums over N·C rows then lose nothing); gradients come back in the input
// dtype.
#include "engines/multi_output/engines.h"
#include "engines/multi_output/features.h"

#include <algorithm>
#include <vector>

namespace torch_ws::multi_output {
namespace {

using at::Tensor;

// θ's layout: hidden unit k's row of W̃1 = [W1_k, b1_k] (D̃ = D + [b1] entries) at k·D̃, then W2
// (C × H, row-major), then b2. The traces do not depend on the order; in this one each block of R
// is a diagonal of a reshaped block of H (the views below).
struct Layout {
  int64_t C, H, D, D_ext, w2_offset, b2_offset, n;
  bool has_b2;
  explicit Layout(const Features& f)
      : C(f.num_outputs()),
        H(f.hidden()),
        D(f.x.size(1)),
        D_ext(D + (f.has_b1 ? 1 : 0)),
        w2_offset(H * D_ext),
        b2_offset(w2_offset + C * H),
        n(b2_offset + (f.has_b2 ? C : 0)),
        has_b2(f.has_b2) {}
};

// The per-sample arrays this engine reads, for a run of samples: the passes go through the samples
// in chunks, so that the Jacobians (C·n per sample) never exist for all N at once.
struct Rows {
  Tensor x_ext;      // x̃ (rows, D̃)
  Tensor U;          // (rows, C, H)
  Tensor phi0, phi1; // (rows, H)
  Tensor vt;         // ṽ (rows, H)
  Tensor S, e;       // (rows, C, C), (rows, C)
  Tensor rx;         // e_ic φ'(a_ik), (rows, C·H)

  int64_t size() const { return x_ext.size(0); }
  Rows narrow(int64_t begin, int64_t count) const {
    return {x_ext.narrow(0, begin, count), U.narrow(0, begin, count),
            phi0.narrow(0, begin, count), phi1.narrow(0, begin, count),
            vt.narrow(0, begin, count),    S.narrow(0, begin, count),
            e.narrow(0, begin, count),     rx.narrow(0, begin, count)};
  }
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

// J (rows, C, n): ∂z_ic/∂W̃1_kd = U_ick x̃_id, ∂z_ic/∂W2_c'k = δ_cc' φ(a_ik), ∂z_ic/∂b2_c' = δ_cc'.
Tensor jacobian(const Rows& r, const Layout& L) {
  const int64_t N = r.size();
  Tensor J = at::zeros({N, L.C, L.n}, r.x_ext.options());
  J.narrow(2, 0, L.H * L.D_ext)
      .view({N, L.C, L.H, L.D_ext})
      .copy_(r.U.unsqueeze(3) * r.x_ext.view({N, 1, 1, L.D_ext}));
  J.narrow(2, L.w2_offset, L.C * L.H)
      .view({N, L.C, L.C, L.H})
      .diagonal(0, 1, 2)  // (N, H, C)
      .copy_(r.phi0.unsqueeze(2).expand({N, L.H, L.C}));
  if (L.has_b2) J.narrow(2, L.b2_offset, L.C).diagonal(0, 1, 2).fill_(1);
  return J;
}

// Adds the chunk's share of H = Σ_i J_iᵀ S_i J_i + R (docs/math.md §8.5): ∇²z_ic couples W̃1_k
// only with itself, through e_ic W2_ck φ''(a_ik) x̃_i x̃_iᵀ (summed over c: ṽ_ik x̃_i x̃_iᵀ), and
// with W2_ck, through e_ic φ'(a_ik) x̃_i.
void add_to_hessian(Tensor& hessian, const Rows& r, const Layout& L) {
  const int64_t N = r.size();
  const Tensor J = jacobian(r, L);
  hessian.addmm_(J.view({N * L.C, L.n}).t(), at::bmm(r.S, J).view({N * L.C, L.n}));
  // (H, D̃, N) · (N, D̃) and (N, C): unit k's Σ_i ṽ_ik x̃_i x̃_iᵀ and Σ_i φ'(a_ik) x̃_i e_iᵀ.
  const Tensor own = at::matmul((r.vt.t().unsqueeze(2) * r.x_ext).transpose(1, 2), r.x_ext);
  const Tensor cross = at::matmul((r.phi1.t().unsqueeze(2) * r.x_ext).transpose(1, 2), r.e);
  w1_own_blocks(hessian, L).add_(own.permute({1, 2, 0}));
  w1_w2_blocks(hessian, L).add_(cross.permute({1, 2, 0}));
  w2_w1_blocks(hessian, L).add_(cross.permute({2, 1, 0}));
}

// The adjoints of ⟨H̄, H⟩ with respect to the chunk's per-sample arrays, for a symmetric H̄
// (undefined: the identity, whose products are skipped), written into the chunk's rows of `a`
// (x̃'s into x_ext_bar).
void assembly_adjoints(const Rows& r, const Layout& L, const Tensor& hessian_bar, Adjoints& a,
                       Tensor x_ext_bar) {
  const int64_t N = r.size();
  const bool identity = !hessian_bar.defined();
  const Tensor J = jacobian(r, L);
  // Σ_i J_iᵀ S_i J_i: S̄_i = J_i H̄ J_iᵀ, J̄_i = 2 S_i J_i H̄.
  const Tensor JH =
      identity ? J : at::mm(J.view({N * L.C, L.n}), hessian_bar).view({N, L.C, L.n});
  a.S.copy_(at::bmm(JH, J.transpose(1, 2)));
  const Tensor J_bar = 2 * at::bmm(r.S, JH);
  // Through J's blocks U_ick x̃_i and δ_cc' φ(a_ik).
  const Tensor J_bar_w1 = J_bar.narrow(2, 0, L.H * L.D_ext).reshape({N, L.C * L.H, L.D_ext});
  a.U.copy_(at::bmm(J_bar_w1, r.x_ext.unsqueeze(2)).view({N, L.C, L.H}));
  x_ext_bar.copy_(at::bmm(r.U.reshape({N, 1, L.C * L.H}), J_bar_w1).view({N, L.D_ext}));
  a.phi0.copy_(J_bar.narrow(2, L.w2_offset, L.C * L.H)
                   .view({N, L.C, L.C, L.H})
                   .diagonal(0, 1, 2)
                   .sum(2));
  // R's own blocks Σ_i ṽ_ik x̃_i x̃_iᵀ against B_k = H̄'s (W̃1_k, W̃1_k) block: ṽ̄_ik = x̃_iᵀB_k x̃_i.
  const Tensor own_bar =
      identity ? at::eye(L.D_ext, r.x_ext.options()).expand({L.H, L.D_ext, L.D_ext})
               : w1_own_blocks(hessian_bar, L).permute({2, 0, 1});
  const Tensor own_x = at::matmul(r.x_ext, own_bar);  // (H, N, D̃): B_k x̃_i
  a.vt.copy_((own_x * r.x_ext).sum(2).t());
  x_ext_bar.add_(2 * (r.vt.t().unsqueeze(2) * own_x).sum(0));
  // R's cross blocks Σ_i e_ic φ'(a_ik) x̃_i sit at (W̃1_k, W2_ck) and at its mirror: both H̄ entries.
  if (!identity) {
    const Tensor cross_bar = 2 * w1_w2_blocks(hessian_bar, L).permute({2, 0, 1});  // (H, D̃, C)
    a.rx.copy_(at::matmul(r.x_ext, cross_bar).permute({1, 2, 0}).reshape({N, L.C * L.H}));
    const Tensor rx = r.rx.reshape({N, L.C, L.H}).permute({2, 0, 1});  // (H, N, C)
    x_ext_bar.add_(at::matmul(rx, cross_bar.transpose(1, 2)).sum(0));
  }
}

// The adjoints of ⟨H̄, H⟩ for the samples [begin, end) (zero for the others), chunk by chunk.
Adjoints adjoints_of(const Rows& all, const Layout& L, const Tensor& hessian_bar, int64_t chunk,
                     bool need_x, int64_t begin, int64_t end) {
  const bool every_sample = begin == 0 && end == all.size();
  auto fresh = [&](const Tensor& t) { return every_sample ? at::empty_like(t) : at::zeros_like(t); };
  Adjoints a;
  a.S = fresh(all.S);
  a.U = fresh(all.U);
  a.phi0 = fresh(all.phi0);
  a.vt = fresh(all.vt);
  if (hessian_bar.defined()) a.rx = fresh(all.rx);
  Tensor x_ext_bar = fresh(all.x_ext);
  for (int64_t i0 = begin; i0 < end; i0 += chunk) {
    const int64_t count = std::min(chunk, end - i0);
    Adjoints rows;
    rows.S = a.S.narrow(0, i0, count);
    rows.U = a.U.narrow(0, i0, count);
    rows.phi0 = a.phi0.narrow(0, i0, count);
    rows.vt = a.vt.narrow(0, i0, count);
    if (a.rx.defined()) rows.rx = a.rx.narrow(0, i0, count);
    assembly_adjoints(all.narrow(i0, count), L, hessian_bar, rows, x_ext_bar.narrow(0, i0, count));
  }
  if (need_x) a.x = x_ext_bar.narrow(1, 0, L.D);
  return a;
}



// The per-sample arrays of every sample.
Rows rows_of(const Features& f) {
  const int64_t N = f.num_samples();
  const Tensor x_ext = f.has_b1 ? at::cat({f.x, at::ones({N, 1}, f.x.options())}, 1) : f.x;
  return {x_ext, f.U, f.phi0, f.phi1, f.vt, f.terms.S, f.terms.e, f.rx};
}

// Σ over the samples [begin, end) of their terms of H, in float64, `chunk` samples at a time.
Tensor assemble(const Rows& all, const Layout& L, int64_t chunk, int64_t begin, int64_t end) {
  TORCH_INTERNAL_ASSERT(chunk >= 1, "multi_output::assemble: chunk ", chunk);
  Tensor hessian = at::zeros({L.n, L.n}, all.x_ext.options());
  for (int64_t i0 = begin; i0 < end; i0 += chunk) {
    add_to_hessian(hessian, all.narrow(i0, std::min(chunk, end - i0)), L);
  }
  return hessian;
}

// θ's layout above (unit k's [W1_k, b1_k], then W2, then b2) is also the one-logit CPU engine's.
// For each index of θ in the flat order of the public API (W1 row-major, b1, W2 row-major, b2),
// its index in the layout: only W1 and b1 move (W2 and b2 sit at the same offsets).
Tensor layout_index_of_flat(const MlpProblem& p) {
  const int64_t H = p.hidden(), D = p.in_dim(), D_ext = D + (p.b1() ? 1 : 0);
  const auto longs = p.x.options().dtype(at::kLong);
  const Tensor unit = at::arange(H, longs).unsqueeze(1) * D_ext;
  std::vector<Tensor> parts{(unit + at::arange(D, longs)).reshape({-1})};
  if (p.b1()) parts.push_back(unit.reshape({-1}) + D);
  parts.push_back(at::arange(H * D_ext, p.num_params(), longs));
  return at::cat(parts);
}

}  // namespace

Tensor layout_to_flat(const Tensor& matrix, const MlpProblem& p) {
  const Tensor index = layout_index_of_flat(p);
  return matrix.index_select(0, index).index_select(1, index);
}

Tensor flat_to_layout(const Tensor& matrix, const MlpProblem& p) {
  const Tensor index = layout_index_of_flat(p);
  Tensor out = at::empty_like(matrix);
  out.index_put_({index.unsqueeze(1), index.unsqueeze(0)}, matrix);
  return out;
}

Tensor hessian_of_samples(const MlpProblem& p, int64_t begin, int64_t end, int64_t chunk) {
  const MlpProblem q = with_dtype(p, at::kDouble);
  const Features f = features(q, /*for_gradients=*/false);
  return layout_to_flat(assemble(rows_of(f), Layout(f), chunk, begin, end), p);
}

InputGradients hessian_of_samples_backward(const MlpProblem& p, const Tensor& hessian_bar,
                                           int64_t begin, int64_t end, int64_t chunk,
                                           bool need_x) {
  const MlpProblem q = with_dtype(p, at::kDouble);
  const Features f = features(q, /*for_gradients=*/true);
  // To the layout, symmetrized: ⟨H̄, H⟩ = ⟨(H̄ + H̄ᵀ)/2, H⟩ for a symmetric H, and the reverse
  // mode of the assembly reads a symmetric H̄.
  const Tensor flat_bar = hessian_bar.to(at::kDouble);
  const Tensor bar = flat_to_layout(0.5 * (flat_bar + flat_bar.t()), p);
  const Adjoints a = adjoints_of(rows_of(f), Layout(f), bar, chunk, need_x, begin, end);
  return with_dtype(chain(q, f, a, need_x), p.x.scalar_type());
}

TracesResult parameter_space_traces(const MlpProblem& p, Gradients gradients, int64_t chunk) {
  const bool with_gradients = gradients != Gradients::None;
  const bool need_x = gradients == Gradients::ParametersAndX;
  const MlpProblem q = with_dtype(p, at::kDouble);
  const Features f = features(q, with_gradients);
  const Layout L(f);
  const int64_t N = f.num_samples();
  const Rows all = rows_of(f);
  const Tensor hessian = assemble(all, L, chunk, 0, N);
  TracesResult out;
  out.trace = hessian.diagonal().sum();
  out.trace_sq = (hessian * hessian).sum();
  if (with_gradients) {
    const at::ScalarType dtype = p.x.scalar_type();
    // H̄ = 2H for tr(H²), symmetrized: the assembled H is symmetric only up to rounding.
    const Tensor twice_hessian = hessian + hessian.t();
    out.trace_grad =
        with_dtype(chain(q, f, adjoints_of(all, L, Tensor(), chunk, need_x, 0, N), need_x), dtype);
    out.trace_sq_grad = with_dtype(
        chain(q, f, adjoints_of(all, L, twice_hessian, chunk, need_x, 0, N), need_x), dtype);
  }
  return out;
}

}  // namespace torch_ws::multi_output
