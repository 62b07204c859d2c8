// The explicit Hessian family: the n×n loss Hessian of a small network, assembled in closed form
// (docs/math.md §3, §8.5), and the reverse mode of that assembly. What the distributed
// dataset_bounds all-reduces for small networks (each rank assembles its samples' share) and what
// the reproduction's eigenvalues come from: one implementation of H, in C++, for every head.
//
//   _hessian(..., begin, end) -> (n, n) float64: Σ over samples [begin, end) of their terms of H
//       (the loss scaled over all N samples), θ in the flat order W1 row-major, b1, W2, b2;
//   _hessian_backward(hessian_bar, ..., begin, end, need_grad_x) -> [x, w1, b1, w2, b2]: the
//       gradient of ⟨H̄, that share⟩, in the inputs' dtype (x's empty unless asked for).
//
// Kernels: one kernel for every device (the one-logit CPU engine's loops on the CPU, ATen
// elsewhere and for C ≥ 2 logits), the Meta kernel (the same checks, shapes only).
#include "engines/dispatch.h"
#include "core/problem.h"
#include "engines/parameter_space/parameter_space.h"
#include "engines/multi_output/engines.h"
#include "ops/gradient_list.h"

#include <torch/library.h>

#include <optional>
#include <string_view>
#include <vector>

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;

constexpr char kHessianName[] = "torch_ws._hessian";
constexpr char kHessianBackwardName[] = "torch_ws._hessian_backward";

// The sample range [begin, end) of `p`, checked (end defaults to N).
std::pair<int64_t, int64_t> sample_range(std::string_view op, const MlpProblem& p, int64_t begin,
                                         optional<int64_t> end) {
  const int64_t n = p.num_samples(), last = end.value_or(n);
  TORCH_CHECK(0 <= begin && begin <= last && last <= n, op, ": expected 0 <= begin <= end <= N = ",
              n, " (the samples whose terms are summed), got begin = ", begin, " and end = ", last);
  return {begin, last};
}

// Two assemblies of the same H: the one-logit CPU engine's fused loops (the upper triangle only,
// half the work of a general product), and the ATen one of every head and device.
bool runs_one_logit_cpu_engine(const MlpProblem& p) { return p.one_logit() && p.x.is_cpu(); }

int64_t chunk_of(const MlpProblem& p) {
  return multi_output_chunk_for(p.num_samples(), p.num_outputs(), p.num_params());
}

Tensor hessian_kernel(const Tensor& x, const Tensor& target, const Tensor& w1,
                      const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
                      c10::string_view activation, c10::string_view reduction,
                      c10::string_view loss, int64_t begin, optional<int64_t> end) {
  const MlpProblem p =
      check_problem(kHessianName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  const auto [first, last] = sample_range(kHessianName, p, begin, end);
  if (runs_one_logit_cpu_engine(p)) {
    return multi_output::layout_to_flat(parameter_space_hessian_cpu(p, first, last), p);
  }
  return multi_output::hessian_of_samples(p, first, last, chunk_of(p));
}

std::vector<Tensor> hessian_backward_kernel(
    const Tensor& hessian_bar, const Tensor& x, const Tensor& target, const Tensor& w1,
    const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
    c10::string_view activation, c10::string_view reduction, c10::string_view loss,
    int64_t begin, optional<int64_t> end, bool need_grad_x) {
  const MlpProblem p = check_problem(kHessianBackwardName, x, target, w1, b1, w2, b2, activation,
                                     reduction, loss);
  const int64_t n = p.num_params();
  TORCH_CHECK(hessian_bar.dim() == 2 && hessian_bar.size(0) == n && hessian_bar.size(1) == n,
              kHessianBackwardName, ": expected hessian_bar of shape (", n, ", ", n,
              ") (n, the network's parameter count), got ", hessian_bar.sizes());
  TORCH_CHECK(hessian_bar.device() == x.device(), kHessianBackwardName,
              ": expected hessian_bar on x's device ", x.device(), ", got ", hessian_bar.device());
  const auto [first, last] = sample_range(kHessianBackwardName, p, begin, end);
  if (runs_one_logit_cpu_engine(p)) {
    const at::Tensor bar = multi_output::flat_to_layout(hessian_bar.to(at::kDouble), p);
    return gradient_list(parameter_space_hessian_backward_cpu(p, bar, first, last, need_grad_x),
                         x);
  }
  return gradient_list(multi_output::hessian_of_samples_backward(p, hessian_bar, first, last,
                                                                 chunk_of(p), need_grad_x),
                       x);
}

Tensor hessian_meta(const Tensor& x, const Tensor& target, const Tensor& w1,
                    const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
                    c10::string_view activation, c10::string_view reduction,
                    c10::string_view loss, int64_t /*begin*/, optional<int64_t> /*end*/) {
  check_problem(kHessianName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  const c10::SymInt n = w1.sym_size(0) * w1.sym_size(1) + (b1 ? w1.sym_size(0) : 0) +
                        w2.sym_numel() + (b2 ? b2->sym_numel() : 0);
  return at::empty_symint({n, n}, x.options().dtype(at::kDouble));
}

std::vector<Tensor> hessian_backward_meta(
    const Tensor& /*hessian_bar*/, const Tensor& x, const Tensor& target, const Tensor& w1,
    const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
    c10::string_view activation, c10::string_view reduction, c10::string_view loss,
    int64_t /*begin*/, optional<int64_t> /*end*/, bool need_grad_x) {
  check_problem(kHessianBackwardName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  return empty_gradient_list(x, need_grad_x, w1, b1, w2, b2);
}

}  // namespace
}  // namespace torch_ws

TORCH_LIBRARY_FRAGMENT(torch_ws, m) {
  m.def(
      "_hessian(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\", int begin=0, "
      "int? end=None) -> Tensor");
  m.def(
      "_hessian_backward(Tensor hessian_bar, Tensor x, Tensor target, Tensor w1, Tensor? b1, "
      "Tensor w2, Tensor? b2, str activation=\"tanh\", str reduction=\"mean\", "
      "str loss=\"bce\", int begin=0, int? end=None, bool need_grad_x=False) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(torch_ws, CompositeExplicitAutograd, m) {
  m.impl("_hessian", &torch_ws::hessian_kernel);
  m.impl("_hessian_backward", &torch_ws::hessian_backward_kernel);
}

TORCH_LIBRARY_IMPL(torch_ws, Meta, m) {
  m.impl("_hessian", &torch_ws::hessian_meta);
  m.impl("_hessian_backward", &torch_ws::hessian_backward_meta);
}
