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
// the Ritz values, vectors, source and product count are not. The ends are differentiable once,
// as every bound of the library: E's first derivative is the end's, its second is not (E's
// coefficients are the end's first derivatives at this point, constants here), so double
// backward raises (DeepRitzFormsBackward's Error node), as does forward over reverse here and
// nested torch.func transforms in torch_ws/deep.py.
//
// Cost with gradients: the exact traces with their graph (the certificate takes their values
// rather than evaluating them again), the certificate, then the k + 2 forms' products: about the
// interval's time plus the traces' backward, and the traces' backward memory. The forms are
// checkpointed (DeepRitzFormsBackward below): autograd through them would keep every product's
// (N, ·, H_l) arrays, O(k·N·ΣH_l): value and gradient peaked at 8.1–8.2 GiB at [200, 200],
// N = 1000, 128 steps, and 5.6–5.8 GiB checkpointed (docs/benchmarks.md).
#include "core/problem.h"
#include "ops/deep/deep_products.h"
#include "ops/deep/deep_traces.h"
#include "ops/deep/forward.h"  // tensors_of, kind_of, problem_of
#include "ops/deep/low_precision.h"
#include "ops/schemas.h"  // find_op

#include "autograd/support.h"  // functorch_transform_active

#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;

// The forms ⟨left_v, H right_v⟩ for the rows v of left and right (k, n), as functions of p's
// tensors: the closed-form products of deep_products.cpp, recorded where autograd records.
Tensor ritz_forms(const MlpProblem& p, const Tensor& left, const Tensor& right) {
  return (left * DeepHessianProducts(p, DeepHessianProducts::Uses::Products).apply(right)).sum(1);
}

}  // namespace
}  // namespace torch_ws

// The forms of the Autograd kernel below, checkpointed: the forward evaluates them without
// recording and keeps only its inputs; the backward evaluates them again with recording, a run of
// rows at a time, and takes each run's gradient at once, so that at most one run's graph is
// alive (O(rows·N·ΣH_l) instead of O(k·N·ΣH_l)). Cost: the k + 2 products once more, against the
// traces' backward a few percent. Reverse mode only (forward-mode tangents and torch.func
// transforms take the recorded path). Differentiable once: with create_graph its gradients carry
// the Error node of autograd/support.h. At global scope for its grad_fn's name
// (autograd/skeleton.h).
class DeepRitzFormsBackward : public torch::autograd::Function<DeepRitzFormsBackward> {
 public:
  // `shape`: the problem (its loss, activation, target and layers); `tensors`: its differentiable
  // tensors (tensors_of), passed as a list so that autograd connects the node to them.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const torch_ws::MlpProblem& shape,
                                                const at::Tensor& left, const at::Tensor& right,
                                                at::TensorList tensors) {
    std::vector<at::Tensor> saved = tensors.vec();
    saved.insert(saved.end(), {left, right, shape.target});
    ctx->save_for_backward(saved);
    ctx->saved_data["kind"] = torch_ws::kind_of(shape);
    return {torch_ws::ritz_forms(shape, left, right)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const std::vector<int64_t> kind = ctx->saved_data["kind"].toIntVector();
    const size_t count = saved.size() - 3;  // the problem's tensors, then left, right, target
    const at::Tensor &left = saved[count], &right = saved[count + 1];
    torch::autograd::variable_list grads(count);
    const at::Tensor& upstream = grad_outputs[0];
    // The problem again, on leaves of its own (detached copies of the tensors that take a
    // gradient): the recomputation's graph ends at them.
    std::vector<at::Tensor> recorded(saved.begin(), saved.begin() + count), leaves, inputs;
    std::vector<size_t> wanted;
    for (size_t k = 0; k < count; ++k) {
      if (!recorded[k].requires_grad()) continue;
      inputs.push_back(recorded[k]);
      recorded[k] = recorded[k].detach().requires_grad_(true);
      leaves.push_back(recorded[k]);
      wanted.push_back(k);
    }
    if (upstream.defined() && !leaves.empty()) {
      const at::AutoGradMode recording(true);
      const torch_ws::MlpProblem p = torch_ws::problem_of(kind, saved[count + 2], recorded);
      // One products object (its per-layer chain recorded once, O(N·ΣH_l), kept across the
      // runs), then runs of rows whose (N, rows, H) arrays hold about 2²⁰ numbers each.
      const torch_ws::DeepHessianProducts products(
          p, torch_ws::DeepHessianProducts::Uses::Products);
      int64_t widest = 1;
      for (const torch_ws::Layer& layer : p.layers) widest = std::max(widest, layer.weight.size(0));
      const int64_t run = std::max<int64_t>(1, (int64_t{1} << 20) / (p.num_samples() * widest));
      const int64_t k = left.size(0);
      const at::Tensor weights = upstream.detach().to(left.scalar_type());
      for (int64_t first = 0; first < k; first += run) {
        const int64_t rows = std::min(run, k - first);
        // (Every row runs, those of weight 0 too: skipping them would read the weights on the
        // host, which fake tensors cannot.)
        const at::Tensor sum =
            (weights.narrow(0, first, rows) * (left.narrow(0, first, rows) *
                  products.apply(right.narrow(0, first, rows))).sum(1)).sum();
        const torch::autograd::variable_list run_grads = torch::autograd::grad(
            {sum}, leaves, {}, /*retain_graph=*/first + run < k, /*create_graph=*/false,
            /*allow_unused=*/true);
        for (size_t a = 0; a < wanted.size(); ++a) {
          at::Tensor& g = grads[wanted[a]];
          if (!run_grads[a].defined()) continue;
          if (g.defined()) {
            g.add_(run_grads[a]);
          } else {
            g = run_grads[a].clone(at::MemoryFormat::Contiguous);
          }
        }
      }
    }
    // Differentiable once: under create_graph the gradients carry an Error node (the forms'
    // second derivative is not the interval ends', whose coefficients depend on θ too).
    torch_ws::attach_double_backward_error(
        grads, inputs,
        std::string("torch_ws.deep_eigenvalue_interval") + torch_ws::kDoubleBackward);
    grads.insert(grads.begin(), {at::Tensor(), at::Tensor(), at::Tensor()});  // shape, left, right
    return grads;
  }
};

namespace torch_ws {
namespace {

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

// x, the weights and the present biases: what the interval is differentiable in.
std::vector<Tensor> differentiable_inputs(const Tensor& x, at::TensorList weights,
                                          const c10::List<optional<Tensor>>& biases) {
  std::vector<Tensor> inputs = {x};
  inputs.insert(inputs.end(), weights.begin(), weights.end());
  for (const optional<Tensor>& b : biases) {
    if (b) inputs.push_back(*b);
  }
  return inputs;
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
  // What autograd would record: reverse mode (an input requiring grad, with grad mode on) and
  // forward-mode tangents (the smooth functions below propagate tangents as well). Both at once,
  // forward over reverse, would differentiate the ends' first-order description a second time,
  // which is not the ends' second derivative.
  bool tangents = false, reverse = false;
  for (const Tensor& t : differentiable_inputs(x, weights, biases)) {
    tangents = tangents || t._fw_grad(/*level=*/0).defined();
    reverse = reverse || (at::GradMode::is_enabled() && t.requires_grad());
  }
  if (tangents) refuse_both_modes(reverse, kIntervalName);
  if (!reverse && !tangents) {
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
  // Checkpointed where only reverse mode records (DeepRitzFormsBackward); else recorded whole.
  const Tensor forms =
      tangents || functorch_transform_active()
          ? ritz_forms(p, left, right)
          : DeepRitzFormsBackward::apply(p, left, right, at::TensorList(tensors_of(p)))[0];
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
