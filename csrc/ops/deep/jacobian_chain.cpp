#include "ops/deep/jacobian_chain.h"

#include "core/losses.h"
#include "ops/deep/forward.h"

#include "autograd/support.h"  // recording_of

#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>

#include <algorithm>

namespace torch_ws {

namespace {

void add_bias_flags(Coefficients& c, const MlpProblem& p) {
  const int64_t out = static_cast<int64_t>(p.layers.size());
  c.bias.assign(out + 1, false);
  for (int64_t l = 1; l <= out; ++l) c.bias[l] = p.layers[l - 1].bias.has_value();
}

}  // namespace

Coefficients coefficient_values(const MlpProblem& p) {
  DeepForward f = deep_forward_recorded(p);
  Coefficients c{std::move(f.z), std::move(f.d1), std::move(f.d2), std::move(f.weight), {},
                 f.terms.S, f.terms.e, f.terms.e_magnitude};
  add_bias_flags(c, p);
  return c;
}

CoefficientMagnitudes coefficient_magnitudes(const MlpProblem& p) {
  at::NoGradGuard no_grad;
  DeepForward f = deep_forward(p);
  const int64_t out = static_cast<int64_t>(p.layers.size());
  // The logits' own rounding, as it reaches S and e (losses.h logit_rounding, §11.3).
  const LogitRounding rounding =
      logit_rounding(p.loss, f.terms.e_magnitude, f.z[out - 1], f.weight[out],
                     p.layers.back().bias, f.target, p.loss_scale());
  Coefficients c{std::move(f.z), std::move(f.d1), std::move(f.d2), std::move(f.weight), {},
                 f.terms.S.abs(), rounding.e_magnitude, rounding.e_magnitude};
  for (int64_t l = 0; l <= out; ++l) {
    for (std::vector<at::Tensor>* v : {&c.z, &c.d1, &c.d2, &c.weight}) {
      if ((*v)[l].defined()) (*v)[l] = (*v)[l].abs();
    }
  }
  add_bias_flags(c, p);
  return {std::move(c), rounding.allowance};
}

Coefficients rows_of(const Coefficients& c, int64_t begin, int64_t end) {
  Coefficients out = c;
  const auto rows = [&](const at::Tensor& t) {
    return t.defined() ? t.narrow(0, begin, end - begin) : t;
  };
  for (std::vector<at::Tensor>* v : {&out.z, &out.d1, &out.d2}) {
    for (at::Tensor& t : *v) t = rows(t);
  }
  out.S = rows(c.S);
  out.e = rows(c.e);
  out.e_magnitude = rows(c.e_magnitude);
  return out;
}

namespace {

// The chain's tensors from the coefficients it reads (φ'_l, φ''_l, W_l, e), docs/math.md §12.3:
// F_lk = W_l D'_{l-1} F_{l-1,k} (k < l), p_l = B_lᵀe, r_l = φ''_l ∘ W_{l+1}ᵀp_{l+1}, and the
// curvature blocks N[k][k2] (k ≥ k2, not (L, L)). F_kk = I is left to the caller.
struct ChainParts {
  std::vector<std::vector<at::Tensor>> F, curvature;
  std::vector<at::Tensor> p, r;
};

// Every part undefined, indexed 0..o.
ChainParts empty_chain_parts(int64_t out) {
  const std::vector<at::Tensor> column(out + 1);
  return {std::vector<std::vector<at::Tensor>>(out + 1, column),
          std::vector<std::vector<at::Tensor>>(out + 1, column), column, column};
}

ChainParts build_chain(const std::vector<at::Tensor>& d1, const std::vector<at::Tensor>& d2,
                       const std::vector<at::Tensor>& weight, const at::Tensor& e, int64_t out) {
  const int64_t L = out - 1;
  ChainParts c = empty_chain_parts(out);
  auto& F = c.F;
  // F_kk = I is used as such only where a product with it is free: F_{k+1,k} = W_{k+1} D'_k is
  // a column scaling, and the curvature blocks' l = k terms scale rows (an H³ product each
  // saved per sample).
  for (int64_t k = 1; k < out; ++k) {
    F[k + 1][k] = weight[k + 1].unsqueeze(0) * d1[k].unsqueeze(1);
    for (int64_t l = k + 2; l <= out; ++l) {
      F[l][k] = at::matmul(weight[l], d1[l - 1].unsqueeze(2) * F[l - 1][k]);
    }
  }
  // p_l = B_lᵀe (B_o = I: p_o = e)
  for (int64_t l = 1; l < out; ++l) c.p[l] = at::bmm(e.unsqueeze(1), F[out][l]).squeeze(1);
  c.p[out] = e.clone();
  for (int64_t l = 1; l <= L; ++l) c.r[l] = d2[l] * at::matmul(c.p[l + 1], weight[l + 1]);
  // Only k ≥ k2: N[k2][k] = N[k][k2]ᵀ, and every user reads this orientation (an (N, H, H)
  // array saved per pair, and a transposed layout that Grams would copy).
  for (int64_t k = 1; k <= L; ++k) {
    for (int64_t k2 = 1; k2 <= k; ++k2) {
      if (k == L && k2 == L) continue;
      at::Tensor sum;
      for (int64_t l = k + 1; l <= L; ++l) {
        const at::Tensor term =
            at::matmul(F[l][k].transpose(1, 2), c.r[l].unsqueeze(2) * F[l][k2]);
        sum = sum.defined() ? sum + term : term;
      }
      // l = k, where F_kk = I: diag(r_k)·F_{k,k2}, a row scaling; for k = k2 diag(r_k) itself,
      // added to the diagonal of the other terms (a dense diagonal matrix, formed and added,
      // was two passes over an (N, H, H) array).
      if (k2 < k) {
        const at::Tensor term = c.r[k].unsqueeze(2) * F[k][k2];
        sum = sum.defined() ? sum + term : term;
      } else {  // k = k2 < L (N[L][L] is left unbuilt): the terms l > k are there
        sum.diagonal(0, 1, 2).add_(c.r[k]);
      }
      c.curvature[k][k2] = sum;
    }
  }
  return c;
}

// Every tensor of the chain in one fixed order: F[l][k] (k < l), p[1..o], r[1..L], then the
// curvature blocks (k ≥ k2, not (L, L)).
template <typename Each>
void each_part(ChainParts& c, int64_t out, const Each& each) {
  const int64_t L = out - 1;
  for (int64_t k = 1; k < out; ++k) {
    for (int64_t l = k + 1; l <= out; ++l) each(c.F[l][k]);
  }
  for (int64_t l = 1; l <= out; ++l) each(c.p[l]);
  for (int64_t l = 1; l <= L; ++l) each(c.r[l]);
  for (int64_t k = 1; k <= L; ++k) {
    for (int64_t k2 = 1; k2 <= k; ++k2) {
      if (k != L || k2 != L) each(c.curvature[k][k2]);
    }
  }
}

}  // namespace
}  // namespace torch_ws

// The per-sample chain (build_chain) as one autograd node with a hand-derived reverse pass
// (docs/math.md §12.4): autograd through it kept every step's operands, products of (N, H, H)
// arrays such as φ'_{l-1} ∘ F_{l-1,k} and r_l ∘ F_lk2, and formed the same products again in
// its backward. The node keeps the chain's own tensors (which its readers keep anyway). Without
// create_graph its backward accumulates the (N, H, H) adjoints in place; with it every step is
// out of place, so that autograd records it and double backward stays exact. At global scope
// for its grad_fn's name (autograd/skeleton.h).
class JacobianChainBackward : public torch::autograd::Function<JacobianChainBackward> {
 public:
  // The node's inputs from the coefficients: φ'_1..φ'_L, φ''_1..φ''_L, W_1..W_o, e (split reads
  // them back).
  static std::vector<at::Tensor> inputs_of(const torch_ws::Coefficients& c, int64_t out) {
    std::vector<at::Tensor> inputs;
    for (int64_t l = 1; l < out; ++l) inputs.push_back(c.d1[l]);
    for (int64_t l = 1; l < out; ++l) inputs.push_back(c.d2[l]);
    for (int64_t l = 1; l <= out; ++l) inputs.push_back(c.weight[l]);
    inputs.push_back(c.e);
    return inputs;
  }

  // inputs: inputs_of's (out = o); outputs in each_part's order.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                int64_t out, at::TensorList inputs) {
    const auto [d1, d2, weight, e] = split(inputs, out);
    torch_ws::ChainParts c = torch_ws::build_chain(d1, d2, weight, e, out);
    torch::autograd::variable_list outputs;
    torch_ws::each_part(c, out, [&](at::Tensor& t) { outputs.push_back(t); });
    std::vector<at::Tensor> saved = inputs.vec();
    saved.insert(saved.end(), outputs.begin(), outputs.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["out"] = out;
    return outputs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const int64_t out = ctx->saved_data["out"].toInt(), L = out - 1;
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const size_t input_count = static_cast<size_t>(2 * L + out + 1);
    const std::vector<at::Tensor> inputs(saved.begin(), saved.begin() + input_count);
    const auto [d1, d2, weight, e] = split(inputs, out);
    torch_ws::ChainParts c = torch_ws::empty_chain_parts(out),
                         bar = torch_ws::empty_chain_parts(out);
    {
      size_t k = input_count;
      torch_ws::each_part(c, out, [&](at::Tensor& t) { t = saved[k++]; });
      k = 0;
      torch_ws::each_part(bar, out, [&](at::Tensor& t) { t = grad_outputs[k++]; });
    }
    const auto add = [](at::Tensor& sum, const at::Tensor& term) {
      sum = sum.defined() ? sum + term : term;
    };
    auto& F = c.F;
    auto& F_bar = bar.F;
    // Without create_graph the (N, H, H) adjoints F̄ accumulate in place, in arrays this pass made
    // (a fresh (N, H, H) array per step was most of the pass: an addition 114 ms at [200, 200],
    // N = 500, against ~10 ms in place); with create_graph every step stays out of place, so that
    // autograd records it.
    const bool in_place = !at::GradMode::is_enabled();
    std::vector<std::vector<bool>> owned(out + 1, std::vector<bool>(out + 1, false));
    // F̄_lk += term, `term` a fresh array (this pass's own).
    const auto add_F = [&](int64_t l, int64_t k, at::Tensor term) {
      at::Tensor& sum = F_bar[l][k];
      if (in_place && sum.defined() && owned[l][k]) {
        sum.add_(term);
      } else if (in_place && sum.defined()) {  // an upstream gradient: the fresh term takes it
        sum = term.add_(sum);
      } else {
        sum = sum.defined() ? sum + term : term;
      }
      owned[l][k] = true;
    };
    // term ∘ factor (broadcast), in place where allowed (`term` fresh).
    const auto times = [&](at::Tensor term, const at::Tensor& factor) {
      return in_place ? term.mul_(factor) : term * factor;
    };
    std::vector<at::Tensor> d1_bar(out + 1), d2_bar(out + 1), weight_bar(out + 1);
    at::Tensor e_bar;

    // The curvature blocks: each term F_lkᵀ diag(r_l) F_lk2 gives F̄_lk += diag(r_l) F_lk2 N̄ᵀ,
    // F̄_lk2 += diag(r_l) F_lk N̄, r̄_l += diag(F_lk N̄ F_lk2ᵀ); diag(r_k) F_kk2 gives
    // F̄_kk2 += diag(r_k) N̄, r̄_k += rows of N̄ ∘ F_kk2; diag(r_k) gives r̄_k += diag(N̄).
    for (int64_t k = 1; k <= L; ++k) {
      for (int64_t k2 = 1; k2 <= k; ++k2) {
        if (k == L && k2 == L) continue;
        const at::Tensor& n_bar = bar.curvature[k][k2];
        if (!n_bar.defined()) continue;
        for (int64_t l = k + 1; l <= L; ++l) {
          const at::Tensor r = c.r[l].unsqueeze(2);
          const at::Tensor F_n = at::matmul(F[l][k], n_bar);  // (N, H_l, H_k2)
          add_F(l, k, times(at::matmul(F[l][k2], n_bar.transpose(1, 2)), r));
          add(bar.r[l], (F_n * F[l][k2]).sum(2));
          add_F(l, k2, times(F_n, r));
        }
        if (k2 < k) {
          add_F(k, k2, c.r[k].unsqueeze(2) * n_bar);
          add(bar.r[k], (n_bar * F[k][k2]).sum(2));
        } else {
          add(bar.r[k], n_bar.diagonal(0, 1, 2));
        }
      }
    }
    // r_l = φ''_l ∘ (p_{l+1} W_{l+1})
    for (int64_t l = 1; l <= L; ++l) {
      if (!bar.r[l].defined()) continue;
      const at::Tensor g = bar.r[l] * d2[l];
      add(d2_bar[l], bar.r[l] * at::matmul(c.p[l + 1], weight[l + 1]));
      add(bar.p[l + 1], at::matmul(g, weight[l + 1].t()));
      add(weight_bar[l + 1], at::matmul(c.p[l + 1].t(), g));
    }
    // p_l = B_lᵀe (p_o = e)
    for (int64_t l = 1; l <= out; ++l) {
      if (!bar.p[l].defined()) continue;
      if (l == out) {
        add(e_bar, bar.p[l]);
        continue;
      }
      add(e_bar, at::bmm(F[out][l], bar.p[l].unsqueeze(2)).squeeze(2));
      add_F(out, l, e.unsqueeze(2) * bar.p[l].unsqueeze(1));
    }
    // F_lk = W_l (φ'_{l-1} ∘ F_{l-1,k}), l descending so that F̄_{l-1,k} is whole when read;
    // F_{k+1,k} = W_{k+1} ∘ φ'_k (columns).
    for (int64_t k = 1; k < out; ++k) {
      for (int64_t l = out; l >= k + 2; --l) {
        const at::Tensor& g = F_bar[l][k];
        if (!g.defined()) continue;
        const at::Tensor d = d1[l - 1].unsqueeze(2);
        const at::Tensor M_bar = at::matmul(weight[l].t(), g);  // (N, H_{l-1}, H_k)
        add(weight_bar[l], at::einsum("nak,nbk->ab", {g, d * F[l - 1][k]}));
        add(d1_bar[l - 1], (M_bar * F[l - 1][k]).sum(2));
        add_F(l - 1, k, times(M_bar, d));
      }
      const at::Tensor& g = F_bar[k + 1][k];
      if (!g.defined()) continue;
      add(weight_bar[k + 1], (g * d1[k].unsqueeze(1)).sum(0));
      add(d1_bar[k], (g * weight[k + 1].unsqueeze(0)).sum(1));
    }
    torch::autograd::variable_list grads;
    for (int64_t l = 1; l <= L; ++l) grads.push_back(d1_bar[l]);
    for (int64_t l = 1; l <= L; ++l) grads.push_back(d2_bar[l]);
    for (int64_t l = 1; l <= out; ++l) grads.push_back(weight_bar[l]);
    grads.push_back(e_bar);
    grads.insert(grads.begin(), at::Tensor());  // out
    return grads;
  }

 private:
  struct Inputs {
    std::vector<at::Tensor> d1, d2, weight;  // index l (0 unused)
    at::Tensor e;
  };
  static Inputs split(at::TensorList inputs, int64_t out) {
    const int64_t L = out - 1;
    Inputs in{std::vector<at::Tensor>(out + 1), std::vector<at::Tensor>(out + 1),
              std::vector<at::Tensor>(out + 1), inputs.back()};
    for (int64_t l = 1; l <= L; ++l) {
      in.d1[l] = inputs[l - 1];
      in.d2[l] = inputs[L + l - 1];
    }
    for (int64_t l = 1; l <= out; ++l) in.weight[l] = inputs[2 * L + l - 1];
    return in;
  }
};

namespace torch_ws {

JacobianChain::JacobianChain(const Coefficients& coefficients)
    : c(coefficients),
      out(static_cast<int64_t>(coefficients.weight.size()) - 1),
      L(out - 1),
      N(coefficients.z[0].size(0)),
      C(coefficients.e.size(1)) {
  const auto options = c.z[0].options();
  const std::vector<at::Tensor> inputs = JacobianChainBackward::inputs_of(c, out);
  ChainParts parts;
  // In reverse mode alone one autograd node with the reverse pass above (autograd/support.h).
  if (recording_of(at::TensorList(inputs)).reverse_only()) {
    const torch::autograd::variable_list outputs = JacobianChainBackward::apply(out, at::TensorList(inputs));
    parts = empty_chain_parts(out);
    size_t k = 0;
    each_part(parts, out, [&](at::Tensor& t) { t = outputs[k++]; });
  } else {
    parts = build_chain(c.d1, c.d2, c.weight, c.e, out);
  }
  F = std::move(parts.F);
  p = std::move(parts.p);
  r = std::move(parts.r);
  curvature = std::move(parts.curvature);
  for (int64_t k = 1; k <= out; ++k) {
    const int64_t width = c.weight[k].size(0);
    F[k][k] = at::eye(width, options).expand({N, width, width});
  }
}

at::Tensor JacobianChain::E(int64_t m, int64_t k) const {
  return at::matmul(F[out][m].transpose(1, 2), at::matmul(c.S, F[out][k]));
}

at::Tensor JacobianChain::features_in(int64_t l) const {
  const at::Tensor& z = c.z[l - 1];
  return c.bias[l] ? at::cat({z, at::ones({N, 1}, z.options())}, 1) : z;
}

}  // namespace torch_ws
