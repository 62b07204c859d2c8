// Autograd of the eigenvalue-interval family, registered at the Autograd key: the forward
// redispatches below autograd to _eigenvalue_interval_with_gradients, which returns the gradients
// of both ends with the basis held fixed (docs/math.md §11.4); the backward weighs them by the
// upstream gradients. Only lower and upper are differentiable; forward mode is refused.
// hessian_vector_products is not differentiable (its Python wrapper detaches).
#include "autograd/support.h"
#include "ops/eigenvalue_interval/low_precision.h"
#include "ops/low_precision.h"
#include "ops/problem_args.h"
#include "ops/schemas.h"

#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

// The Functions live at global scope for their grad_fn's name (autograd/skeleton.h says why).
using at::Tensor;
using std::optional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace ws = torch_ws;

namespace torch_ws {
inline constexpr char kEigenvalueIntervalName[] = "torch_ws.eigenvalue_interval";
using EigenvalueIntervalSignature = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const optional<Tensor>&, const Tensor&,
    const optional<Tensor>&, c10::string_view, c10::string_view, c10::string_view, bool, int64_t,
    const optional<Tensor>&, int64_t);
using EigenvalueIntervalWithGradientsSignature =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>,
               std::vector<Tensor>>(const Tensor&, const Tensor&, const Tensor&,
                                    const optional<Tensor>&, const Tensor&,
                                    const optional<Tensor>&, c10::string_view, c10::string_view,
                                    c10::string_view, bool, int64_t, const optional<Tensor>&,
                                    int64_t, bool);
}  // namespace torch_ws

// The Lanczos settings travel beside the problem (they are not differentiable).
struct LanczosSettings {
  bool largest;
  int64_t steps;
  optional<Tensor> start;
  int64_t seed;
};

class EigenvalueIntervalBackward : public torch::autograd::Function<EigenvalueIntervalBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const ws::ProblemArgs& p,
                               const LanczosSettings& lanczos, at::TensorList /*p.tensors()*/) {
    static auto op = ws::find_op<ws::EigenvalueIntervalWithGradientsSignature>(
        "torch_ws::_eigenvalue_interval_with_gradients");
    auto [lower, upper, source, values, vectors, products, lower_grads, upper_grads] = [&] {
      at::AutoDispatchBelowADInplaceOrView guard;
      return op.call(p.x, p.target, p.w1(), p.b1(), p.w2(), p.b2(), p.activation, p.reduction,
                     p.loss, lanczos.largest, lanczos.steps, lanczos.start, lanczos.seed,
                     p.x.requires_grad());
    }();
    variable_list saved = lower_grads;
    saved.insert(saved.end(), upper_grads.begin(), upper_grads.end());
    const std::vector<Tensor> inputs = p.inputs();
    saved.insert(saved.end(), inputs.begin(), inputs.end());
    ctx->save_for_backward(saved);
    ctx->mark_non_differentiable({source, values, vectors, products});
    return {lower, upper, source, values, vectors, products};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    constexpr size_t k = ws::SavedTraces::kGradients;
    const std::vector<Tensor> inputs(saved.begin() + 2 * k, saved.end());
    std::vector<Tensor> grads(k);
    for (size_t i = 0; i < k; ++i) {
      const Tensor &of_lower = saved[i], &of_upper = saved[k + i];
      Tensor sum = at::zeros_like(of_lower);
      if (grad_outputs[0].defined()) sum = sum + of_lower * grad_outputs[0].to(of_lower.scalar_type());
      if (grad_outputs[1].defined()) sum = sum + of_upper * grad_outputs[1].to(of_upper.scalar_type());
      grads[i] = sum;
    }
    variable_list out = ws::op_input_grads(std::move(grads), inputs, ws::kEigenvalueIntervalName);
    out.insert(out.begin() + 1, Tensor());  // the LanczosSettings
    return out;
  }
};

namespace torch_ws {
namespace {

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> eigenvalue_interval_autograd(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, bool largest, int64_t steps,
    const optional<Tensor>& start, int64_t seed) {
  const ProblemArgs p(x, target, w1, b1, w2, b2, activation, reduction, loss);
  if (low_precision::applies(p)) {
    return eigenvalue_interval_low_precision::via_float32(x, target, w1, b1, w2, b2, activation,
                                                          reduction, loss, largest, steps, start,
                                                          seed);
  }
  TORCH_CHECK(!forward_tangents(p, kEigenvalueIntervalName).any, kEigenvalueIntervalName,
              ": forward-mode AD (torch.func.jvp, jacfwd, forward_ad) is not supported; "
              "differentiate the interval in reverse mode (backward, torch.autograd.grad)");
  if (!p.records_grad()) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = find_op<EigenvalueIntervalSignature>("torch_ws::eigenvalue_interval");
    return op.call(x, target, w1, b1, w2, b2, activation, reduction, loss, largest, steps, start,
                   seed);
  }
  const std::vector<Tensor> tensors = p.tensors();
  variable_list out = EigenvalueIntervalBackward::apply(
      p, LanczosSettings{largest, steps, start, seed}, at::TensorList(tensors));
  return {out[0], out[1], out[2], out[3], out[4], out[5]};
}

}  // namespace
}  // namespace torch_ws

TORCH_LIBRARY_IMPL(torch_ws, Autograd, m) {
  m.impl("eigenvalue_interval", &torch_ws::eigenvalue_interval_autograd);
}
