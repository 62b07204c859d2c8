// The multi-output sample-space engine (docs/math.md §8): tr H, tr(H²) and their gradients for a
// head of C ≥ 2 logits (softmax cross-entropy, squared error), whose loss Hessian in the logits is
// a C×C matrix S_i per sample. Device-agnostic ATen: the pairwise sums run over T×T blocks of
// sample pairs as matrix products (each block's C×C logit blocks are one (T·C)×(T·C) product), so
// memory is O(N(D + C·H) + (T·C)²) and every device with ATen runs it.
//
// Three stages, as in the one-logit engine (sample_space.h): per-sample features; the pairwise
// sums with, for gradients, their adjoints with respect to the per-sample arrays; one chain from
// those adjoints to x, w1, b1, w2, b2, shared by tr H and tr(H²). Stages 1 and 3 are features.cpp.
#include "engines/multi_output/engines.h"
#include "engines/multi_output/features.h"
#include "engines/cpu/lanes.h"

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

namespace torch_ws::multi_output {
namespace {

using at::Tensor;

// Zero adjoints for the block loop to accumulate into (x's only when asked for).
Adjoints zero_adjoints(const Features& f, bool need_x) {
  auto zeros = [](const Tensor& like) { return at::zeros_like(like, at::MemoryFormat::Contiguous); };
  Adjoints a;
  if (need_x) a.x = zeros(f.x);
  a.phi0 = zeros(f.phi0);
  a.phi1 = zeros(f.phi1);
  a.U = zeros(f.U);
  a.SU = zeros(f.SU);
  a.Y = zeros(f.Y);
  a.S = zeros(f.terms.S);
  a.e = zeros(f.terms.e);
  a.omega = zeros(f.omega);
  a.vt = zeros(f.vt);
  a.lx = zeros(f.lx);
  a.rx = zeros(f.rx);
  return a;
}

// into += from, field by field (the lanes' accumulators).
void add_adjoints(Adjoints& into, const Adjoints& from) {
  for (auto [a, b] : {std::pair{&into.x, &from.x}, {&into.phi0, &from.phi0},
                      {&into.phi1, &from.phi1}, {&into.U, &from.U}, {&into.SU, &from.SU},
                      {&into.Y, &from.Y}, {&into.S, &from.S}, {&into.e, &from.e},
                      {&into.omega, &from.omega}, {&into.vt, &from.vt}, {&into.lx, &from.lx},
                      {&into.rx, &from.rx}}) {
    if (a->defined()) a->add_(*b);
  }
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
  // G_IJ[i, c, j, d] = Y_ic · Y_jd: every pair's L_iᵀ Q_ij L_j in one symmetric product, and
  // tr(S_i Q_ij S_j Q_ijᵀ) = ‖L_iᵀ Q_ij L_j‖²_F its blocks' sums of squares.
  const Tensor G = at::mm(I.of(f.Y, h), J.of(f.Y, h).t());
  const Tensor T4 = G.square().view({I.size, c, J.size, c}).sum({1, 3});
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
  // T4 = Σ_cd G[i,c,j,d]²: Ḡ = 2 T̄4 G, sent to both factors (on diagonal blocks the one
  // product's two factors are the same rows, and product_adjoint adds both).
  const Tensor G_bar = (2 * T4_bar).view({I.size, 1, J.size, 1}) * G.view({I.size, c, J.size, c});
  product_adjoint(G_bar.view({I.size * c, J.size * c}), f.Y, f.Y, a->Y, a->Y, I, J, h);
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

}  // namespace

TracesResult sample_space_traces(const MlpProblem& p, Gradients gradients, int64_t tile,
                                 const Share& share) {
  const bool with_gradients = gradients != Gradients::None;
  const bool need_x = gradients == Gradients::ParametersAndX;
  const Features f = features(p, with_gradients);
  const int64_t n = f.num_samples();
  TORCH_INTERNAL_ASSERT(tile >= 1, "multi_output::sample_space_traces: tile ", tile);

  // Block pairs (I, J), I ≤ J; with a share, only those dealt to it (core/share.h), weighed by
  // their entries (an off-diagonal pair stands for both orders).
  std::vector<std::pair<Block, Block>> pairs;
  std::vector<double> cost;
  for (int64_t i0 = 0; i0 < n; i0 += tile) {
    const Block I{i0, std::min(tile, n - i0)};
    for (int64_t j0 = i0; j0 < n; j0 += tile) {
      const Block J{j0, std::min(tile, n - j0)};
      pairs.emplace_back(I, J);
      cost.push_back(static_cast<double>(I.size) * J.size * (i0 == j0 ? 1 : 2));
    }
  }
  const std::vector<int64_t> share_of = deal_by_cost(cost, share.count);
  std::vector<size_t> mine;
  std::vector<double> my_cost;
  for (size_t t = 0; t < pairs.size(); ++t) {
    if (share_of[t] != share.index) continue;
    mine.push_back(t);
    my_cost.push_back(cost[t]);
  }
  // On the CPU the block pairs are dealt to lanes (cpu/lanes.h), one per thread, each running its
  // blocks' products single-threaded into its own accumulators: one parallel region per call.
  // Letting every product of every block open a parallel region of its own (hundreds per call)
  // made each of them wait for the slowest thread, which on a busy machine is one the scheduler
  // has set aside: calls took 4–12× their one-thread time with two busy processes beside them
  // (issue 30, benchmarks/bench_contention.py). Elsewhere, one lane and the device's own
  // parallelism.
  const int64_t lanes =
      f.x.is_cpu() ? std::max<int64_t>(1, std::min<int64_t>(static_cast<int64_t>(mine.size()),
                                                            at::get_num_threads()))
                   : 1;
  const std::vector<int64_t> lane_of = deal_by_cost(my_cost, lanes);
  std::vector<Tensor> lane_trace_sq(lanes);
  std::vector<std::optional<Adjoints>> lane_adjoints(lanes);
  for (int64_t lane = 0; lane < lanes; ++lane) {
    lane_trace_sq[lane] = at::zeros({}, f.x.options().dtype(at::kDouble));
    if (with_gradients) lane_adjoints[lane] = zero_adjoints(f, need_x);
  }
  run_lanes(lanes, [&](int64_t lane) {
    for (size_t k = 0; k < mine.size(); ++k) {
      if (lane_of[k] != lane) continue;
      const auto& [I, J] = pairs[mine[k]];
      lane_trace_sq[lane].add_(
          block_pair(f, I, J, lane_adjoints[lane] ? &*lane_adjoints[lane] : nullptr));
    }
  });
  // Deterministic reduction in lane order.
  Tensor trace_sq = lane_trace_sq[0];
  for (int64_t lane = 1; lane < lanes; ++lane) {
    trace_sq = trace_sq + lane_trace_sq[lane];
    if (with_gradients) add_adjoints(*lane_adjoints[0], *lane_adjoints[lane]);
  }
  TracesResult out;
  out.trace_sq = trace_sq;
  if (with_gradients) out.trace_sq_grad = chain(p, f, std::move(*lane_adjoints[0]), need_x);
  if (!share.holds_diagonal()) {
    out.trace = at::zeros({}, trace_sq.options());
    if (with_gradients) out.trace_grad = zero_gradients(p, need_x);
    return out;
  }
  const Diagonal dg = diagonal(f);
  out.trace = (dg.k * dg.hidden_sum + dg.r * dg.trace_S).sum(at::kDouble);
  if (with_gradients) out.trace_grad = chain(p, f, trace_adjoints(f, dg, need_x), need_x);
  return out;
}

}  // namespace torch_ws::multi_output
