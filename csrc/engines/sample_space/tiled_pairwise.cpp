// The CPU pairwise stage of the sample-space engine: tr(H²) and its adjoints from T×T tiles of the
// Gram matrices, never whole N×N arrays (docs/math.md §4: every quantity is a sum over (i, j) of a function of the (i, j)
// entries). Peak extra memory is O(threads·(N·(D+H) + T²)).
//
// Tiles (I, J) with I ≤ J only: K, Q, R, VVᵀ and Φ1Φ1ᵀ are symmetric, so an off-diagonal tile
// stands for both (i, j) and (j, i); the two non-symmetric products P1 = (U∘U)Vᵀ and
// P2 = (U∘Φ0)Φ1ᵀ get their mirrored tile from one more product each. A diagonal tile is a full
// square and counts each ordered pair once. Per tile: the Gram tiles by BLAS, one fused pass over
// the entries (value, adjoint tiles, per-sample sums; the formulas of core/pair_terms.h), then the
// adjoint products back to rows I and J. Tiles run in parallel (at::parallel_for) into per-lane
// accumulators that are summed in lane order afterwards, so the result is deterministic for a
// given thread count.
#include "core/pair_terms.h"
#include "core/share.h"
#include "engines/cpu/lanes.h"
#include "engines/cpu/vector_clones.h"
#include "engines/sample_space/sample_space.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

namespace torch_ws {
namespace {

// The Gram tiles of one (I, J) pair; the mirrored ones only off the diagonal.
enum Gram { kK, kQ, kR, kP1, kP2, kP3, kP4, kP1t, kP2t, kNumGram };

// Per-sample adjoint accumulators of one thread (rows of the full arrays).
struct Accumulators {
  at::Tensor x, U, UU, Uphi0, V, phi0, phi1;  // adjoints of X, U, U∘U, U∘Φ0, V, Φ0, Φ1
  at::Tensor s, e;
  at::Tensor s_cols, e_cols;  // a diagonal tile's column sums, kept apart from its row sums
  double trace_sq = 0;
};

struct TileInputs {
  at::Tensor x, U, UU, Uphi0, V, phi0, phi1;
  at::Tensor s, e;
  bool has_b1, has_b2;
};

// Pointers of one tile's fused pass; __restrict__ so the compiler may vectorize the inner loop.
template <typename scalar_t>
struct TilePointers {
  const scalar_t* __restrict__ gram[kNumGram];
  scalar_t* __restrict__ adj[kNumGram];
  const scalar_t* __restrict__ s_i;
  const scalar_t* __restrict__ e_i;
  const scalar_t* __restrict__ s_j;
  const scalar_t* __restrict__ e_j;
  scalar_t* __restrict__ s_bar_i;
  scalar_t* __restrict__ e_bar_i;
  scalar_t* __restrict__ s_bar_j;
  scalar_t* __restrict__ e_bar_j;
};

// One fused pass over a tile's `rows` × `cols` entries (leading dimension `cols`). Returns the
// tile's contribution to tr(H²); with kWithAdjoints also writes the adjoint tiles and adds the
// per-sample adjoints of s and e. kMirrored: an off-diagonal tile, standing for (i, j) and (j, i).
// The loop is pure arithmetic over contiguous rows (see vector_clones.h).

template <typename scalar_t, bool kMirrored, bool kWithAdjoints>
TORCH_WS_VECTOR_CLONES double fuse_tile(const TilePointers<scalar_t>& t, int64_t rows, int64_t cols) {
  const scalar_t* __restrict__ Kt = t.gram[kK];
  const scalar_t* __restrict__ Qt = t.gram[kQ];
  const scalar_t* __restrict__ Rt = t.gram[kR];
  const scalar_t* __restrict__ P1t = t.gram[kP1];
  const scalar_t* __restrict__ P2t = t.gram[kP2];
  const scalar_t* __restrict__ P3t = t.gram[kP3];
  const scalar_t* __restrict__ P4t = t.gram[kP4];
  const scalar_t* __restrict__ P1m = t.gram[kP1t];  // mirrored P1, P2 (off-diagonal tiles)
  const scalar_t* __restrict__ P2m = t.gram[kP2t];
  const scalar_t* __restrict__ s_j = t.s_j;
  const scalar_t* __restrict__ e_j = t.e_j;
  scalar_t* __restrict__ s_bar_j = t.s_bar_j;
  scalar_t* __restrict__ e_bar_j = t.e_bar_j;
  namespace pt = pair_terms;
  constexpr scalar_t m = kMirrored ? 2 : 1;
  double total = 0;
  for (int64_t a = 0; a < rows; ++a) {
    const scalar_t sa = t.s_i[a], ea = t.e_i[a];
    scalar_t row_total = 0, sa_bar = 0, ea_bar = 0;
    const int64_t base = a * cols;
#pragma omp simd reduction(+ : row_total, sa_bar, ea_bar)
    for (int64_t b = 0; b < cols; ++b) {
      const int64_t i = base + b;
      const scalar_t sb = s_j[b], eb = e_j[b];
      const scalar_t K = Kt[i], Q = Qt[i], P1 = P1t[i], P2 = P2t[i], P3 = P3t[i], P4 = P4t[i];
      const scalar_t G = pt::tangent_kernel(K, Q, Rt[i]);
      const scalar_t B_ab = pt::residual_kernel(K, P1, P2);  // B at (i = a, j = b)
      const scalar_t C = pt::residual_kernel(K, P3, P4);
      // f(a, b) and, for an off-diagonal tile, its mirror f(b, a).
      scalar_t value = pt::pair_value(sa, ea, sb, eb, G, B_ab, C);
      scalar_t B_ba = 0;
      if constexpr (kMirrored) {
        B_ba = pt::residual_kernel(K, P1m[i], P2m[i]);
        value += pt::pair_value(sb, eb, sa, ea, G, B_ba, C);
      }
      row_total += value;
      if constexpr (kWithAdjoints) {
        // G and C are symmetric, so the mirror's adjoints of G and C equal (a, b)'s: m of them.
        const auto kernel = pt::pair_kernel_adjoints(sa, ea, sb, eb, G);
        const auto gram = pt::gram_adjoints(K, Q, P1, P2, P3, P4, m * kernel.G, kernel.B,
                                            m * kernel.C);
        scalar_t K_bar = gram.K;
        t.adj[kQ][i] = gram.Q;
        t.adj[kR][i] = gram.R;
        t.adj[kP1][i] = gram.P1;
        t.adj[kP2][i] = gram.P2;
        t.adj[kP3][i] = gram.P3;
        t.adj[kP4][i] = gram.P4;
        const auto ab = pt::pair_sample_adjoints(sa, ea, sb, eb, G, B_ab, C);
        sa_bar += ab.s_i;
        ea_bar += ab.e_i;
        scalar_t sb_bar = ab.s_j, eb_bar = ab.e_j;
        if constexpr (kMirrored) {
          const scalar_t B_ba_bar = pt::pair_kernel_adjoints(sb, eb, sa, ea, G).B;
          K_bar += B_ba_bar * pt::residual_kernel_dK(K, P1m[i], P2m[i]);
          t.adj[kP1t][i] = B_ba_bar * K * K;
          t.adj[kP2t][i] = B_ba_bar * 2 * K;
          const auto ba = pt::pair_sample_adjoints(sb, eb, sa, ea, G, B_ba, C);
          sb_bar += ba.s_i;
          eb_bar += ba.e_i;
          sa_bar += ba.s_j;
          ea_bar += ba.e_j;
        }
        t.adj[kK][i] = K_bar;
        s_bar_j[b] += sb_bar;
        e_bar_j[b] += eb_bar;
      }
    }
    total += row_total;
    if constexpr (kWithAdjoints) {
      t.s_bar_i[a] += sa_bar;
      t.e_bar_i[a] += ea_bar;
    }
  }
  return total;
}

// A product tile P = L_I R_Jᵀ sends back L̄_I += P̄ R_J and R̄_J += P̄ᵀ L_I.
void product_backward(const at::Tensor& P_bar, const at::Tensor& L_I, const at::Tensor& R_J,
                      at::Tensor L_bar_I, at::Tensor R_bar_J) {
  L_bar_I.addmm_(P_bar, R_J);
  R_bar_J.addmm_(P_bar.t(), L_I);
}

template <typename scalar_t>
void run_tile(const TileInputs& in, Accumulators& acc, std::vector<at::Tensor>& gram,
              std::vector<at::Tensor>& adj, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
              bool with_adjoints, bool with_x_adjoint) {
  const bool mirrored = i0 != j0;
  auto rows = [&](const at::Tensor& t, int64_t lo, int64_t hi) { return t.narrow(0, lo, hi - lo); };
  const int64_t ni = i1 - i0, nj = j1 - j0;
  // Views of the tile-sized slices of the preallocated buffers.
  std::vector<at::Tensor> g(kNumGram), ga(kNumGram);
  for (int k = 0; k < kNumGram; ++k) {
    g[k] = gram[k].narrow(0, 0, ni * nj).view({ni, nj});
    if (with_adjoints) ga[k] = adj[k].narrow(0, 0, ni * nj).view({ni, nj});
  }
  auto I = [&](const at::Tensor& t) { return rows(t, i0, i1); };
  auto J = [&](const at::Tensor& t) { return rows(t, j0, j1); };
  at::mm_out(g[kK], I(in.x), J(in.x).t());
  if (in.has_b1) g[kK].add_(1);
  at::mm_out(g[kQ], I(in.U), J(in.U).t());
  at::mm_out(g[kR], I(in.phi0), J(in.phi0).t());
  if (in.has_b2) g[kR].add_(1);
  at::mm_out(g[kP1], I(in.UU), J(in.V).t());
  at::mm_out(g[kP2], I(in.Uphi0), J(in.phi1).t());
  at::mm_out(g[kP3], I(in.V), J(in.V).t());
  at::mm_out(g[kP4], I(in.phi1), J(in.phi1).t());
  if (mirrored) {
    // P1 at (j, i) for i ∈ I, j ∈ J, laid out as an I×J tile: (V_I (U∘U)_Jᵀ)[a, b] = P1[j_b, i_a].
    at::mm_out(g[kP1t], I(in.V), J(in.UU).t());
    at::mm_out(g[kP2t], I(in.phi1), J(in.Uphi0).t());
  }

  TilePointers<scalar_t> ptr{};
  for (int k = 0; k < kNumGram; ++k) {
    const bool used = k < kP1t || mirrored;
    ptr.gram[k] = used ? g[k].data_ptr<scalar_t>() : nullptr;
    ptr.adj[k] = used && with_adjoints ? ga[k].data_ptr<scalar_t>() : nullptr;
  }
  const scalar_t* s = in.s.data_ptr<scalar_t>();
  const scalar_t* e = in.e.data_ptr<scalar_t>();
  ptr.s_i = s + i0;
  ptr.e_i = e + i0;
  ptr.s_j = s + j0;
  ptr.e_j = e + j0;
  if (with_adjoints) {
    // A diagonal tile's rows I and columns J are the same samples: the pass adds row (a) and
    // column (b) sums separately, so they go to separate buffers, merged below.
    scalar_t* s_bar = acc.s.data_ptr<scalar_t>();
    scalar_t* e_bar = acc.e.data_ptr<scalar_t>();
    ptr.s_bar_i = s_bar + i0;
    ptr.e_bar_i = e_bar + i0;
    ptr.s_bar_j = mirrored ? s_bar + j0 : acc.s_cols.data_ptr<scalar_t>();
    ptr.e_bar_j = mirrored ? e_bar + j0 : acc.e_cols.data_ptr<scalar_t>();
    if (!mirrored) {
      acc.s_cols.zero_();
      acc.e_cols.zero_();
    }
  }
  double value;
  if (mirrored) {
    value = with_adjoints ? fuse_tile<scalar_t, true, true>(ptr, ni, nj)
                          : fuse_tile<scalar_t, true, false>(ptr, ni, nj);
  } else {
    value = with_adjoints ? fuse_tile<scalar_t, false, true>(ptr, ni, nj)
                          : fuse_tile<scalar_t, false, false>(ptr, ni, nj);
  }
  acc.trace_sq += value;
  if (with_adjoints && !mirrored) {
    acc.s.narrow(0, i0, ni).add_(acc.s_cols.narrow(0, 0, ni));
    acc.e.narrow(0, i0, ni).add_(acc.e_cols.narrow(0, 0, ni));
  }
  if (!with_adjoints) return;

  if (!mirrored) {
    // Diagonal tile, L = R: symmetric adjoint tiles (Q̄ = ḠK, R̄ = Ḡ, P̄3, P̄4) send back 2P̄L in
    // one product, and K̄ (not symmetric: B̄ is not) sends back (K̄ + K̄ᵀ)X.
    if (with_x_adjoint) I(acc.x).addmm_(ga[kK] + ga[kK].t(), I(in.x));
    I(acc.U).addmm_(ga[kQ], I(in.U), 1, 2);
    I(acc.phi0).addmm_(ga[kR], I(in.phi0), 1, 2);
    I(acc.V).addmm_(ga[kP3], I(in.V), 1, 2);
    I(acc.phi1).addmm_(ga[kP4], I(in.phi1), 1, 2);
  } else {
    if (with_x_adjoint) product_backward(ga[kK], I(in.x), J(in.x), I(acc.x), J(acc.x));
    product_backward(ga[kQ], I(in.U), J(in.U), I(acc.U), J(acc.U));
    product_backward(ga[kR], I(in.phi0), J(in.phi0), I(acc.phi0), J(acc.phi0));
    product_backward(ga[kP3], I(in.V), J(in.V), I(acc.V), J(acc.V));
    product_backward(ga[kP4], I(in.phi1), J(in.phi1), I(acc.phi1), J(acc.phi1));
    product_backward(ga[kP1t], I(in.V), J(in.UU), I(acc.V), J(acc.UU));
    product_backward(ga[kP2t], I(in.phi1), J(in.Uphi0), I(acc.phi1), J(acc.Uphi0));
  }
  product_backward(ga[kP1], I(in.UU), J(in.V), I(acc.UU), J(acc.V));
  product_backward(ga[kP2], I(in.Uphi0), J(in.phi1), I(acc.Uphi0), J(acc.phi1));
}

// The lanes' (N, H) adjoint arrays, and the operands U and Φ0.
template <typename scalar_t>
struct LaneArrays {
  std::vector<scalar_t*> U, UU, Uphi0, V, phi0, phi1;  // one pointer per lane
  const scalar_t* U_in;
  const scalar_t* phi0_in;
};

// Entries [begin, end) of the (N, H) adjoints: each array summed over the lanes in lane order,
// and those of the tile operands U∘U and U∘Φ0 routed to U (2U∘(U∘U)‾ + Φ0∘(U∘Φ0)‾) and Φ0
// (U∘(U∘Φ0)‾), written into lane 0's U, Φ0, V, Φ1 (docs/math.md §6.1).
template <typename scalar_t>
TORCH_WS_VECTOR_CLONES void reduce_lane_entries(const LaneArrays<scalar_t>& l, int64_t begin,
                                                int64_t end) {
  const size_t lanes = l.U.size();
  for (int64_t i = begin; i < end; ++i) {
    scalar_t U = l.U[0][i], UU = l.UU[0][i], Uphi0 = l.Uphi0[0][i];
    scalar_t V = l.V[0][i], phi0 = l.phi0[0][i], phi1 = l.phi1[0][i];
    for (size_t lane = 1; lane < lanes; ++lane) {
      U += l.U[lane][i];
      UU += l.UU[lane][i];
      Uphi0 += l.Uphi0[lane][i];
      V += l.V[lane][i];
      phi0 += l.phi0[lane][i];
      phi1 += l.phi1[lane][i];
    }
    l.U[0][i] = U + 2 * l.U_in[i] * UU + l.phi0_in[i] * Uphi0;
    l.phi0[0][i] = phi0 + l.U_in[i] * Uphi0;
    l.V[0][i] = V;
    l.phi1[0][i] = phi1;
  }
}

// One pass instead of a dozen (N, H) tensor operations, each a fresh array.
template <typename scalar_t>
void reduce_lanes(std::vector<Accumulators>& accs, const TileInputs& in) {
  LaneArrays<scalar_t> l;
  for (Accumulators& acc : accs) {
    l.U.push_back(acc.U.mutable_data_ptr<scalar_t>());
    l.UU.push_back(acc.UU.mutable_data_ptr<scalar_t>());
    l.Uphi0.push_back(acc.Uphi0.mutable_data_ptr<scalar_t>());
    l.V.push_back(acc.V.mutable_data_ptr<scalar_t>());
    l.phi0.push_back(acc.phi0.mutable_data_ptr<scalar_t>());
    l.phi1.push_back(acc.phi1.mutable_data_ptr<scalar_t>());
  }
  l.U_in = in.U.const_data_ptr<scalar_t>();
  l.phi0_in = in.phi0.const_data_ptr<scalar_t>();
  // Each entry's sum runs in lane order whatever the split: deterministic.
  at::parallel_for(0, in.U.numel(), 16384, [&](int64_t begin, int64_t end) {
    reduce_lane_entries(l, begin, end);
  });
}

}  // namespace

PairwiseResult pairwise_tiled_cpu(const SampleFeatures& f, Gradients gradients, int64_t tile,
                                  const Share& share) {
  const bool with_adjoints = gradients != Gradients::None;
  const bool with_x_adjoint = gradients == Gradients::ParametersAndX;
  TORCH_INTERNAL_ASSERT(f.x.is_cpu() && tile > 0);
  const int64_t n = f.x.size(0);
  tile = std::min(tile, n);
  TileInputs in{f.x.contiguous(), f.U.contiguous(), (f.U * f.U).contiguous(),
                (f.U * f.phi0).contiguous(), f.V.contiguous(), f.phi0.contiguous(),
                f.phi1.contiguous(), f.s.contiguous(), f.e.contiguous(), f.has_b1, f.has_b2};

  // Tile pairs (I, J), I ≤ J, in a fixed order, dealt to one lane per thread so that the lanes'
  // work is even (deal_by_cost), weighed by their products' multiply-adds (the last block may be
  // short). The assignment depends only on the shapes and the thread count, so the result is
  // deterministic for them.
  const int64_t blocks = (n + tile - 1) / tile;
  auto block_size = [&](int64_t b) { return std::min(n, (b + 1) * tile) - b * tile; };
  // Per entry of a tile, as run_tile computes them: K (D) and six products of width H, plus two
  // mirrored ones off the diagonal; with adjoints 8 (16 off the diagonal) more of width H, and
  // with x's one (two) of width D. So an off-diagonal tile is not twice a diagonal one: at
  // D = 784, H = 256 with adjoints it is 1.6×.
  const auto d = static_cast<double>(in.x.size(1)), h = static_cast<double>(in.U.size(1));
  const double diagonal_work = d * (1 + with_x_adjoint) + h * (6 + 8 * with_adjoints);
  const double mirrored_work = d * (1 + 2 * with_x_adjoint) + h * (8 + 16 * with_adjoints);
  std::vector<std::pair<int64_t, int64_t>> pairs;
  std::vector<double> cost;
  for (int64_t bi = 0; bi < blocks; ++bi) {
    for (int64_t bj = bi; bj < blocks; ++bj) {
      pairs.emplace_back(bi, bj);
      cost.push_back(static_cast<double>(block_size(bi)) * block_size(bj) *
                     (bi == bj ? diagonal_work : mirrored_work));
    }
  }
  if (!share.whole()) {
    // Only this share's pairs (core/share.h): the dealing depends on the shapes alone, so every
    // process keeps a disjoint set and together they cover every pair once.
    const std::vector<int64_t> share_of = deal_by_cost(cost, share.count);
    std::vector<std::pair<int64_t, int64_t>> kept_pairs;
    std::vector<double> kept_cost;
    for (size_t t = 0; t < pairs.size(); ++t) {
      if (share_of[t] != share.index) continue;
      kept_pairs.push_back(pairs[t]);
      kept_cost.push_back(cost[t]);
    }
    pairs = std::move(kept_pairs);
    cost = std::move(kept_cost);
  }
  // At least one lane, whose accumulators stay zero when a share holds no pair.
  const int64_t lanes =
      std::max<int64_t>(1, std::min<int64_t>(pairs.size(), at::get_num_threads()));
  const std::vector<int64_t> lane_of = deal_by_cost(cost, lanes);
  std::vector<std::vector<size_t>> lane_pairs(lanes);
  for (size_t t = 0; t < pairs.size(); ++t) lane_pairs[lane_of[t]].push_back(t);
  std::vector<Accumulators> accs(lanes);
  auto opts = f.x.options();
  for (auto& acc : accs) {
    if (with_adjoints) {
      if (with_x_adjoint) acc.x = at::zeros_like(in.x);
      for (at::Tensor* t : {&acc.U, &acc.UU, &acc.Uphi0, &acc.V, &acc.phi0, &acc.phi1})
        *t = at::zeros_like(in.U);
      acc.s = at::zeros({n}, opts);
      acc.e = at::zeros({n}, opts);
      acc.s_cols = at::zeros({tile}, opts);
      acc.e_cols = at::zeros({tile}, opts);
    }
  }

  AT_DISPATCH_FLOATING_TYPES(f.x.scalar_type(), "torch_ws_pairwise_tiled_cpu", [&] {
    run_lanes(lanes, [&](int64_t lane) {
      // Work arrays for one tile, reused across this lane's tiles.
      std::vector<at::Tensor> gram(kNumGram), adj(kNumGram);
      for (int k = 0; k < kNumGram; ++k) {
        gram[k] = at::empty({tile * tile}, opts);
        if (with_adjoints) adj[k] = at::empty({tile * tile}, opts);
      }
      for (size_t t : lane_pairs[lane]) {
        const auto [bi, bj] = pairs[t];
        run_tile<scalar_t>(in, accs[lane], gram, adj, bi * tile, std::min(n, (bi + 1) * tile),
                           bj * tile, std::min(n, (bj + 1) * tile), with_adjoints, with_x_adjoint);
      }
    });
  });

  // Deterministic reduction in lane order.
  PairwiseResult out;
  double trace_sq = 0;
  for (const auto& acc : accs) trace_sq += acc.trace_sq;
  out.trace_sq = at::scalar_tensor(trace_sq, opts.dtype(at::kDouble));
  if (!with_adjoints) return out;
  Accumulators& total = accs[0];
  for (size_t t = 1; t < accs.size(); ++t) {
    const Accumulators& acc = accs[t];
    if (with_x_adjoint) total.x.add_(acc.x);
    total.s.add_(acc.s);
    total.e.add_(acc.e);
  }
  AT_DISPATCH_FLOATING_TYPES(f.x.scalar_type(), "torch_ws_reduce_lanes", [&] {
    reduce_lanes<scalar_t>(accs, in);
  });
  SampleAdjoints a;
  a.U = total.U;
  a.phi0 = total.phi0;
  a.V = total.V;
  a.phi1 = total.phi1;
  a.x = total.x;
  a.s = total.s;
  a.e = total.e;
  out.adjoints = std::move(a);
  return out;
}

int64_t parallel_threads() {
  const int64_t lanes = at::get_num_threads();
  std::vector<int> thread_of_lane(lanes, 0);
  at::parallel_for(0, lanes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t lane = begin; lane < end; ++lane) thread_of_lane[lane] = at::get_thread_num();
  });
  return static_cast<int64_t>(std::set<int>(thread_of_lane.begin(), thread_of_lane.end()).size());
}

}  // namespace torch_ws
