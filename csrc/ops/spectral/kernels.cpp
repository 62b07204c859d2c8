// The kernels of spectral_bound and its internal ops below autograd (CPU, CUDA, Meta). The parts
// come from spectral/spectral_bound.h, the Wolkowicz-Styan bound they are compared with from the
// trace engines; ops/spectral/autograd.cpp holds the Autograd kernel.
#include "engines/dispatch.h"
#include "core/threads.h"
#include "core/ws_bound.h"
#include "ops/gradient_list.h"
#include "ops/low_precision.h"
#include "ops/schemas.h"
#include "ops/spectral/spectral_bound.h"

#include <torch/library.h>

#include <limits>

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;

using SpectralPartsResult =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
               Tensor, Tensor>;

// spectral_bound's outputs: the first six of _spectral_parts'.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> public_outputs(
    const SpectralPartsResult& parts) {
  return {std::get<0>(parts), std::get<1>(parts), std::get<2>(parts), std::get<3>(parts),
          std::get<4>(parts), std::get<5>(parts)};
}

bool finite_input(const MlpProblem& p) {
  bool finite = at::isfinite(p.x).all().item<bool>() &&
                (!p.target.is_floating_point() || at::isfinite(p.target).all().item<bool>());
  for (const Layer& layer : p.layers) {
    finite = finite && at::isfinite(layer.weight).all().item<bool>() &&
             (!layer.bias || at::isfinite(*layer.bias).all().item<bool>());
  }
  return finite;
}

// The parts of a NaN input: NaN values and vectors in the shapes the Meta kernel gives.
SpectralPartsResult nan_parts(const Tensor& x, const optional<Tensor>& b1, const Tensor& w2) {
  const auto like = x.options();
  const auto f64 = like.dtype(at::kDouble), i64 = like.dtype(at::kLong);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const int64_t block = x.size(1) + (b1 ? 1 : 0) + w2.size(0);
  auto scalar = [&] { return at::full({}, nan, like); };
  return {scalar(), scalar(), scalar(), scalar(), scalar(), at::zeros({}, i64),
          at::zeros({}, like.dtype(at::kBool)), at::full({x.size(0), w2.size(0)}, nan, f64),
          at::full({block}, nan, f64), at::zeros({}, i64), at::full({block}, nan, f64),
          at::zeros({}, i64)};
}

// The parts, the WS bound, and their combination: upper = min(λ_max(GGN) + λ_max(R) + the
// allowances, WS), rounded up to the inputs' dtype; lambda_min_lower rounded down.
SpectralPartsResult spectral_parts_kernel(const Tensor& x, const Tensor& target, const Tensor& w1,
                                          const optional<Tensor>& b1, const Tensor& w2,
                                          const optional<Tensor>& b2, c10::string_view activation,
                                          c10::string_view reduction, c10::string_view loss) {
  const MlpProblem p =
      check_problem(kSpectralBoundName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  const CallThreads threads(x.device());
  // NaN or ±Inf in the input: NaN out, as every other op gives (the eigensolvers would refuse
  // to converge on it).
  if (!finite_input(p)) return nan_parts(x, b1, w2);
  const spectral::SpectralParts s = spectral::evaluate(p);
  const TracesResult t = evaluate_traces(p, Gradients::None);
  const auto dtype = x.scalar_type();
  // On finite input the traces can still overflow the input's dtype (float32 x·10³⁰): WS is
  // then no bound at all (NaN or ∞), and the spectral parts, in float64, give `upper`.
  Tensor ws = ws_upper_bound_tensor(t.trace, t.trace_sq, p.num_params(), dtype).to(at::kDouble);
  ws = at::where(at::isnan(ws), at::full_like(ws, HUGE_VAL), ws);
  // No GGN part (its computation overflowed float64): the spectral sum is +∞ and WS gives `upper`.
  Tensor spectral_upper = s.ggn_lambda_max + s.ggn_allowance + s.residual_lambda_max +
                          s.residual_allowance;
  spectral_upper = at::where(at::isnan(s.ggn_lambda_max),
                             at::full_like(spectral_upper, HUGE_VAL), spectral_upper);
  const Tensor ws_wins = ws < spectral_upper;
  const Tensor upper = round_directed(at::minimum(spectral_upper, ws), dtype, /*up=*/true);
  const Tensor lambda_min_lower =
      round_directed(s.residual_lambda_min - s.residual_allowance, dtype, /*up=*/false);
  // Fresh contiguous tensors (several parts are views into an eigensolver's outputs), as the
  // fake kernel's outputs are.
  auto fresh = [](const Tensor& t) { return t.clone(at::MemoryFormat::Contiguous); };
  return {upper,
          fresh(s.ggn_lambda_max.to(dtype)),
          fresh(s.residual_lambda_max.to(dtype)),
          lambda_min_lower,
          fresh(s.eigen_residual.to(dtype)),
          fresh(s.iterations),
          ws_wins,
          fresh(s.ggn_vector),
          fresh(s.residual_max_vector),
          fresh(s.residual_max_unit),
          fresh(s.residual_min_vector),
          fresh(s.residual_min_unit)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spectral_bound_kernel(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss) {
  const ProblemArgs args(x, target, w1, b1, w2, b2, activation, reduction, loss);
  // Under torch.inference_mode(), which skips the Autograd key (ops/low_precision.h).
  if (low_precision::applies(args)) return low_precision::spectral_bound(args);
  return public_outputs(
      spectral_parts_kernel(x, target, w1, b1, w2, b2, activation, reduction, loss));
}

Tensor residual_majorant_kernel(const Tensor& x, const Tensor& target, const Tensor& w1,
                                const optional<Tensor>& b1, const Tensor& w2,
                                const optional<Tensor>& b2, c10::string_view activation,
                                c10::string_view reduction, c10::string_view loss) {
  const MlpProblem p =
      check_problem(kSpectralBoundName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  const CallThreads threads(x.device());
  return spectral::residual_majorant_upper(p);
}

std::vector<Tensor> spectral_backward_kernel(
    const Tensor& grad_upper, const Tensor& grad_ggn, const Tensor& grad_residual_max,
    const Tensor& grad_lambda_min, const Tensor& x, const Tensor& target, const Tensor& w1,
    const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
    c10::string_view activation, c10::string_view reduction, c10::string_view loss,
    const Tensor& ws_wins, const Tensor& ggn_vector, const Tensor& residual_max_vector,
    const Tensor& residual_max_unit, const Tensor& residual_min_vector,
    const Tensor& residual_min_unit, bool need_grad_x) {
  const MlpProblem p =
      check_problem(kSpectralBoundName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  const CallThreads threads(x.device());
  auto as_double = [](const Tensor& g) { return g.to(at::kDouble); };
  const bool ws = ws_wins.item<bool>();
  // `upper` is either the spectral sum (its gradient that of λ_max(GGN) + λ_max(R); the
  // allowances are constants) or the WS bound (the traces' gradients, docs/math.md §7).
  const Tensor to_sum = ws ? at::zeros({}, x.options().dtype(at::kDouble)) : as_double(grad_upper);
  InputGradients g = spectral::gradient(
      p, {ggn_vector, residual_max_vector, residual_max_unit, residual_min_vector,
          residual_min_unit},
      as_double(grad_ggn) + to_sum, as_double(grad_residual_max) + to_sum,
      as_double(grad_lambda_min), need_grad_x);
  if (ws) {
    const TracesResult t = evaluate_traces(
        p, need_grad_x ? Gradients::ParametersAndX : Gradients::Parameters);
    const auto [d_trace, d_trace_sq] =
        bound_trace_grads_tensor(as_double(grad_upper), t.trace, t.trace_sq, p.num_params());
    auto add = [&](Tensor& into, const Tensor& a, const Tensor& b) {
      if (!into.defined()) return;
      into = (into.to(at::kDouble) + d_trace * a.to(at::kDouble) + d_trace_sq * b.to(at::kDouble))
                 .to(into.scalar_type());
    };
    add(g.x, t.trace_grad->x, t.trace_sq_grad->x);
    add(g.w1, t.trace_grad->w1, t.trace_sq_grad->w1);
    add(g.b1, t.trace_grad->b1, t.trace_sq_grad->b1);
    add(g.w2, t.trace_grad->w2, t.trace_sq_grad->w2);
    add(g.b2, t.trace_grad->b2, t.trace_sq_grad->b2);
  }
  auto or_empty = [&](const Tensor& t) { return t.defined() ? t : at::empty({0}, x.options()); };
  return {or_empty(g.x), g.w1, or_empty(g.b1), g.w2, or_empty(g.b2)};
}

// ---- Meta: the same checks, outputs of the right shapes. ----

SpectralPartsResult spectral_parts_meta(const Tensor& x, const Tensor& target, const Tensor& w1,
                                        const optional<Tensor>& b1, const Tensor& w2,
                                        const optional<Tensor>& b2, c10::string_view activation,
                                        c10::string_view reduction, c10::string_view loss) {
  check_problem(kSpectralBoundName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  const auto like = x.options();
  const auto f64 = like.dtype(at::kDouble), i64 = like.dtype(at::kLong);
  auto scalar = [](const at::TensorOptions& o) { return at::empty({}, o); };
  const c10::SymInt block = x.sym_size(1) + (b1 ? 1 : 0) + w2.sym_size(0);
  return {scalar(like), scalar(like), scalar(like), scalar(like), scalar(like), scalar(i64),
          scalar(like.dtype(at::kBool)),
          at::empty_symint({x.sym_size(0), w2.sym_size(0)}, f64),
          at::empty_symint({block}, f64), scalar(i64),
          at::empty_symint({block}, f64), scalar(i64)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spectral_bound_meta(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss) {
  return public_outputs(
      spectral_parts_meta(x, target, w1, b1, w2, b2, activation, reduction, loss));
}

Tensor residual_majorant_meta(const Tensor& x, const Tensor& target, const Tensor& w1,
                              const optional<Tensor>& b1, const Tensor& w2,
                              const optional<Tensor>& b2, c10::string_view activation,
                              c10::string_view reduction, c10::string_view loss) {
  check_problem(kSpectralBoundName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  return at::empty({}, x.options().dtype(at::kDouble));
}

std::vector<Tensor> spectral_backward_meta(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor& x,
    const Tensor& target, const Tensor& w1, const optional<Tensor>& b1, const Tensor& w2,
    const optional<Tensor>& b2, c10::string_view activation, c10::string_view reduction,
    c10::string_view loss, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, bool need_grad_x) {
  check_problem(kSpectralBoundName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  return empty_gradient_list(x, need_grad_x, w1, b1, w2, b2);
}

}  // namespace
}  // namespace torch_ws

#define TORCH_WS_REGISTER_SPECTRAL_KERNELS(m)                           \
  m.impl("spectral_bound", &torch_ws::spectral_bound_kernel);          \
  m.impl("_spectral_parts", &torch_ws::spectral_parts_kernel);         \
  m.impl("_spectral_backward", &torch_ws::spectral_backward_kernel);   \
  m.impl("_residual_majorant", &torch_ws::residual_majorant_kernel)

// One kernel for every backend (CPU, CUDA, any other): the engines pick each device's path.
TORCH_LIBRARY_IMPL(torch_ws, CompositeExplicitAutograd, m) { TORCH_WS_REGISTER_SPECTRAL_KERNELS(m); }

TORCH_LIBRARY_IMPL(torch_ws, Meta, m) {
  m.impl("spectral_bound", &torch_ws::spectral_bound_meta);
  m.impl("_spectral_parts", &torch_ws::spectral_parts_meta);
  m.impl("_spectral_backward", &torch_ws::spectral_backward_meta);
  m.impl("_residual_majorant", &torch_ws::residual_majorant_meta);
}
