// The one place that chooses an engine and a tile size (the engine table below), and the
// evaluation every kernel calls.
#include "engines/dispatch.h"

#include "core/weighted_sum.h"
#include "core/ws_bound.h"  // plain_cpu
#include "engines/parameter_space/parameter_space.h"
#include "engines/multi_output/engines.h"
#include "engines/sample_space/sample_space.h"

#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

namespace torch_ws {

const char* engine_name(Engine engine) {
  return engine == Engine::ParameterSpace ? "parameter" : "sample";
}

namespace {

std::string environment(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

}  // namespace

std::optional<Engine> engine_from_environment() {
  const std::string value = environment("TORCH_WS_ENGINE");
  if (value.empty() || value == "auto") return std::nullopt;
  if (value == "sample") return Engine::SampleSpace;
  if (value == "parameter") return Engine::ParameterSpace;
  TORCH_CHECK(false, "torch_ws: TORCH_WS_ENGINE must be 'auto', 'sample' or 'parameter', got '",
              value, "'");
}

void check_named_engine(Engine named, const std::string& why) {
  TORCH_CHECK(why.empty(), "torch_ws: TORCH_WS_ENGINE=", engine_name(named), " ", why,
              "; unset it or use '",
              engine_name(named == Engine::ParameterSpace ? Engine::SampleSpace
                                                          : Engine::ParameterSpace),
              "'");
}

std::string engine_line(Engine engine, const char* cost, const std::string& why, bool chosen) {
  return std::string(engine_name(engine)) + ": " + cost + "; " +
         (why.empty() ? "takes this problem" : "refuses it: " + why) +
         (chosen ? " (chosen)" : "");
}

namespace {

// TORCH_WS_TILE_SIZE: unset, "", "0" or "auto" → kAutoTile; "whole" → kWholeMatrices; a positive
// integer (digits only) → that tile size; anything else raises.
constexpr int64_t kAutoTile = 0, kWholeMatrices = -1;

int64_t tile_setting() {
  const std::string value = environment("TORCH_WS_TILE_SIZE");
  if (value.empty() || value == "0" || value == "auto") return kAutoTile;
  if (value == "whole") return kWholeMatrices;
  const bool digits = value.size() <= 12 && std::all_of(value.begin(), value.end(), [](char c) {
                        return c >= '0' && c <= '9';
                      });
  const int64_t tile = digits ? std::stoll(value) : 0;
  TORCH_CHECK(tile > 0, "torch_ws: TORCH_WS_TILE_SIZE must be a positive integer, 'auto' or "
              "'whole', got '", value, "'");
  return tile;
}

// The setting's tile, or N split evenly into blocks of at most `max_tile` samples (and at least
// `min_blocks`): blocks all of one size, so that the work is even at every N (a fixed T would
// leave a sliver of a last block: N = 513 took twice the time of N = 512 with one tile up to 512,
// then T = 256).
int64_t tile_size_from(int64_t num_samples, int64_t setting, int64_t max_tile,
                       int64_t min_blocks) {
  if (setting > 0) return std::min(setting, num_samples);
  if (setting == kWholeMatrices) return num_samples;
  const int64_t blocks = std::max((num_samples + max_tile - 1) / max_tile, min_blocks);
  return (num_samples + blocks - 1) / blocks;
}


// One logit: tiles of at most 256, whose dozen T×T work arrays stay cache-sized while their
// T×T×H products run near the BLAS peak. From 2·64 samples on there are at least two blocks
// (three tile pairs), so that the lanes run in parallel: one tile would leave the fused pass on
// one thread.
int64_t one_logit_tile(int64_t num_samples, int64_t setting) {
  constexpr int64_t kMaxTile = 256, kMinTile = 64;
  return tile_size_from(num_samples, setting, kMaxTile, num_samples >= 2 * kMinTile ? 2 : 1);
}

}  // namespace

int64_t tile_size_for(int64_t num_samples) {
  return one_logit_tile(num_samples, tile_setting());
}

int64_t multi_output_tile_size_for(int64_t num_samples, int64_t num_outputs) {
  // Each block pair holds a few (T·C)×(T·C) arrays (the logit blocks of T² pairs): T·C ≤ 1024 keeps
  // them at 8 MiB in float64 while their products (inner size H) still run near the BLAS peak.
  const int64_t max_tile = std::clamp<int64_t>(1024 / num_outputs, 16, 256);
  return tile_size_from(num_samples, tile_setting(), max_tile, 1);
}

int64_t multi_output_chunk_for(int64_t num_samples, int64_t num_outputs, int64_t num_params) {
  // The Jacobians of a chunk, and their products with S and H̄, are B·C·n float64 entries each:
  // about 2²² (32 MiB) of them.
  const int64_t max_chunk = std::max<int64_t>(1, (int64_t{1} << 22) / (num_outputs * num_params));
  return tile_size_from(num_samples, tile_setting(), max_chunk, 1);
}

namespace {

TracesResult multi_output_parameter_space(const MlpProblem& p, Gradients gradients) {
  return multi_output::parameter_space_traces(
      p, gradients, multi_output_chunk_for(p.num_samples(), p.num_outputs(), p.num_params()));
}

TracesResult one_logit_parameter_space(const MlpProblem& p, Gradients gradients) {
  ParameterSpaceResult r = parameter_space_cpu(p, gradients != Gradients::None,
                                               gradients == Gradients::ParametersAndX);
  auto scalar = [&](double v) { return at::scalar_tensor(v, p.x.options().dtype(at::kDouble)); };
  TracesResult out{scalar(r.trace), scalar(r.trace_sq), std::nullopt, std::nullopt};
  if (r.gradients) {
    out.trace_grad = std::move(r.gradients->first);
    out.trace_sq_grad = std::move(r.gradients->second);
  }
  return out;
}

// The pairwise stage of the one-logit sample-space engine: T×T tiles on the CPU, whole N×N
// matrices elsewhere or under TORCH_WS_TILE_SIZE=whole.
struct PairwiseStage {
  PairwiseResult result;
  bool tiled;
};

PairwiseStage pairwise_stage(const SampleFeatures& f, Gradients gradients, const Share& share) {
  const int64_t setting = tile_setting();
  if (f.x.is_cpu() && setting != kWholeMatrices) {
    return {pairwise_tiled_cpu(f, gradients, one_logit_tile(f.x.size(0), setting), share), true};
  }
  // Whole matrices are one piece of work: share 0 holds it, the others nothing (zeros, not
  // the N×N products computed and dropped).
  if (share.holds_diagonal()) return {pairwise_whole(f, gradients), false};
  PairwiseResult none{at::zeros({}, f.x.options().dtype(at::kDouble)), std::nullopt};
  if (gradients != Gradients::None) {
    SampleAdjoints a;
    a.U = at::zeros_like(f.U);
    a.V = at::zeros_like(f.V);
    a.phi0 = at::zeros_like(f.phi0);
    a.phi1 = at::zeros_like(f.phi1);
    if (gradients == Gradients::ParametersAndX) a.x = at::zeros_like(f.x);
    a.s = at::zeros_like(f.s);
    a.e = at::zeros_like(f.e);
    none.adjoints = std::move(a);
  }
  return {std::move(none), false};
}

TracesResult sample_space(const MlpProblem& p, Gradients gradients, const Share& share) {
  if (!p.one_logit()) {
    return multi_output::sample_space_traces(
        p, gradients, multi_output_tile_size_for(p.num_samples(), p.num_outputs()), share);
  }
  const bool with_gradients = gradients != Gradients::None;
  const bool need_grad_x = gradients == Gradients::ParametersAndX;
  const SampleFeatures f = sample_features(p, with_gradients);
  PairwiseResult pairwise = pairwise_stage(f, gradients, share).result;
  TracesResult out{at::Tensor(), pairwise.trace_sq, std::nullopt, std::nullopt};
  if (with_gradients) out.trace_sq_grad = chain_to_inputs(p, f, *pairwise.adjoints, need_grad_x);
  if (!share.holds_diagonal()) {
    out.trace = at::zeros_like(pairwise.trace_sq);
    if (with_gradients) out.trace_grad = zero_gradients(p, need_grad_x);
    return out;
  }
  const Diagonals d = diagonals(f);
  out.trace = trace_float64(f, d);
  if (with_gradients) {
    out.trace_grad = chain_to_inputs(p, f, trace_adjoints(f, d, need_grad_x), need_grad_x);
  }
  return out;
}

// α·a + β·b for each gradient (core/weighted_sum.h): on the CPU one fused loop each, which at
// the papers' scale (the parameter-space engine, a call of a few hundred µs) saves the dozens of
// small tensor operations of the any-device form.
InputGradients weigh_gradients(const at::Tensor& alpha, const InputGradients& a,
                               const at::Tensor& beta, const InputGradients& b) {
  if (alpha.is_cpu()) {
    const double wa = alpha.item<double>(), wb = beta.item<double>();
    return {weighted_sum_cpu(wa, a.x, wb, b.x), weighted_sum_cpu(wa, a.w1, wb, b.w1),
            weighted_sum_cpu(wa, a.b1, wb, b.b1), weighted_sum_cpu(wa, a.w2, wb, b.w2),
            weighted_sum_cpu(wa, a.b2, wb, b.b2)};
  }
  return {weighted_sum(alpha, a.x, beta, b.x), weighted_sum(alpha, a.w1, beta, b.w1),
          weighted_sum(alpha, a.b1, beta, b.b1), weighted_sum(alpha, a.w2, beta, b.w2),
          weighted_sum(alpha, a.b2, beta, b.b2)};
}

// The sample-space engine of either head on all the sums (no share).
TracesResult unshared_sample_space(const MlpProblem& p, Gradients gradients) {
  return sample_space(p, gradients, {});
}

// ---- The engine table: one row per engine, read by the automatic choice, TORCH_WS_ENGINE, the
// _engine/_engines ops and the error messages. ----

struct EngineEntry {
  Engine engine;
  bool one_logit;    // the head it serves: one logit (C = 1), or C ≥ 2 logits
  const char* cost;  // its order and cost, in words
  // Why it refuses a problem of this shape; empty when it takes it.
  std::string (*refusal)(const ProblemShape&);
  // Multiply-adds of a call with gradients, weighted as measured on 2 cores: the automatic
  // choice takes the engine with the least.
  double (*work)(const ProblemShape&);
  TracesResult (*evaluate)(const MlpProblem&, Gradients);
};

int64_t num_params_of(const ProblemShape& s) {
  return count_params(s.hidden, s.in_dim, s.num_outputs, s.has_b1, s.has_b2);
}

std::string hessian_too_large(const ProblemShape& s) {
  const int64_t n = num_params_of(s);
  if (n <= kMaxParameterSpaceParams) return "";
  return "holds the n×n Hessian, and n = " + std::to_string(n) + " exceeds the limit of " +
         std::to_string(kMaxParameterSpaceParams);
}

// The weight of the multi-output parameter engine's work count against the sample engine's,
// fitted on 2 cores (float32, value and gradients, 11 shapes from n = 21 to 1002): near the
// boundary the time ratio was 0.6–0.7 of the work ratio (0.5 keeps N = 500, C = 5, n = 325 on
// the parameter side, measured 28 ms against 31 ms).
constexpr double kMultiOutputParameterWeight = 0.5;

// Parameter rows first: on equal work the Hessian is the smaller object.
const EngineEntry kEngines[] = {
    {Engine::ParameterSpace, true,
     "the n×n Hessian assembled in fused CPU loops, O(N·n²) time, O(n²) memory",
     [](const ProblemShape& s) -> std::string {
       if (!s.device.is_cpu()) {
         return "runs on the CPU only for heads of one logit, but x is on " + s.device.str();
       }
       return hessian_too_large(s);
     },
     // About 2·N·n² multiply-adds (assembly, then H̄g_i per sample). These loops are scalar
     // code, and once H outgrows the caches each pass waits on memory while the pairwise
     // products run as BLAS: weighted by 0.14·√n, fitted on 2 cores (float32, both engines in
     // lanes): at the boundary it picks the faster engine or one within 5% of it (N = 512,
     // 1024, 2048 with n = 161 and 289).
     [](const ProblemShape& s) {
       const auto n = static_cast<double>(num_params_of(s));
       return 0.14 * std::sqrt(n) * 2.0 * n * n * static_cast<double>(s.num_samples);
     },
     &one_logit_parameter_space},
    {Engine::SampleSpace, true,
     "pairwise sums over samples in T×T tiles (whole matrices off the CPU), O(N²(D + H)) time, "
     "O(N(D + H) + T²) memory",
     [](const ProblemShape&) { return std::string(); },
     // About 1.5·N²·(8H + D) for the pairwise sums and their adjoints.
     [](const ProblemShape& s) {
       const auto n = static_cast<double>(s.num_samples);
       return 1.5 * n * n * static_cast<double>(8 * s.hidden + s.in_dim);
     },
     &unshared_sample_space},
    {Engine::ParameterSpace, false,
     "the n×n Hessian from the per-sample Jacobians (ATen, any device), O(N·C·n²) time, "
     "O(n²) memory",
     &hessian_too_large,
     // About 3·N·C·n² for the assembly, JH̄ and S̄, weighted by the fitted factor.
     [](const ProblemShape& s) {
       const auto n = static_cast<double>(num_params_of(s));
       return kMultiOutputParameterWeight * 3.0 * static_cast<double>(s.num_samples) *
              static_cast<double>(s.num_outputs) * n * n;
     },
     &multi_output_parameter_space},
    {Engine::SampleSpace, false,
     "pairwise sums over blocks of samples (ATen, any device), O(N²(D + C²H)) time, "
     "O(N(D + C·H) + (T·C)²) memory",
     [](const ProblemShape&) { return std::string(); },
     // About 3·N²·C·(C·H + 2H) + N²D for the block products and their adjoints.
     [](const ProblemShape& s) {
       const auto n = static_cast<double>(s.num_samples), c = static_cast<double>(s.num_outputs);
       const auto h = static_cast<double>(s.hidden);
       return n * n * (3.0 * c * (c * h + 2 * h) + static_cast<double>(s.in_dim));
     },
     &unshared_sample_space},
};

bool serves(const EngineEntry& e, const ProblemShape& s) {
  return e.one_logit == (s.num_outputs == 1);
}

const EngineEntry& entry_of(Engine engine, const ProblemShape& s) {
  for (const EngineEntry& e : kEngines) {
    if (e.engine == engine && serves(e, s)) return e;
  }
  TORCH_INTERNAL_ASSERT(false, "no engine row for ", engine_name(engine));
}

}  // namespace

Engine choose_engine(const ProblemShape& shape) {
  return choose_from_table(kEngines, shape,
                           [&](const EngineEntry& e) { return serves(e, shape); });
}

std::vector<std::string> describe_engines(const ProblemShape& shape) {
  const Engine chosen = choose_engine(shape);
  std::vector<std::string> out;
  for (const EngineEntry& e : kEngines) {
    if (!serves(e, shape)) continue;
    const std::string why = e.refusal(shape);
    out.push_back(engine_line(e.engine, e.cost, why, e.engine == chosen));
  }
  return out;
}

ProblemShape shape_of(const MlpProblem& p) {
  return {p.x.device(),      p.num_samples(),   p.in_dim(),      p.hidden(),
          p.num_outputs(),   p.b1().has_value(),  p.b2().has_value()};
}

namespace {

// Whether every value of a CPU tensor is finite, read in place: on the CPU this check is a
// loop over the inputs, not a dozen small tensor operations (~60 µs a call at the papers' scale,
// where a whole call costs ~300 µs).
bool all_finite_on_host(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "all_finite_on_host", [&] {
    const scalar_t* data = c.const_data_ptr<scalar_t>();
    for (int64_t i = 0, n = c.numel(); i < n && finite; ++i) finite = std::isfinite(data[i]);
  });
  return finite;
}

// The problem's tensors whose values enter the loss (the target only when it holds values).
std::vector<at::Tensor> valued_inputs(const MlpProblem& p) {
  std::vector<at::Tensor> out = {p.x};
  if (p.target.is_floating_point()) out.push_back(p.target);
  for (const Layer& layer : p.layers) {
    out.push_back(layer.weight);
    if (layer.bias) out.push_back(*layer.bias);
  }
  return out;
}

// 0 where every input value is finite, NaN otherwise, as a 0-d float64 tensor on the problem's
// device (no host sync off the CPU); undefined on the CPU when all is finite (nothing to add).
// Added to what the engines return, it gives one behaviour for NaN and ±Inf input across the
// ops: NaN out. (An infinite weight saturates φ, and the engines could return a finite number
// for it: a number for a network no loss can be evaluated on.)
at::Tensor non_finite_poison(const MlpProblem& p) {
  const std::vector<at::Tensor> inputs = valued_inputs(p);
  const auto options = p.x.options().dtype(at::kDouble);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (plain_cpu(p.x)) {
    for (const at::Tensor& t : inputs) {
      if (!all_finite_on_host(t)) return at::scalar_tensor(nan, options);
    }
    return at::Tensor();
  }
  const at::Tensor zero = at::zeros({}, options);
  at::Tensor finite = at::isfinite(inputs[0]).all();
  for (size_t i = 1; i < inputs.size(); ++i) finite = finite & at::isfinite(inputs[i]).all();
  return at::where(finite, zero, at::full_like(zero, nan));
}

void poison(at::Tensor& t, const at::Tensor& nan_or_zero) {
  if (nan_or_zero.defined() && t.defined() && t.numel() > 0) {
    t = t + nan_or_zero.to(t.scalar_type());
  }
}

TracesResult poisoned(TracesResult t, const MlpProblem& p) {
  const at::Tensor nan_or_zero = non_finite_poison(p);
  poison(t.trace, nan_or_zero);
  poison(t.trace_sq, nan_or_zero);
  for (auto* g : {&t.trace_grad, &t.trace_sq_grad}) {
    if (!*g) continue;
    for (at::Tensor* part : {&(*g)->x, &(*g)->w1, &(*g)->b1, &(*g)->w2, &(*g)->b2}) {
      poison(*part, nan_or_zero);
    }
  }
  return t;
}

}  // namespace

namespace {

// Below this tr(H²), float32 arithmetic may have lost terms to underflow (products of per-sample
// factors under 2⁻¹²⁶) by more than the rounding allowance covers (docs/math.md §5.1): a
// saturated network's float32 bound came out 0 below λ_max = 1.8·10⁻⁵⁵ (issue 30). There the
// traces are computed again in float64 on the exact values of the inputs: rare, and exact.
constexpr double kFloat32UnderflowRisk = 0x1p-60;

bool float32_underflow_risk(const MlpProblem& p, const at::Tensor& trace_sq) {
  if (p.x.scalar_type() != at::kFloat || !plain_cpu(trace_sq)) return false;
  const double value = trace_sq.item<double>();
  return std::isfinite(value) && value < kFloat32UnderflowRisk;
}

}  // namespace

TracesResult evaluate_traces(const MlpProblem& p, Gradients gradients) {
  const ProblemShape shape = shape_of(p);
  TracesResult out = poisoned(entry_of(choose_engine(shape), shape).evaluate(p, gradients), p);
  if (float32_underflow_risk(p, out.trace_sq)) {
    out = evaluate_traces(with_dtype(p, at::kDouble), gradients);
    for (auto* g : {&out.trace_grad, &out.trace_sq_grad}) {
      if (*g) **g = with_dtype(**g, at::kFloat);
    }
  }
  return out;
}

TracesResult evaluate_share(const MlpProblem& p, Gradients gradients, const Share& share) {
  return poisoned(sample_space(p, gradients, share), p);
}

namespace {
// The evaluation itself (below).
WeightedTraces weighted_gradient(const MlpProblem& p, bool need_grad_x,
                                 const TraceWeights& weights, const std::optional<Share>& share);
}  // namespace

WeightedTraces evaluate_weighted_gradient(const MlpProblem& p, bool need_grad_x,
                                          const TraceWeights& weights,
                                          const std::optional<Share>& share) {
  WeightedTraces out = weighted_gradient(p, need_grad_x, weights, share);
  if (!share && float32_underflow_risk(p, out.trace_sq)) {  // as evaluate_traces
    out = weighted_gradient(with_dtype(p, at::kDouble), need_grad_x, weights, share);
    out.grad = with_dtype(out.grad, at::kFloat);
  }
  return out;
}

namespace {

WeightedTraces weighted_gradient(const MlpProblem& p, bool need_grad_x,
                                 const TraceWeights& weights, const std::optional<Share>& share) {
  const Gradients gradients = need_grad_x ? Gradients::ParametersAndX : Gradients::Parameters;
  const bool parameter_space_engine =
      !share && choose_engine(shape_of(p)) == Engine::ParameterSpace;
  if (parameter_space_engine || !p.one_logit()) {
    // These engines' gradients come out per trace: weigh them.
    TracesResult t = share ? evaluate_share(p, gradients, *share) : evaluate_traces(p, gradients);
    const auto [alpha, beta] = weights(t.trace, t.trace_sq);
    return {t.trace, t.trace_sq, weigh_gradients(alpha, *t.trace_grad, beta, *t.trace_sq_grad)};
  }
  // The chain is linear in the adjoints: weigh them, then chain once (docs/math.md §6.3).
  const Share part = share.value_or(Share{});
  const SampleFeatures f = sample_features(p, /*for_gradients=*/true);
  const PairwiseStage pairwise = pairwise_stage(f, gradients, part);
  const Diagonals d = diagonals(f);
  // A share without the per-sample sums has tr H = 0 and weighs its adjoints by 0.
  at::Tensor trace = part.holds_diagonal() ? trace_float64(f, d)
                                           : at::zeros_like(pairwise.result.trace_sq);
  auto [alpha, beta] = weights(trace, pairwise.result.trace_sq);
  if (!part.holds_diagonal()) alpha = at::zeros_like(alpha);
  const SampleAdjoints& trace_sq_adjoints = *pairwise.result.adjoints;
  InputGradients grad =
      pairwise.tiled
          ? weighted_chain_cpu(p, f, d, alpha.item<double>(), beta.item<double>(),
                               trace_sq_adjoints, need_grad_x)
          : chain_to_inputs(p, f,
                            weigh_adjoints(alpha, trace_adjoints(f, d, need_grad_x), beta,
                                           trace_sq_adjoints),
                            need_grad_x);
  at::Tensor trace_sq = pairwise.result.trace_sq;
  const at::Tensor nan_or_zero = non_finite_poison(p);
  for (at::Tensor* t : {&trace, &trace_sq, &grad.x, &grad.w1, &grad.b1, &grad.w2, &grad.b2}) {
    poison(*t, nan_or_zero);
  }
  return {std::move(trace), std::move(trace_sq), std::move(grad)};
}

}  // namespace

}  // namespace torch_ws
