// Autograd of the deep eigenvalue interval (docs/math.md §12.6, §11.4), registered at the Autograd
// key. With the basis held fixed, each end of the interval is a smooth function of the parameters
// and x that stays a valid bound at every parameter value; _deep_eigenvalue_interval_derivatives
// describes it to first order (core/ritz_certificate.h, EndDerivative) as a linear combination of
// quadratic forms ⟨a, H b⟩ in fixed vectors and of tr H, tr(H²). This kernel evaluates those forms
// (the closed-form products of deep_products.cpp) and traces (deep_traces.cpp) again with autograd
// recording, both made of ATen operations, and attaches the combination's graph to the certified
// values: lower = value + (E − E.detach()), so the value is the certificate's and the gradient is
// that of E, the end's smooth function. The deep family differentiates its traces the same way
// (autograd through the kernel; no hand-derived reverse pass yet). Forward mode (torch.func.jvp,
// forward_ad) goes through the same functions. trace and trace_sq come out differentiable too;
// the Ritz values, vectors, source and product count are not.
//
// Cost with gradients: the exact traces with their graph (the certificate takes their values
// rather than evaluating them again), the certificate, then the k + 2 forms' products with their
// graphs: about the interval's time plus the traces' backward, and the traces' backward memory.
#include "core/problem.h"
#include "ops/deep/deep_products.h"
#include "ops/deep/deep_traces.h"
#include "ops/deep/low_precision.h"
#include "ops/schemas.h"  // find_op

#include <ATen/core/grad_mode.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;

constexpr char kIntervalName[] = "torch_ws.deep_eigenvalue_interval";

using IntervalOutputs =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using IntervalSignature = IntervalOutputs(const Tensor&, const Tensor&, at::TensorList,
                                          const c10::List<optional<Tensor>>&, c10::string_view,
                                          c10::string_view, c10::string_view, bool, int64_t,
                                          const optional<Tensor>&, int64_t);
using DerivativesSignature = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                        Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, at::TensorList, const c10::List<optional<Tensor>>&,
    c10::string_view, c10::string_view, c10::string_view, bool, int64_t, const optional<Tensor>&,
    int64_t, const optional<Tensor>&);

// Whether autograd would record anything: an input requiring grad (with grad mode on) or
// carrying a forward-mode tangent (the smooth functions below propagate tangents as well).
bool records_grad(const Tensor& x, at::TensorList weights,
                  const c10::List<optional<Tensor>>& biases) {
  const bool grad_mode = at::GradMode::is_enabled();
  auto records = [&](const Tensor& t) {
    return (grad_mode && t.requires_grad()) || t._fw_grad(/*level=*/0).defined();
  };
  bool any = records(x);
  for (const Tensor& w : weights) any = any || records(w);
  for (const optional<Tensor>& b : biases) any = any || (b && records(*b));
  return any;
}

// `value` (certified, not differentiable) carrying the gradient of `smooth`.
Tensor with_gradient_of(const Tensor& value, const Tensor& smooth) {
  return value + (smooth - smooth.detach()).to(value.scalar_type());
}

IntervalOutputs deep_eigenvalue_interval_autograd(
    const Tensor& x, const Tensor& target, at::TensorList weights,
    const c10::List<optional<Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, bool largest, int64_t steps,
    const optional<Tensor>& start, int64_t seed) {
  TORCH_CHECK(!target.requires_grad(), kIntervalName, ": target requires grad, but the bound is "
              "not differentiable in the labels; pass target.detach()");
  TORCH_CHECK(!start || !start->requires_grad(), kIntervalName, ": start requires grad, but the "
              "interval is not differentiable in the Lanczos start; pass start.detach()");
  if (deep_low_precision(x, target, weights, biases)) {
    return deep_low_precision_interval::via_float32(x, target, weights, biases, activation,
                                                    reduction, loss, largest, steps, start, seed);
  }
  if (!records_grad(x, weights, biases)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = find_op<IntervalSignature>("torch_ws::deep_eigenvalue_interval");
    return op.call(x, target, weights, biases, activation, reduction, loss, largest, steps, start,
                   seed);
  }
  // The traces as functions of the inputs (float64, as the certificate; the casts are
  // differentiable), evaluated once: the certificate takes their values.
  const DeepInputs w = in_float64(x, target, weights, biases);
  const auto [smooth_trace, smooth_trace_sq] =
      deep_hessian_traces(w.x, w.target, w.weights, w.biases, activation, reduction, loss);
  static auto op =
      find_op<DerivativesSignature>("torch_ws::_deep_eigenvalue_interval_derivatives");
  auto [lower, upper, source, values, vectors, products, trace, trace_sq, image, assembled,
        derivatives] =
      [&] {
        at::AutoDispatchBelowADInplaceOrView guard;
        return op.call(x, target, weights, biases, activation, reduction, loss, largest, steps,
                       start, seed, at::stack({smooth_trace, smooth_trace_sq}).detach());
      }();
  // The forms ⟨r_i, H r_i⟩ (r_i the Ritz vectors), ⟨Hu, H u⟩ (u = r_0) and ⟨z, H z⟩ (the
  // assembled Hessian's top eigenvector; zeros and coefficient 0 where it gave no end), as
  // functions of the inputs.
  const MlpProblem p = check_deep_problem(kIntervalName, w.x, w.target, w.weights, w.biases,
                                          activation, reduction, loss);
  const Tensor z = assembled.to(vectors.scalar_type()).unsqueeze(0);
  const Tensor left = at::cat({vectors, image.unsqueeze(0), z});
  const Tensor right = at::cat({vectors, vectors.narrow(0, 0, 1), z});
  const Tensor forms =
      (left * DeepHessianProducts(p, DeepHessianProducts::Uses::Products).apply(right)).sum(1);
  const Tensor terms = at::cat({forms, smooth_trace.reshape({1}), smooth_trace_sq.reshape({1})});
  const Tensor ends = at::mv(derivatives, terms);  // (lower, upper) to first order
  return {with_gradient_of(lower, ends[0]), with_gradient_of(upper, ends[1]), source, values,
          vectors, products, with_gradient_of(trace, smooth_trace),
          with_gradient_of(trace_sq, smooth_trace_sq)};
}

}  // namespace
}  // namespace torch_ws

TORCH_LIBRARY_IMPL(torch_ws, Autograd, m) {
  m.impl("deep_eigenvalue_interval", &torch_ws::deep_eigenvalue_interval_autograd);
}
