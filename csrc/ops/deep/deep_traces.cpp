// The deep family: tr H and tr(H²) of an MLP with L ≥ 1 hidden layers of any widths, by the Gram
// forms of docs/math.md §12.3 (per-sample matrices and N × N Gram matrices; never the n × n
// Hessian nor the (N, N, H, H) pair kernels).
//
// One composite ATen kernel (CompositeImplicitAutograd): autograd differentiates it exactly, in
// every layer and in x; it runs on any device and traces with fake tensors at static shapes
// (opcheck). Its backward is autograd's, not a hand-derived one (the one-hidden-layer ops have
// those, docs/math.md §6): it keeps the forward's intermediates, O(N·L²·H² + N²·H) numbers.
#include "core/activations.h"
#include "core/losses.h"
#include "core/problem.h"
#include "core/ws_bound.h"  // kRoundingAllowance
#include "ops/deep/deep_traces.h"
#include "ops/deep/forward.h"
#include "ops/schemas.h"     // find_op, WsBoundsFromTracesSignature

#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace torch_ws {
namespace {

constexpr const char* kOp = "torch_ws.deep_hessian_traces";

// Σ_ij weight_ij·(A_i·B_j) for per-sample arrays A, B (N, ...): a Gram matrix of the flattened
// samples against an N × N weight, summed in float64.
at::Tensor weighted_gram(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = a.size(0);
  const at::Tensor gram = at::mm(a.reshape({n, -1}), b.reshape({n, -1}).t());
  return (weight * gram).sum(at::kDouble);
}

// Σ_ij weight_ij·(left_ij·right_ij) with left_ij = Nᵢᵀp_j (N_i: (H_a, H_b), p_j: (H_a,)) and
// right_ij = G_jᵀz_i (G_j: (H_y, H_b), z_i: (H_y,)): the Q2 and T2 pattern of §12.3, in blocks of
// samples i so that the (block, N, H_b) arrays stay near 2²² numbers.
at::Tensor paired_products(const at::Tensor& weight, const at::Tensor& n_mats, const at::Tensor& p,
                           const at::Tensor& g_mats, const at::Tensor& z) {
  const int64_t n = n_mats.size(0), width = n_mats.size(2);
  const int64_t block = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(1, n * width));
  at::Tensor total = at::zeros({}, weight.options().dtype(at::kDouble));
  for (int64_t start = 0; start < n; start += block) {
    const int64_t stop = std::min(n, start + block);
    // left[i, j, b] = Σ_a N_i[a, b] p_j[a];  right[i, j, b] = Σ_y z_i[y] G_j[y, b]
    const at::Tensor left = at::einsum("iab,ja->ijb", {n_mats.slice(0, start, stop), p});
    const at::Tensor right = at::einsum("iy,jyb->ijb", {z.slice(0, start, stop), g_mats});
    total = total + (weight.slice(0, start, stop).unsqueeze(2) * left * right).sum(at::kDouble);
  }
  return total;
}

// The same sum where G_j = diag(d_j) (k = m − 1, where F_{m-1,m-1} = I): right_ijb = z_i[b]·d_j[b],
// so Σ_b left_ijb·right_ijb = ⟨N_i ∘ z_i (columns), p_j d_jᵀ⟩, one Gram of (H_a·H_b) arrays.
at::Tensor paired_products_diagonal(const at::Tensor& weight, const at::Tensor& n_mats,
                                    const at::Tensor& p, const at::Tensor& d, const at::Tensor& z) {
  return weighted_gram(weight, n_mats * z.unsqueeze(1), p.unsqueeze(2) * d.unsqueeze(1));
}

// What the traces are made of (docs/math.md §12.1), for layers l = 1..o (index 0 unused): the
// features z_l entering layer l + 1 (z_0 = x), φ'(a_l), φ''(a_l), the feature kernels κ_l, the
// weights, and the loss's S and e. Either the values, or their magnitudes (every entry replaced
// by a non-negative majorant), through which the same code gives Σ|terms| of every sum.
struct Coefficients {
  std::vector<at::Tensor> z, d1, d2, kappa, weight;
  at::Tensor S, e, e_magnitude;  // e_magnitude: Σ|terms| of e's formula (losses.h)
};

// The coefficients of the values: the family's forward pass (forward.h) and the feature kernels
// κ_l(i,j) = ã_{i,l-1}·ã_{j,l-1} (the appended 1 of a bias adds 1).
Coefficients forward(const MlpProblem& p) {
  DeepForward f = deep_forward(p);
  const int64_t out = static_cast<int64_t>(p.layers.size());
  Coefficients c{std::move(f.z), std::move(f.d1), std::move(f.d2), {}, std::move(f.weight),
                 f.terms.S, f.terms.e, f.terms.e_magnitude};
  c.kappa.resize(out + 1);
  for (int64_t l = 1; l <= out; ++l) {
    c.kappa[l] = at::mm(c.z[l - 1], c.z[l - 1].t()) + (p.layers[l - 1].bias ? 1 : 0);
  }
  return c;
}

// tr H and tr(H²) from the coefficients, by the Gram forms of §12.3 (float64 0-d tensors).
std::pair<at::Tensor, at::Tensor> traces_from(const Coefficients& c) {
  const int64_t out = static_cast<int64_t>(c.weight.size()) - 1;  // o = L + 1
  const int64_t L = out - 1;
  const int64_t N = c.z[0].size(0), C = c.e.size(1);
  const auto options = c.z[0].options();

  // Forward Jacobians F[l][k] = ∂a_l/∂a_k (N, H_l, H_k), k ≤ l: F_kk = I, F_lk = W_l D'_{l-1} F_{l-1,k}.
  std::vector<std::vector<at::Tensor>> F(out + 1, std::vector<at::Tensor>(out + 1));
  // F_kk = I is used as such only where a product with it is free: F_{k+1,k} = W_{k+1} D'_k is a
  // column scaling, and N_mat's l = k terms scale rows (an H³ product each saved per sample).
  for (int64_t k = 1; k <= out; ++k) {
    const int64_t width = c.weight[k].size(0);
    F[k][k] = at::eye(width, options).expand({N, width, width});
    if (k < out) F[k + 1][k] = c.weight[k + 1].unsqueeze(0) * c.d1[k].unsqueeze(1);
    for (int64_t l = k + 2; l <= out; ++l) {
      F[l][k] = at::matmul(c.weight[l], c.d1[l - 1].unsqueeze(2) * F[l - 1][k]);
    }
  }
  // p_l = B_lᵀe (B_l = F[o][l]), r_l = φ''_l ∘ W_{l+1}ᵀ p_{l+1}.
  std::vector<at::Tensor> pvec(out + 1), r(out + 1);
  for (int64_t l = 1; l <= out; ++l) {
    pvec[l] = at::bmm(c.e.unsqueeze(1), F[out][l]).squeeze(1);
  }
  for (int64_t l = 1; l <= L; ++l) {
    r[l] = c.d2[l] * at::matmul(pvec[l + 1], c.weight[l + 1]);
  }
  // E(m, k) = B_mᵀ S B_k (N, H_m, H_k); N_mat[k][k'] = Σ_{max(k,k') ≤ l ≤ L} F_lkᵀ diag(r_l) F_lk'.
  const auto E = [&](int64_t m, int64_t k) {
    return at::matmul(F[out][m].transpose(1, 2), at::matmul(c.S, F[out][k]));
  };
  // N_mat[L][L] = diag(r_L) is left unbuilt: its Grams are taken from r_L (below).
  std::vector<std::vector<at::Tensor>> N_mat(out + 1, std::vector<at::Tensor>(out + 1));
  for (int64_t k = 1; k <= L; ++k) {
    for (int64_t k2 = 1; k2 <= L; ++k2) {
      if (k == L && k2 == L) continue;
      at::Tensor sum;
      for (int64_t l = std::max(k, k2); l <= L; ++l) {
        at::Tensor term;
        if (l == k) {  // F_lk = I
          term = r[l].unsqueeze(2) * F[l][k2];
        } else if (l == k2) {
          term = F[l][k].transpose(1, 2) * r[l].unsqueeze(1);
        } else {
          term = at::matmul(F[l][k].transpose(1, 2), r[l].unsqueeze(2) * F[l][k2]);
        }
        sum = sum.defined() ? sum + term : term;
      }
      N_mat[k][k2] = sum;
    }
  }

  // tr H = tr G + tr R (§12.3), each diagonal term κ_k(i,i)·(per-sample trace).
  at::Tensor trace = at::zeros({}, options.dtype(at::kDouble));
  for (int64_t k = 1; k <= out; ++k) {
    const at::Tensor self = c.kappa[k].diagonal();
    trace = trace + (self * E(k, k).diagonal(0, 1, 2).sum(1)).sum(at::kDouble);
    for (int64_t l = k; l <= L; ++l) {
      trace = trace + (self * (r[l] * F[l][k].pow(2).sum(2)).sum(1)).sum(at::kDouble);
    }
  }

  // tr(G²) = Σ_ij tr(S_i K_ij S_j K_ijᵀ) with K_ij = Σ_k κ_k(i,j) B_ik B_jkᵀ (C × C): the
  // (N·C)² dual matrix of §8 where it is small (one logit: N²), else the same sum as Grams of the
  // per-sample E_{k'k} = B_k'ᵀ S B_k: Σ_{k,k'} Σ_ij κ_k κ_k' ⟨E^i_{k'k}, E^j_{k'k}⟩ (§12.3), whose
  // memory is N·H² rather than (N·C)².
  at::Tensor trace_sq;
  if ((N * C) * (N * C) <= (int64_t{1} << 26)) {
    at::Tensor K;
    for (int64_t k = 1; k <= out; ++k) {
      const at::Tensor B = F[out][k].reshape({N * C, -1});
      const at::Tensor term = at::mm(B, B.t()).view({N, C, N, C}) * c.kappa[k].view({N, 1, N, 1});
      K = K.defined() ? K + term : term;
    }
    const at::Tensor SKS =
        at::einsum("iajc,jcd->iajd", {at::einsum("iab,ibjc->iajc", {c.S, K}), c.S});
    trace_sq = (SKS * K).sum(at::kDouble);
  } else {
    trace_sq = at::zeros({}, options.dtype(at::kDouble));
    for (int64_t k = 1; k <= out; ++k) {
      for (int64_t k2 = 1; k2 <= out; ++k2) {
        const at::Tensor e = E(k2, k);
        trace_sq = trace_sq + weighted_gram(c.kappa[k] * c.kappa[k2], e, e);
      }
    }
  }

  // 2 tr(GR) + tr(R²) by the Gram forms of §12.3. Where a factor is diagonal (N_LL = diag r_L;
  // G = D'_{m-1} when k = m − 1) its Gram is one of vectors: ⟨diag a, diag b⟩ = a·b.
  for (int64_t k = 1; k <= L; ++k) {
    for (int64_t k2 = 1; k2 <= L; ++k2) {
      const at::Tensor weight = c.kappa[k] * c.kappa[k2];
      if (k == L && k2 == L) {
        trace_sq = trace_sq + weighted_gram(weight, r[L], r[L])                          // Q1
                   + 2 * weighted_gram(weight, E(L, L).diagonal(0, 1, 2), r[L]);         // 2·T1
        continue;
      }
      trace_sq = trace_sq + weighted_gram(weight, N_mat[k][k2], N_mat[k][k2])  // Q1
                 + 2 * weighted_gram(weight, E(k, k2), N_mat[k][k2]);         // 2·T1
    }
  }
  for (int64_t m = 2; m <= out; ++m) {
    for (int64_t k = 1; k < m; ++k) {
      const at::Tensor pair_weight = c.kappa[k] * at::mm(pvec[m], pvec[m].t());
      if (k == m - 1) {
        const at::Tensor& d = c.d1[m - 1];
        trace_sq = trace_sq + 4 * paired_products_diagonal(c.kappa[k], E(m, k), pvec[m], d,
                                                           c.z[m - 1]);  // 2·T2
        if (m <= L) {
          trace_sq = trace_sq + 4 * paired_products_diagonal(c.kappa[k], N_mat[m][k], pvec[m], d,
                                                             c.z[m - 1]);  // Q2
        }
        trace_sq = trace_sq + 2 * weighted_gram(pair_weight, d, d);  // Q3
        continue;
      }
      // g_ij = F_{j,m-1,k}ᵀ(φ'_{j,m-1} ∘ z_{i,m-1}): G_j = D'_{j,m-1} F_{j,m-1,k}
      const at::Tensor G = c.d1[m - 1].unsqueeze(2) * F[m - 1][k];
      trace_sq = trace_sq + 4 * paired_products(c.kappa[k], E(m, k), pvec[m], G, c.z[m - 1]);  // 2·T2
      if (m <= L) {
        trace_sq = trace_sq + 4 * paired_products(c.kappa[k], N_mat[m][k], pvec[m], G, c.z[m - 1]);  // Q2
      }
      trace_sq = trace_sq + 2 * weighted_gram(pair_weight, G, G);  // Q3
    }
  }
  return {trace, trace_sq};
}

}  // namespace

// The float64 evaluation of a float32 problem: the Gram forms sum terms of both signs, whose
// rounding is relative to Σ|terms| (docs/math.md §12.5); in float32 that cost 2.6% of tr(H²) on a
// small-weight network. Converting is exact, and autograd differentiates through it.
namespace {
MlpProblem in_float64(const MlpProblem& p) { return with_dtype(p, at::kDouble); }
}  // namespace

DeepInputs in_float64(const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
                      const c10::List<std::optional<at::Tensor>>& biases) {
  const auto wide = [](const at::Tensor& t) {
    return t.defined() && t.is_floating_point() ? t.to(at::kDouble) : t;
  };
  DeepInputs out;
  out.x = wide(x);
  out.target = wide(target);
  for (const at::Tensor& w : weights) out.weights.push_back(wide(w));
  for (const std::optional<at::Tensor>& b : biases) {
    out.biases.push_back(b ? std::optional<at::Tensor>(wide(*b)) : std::nullopt);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> deep_hessian_traces(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss) {
  const MlpProblem p = in_float64(check_deep_problem(kOp, x, target, weights, biases, activation,
                                                     reduction, loss));
  // The NaN of a non-finite input stays NaN (as every op's, docs/math.md §5.1).
  const auto [trace, trace_sq] = traces_from(forward(p));
  return {trace.to(x.scalar_type()), trace_sq.to(x.scalar_type())};
}

// Certified bounds on the rounding errors of deep_hessian_traces' float64 evaluation (§12.5): the
// same chain run on magnitudes gives Σ|terms| of every sum (M_tr, M_sq), and each computed trace is
// within γ·M of the exact function of the coefficients, γ = 2(ℓ + κ)u/(1 − (ℓ + κ)u) with ℓ the
// longest chain of sums and products and κu the coefficients' own error (§11.3).
std::tuple<at::Tensor, at::Tensor> deep_trace_errors(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss) {
  at::NoGradGuard no_grad;
  const MlpProblem p = in_float64(check_deep_problem(kOp, x.detach(), target, weights, biases,
                                                     activation, reduction, loss));
  Coefficients c = forward(p);
  const int64_t out = static_cast<int64_t>(c.weight.size()) - 1;
  const int64_t N = p.num_samples();
  int64_t widths = p.in_dim(), widest = p.in_dim();
  for (const Layer& layer : p.layers) {
    widths += layer.weight.size(0);
    widest = std::max<int64_t>(widest, layer.weight.size(0));
  }
  // The logits' own rounding, as it reaches S and e (losses.h logit_rounding, §11.3).
  const LogitRounding rounding =
      logit_rounding(p.loss, c.e_magnitude, c.z[out - 1], c.weight[out], p.layers.back().bias,
                     p.target.view(c.e.sizes()), p.loss_scale());
  c.e = rounding.e_magnitude;
  c.S = c.S.abs();
  for (int64_t l = 0; l <= out; ++l) {
    for (std::vector<at::Tensor>* v : {&c.z, &c.d1, &c.d2, &c.weight}) {
      if ((*v)[l].defined()) (*v)[l] = (*v)[l].abs();
    }
  }
  for (int64_t l = 1; l <= out; ++l) {
    c.kappa[l] = at::mm(c.z[l - 1], c.z[l - 1].t()) + (p.layers[l - 1].bias ? 1 : 0);
  }
  const auto [trace_magnitude, trace_sq_magnitude] = traces_from(c);
  const double chain = static_cast<double>(widths * 4 + widest * widest + N * N + 4 * out + 32) +
                       kRoundingAllowance + rounding.allowance;
  const double u = 0x1p-53, gamma = 2 * chain * u / (1 - chain * u);
  return {gamma * trace_magnitude, gamma * trace_sq_magnitude};
}

// Every WS bound of the network (docs/math.md §5, §12.5), from the float64 traces of the exactly
// converted inputs (differentiable back to the inputs' dtype), widened by the §5.1 allowance of
// the inputs' dtype and by the certified errors above, rounded outward to the inputs' dtype; then
// the traces in that dtype. The bounds are those of _ws_bounds_from_traces (one implementation).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
deep_ws_bounds(const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
               const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
               c10::string_view reduction, c10::string_view loss) {
  static auto bounds_op =
      find_op<WsBoundsFromTracesSignature>("torch_ws::_ws_bounds_from_traces");
  // Checked here first, so that a bad call's message names the function the user called.
  const int64_t num_params = check_deep_problem("torch_ws.deep_ws_bounds", x, target, weights,
                                                biases, activation, reduction, loss)
                                 .num_params();
  const DeepInputs w = in_float64(x, target, weights, biases);
  const auto [trace, trace_sq] =
      deep_hessian_traces(w.x, w.target, w.weights, w.biases, activation, reduction, loss);
  const auto [trace_error, trace_sq_error] =
      deep_trace_errors(w.x, w.target, w.weights, w.biases, activation, reduction, loss);
  const auto [max_upper, max_lower, min_lower, min_upper, spread] =
      bounds_op.call(trace, trace_sq, num_params, x.scalar_type(), trace_error.item<double>(),
                     trace_sq_error.item<double>());
  return {max_upper, max_lower, min_lower, min_upper, spread, trace.to(x.scalar_type()),
          trace_sq.to(x.scalar_type())};
}

}  // namespace torch_ws

TORCH_LIBRARY_FRAGMENT(torch_ws, m) {
  // tr H and tr(H²) of Linear → φ → … → Linear (L ≥ 1 hidden layers, one φ), docs/math.md §12.
  // `biases`: empty, or one entry per layer (None for a layer without bias).
  m.def(
      "deep_hessian_traces(Tensor x, Tensor target, Tensor[] weights, Tensor?[] biases, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\") "
      "-> (Tensor trace, Tensor trace_sq)");
  // Every WS bound (docs/math.md §12.5), then tr H and tr(H²); arguments as above.
  m.def(
      "deep_ws_bounds(Tensor x, Tensor target, Tensor[] weights, Tensor?[] biases, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\") "
      "-> (Tensor lambda_max_upper, Tensor lambda_max_lower, Tensor lambda_min_lower, "
      "Tensor lambda_min_upper, Tensor spread_upper, Tensor trace, Tensor trace_sq)");
  // Certified bounds on the float64 rounding errors of those traces (not differentiable).
  m.def(
      "_deep_trace_errors(Tensor x, Tensor target, Tensor[] weights, Tensor?[] biases, "
      "str activation, str reduction, str loss) -> (Tensor trace_error, Tensor trace_sq_error)");
}

TORCH_LIBRARY_IMPL(torch_ws, CompositeImplicitAutograd, m) {
  m.impl("deep_hessian_traces", &torch_ws::deep_hessian_traces);
  m.impl("_deep_trace_errors", &torch_ws::deep_trace_errors);
  m.impl("deep_ws_bounds", &torch_ws::deep_ws_bounds);
}
