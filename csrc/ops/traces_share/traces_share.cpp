// The traces-share family: one process's part of the sample-space sums when several processes
// (the ranks of a torch.distributed group) hold the whole data set and split the work
// (core/share.h, docs/math.md §4.1). The parts of tr H, of tr(H²) and of the gradient of
// α·tr H + β·tr(H²) sum, over shares 0 … S−1, to the whole ones; α and β (a bound's derivatives
// in the whole traces) come from the caller, which knows the whole traces only after the sum.
//
//   _traces_share(..., share, num_shares, weights=None, need_grad_x=False)
//       -> (trace, trace_sq, grads): the share's float64 parts of tr H and tr(H²) and, when
//       weights = [α, β] is given, its part of that gradient ([x, w1, b1, w2, b2] in the inputs'
//       dtype; x's empty unless asked for; an empty list without weights).
//
// Kernels: one device-generic kernel (the engines pick the device's path), the Meta kernel.
#include "engines/dispatch.h"
#include "core/threads.h"
#include "core/problem.h"
#include "ops/gradient_list.h"

#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;

constexpr char kTracesShareName[] = "torch_ws._traces_share";

Share checked_share(int64_t share, int64_t num_shares) {
  TORCH_CHECK(num_shares >= 1 && 0 <= share && share < num_shares, kTracesShareName,
              ": expected 0 <= share < num_shares, got share = ", share, " and num_shares = ",
              num_shares);
  return {share, num_shares};
}

void check_weights(const optional<c10::ArrayRef<double>>& weights) {
  TORCH_CHECK(!weights || weights->size() == 2, kTracesShareName,
              ": expected weights = [alpha, beta] (the gradient of alpha·tr H + beta·tr(H²)), got ",
              weights->size(), " numbers");
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> traces_share_kernel(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, int64_t share, int64_t num_shares,
    optional<c10::ArrayRef<double>> weights, bool need_grad_x) {
  const MlpProblem p =
      check_problem(kTracesShareName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  const CallThreads threads(x.device());
  const Share part = checked_share(share, num_shares);
  check_weights(weights);
  if (!weights) {
    const TracesResult t = evaluate_share(p, Gradients::None, part);
    return {t.trace, t.trace_sq, {}};
  }
  const double alpha = (*weights)[0], beta = (*weights)[1];
  WeightedTraces t = evaluate_weighted_gradient(
      p, need_grad_x,
      [alpha, beta](const Tensor& trace, const Tensor&) {
        const auto options = trace.options().dtype(at::kDouble);
        return std::make_pair(at::scalar_tensor(alpha, options), at::scalar_tensor(beta, options));
      },
      part);
  return {t.trace, t.trace_sq, gradient_list(t.grad, x)};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> traces_share_meta(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, int64_t share, int64_t num_shares,
    optional<c10::ArrayRef<double>> weights, bool need_grad_x) {
  check_problem(kTracesShareName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  checked_share(share, num_shares);
  check_weights(weights);
  const auto scalar = [&] { return at::empty({}, x.options().dtype(at::kDouble)); };
  std::vector<Tensor> grads;
  if (weights) grads = empty_gradient_list(x, need_grad_x, w1, b1, w2, b2);
  return {scalar(), scalar(), grads};
}

}  // namespace
}  // namespace torch_ws

TORCH_LIBRARY_FRAGMENT(torch_ws, m) {
  m.def(
      "_traces_share(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation, str reduction, str loss, int share, int num_shares, "
      "float[]? weights=None, bool need_grad_x=False) "
      "-> (Tensor trace, Tensor trace_sq, Tensor[] grads)");
}

TORCH_LIBRARY_IMPL(torch_ws, CompositeExplicitAutograd, m) {
  m.impl("_traces_share", &torch_ws::traces_share_kernel);
}

TORCH_LIBRARY_IMPL(torch_ws, Meta, m) {
  m.impl("_traces_share", &torch_ws::traces_share_meta);
}
