// The deep family's engine table (engines.h). One row per engine; nothing else chooses.
#include "ops/deep/engines.h"

#include "core/rounding.h"
#include "core/ws_bound.h"  // kRoundingAllowance

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

namespace torch_ws {
namespace {

// What the table reads of a problem: shapes only.
struct DeepShape {
  int64_t samples, in_dim, params, outputs;
  std::vector<int64_t> widths;  // H_1, …, H_o (H_o = C)
};

DeepShape deep_shape_of(const MlpProblem& p) {
  DeepShape s{p.num_samples(), p.in_dim(), p.num_params(), p.num_outputs(), {}};
  for (const Layer& layer : p.layers) s.widths.push_back(layer.weight.size(0));
  return s;
}

int64_t sum_of_widths(const DeepShape& s) {
  int64_t sum = 0;
  for (const int64_t w : s.widths) sum += w;
  return sum;
}

// ℓ of an entry of the assembled Hessian (docs/math.md §12.7): the per-sample coefficients
// through the layers (§12.5's chain), then the sum over the N samples.
double assembled_entry_chain(const DeepShape& s) {
  const int64_t widest = *std::max_element(s.widths.begin(), s.widths.end());
  return static_cast<double>(4 * (s.in_dim + sum_of_widths(s)) + widest + s.samples +
                             4 * s.widths.size() + 32);
}

// The parameter-space engine's work against the sample-space engine's, fitted on 2 cores
// (float64, value and gradient, 8 shapes from n = 625 to 2,929, N = 100 to 2,000; session 18,
// `python benchmarks/bench_deep_engines.py`): its time ratio was 1.0–2.1× the work ratio, median
// 1.9 (docs/engines.md).
constexpr double kAssemblyWeight = 1.9;

// The largest n the assembly takes: with gradients autograd keeps every block, n² float64 numbers
// (1.1 GiB at this n); without, it holds one block at a time. (The one-hidden-layer engines keep
// the whole n × n Hessian and its adjoint in their own loops: kMaxParameterSpaceParams.)
constexpr int64_t kMaxAssembledParams = 12288;

struct DeepEngineEntry {
  Engine engine;
  const char* cost;  // its order and cost, in words
  // Why it refuses a problem of this shape; empty when it takes it.
  std::string (*refusal)(const DeepShape&);
  // Multiply-adds of the value, weighted: the automatic choice takes the engine with the least.
  double (*work)(const DeepShape&);
  // ℓ of docs/math.md §12.5 / §12.7 without the coefficients' and the logits' shares.
  double (*error_chain)(const DeepShape&);
  std::pair<at::Tensor, at::Tensor> (*evaluate)(const JacobianChain&);
  // §12.5's M_tr and M_sq (or upper bounds) from a chain of magnitudes.
  std::pair<at::Tensor, at::Tensor> (*magnitudes)(const JacobianChain&);
};

// Parameter row first: on equal work the Hessian is the smaller object.
const DeepEngineEntry kDeepEngines[] = {
    {Engine::ParameterSpace,
     "the n×n Hessian assembled by blocks, one product over the samples each (ATen, any "
     "device), O(N·n²) time, O(n² + N·H²) memory",
     [](const DeepShape& s) -> std::string {
       if (s.params <= kMaxAssembledParams) return "";
       return "holds the n×n Hessian's blocks, and n = " + std::to_string(s.params) +
              " exceeds the limit of " + std::to_string(kMaxAssembledParams);
     },
     // The lower blocks' products and the cross-layer terms: about N·n².
     [](const DeepShape& s) {
       const auto n = static_cast<double>(s.params);
       return kAssemblyWeight * static_cast<double>(s.samples) * n * n;
     },
     // An entry's chain, twice for its square, then the sum over the n² entries.
     [](const DeepShape& s) {
       const auto n = static_cast<double>(s.params);
       return 2 * assembled_entry_chain(s) + n * n;
     },
     &assembled_hessian_traces,
     // tr H's evaluation on magnitudes, and ‖M‖²_F bounded over the samples (§12.7)
     &assembled_hessian_magnitudes},
    {Engine::SampleSpace,
     "Gram forms of per-sample matrices in N×N feature kernels (ATen, any device), "
     "O(N²·(ΣH)²) time, O(N·H² + tiles of (rows, N)) memory",
     [](const DeepShape&) { return std::string(); },
     // The Grams of the per-sample blocks of every pair of layers: about 4·N²·(Σ_l H_l)², and
     // the Gauss-Newton part's C × C blocks on top (fitted: C = 10 took 3.5× the one-logit
     // estimate's share at [32, 32], N = 500).
     [](const DeepShape& s) {
       const auto n = static_cast<double>(s.samples), h = static_cast<double>(sum_of_widths(s));
       return 4 * n * n * h * h * (1 + static_cast<double>(s.outputs - 1) / 4);
     },
     // §12.5: the Grams sum N² terms of inner products of length ≤ H², whose left factors are
     // sums of two per-sample terms (one addition more than the terms' own chains: + 33), and
     // the paired products taken as one Gram (§12.3) sum over the C logits after it (+ C + 3).
     [](const DeepShape& s) {
       const int64_t widest =
           std::max(s.in_dim, *std::max_element(s.widths.begin(), s.widths.end()));
       return static_cast<double>(4 * (s.in_dim + sum_of_widths(s)) + widest * widest +
                                  s.samples * s.samples + 4 * s.widths.size() + 33 +
                                  s.outputs + 3);
     },
     &gram_form_traces,
     [](const JacobianChain& magnitudes) { return gram_form_magnitudes(magnitudes); }},
};

const DeepEngineEntry& entry_of(Engine engine) {
  for (const DeepEngineEntry& e : kDeepEngines) {
    if (e.engine == engine) return e;
  }
  TORCH_INTERNAL_ASSERT(false, "no deep engine row for ", engine_name(engine));
}

Engine choose(const DeepShape& s) {
  return choose_from_table(kDeepEngines, s, [](const DeepEngineEntry&) { return true; });
}

}  // namespace

Engine choose_deep_engine(const MlpProblem& p) { return choose(deep_shape_of(p)); }

std::vector<std::string> describe_deep_engines(const MlpProblem& p) {
  const DeepShape s = deep_shape_of(p);
  const Engine chosen = choose(s);
  std::vector<std::string> out;
  for (const DeepEngineEntry& e : kDeepEngines) {
    out.push_back(engine_line(e.engine, e.cost, e.refusal(s), e.engine == chosen));
  }
  return out;
}

std::pair<at::Tensor, at::Tensor> deep_traces_by(Engine engine, const Coefficients& c) {
  return entry_of(engine).evaluate(JacobianChain(c));
}

std::pair<at::Tensor, at::Tensor> deep_magnitudes_by(Engine engine, const Coefficients& magnitudes) {
  return entry_of(engine).magnitudes(JacobianChain(magnitudes));
}

int64_t automatic_interval_steps(const MlpProblem& p) {
  constexpr int64_t kFewest = 32, kMost = 128;
  if (assembled_certificate_applies(p)) return kFewest;
  const DeepShape s = deep_shape_of(p);
  // A product's multiply-adds (§12.6): the tangent's forward pass, then the adjoint's tangent and
  // the two products of each layer's gradient block, about 6·N·n; the traces' are the chosen
  // engine's weighted work (its row of the table above).
  const double product = 6 * static_cast<double>(s.samples) * static_cast<double>(s.params);
  const double traces = entry_of(choose(s)).work(s);
  // An eighth of the traces' work (the exact tr(H²) stays what a call costs), and Q and fl(HQ) in
  // float64 at most 2²⁴ numbers each (128 MiB).
  const double worth = std::min(traces / (8 * product), 0x1p24 / static_cast<double>(s.params));
  return std::clamp(static_cast<int64_t>(worth), kFewest, kMost);
}

double deep_error_chain(Engine engine, const MlpProblem& p) {
  return entry_of(engine).error_chain(deep_shape_of(p));
}

bool assembled_certificate_applies(const MlpProblem& p) {
  constexpr int64_t kMaxParams = 4096;
  constexpr double kMaxWork = 0x1p34;
  const auto n = static_cast<double>(p.num_params());
  return p.num_params() <= kMaxParams && static_cast<double>(p.num_samples()) * n * n <= kMaxWork;
}

bool try_assembled_certificate(RitzCertificate& certificate, double sign, const MlpProblem& p,
                               double trace_sq_high) {
  // Only where the interval is still wider than 1% (the other guarantees' target): the assembly
  // costs up to ~0.5 s, which a training loop that tracks λ_max every few steps should not pay
  // for digits it does not need.
  constexpr double kWorthIt = 1.01;
  const double lower = certificate.lower, upper = certificate.upper;
  const bool wide = !(upper <= kWorthIt * lower) || lower <= 0;
  if (!wide || !std::isfinite(lower) || !assembled_certificate_applies(p)) return false;
  const AssembledHessian h = assemble_hessian(with_dtype(p, at::kDouble));
  return certify_on_assembled(certificate, sign, h.matrix, h.forming_error,
                              std::sqrt(trace_sq_high));
}

AssembledHessian assemble_hessian(const MlpProblem& p, int64_t begin, int64_t end) {
  if (end < 0) end = p.num_samples();
  if (begin == end) {  // an empty share (a rank without samples): no terms
    const int64_t n = p.num_params();
    return {at::zeros({n, n}, p.x.options().dtype(at::kDouble)), 0.0};
  }
  const Coefficients values = rows_of(coefficient_values(p), begin, end);
  const at::Tensor matrix = assembled_hessian(JacobianChain(values));
  // |fl(H_ab) − H_ab| ≤ γ·M_ab with M the same assembly on magnitudes (§12.7, one more operation
  // for the symmetrization), so ‖fl(H) − H‖₂ ≤ ‖fl(H) − H‖_F ≤ γ·‖M‖_F, and ‖M‖_F is bounded
  // without forming M (assembled_frobenius_bound, its own rounding included).
  const CoefficientMagnitudes m = coefficient_magnitudes(p);
  const double magnitude_norm =
      assembled_frobenius_bound(JacobianChain(rows_of(m.magnitudes, begin, end)));
  const double chain =
      assembled_entry_chain(deep_shape_of(p)) + 1 + kRoundingAllowance + m.logit_allowance;
  // (γ doubled, as §12.5)
  return {matrix, 2 * gamma(chain) * magnitude_norm};
}

}  // namespace torch_ws
