// The deep family's certified eigenvalue interval and Hessian-vector products (docs/math.md
// §12.6): the certificate of §11.2 (core/ritz_certificate.h) on the closed-form products of
// deep_products.h, capped by the exact traces of deep_traces.cpp.
//
//   deep_eigenvalue_interval(x, target, weights, biases, ..., largest, steps, start, seed)
//       -> (lower, upper, source, ritz_values, ritz_vectors, products), as eigenvalue_interval,
//          then (trace, trace_sq): the exact traces its certificate used.
//   deep_hessian_vector_products(x, target, weights, biases, vectors, ...) -> H·v per row.
//
//   _deep_eigenvalue_interval_derivatives(same arguments, traces=None) -> the same eight, then
//       (image, assembled_vector, derivatives): the certificate's H·u (n,), the assembled Hessian's top
//       eigenvector z (n,; zeros where it gave neither end) and, per end of H's
//       interval (rows: lower, upper), its first-order description with the basis held fixed
//       (core/ritz_certificate.h, EndDerivative): [the coefficients of ⟨r_i, dH r_i⟩ for the
//       Ritz vectors (k), of ⟨Hu, dH u⟩, of ⟨z, dH z⟩, of d tr H, of d tr(H²)], (2, k + 4)
//       float64. What the Autograd kernel (autograd.cpp) differentiates; it passes `traces`,
//       deep_hessian_traces' float64 (tr H, tr H²) of these inputs, which it has evaluated
//       itself with autograd recording, so that they are not evaluated twice.
//
// deep_hessian_vector_products is not differentiable (its Python function detaches). Kernels: one
// device-generic kernel each (ATen), the Meta kernels (the same checks, shapes only).
#include "core/threads.h"
#include "core/problem.h"
#include "core/ritz_certificate.h"
#include "core/ws_bound.h"
#include "ops/deep/deep_products.h"
#include "ops/deep/deep_traces.h"
#include "ops/deep/engines.h"  // try_assembled_certificate
#include "ops/deep/low_precision.h"
#include "ops/schemas.h"  // find_op, WsBoundsFromTracesSignature

#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;

constexpr char kIntervalName[] = "torch_ws.deep_eigenvalue_interval";
constexpr char kProductsName[] = "torch_ws.deep_hessian_vector_products";

c10::SymInt sym_num_params_of(at::TensorList weights, const c10::List<optional<Tensor>>& biases) {
  c10::SymInt n = 0;
  for (const Tensor& w : weights) n = n + w.sym_numel();
  for (const optional<Tensor>& b : biases) n = b ? n + b->sym_numel() : n;
  return n;
}

// The Lanczos steps a call takes: `steps`, or with 0 the automatic count (engines.h).
int64_t resolved_steps(const MlpProblem& p, int64_t steps) {
  TORCH_CHECK(steps >= 0, kIntervalName, ": expected steps >= 1 (the Hessian-vector products of "
              "the Lanczos iteration), or 0 for the automatic count, got ", steps);
  return steps == 0 ? automatic_interval_steps(p) : steps;
}

// lower, upper, source, ritz_values, ritz_vectors, products, and the traces the certificate used
// (tr H, tr H² in x's dtype): what sharpness() reports, so it need not evaluate them again.
using IntervalOutputs =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

using IntervalWithDerivatives = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                         Tensor, Tensor, Tensor, Tensor>;

// Both kernels: the interval of λ_max (largest) or of λ_min = −λ_max(−H), mirrored, and with
// `derivatives` the first-order description of its ends (§11.4).
IntervalWithDerivatives interval_of(const Tensor& x, const Tensor& target, at::TensorList weights,
                                    const c10::List<optional<Tensor>>& biases,
                                    c10::string_view activation, c10::string_view reduction,
                                    c10::string_view loss, bool largest, int64_t steps,
                                    const optional<Tensor>& start, int64_t seed,
                                    bool derivatives, const optional<Tensor>& given_traces) {
  const MlpProblem checked =
      check_deep_problem(kIntervalName, x, target, weights, biases, activation, reduction, loss);
  const int64_t n = checked.num_params();
  steps = resolved_steps(checked, steps);
  check_steps_and_start(kIntervalName, n, x.device(), steps, start);
  const CallThreads threads(x.device());
  // Converted exactly to float64: the certificate runs there (§11.3).
  const DeepInputs w = in_float64(x, target, weights, biases);
  const MlpProblem p64 = check_deep_problem(kIntervalName, w.x, w.target, w.weights, w.biases,
                                            activation, reduction, loss);
  const double sign = largest ? 1 : -1;

  // The traces of H (exact forms, float64, with certified rounding errors, §12.5) and the WS
  // bound of σH from them (§5, with the same errors).
  // (The Autograd kernel evaluates them itself, with autograd recording, and passes them in.)
  const auto [trace_t, trace_sq_t] =
      given_traces ? std::make_tuple(given_traces->select(0, 0), given_traces->select(0, 1))
                   : deep_hessian_traces(w.x, w.target, w.weights, w.biases, activation,
                                         reduction, loss);
  const auto [trace_error, trace_sq_error] =
      deep_trace_errors(w.x, w.target, w.weights, w.biases, activation, reduction, loss);
  static auto bounds_op = find_op<WsBoundsFromTracesSignature>("torch_ws::_ws_bounds_from_traces");
  const auto [max_upper, max_lower, min_lower, min_upper, spread] =
      bounds_op.call(trace_t, trace_sq_t, n, at::kDouble, trace_error.item<double>(),
                     trace_sq_error.item<double>());
  const double trace = sign * trace_t.item<double>(), trace_sq = trace_sq_t.item<double>();
  // tr(H²) + its certified error, then the §5.1 allowance as deep_ws_bounds takes it.
  const double trace_sq_high = std::nextafter(
      std::nextafter(trace_sq + trace_sq_error.item<double>(), HUGE_VAL) *
          (1 + rounding_allowance(at::kDouble)),
      HUGE_VAL);
  const double ws = largest ? max_upper.item<double>() : -min_lower.item<double>();

  const DeepHessianProducts products(p64, DeepHessianProducts::Uses::Certificate);
  RitzCertificate top =
      certify_top(products, sign, {trace, trace_sq, trace_sq_high, ws}, steps, start, seed,
                  p64.x.options(), kIntervalName);
  // Still wide, and n small: both ends from the assembled Hessian (§11.6).
  try_assembled_certificate(top, sign, p64, trace_sq_high);
  const double lower = largest ? top.lower : -top.upper;
  const double upper = largest ? top.upper : -top.lower;
  const auto options = x.options().dtype(at::kDouble);
  Tensor image, assembled_vector, described;
  if (derivatives) {
    // Of H's ends: λ_min's interval is −(σH's), so its lower end is −(σH's upper) and back.
    const EndDerivatives of_top =
        end_derivatives(top, sign, {trace, trace_sq, trace_sq_high, ws}, n);
    auto row = [](const EndDerivative& end, double factor) {
      std::vector<double> r = end.ritz;
      r.insert(r.end(), {end.image, end.assembled, end.trace, end.trace_sq});
      for (double& v : r) v *= factor;
      return at::tensor(r, at::kDouble);
    };
    described = (largest ? at::stack({row(of_top.lower, 1), row(of_top.upper, 1)})
                         : at::stack({row(of_top.upper, -1), row(of_top.lower, -1)}))
                    .to(options.device());
    image = top.hu.defined() ? top.hu : at::full({n}, std::nan(""), options);
    assembled_vector = top.assembled_vector.defined() ? top.assembled_vector.to(options)
                                                      : at::zeros({n}, options);
  }
  return {round_directed(at::scalar_tensor(lower, options), x.scalar_type(), /*up=*/false),
          round_directed(at::scalar_tensor(upper, options), x.scalar_type(), /*up=*/true),
          at::scalar_tensor(static_cast<int64_t>(top.source), options.dtype(at::kLong)),
          top.ritz_values * sign, top.ritz_vectors,
          at::scalar_tensor(top.products, options.dtype(at::kLong)),
          // fresh tensors: given traces must not alias an output
          trace_t.to(x.scalar_type(), false, /*copy=*/true),
          trace_sq_t.to(x.scalar_type(), false, /*copy=*/true), image, assembled_vector,
          described};
}

IntervalOutputs deep_eigenvalue_interval(const Tensor& x, const Tensor& target,
                                         at::TensorList weights,
                                         const c10::List<optional<Tensor>>& biases,
                                         c10::string_view activation, c10::string_view reduction,
                                         c10::string_view loss, bool largest, int64_t steps,
                                         const optional<Tensor>& start, int64_t seed) {
  // bfloat16/float16 under torch.inference_mode(), which skips the Autograd key.
  if (deep_low_precision(x, target, weights, biases)) {
    return deep_low_precision_interval::via_float32(x, target, weights, biases, activation,
                                                    reduction, loss, largest, steps, start, seed);
  }
  auto [lower, upper, source, values, vectors, products, trace, trace_sq, unused_image,
        unused_assembled, unused_derivatives] = interval_of(x, target, weights, biases, activation, reduction, loss,
                                          largest, steps, start, seed, /*derivatives=*/false,
                                          std::nullopt);
  return {lower, upper, source, values, vectors, products, trace, trace_sq};
}

IntervalWithDerivatives deep_eigenvalue_interval_derivatives(
    const Tensor& x, const Tensor& target, at::TensorList weights,
    const c10::List<optional<Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, bool largest, int64_t steps,
    const optional<Tensor>& start, int64_t seed, const optional<Tensor>& traces) {
  if (traces) {
    TORCH_CHECK(traces->scalar_type() == at::kDouble && traces->dim() == 1 &&
                    traces->size(0) == 2,
                kIntervalName, ": traces must be deep_hessian_traces' float64 (tr H, tr H²) of "
                "these inputs, shape (2,), got ", traces->scalar_type(), " of shape ",
                traces->sizes());
  }
  return interval_of(x, target, weights, biases, activation, reduction, loss, largest, steps,
                     start, seed, /*derivatives=*/true, traces);
}

IntervalOutputs deep_eigenvalue_interval_meta(const Tensor& x, const Tensor& target,
                                              at::TensorList weights,
                                              const c10::List<optional<Tensor>>& biases,
                                              c10::string_view activation,
                                              c10::string_view reduction, c10::string_view loss,
                                              bool /*largest*/, int64_t steps,
                                              const optional<Tensor>& start, int64_t /*seed*/) {
  const DeepInputs checked = as_computed(x, target, weights, biases);
  steps = resolved_steps(check_deep_problem(kIntervalName, checked.x, checked.target,
                                            checked.weights, checked.biases, activation,
                                            reduction, loss),
                         steps);
  const c10::SymInt n = sym_num_params_of(weights, biases);
  const c10::SymInt k = c10::SymInt(steps).min(n);
  const auto f64 = x.options().dtype(at::kDouble);
  return {at::empty({}, x.options()), at::empty({}, x.options()),
          at::empty({}, x.options().dtype(at::kLong)), at::empty_symint({k}, f64),
          at::empty_symint({k, n}, f64), at::empty({}, x.options().dtype(at::kLong)),
          at::empty({}, x.options()), at::empty({}, x.options())};
}

IntervalWithDerivatives deep_eigenvalue_interval_derivatives_meta(
    const Tensor& x, const Tensor& target, at::TensorList weights,
    const c10::List<optional<Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, bool largest, int64_t steps,
    const optional<Tensor>& start, int64_t seed, const optional<Tensor>& /*traces*/) {
  auto [lower, upper, source, values, vectors, products, trace, trace_sq] =
      deep_eigenvalue_interval_meta(x, target, weights, biases, activation, reduction, loss,
                                    largest, steps, start, seed);
  const c10::SymInt n = sym_num_params_of(weights, biases);
  const c10::SymInt k = values.sym_size(0);  // the steps, resolved, at most n
  const auto f64 = x.options().dtype(at::kDouble);
  return {lower, upper, source, values, vectors, products, trace, trace_sq,
          at::empty_symint({n}, f64), at::empty_symint({n}, f64),
          at::empty_symint({2, k + 4}, f64)};
}

Tensor deep_hessian_vector_products(const Tensor& x, const Tensor& target, at::TensorList weights,
                                    const c10::List<optional<Tensor>>& biases,
                                    const Tensor& vectors, c10::string_view activation,
                                    c10::string_view reduction, c10::string_view loss) {
  // bfloat16/float16 inputs (all of one dtype) are computed in float32, as the other ops do.
  const DeepInputs w = as_computed(x, target, weights, biases);
  const MlpProblem p = check_deep_problem(kProductsName, w.x, w.target, w.weights, w.biases,
                                          activation, reduction, loss);
  const int64_t n = p.num_params();
  check_directions(kProductsName, n, x.device(), vectors,
                   "(W_1 row-major, b_1, W_2 row-major, b_2, …) as nn.Sequential.parameters() "
                   "lists them");
  const CallThreads threads(x.device());
  const Tensor rows = vectors.reshape({-1, n}).to(p.x.scalar_type());
  return DeepHessianProducts(p, DeepHessianProducts::Uses::Products)
      .apply(rows)
      .to(x.scalar_type())
      .reshape(vectors.sizes());
}

Tensor deep_hessian_vector_products_meta(const Tensor& x, const Tensor& target,
                                         at::TensorList weights,
                                         const c10::List<optional<Tensor>>& biases,
                                         const Tensor& vectors, c10::string_view activation,
                                         c10::string_view reduction, c10::string_view loss) {
  const DeepInputs w = as_computed(x, target, weights, biases);
  check_deep_problem(kProductsName, w.x, w.target, w.weights, w.biases, activation, reduction,
                     loss);
  return at::empty_symint(vectors.sym_sizes(), x.options());
}

}  // namespace
}  // namespace torch_ws

TORCH_LIBRARY_FRAGMENT(torch_ws, m) {
  // A certified interval on λ_max (largest) or λ_min of a deep MLP's loss Hessian (§12.6);
  // arguments as deep_hessian_traces, then as eigenvalue_interval, except steps: 0 (the default)
  // is the automatic count of engines.h.
  m.def(
      "deep_eigenvalue_interval(Tensor x, Tensor target, Tensor[] weights, Tensor?[] biases, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\", bool largest=True, "
      "int steps=0, Tensor? start=None, int seed=0) -> (Tensor lower, Tensor upper, "
      "Tensor source, Tensor ritz_values, Tensor ritz_vectors, Tensor products, Tensor trace, "
      "Tensor trace_sq)");
  // The same, and what its Autograd kernel differentiates (the header says the layout).
  m.def(
      "_deep_eigenvalue_interval_derivatives(Tensor x, Tensor target, Tensor[] weights, "
      "Tensor?[] biases, str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\", "
      "bool largest=True, int steps=0, Tensor? start=None, int seed=0, Tensor? traces=None) "
      "-> (Tensor lower, Tensor upper, Tensor source, Tensor ritz_values, Tensor ritz_vectors, "
      "Tensor products, Tensor trace, Tensor trace_sq, Tensor image, Tensor assembled_vector, "
      "Tensor derivatives)");
  // H·v for each row of vectors (n,) or (k, n), θ in nn.Sequential.parameters() order.
  m.def(
      "deep_hessian_vector_products(Tensor x, Tensor target, Tensor[] weights, Tensor?[] biases, "
      "Tensor vectors, str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\") "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(torch_ws, CompositeExplicitAutograd, m) {
  m.impl("deep_eigenvalue_interval", &torch_ws::deep_eigenvalue_interval);
  m.impl("_deep_eigenvalue_interval_derivatives",
         &torch_ws::deep_eigenvalue_interval_derivatives);
  m.impl("deep_hessian_vector_products", &torch_ws::deep_hessian_vector_products);
}

TORCH_LIBRARY_IMPL(torch_ws, Meta, m) {
  m.impl("deep_eigenvalue_interval", &torch_ws::deep_eigenvalue_interval_meta);
  m.impl("_deep_eigenvalue_interval_derivatives",
         &torch_ws::deep_eigenvalue_interval_derivatives_meta);
  m.impl("deep_hessian_vector_products", &torch_ws::deep_hessian_vector_products_meta);
}
