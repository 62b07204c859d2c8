// The deep family's ops: tr H and tr(H²) of an MLP with L ≥ 1 hidden layers of any widths
// (docs/math.md §12), by the engine the family's table chooses (engines.h: Gram forms, or the
// assembled Hessian for small n), their certified rounding errors, and every WS bound.
//
// Composite ATen kernels (CompositeImplicitAutograd): autograd differentiates the chosen engine
// exactly, in every layer and in x; they run on any device and trace with fake tensors at static
// shapes (opcheck). In reverse mode the forward pass, the per-sample chain and the Gram forms are
// autograd nodes with hand-derived reverse passes (docs/math.md §12.4); the assembled Hessian's
// products take autograd's. bfloat16/float16 inputs are taken as the other ops take them
// (deep_low_precision in deep_traces.h).
#include "core/threads.h"
#include "core/problem.h"
#include "core/rounding.h"
#include "core/ws_bound.h"  // kRoundingAllowance
#include "ops/deep/deep_traces.h"
#include "ops/deep/engines.h"
#include "ops/low_precision.h"
#include "ops/schemas.h"  // find_op, WsBoundsFromTracesSignature

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace torch_ws {
namespace {

constexpr const char* kOp = "torch_ws.deep_hessian_traces";

// The float64 evaluation of a float32 problem: the Gram forms sum terms of both signs, whose
// rounding is relative to Σ|terms| (docs/math.md §12.5); in float32 that cost 2.6% of tr(H²) on a
// small-weight network. Converting is exact, and autograd differentiates through it.
MlpProblem in_float64(const MlpProblem& p) { return with_dtype(p, at::kDouble); }

// Every input through `each` (x, target, each weight, each bias present).
template <typename Each>
DeepInputs map_inputs(const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
                      const c10::List<std::optional<at::Tensor>>& biases, const Each& each) {
  DeepInputs out;
  out.x = each(x);
  out.target = each(target);
  for (const at::Tensor& w : weights) out.weights.push_back(each(w));
  for (const std::optional<at::Tensor>& b : biases) {
    out.biases.push_back(b ? std::optional<at::Tensor>(each(*b)) : std::nullopt);
  }
  return out;
}

// Every floating input converted (exactly, for a wider dtype) to `dtype`.
DeepInputs floating_as(at::ScalarType dtype, const at::Tensor& x, const at::Tensor& target,
                       at::TensorList weights,
                       const c10::List<std::optional<at::Tensor>>& biases) {
  return map_inputs(x, target, weights, biases, [dtype](const at::Tensor& t) {
    return t.defined() && t.is_floating_point() ? t.to(dtype) : t;
  });
}

}  // namespace

DeepInputs in_float64(const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
                      const c10::List<std::optional<at::Tensor>>& biases) {
  return floating_as(at::kDouble, x, target, weights, biases);
}

bool deep_low_precision(const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
                        const c10::List<std::optional<at::Tensor>>& biases) {
  std::vector<at::Tensor> all{x, target};
  all.insert(all.end(), weights.begin(), weights.end());
  for (const std::optional<at::Tensor>& b : biases) {
    if (b) all.push_back(*b);
  }
  return low_precision::applies(x.scalar_type(), all);
}

DeepInputs in_float32(const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
                      const c10::List<std::optional<at::Tensor>>& biases) {
  return floating_as(at::kFloat, x, target, weights, biases);
}

DeepInputs as_computed(const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
                       const c10::List<std::optional<at::Tensor>>& biases) {
  if (deep_low_precision(x, target, weights, biases)) return in_float32(x, target, weights, biases);
  return map_inputs(x, target, weights, biases, [](const at::Tensor& t) { return t; });
}

std::tuple<at::Tensor, at::Tensor> deep_hessian_traces(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss) {
  if (deep_low_precision(x, target, weights, biases)) {
    const DeepInputs w = in_float32(x, target, weights, biases);
    const auto [trace, trace_sq] =
        deep_hessian_traces(w.x, w.target, w.weights, w.biases, activation, reduction, loss);
    return {trace.to(x.scalar_type()), trace_sq.to(x.scalar_type())};
  }
  const MlpProblem p = in_float64(check_deep_problem(kOp, x, target, weights, biases, activation,
                                                     reduction, loss));
  const CallThreads threads(x.device());
  // The NaN of a non-finite input stays NaN (as every op's, docs/math.md §5.1).
  const auto [trace, trace_sq] = deep_traces_by(choose_deep_engine(p), coefficient_values(p));
  return {trace.to(x.scalar_type()), trace_sq.to(x.scalar_type())};
}

namespace {

// Certified bounds on the rounding errors of traces computed in float64 from p's coefficients by
// `engine` (§12.5): `evaluate`, on the coefficients' magnitudes, gives Σ|terms| of every sum of
// that evaluation or an upper bound on it (M_tr, M_sq: the sample engine factorises its pair
// sums'), and each computed trace is within γ·M of the exact function of the coefficients,
// γ = 2(ℓ + κ)u/(1 − (ℓ + κ)u) with ℓ the engine's longest chain of sums and products (a share of
// the sums has a shorter one) and κu the coefficients' own error (§11.3).
template <typename Evaluate>
std::pair<at::Tensor, at::Tensor> certified_errors(Engine engine, const MlpProblem& p,
                                                   const Evaluate& evaluate) {
  at::NoGradGuard no_grad;
  const CoefficientMagnitudes m = coefficient_magnitudes(p);
  const auto [trace_magnitude, trace_sq_magnitude] = evaluate(m.magnitudes);
  const double chain = deep_error_chain(engine, p) + kRoundingAllowance + m.logit_allowance;
  const double factor = 2 * gamma(chain);  // doubled, as §12.5
  return {factor * trace_magnitude, factor * trace_sq_magnitude};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> deep_trace_errors(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss) {
  const MlpProblem p = in_float64(check_deep_problem(kOp, x.detach(), target, weights, biases,
                                                     activation, reduction, loss));
  const Engine engine = choose_deep_engine(p);
  return certified_errors(engine, p, [&](const Coefficients& magnitudes) {
    return deep_magnitudes_by(engine, magnitudes);
  });
}

namespace {

// §12.5's M_tr and M_sq of the chosen engine's evaluation: `factorised`, the upper bounds the
// certified errors use (deep_magnitudes_by), else the evaluation itself run on magnitudes, which
// they bound (the tests compare the two).
std::tuple<at::Tensor, at::Tensor> deep_trace_magnitudes(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, bool factorised) {
  const MlpProblem p = in_float64(check_deep_problem("torch_ws._deep_trace_magnitudes",
                                                     x.detach(), target, weights, biases,
                                                     activation, reduction, loss));
  const CallThreads threads(x.device());
  const at::NoGradGuard no_grad;
  const Engine engine = choose_deep_engine(p);
  const CoefficientMagnitudes m = coefficient_magnitudes(p);
  return factorised ? deep_magnitudes_by(engine, m.magnitudes)
                    : deep_traces_by(engine, m.magnitudes);
}

// A share [begin, end) of the samples (end: N where absent), checked: its end.
int64_t share_end(const char* op, const MlpProblem& p, int64_t begin, std::optional<int64_t> end) {
  const int64_t stop = end.value_or(p.num_samples());
  TORCH_CHECK(0 <= begin && begin <= stop && stop <= p.num_samples(), op,
              ": expected 0 <= begin <= end <= N = ", p.num_samples(), ", got begin = ", begin,
              ", end = ", stop);
  return stop;
}

// A share op's problem, checked, in float64, and its share [begin, end) in tiles of tile_rows
// rows, checked (every share op takes the same).
struct ShareProblem {
  MlpProblem p;
  GramShare share;
};
ShareProblem share_problem(const char* op, const at::Tensor& x, const at::Tensor& target,
                           at::TensorList weights,
                           const c10::List<std::optional<at::Tensor>>& biases,
                           c10::string_view activation, c10::string_view reduction,
                           c10::string_view loss, int64_t begin, std::optional<int64_t> end,
                           int64_t tile_rows) {
  MlpProblem p = in_float64(check_deep_problem(op, x, target, weights, biases, activation,
                                               reduction, loss));
  const int64_t stop = share_end(op, p, begin, end);
  TORCH_CHECK(tile_rows >= 0, op, ": expected tile_rows >= 0 (0: the default), got ", tile_rows);
  return {std::move(p), GramShare{begin, stop, tile_rows}};
}

// The Gram forms' share [begin, end) of the rows i (gram_forms.cpp, GramShare), in tiles of
// tile_rows rows (0: the default), whatever engine the table would choose: tr H, tr(H²) in
// float64 (differentiable) and certified bounds on their rounding errors (constants, by the op
// _deep_gram_form_errors). What the ranks of dataset_bounds evaluate where the Gram forms are the
// engine; the tests' handle on the tiles.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gram_form_share(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, int64_t begin, std::optional<int64_t> end,
    int64_t tile_rows) {
  const ShareProblem s = share_problem("torch_ws._deep_gram_form_traces", x, target, weights,
                                        biases, activation, reduction, loss, begin, end, tile_rows);
  const CallThreads threads(x.device());
  const auto [trace, trace_sq] =
      gram_form_traces(JacobianChain(coefficient_values(s.p)), s.share);
  // Through the dispatcher, on values without history, as deep_ws_bounds reads its errors: on
  // fake tensors the Meta kernel answers, so the share traces with dynamic shapes.
  static auto errors_op =
      find_op<DeepGramFormErrorsSignature>("torch_ws::_deep_gram_form_errors");
  const DeepInputs values = map_inputs(x, target, weights, biases,
                                       [](const at::Tensor& t) { return t.detach(); });
  const auto [trace_error, trace_sq_error] =
      errors_op.call(values.x, values.target, values.weights, values.biases, activation,
                     reduction, loss, begin, end, tile_rows);
  return {trace, trace_sq, trace_error, trace_sq_error};
}

// Certified bounds on the rounding errors of that share's float64 traces (§12.5), from the
// magnitudes of its sums (gram_form_magnitudes). Constants, float64 0-d.
std::tuple<at::Tensor, at::Tensor> gram_form_share_errors(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, int64_t begin, std::optional<int64_t> end,
    int64_t tile_rows) {
  const ShareProblem s =
      share_problem("torch_ws._deep_gram_form_errors", x.detach(), target, weights, biases,
                    activation, reduction, loss, begin, end, tile_rows);
  const CallThreads threads(x.device());
  return certified_errors(Engine::SampleSpace, s.p, [&](const Coefficients& magnitudes) {
    return gram_form_magnitudes(JacobianChain(magnitudes), s.share);
  });
}

// §12.5's M_tr and M_sq of that share's evaluation: `factorised`, the upper bounds the certified
// errors use (gram_form_magnitudes), else the evaluation itself run on magnitudes, which they
// bound (the tests compare the two).
std::tuple<at::Tensor, at::Tensor> gram_form_share_magnitudes(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, int64_t begin, std::optional<int64_t> end,
    bool factorised) {
  const ShareProblem s =
      share_problem("torch_ws._deep_gram_form_magnitudes", x.detach(), target, weights, biases,
                    activation, reduction, loss, begin, end, /*tile_rows=*/0);
  const CallThreads threads(x.device());
  const at::NoGradGuard no_grad;
  const CoefficientMagnitudes m = coefficient_magnitudes(s.p);  // the chain refers to them
  const JacobianChain magnitudes(m.magnitudes);
  return factorised ? gram_form_magnitudes(magnitudes, s.share)
                    : gram_form_traces(magnitudes, s.share);
}

std::tuple<at::Tensor, at::Tensor> gram_form_share_errors_meta(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, int64_t, std::optional<int64_t>,
    int64_t) {
  check_deep_problem("torch_ws._deep_gram_form_errors", x, target, weights, biases, activation,
                     reduction, loss);
  const auto f64 = x.options().dtype(at::kDouble);
  return {at::empty({}, f64), at::empty({}, f64)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> deep_trace_errors_meta(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss) {
  check_deep_problem(kOp, x, target, weights, biases, activation, reduction, loss);
  const auto f64 = x.options().dtype(at::kDouble);
  return {at::empty({}, f64), at::empty({}, f64)};
}

// The n × n Hessian assembled by blocks (§12.7) in nn.Sequential.parameters() order, float64,
// and the bound on its rounding error in the spectral norm (engines.h assemble_hessian).
// With begin and end: the share of samples [begin, end) (the whole set's loss scale).
std::tuple<at::Tensor, at::Tensor> assembled_hessian_op(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, int64_t begin,
    std::optional<int64_t> end) {
  constexpr const char* op = "torch_ws._deep_assembled_hessian";
  const MlpProblem p = in_float64(check_deep_problem(op, x, target, weights, biases, activation,
                                                     reduction, loss));
  const CallThreads threads(x.device());
  const int64_t stop = share_end(op, p, begin, end);
  const AssembledHessian h = assemble_hessian(p, begin, stop);
  return {h.matrix, at::scalar_tensor(h.forming_error, h.matrix.options())};
}

// tr H and tr(H²) of a computed Hessian Ĥ (float64, n × n) with ‖Ĥ − H‖_F ≤ forming_error, and
// certified bounds on their errors against H's (docs/math.md §12.7): |tr Ĥ − tr H| ≤ √n·ε and
// |‖Ĥ‖²_F − ‖H‖²_F| ≤ ε(2‖Ĥ‖_F + ε), plus the sums' own rounding (γ_n·Σ|Ĥ_ii|, γ_{n²+1}·‖Ĥ‖²_F).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> assembled_hessian_traces_op(
    const at::Tensor& hessian, double forming_error) {
  TORCH_CHECK(hessian.dim() == 2 && hessian.size(0) == hessian.size(1) &&
                  hessian.scalar_type() == at::kDouble,
              "torch_ws._assembled_hessian_traces: expected a square float64 matrix, got ",
              hessian.scalar_type(), " of shape ", hessian.sizes());
  TORCH_CHECK(forming_error >= 0, "torch_ws._assembled_hessian_traces: expected a forming "
              "error >= 0, got ", forming_error);
  const auto n = static_cast<double>(hessian.size(0));
  const at::Tensor trace = hessian.diagonal().sum();
  const at::Tensor trace_sq = hessian.pow(2).sum();
  const double norm = std::sqrt(trace_sq.item<double>());
  // (γ doubled, as §12.5)
  const double trace_error = std::sqrt(n) * forming_error +
                             2 * gamma(n) * hessian.diagonal().abs().sum().item<double>();
  const double trace_sq_error = forming_error * (2 * norm + forming_error) +
                                2 * gamma(n * n + 1) * trace_sq.item<double>();
  return {trace, trace_sq, at::scalar_tensor(trace_error, hessian.options()),
          at::scalar_tensor(trace_sq_error, hessian.options())};
}

// The deep engines in words (engines.h), for the problem these arguments make.
std::vector<std::string> deep_engines(const at::Tensor& x, const at::Tensor& target,
                                      at::TensorList weights,
                                      const c10::List<std::optional<at::Tensor>>& biases,
                                      c10::string_view activation, c10::string_view reduction,
                                      c10::string_view loss) {
  const DeepInputs w = as_computed(x, target, weights, biases);
  return describe_deep_engines(check_deep_problem("torch_ws._deep_engines", w.x, w.target,
                                                  w.weights, w.biases, activation, reduction,
                                                  loss));
}

// The name of the engine the problem these arguments make gets ("sample" or "parameter").
std::string deep_engine(const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
                        const c10::List<std::optional<at::Tensor>>& biases,
                        c10::string_view activation, c10::string_view reduction,
                        c10::string_view loss) {
  const DeepInputs w = as_computed(x, target, weights, biases);
  return engine_name(choose_deep_engine(check_deep_problem(
      "torch_ws._deep_engine", w.x, w.target, w.weights, w.biases, activation, reduction, loss)));
}

// Every WS bound of the network (docs/math.md §5, §12.5), from the float64 traces of the exactly
// converted inputs (differentiable back to the inputs' dtype), widened by the §5.1 allowance of
// the inputs' dtype and by the certified errors above, rounded outward to the inputs' dtype; then
// the traces in that dtype. The bounds are those of _ws_bounds_from_traces (one implementation,
// core/ws_bound.h's ws_bounds_rounded).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
deep_ws_bounds(const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
               const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
               c10::string_view reduction, c10::string_view loss) {
  if (deep_low_precision(x, target, weights, biases)) {
    const DeepInputs w = in_float32(x, target, weights, biases);
    const auto [max_upper, max_lower, min_lower, min_upper, spread, trace, trace_sq] =
        deep_ws_bounds(w.x, w.target, w.weights, w.biases, activation, reduction, loss);
    const at::ScalarType dtype = x.scalar_type();
    return {round_directed(max_upper, dtype, /*up=*/true),
            round_directed(max_lower, dtype, /*up=*/false),
            round_directed(min_lower, dtype, /*up=*/false),
            round_directed(min_upper, dtype, /*up=*/true),
            round_directed(spread, dtype, /*up=*/true), trace.to(dtype), trace_sq.to(dtype)};
  }
  // Checked here first, so that a bad call's message names the function the user called.
  const int64_t num_params = check_deep_problem("torch_ws.deep_ws_bounds", x, target, weights,
                                                biases, activation, reduction, loss)
                                 .num_params();
  const CallThreads threads(x.device());
  const DeepInputs w = in_float64(x, target, weights, biases);
  const auto [trace, trace_sq] =
      deep_hessian_traces(w.x, w.target, w.weights, w.biases, activation, reduction, loss);
  // Through the dispatcher, on values without history (the errors are constants): on fake tensors
  // its Meta kernel answers, and the errors stay unread tensors, so that the call traces with
  // dynamic shapes (a value read there would be data-dependent).
  static auto errors_op = find_op<DeepTraceErrorsSignature>("torch_ws::_deep_trace_errors");
  const DeepInputs values = map_inputs(w.x, w.target, w.weights, w.biases,
                                       [](const at::Tensor& t) { return t.detach(); });
  const auto [trace_error, trace_sq_error] = errors_op.call(
      values.x, values.target, values.weights, values.biases, activation, reduction, loss);
  const auto [max_upper, max_lower, min_lower, min_upper, spread] = ws_bounds_rounded(
      trace, trace_sq, num_params, x.scalar_type(), trace_error, trace_sq_error);
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
  // The engine these arguments' problem gets: "sample" or "parameter".
  m.def(
      "_deep_engine(Tensor x, Tensor target, Tensor[] weights, Tensor?[] biases, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\") -> str");
  // The deep engines of these arguments' problem, in words; the automatic choice marked.
  m.def(
      "_deep_engines(Tensor x, Tensor target, Tensor[] weights, Tensor?[] biases, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\") -> str[]");
  // The assembled Hessian (n, n) in float64 and its rounding error's bound (§12.7).
  m.def(
      "_deep_assembled_hessian(Tensor x, Tensor target, Tensor[] weights, Tensor?[] biases, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\", int begin=0, "
      "int? end=None) -> (Tensor hessian, Tensor forming_error)");
  // tr H, tr(H²) of a computed Hessian and certified bounds on their errors (§12.7).
  m.def(
      "_assembled_hessian_traces(Tensor hessian, float forming_error) -> (Tensor trace, "
      "Tensor trace_sq, Tensor trace_error, Tensor trace_sq_error)");
  // The Gram forms' share of rows [begin, end) in tiles of tile_rows rows (0: the default), float64,
  // and certified bounds on its rounding errors (constants): what dataset_bounds' ranks evaluate.
  m.def(
      "_deep_gram_form_traces(Tensor x, Tensor target, Tensor[] weights, Tensor?[] biases, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\", int begin=0, "
      "int? end=None, int tile_rows=0) -> (Tensor trace, Tensor trace_sq, Tensor trace_error, "
      "Tensor trace_sq_error)");
  // Certified bounds on the rounding errors of _deep_gram_form_traces' share (not differentiable).
  m.def(
      "_deep_gram_form_errors(Tensor x, Tensor target, Tensor[] weights, Tensor?[] biases, "
      "str activation, str reduction, str loss, int begin, int? end, int tile_rows) -> "
      "(Tensor trace_error, Tensor trace_sq_error)");
  // §12.5's magnitudes of that share's evaluation: the factorised bounds the errors use, or the
  // evaluation on magnitudes itself (for the tests).
  m.def(
      "_deep_gram_form_magnitudes(Tensor x, Tensor target, Tensor[] weights, Tensor?[] biases, "
      "str activation, str reduction, str loss, int begin, int? end, bool factorised) -> "
      "(Tensor trace_magnitude, Tensor trace_sq_magnitude)");
  // §12.5's magnitudes of the chosen engine's evaluation: the factorised bounds the errors use, or
  // the evaluation on magnitudes itself (for the tests).
  m.def(
      "_deep_trace_magnitudes(Tensor x, Tensor target, Tensor[] weights, Tensor?[] biases, "
      "str activation, str reduction, str loss, bool factorised) -> (Tensor trace_magnitude, "
      "Tensor trace_sq_magnitude)");
  // Certified bounds on the float64 rounding errors of deep_hessian_traces (not differentiable).
  m.def(
      "_deep_trace_errors(Tensor x, Tensor target, Tensor[] weights, Tensor?[] biases, "
      "str activation, str reduction, str loss) -> (Tensor trace_error, Tensor trace_sq_error)");
}

// A kernel of its own (constants, no autograd), and a Meta one: the shapes of two scalars.
TORCH_LIBRARY_IMPL(torch_ws, CompositeExplicitAutograd, m) {
  m.impl("_deep_trace_errors", &torch_ws::deep_trace_errors);
  m.impl("_deep_gram_form_errors", &torch_ws::gram_form_share_errors);
  m.impl("_deep_gram_form_magnitudes", &torch_ws::gram_form_share_magnitudes);
  m.impl("_deep_trace_magnitudes", &torch_ws::deep_trace_magnitudes);
}

TORCH_LIBRARY_IMPL(torch_ws, Meta, m) {
  m.impl("_deep_trace_errors", &torch_ws::deep_trace_errors_meta);
  m.impl("_deep_gram_form_errors", &torch_ws::gram_form_share_errors_meta);
}

TORCH_LIBRARY_IMPL(torch_ws, CompositeImplicitAutograd, m) {
  m.impl("deep_hessian_traces", &torch_ws::deep_hessian_traces);
  m.impl("_deep_engine", &torch_ws::deep_engine);
  m.impl("_deep_engines", &torch_ws::deep_engines);
  m.impl("_deep_assembled_hessian", &torch_ws::assembled_hessian_op);
  m.impl("_deep_gram_form_traces", &torch_ws::gram_form_share);
  m.impl("_assembled_hessian_traces", &torch_ws::assembled_hessian_traces_op);
  m.impl("deep_ws_bounds", &torch_ws::deep_ws_bounds);
}
