// The kernels of ws_bound_batched and _batched_traces below autograd (CPU, CUDA, Meta): B networks
// of one shape, stacked along a leading model dimension, on one shared data set. Each model is the
// single-model problem of core/problem.h on views of its parameters, evaluated by the same engine
// (engines/dispatch.h), so the batched results are the single-model ones by construction. What the
// batch saves is the per-call cost around the arithmetic: one dispatch, one validation and one
// autograd node for B models instead of B of each, and on the CPU the models run in parallel
// (a model per task; the engines' own lanes then run inline). At the papers' scale that per-call
// cost is most of a call (docs/math.md §10). ops/batched/autograd.cpp holds the Autograd kernel.
#include "engines/dispatch.h"
#include "core/threads.h"
#include "core/ws_bound.h"
#include "ops/gradient_list.h"
#include "ops/low_precision.h"
#include "ops/schemas.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;

// The batched shapes: w1 (B, H, D), b1 (B, H), w2 (B, C, H), b2 (B, C), all with one B. The
// single-model checks (check_problem) then run on model 0's views, and cover every model: the
// shapes, dtypes and devices are shared, and so are x and the target.
void check_batch(const Tensor& w1, const optional<Tensor>& b1, const Tensor& w2,
                 const optional<Tensor>& b2) {
  TORCH_CHECK(w1.defined() && w2.defined(), kWsBoundBatchedName, ": w1 and w2 are undefined "
              "tensors");
  TORCH_CHECK(w1.dim() == 3, kWsBoundBatchedName, ": expected w1 of shape (B, H, D), B models "
              "stacked along dimension 0, got shape ", w1.sym_sizes());
  TORCH_CHECK(w2.dim() == 3, kWsBoundBatchedName, ": expected w2 of shape (B, C, H), got shape ",
              w2.sym_sizes());
  const c10::SymInt& batch = w1.sym_size(0);
  auto check_models = [&](const Tensor& t, const char* name, int64_t dims, const char* shape) {
    TORCH_CHECK(t.dim() == dims && t.sym_size(0) == batch, kWsBoundBatchedName, ": expected ",
                name, " of shape ", shape, " with B = ", batch, " (w1's first dimension), got "
                "shape ", t.sym_sizes());
  };
  check_models(w2, "w2", 3, "(B, C, H)");
  if (b1) check_models(*b1, "b1", 2, "(B, H)");
  if (b2) check_models(*b2, "b2", 2, "(B, C)");
  TORCH_CHECK(batch >= 1, kWsBoundBatchedName, ": expected at least one model, got B = 0");
}

optional<Tensor> model_of(const optional<Tensor>& t, int64_t b) {
  return t ? optional<Tensor>(t->select(0, b)) : std::nullopt;
}

// Model 0's checked problem, the template of every model's.
MlpProblem checked_first_model(const Tensor& x, const Tensor& target, const Tensor& w1,
                               const optional<Tensor>& b1, const Tensor& w2,
                               const optional<Tensor>& b2, c10::string_view activation,
                               c10::string_view reduction, c10::string_view loss) {
  check_batch(w1, b1, w2, b2);
  return check_problem(kWsBoundBatchedName, x, target, w1.select(0, 0), model_of(b1, 0),
                       w2.select(0, 0), model_of(b2, 0), activation, reduction, loss);
}

// Model b's problem: the template with b's parameters (the checked target is reused as it is).
MlpProblem model_problem(const MlpProblem& first, const Tensor& w1, const optional<Tensor>& b1,
                         const Tensor& w2, const optional<Tensor>& b2, int64_t b) {
  MlpProblem p = first;
  p.w1() = w1.select(0, b);
  p.b1() = model_of(b1, b);
  p.w2() = w2.select(0, b);
  p.b2() = model_of(b2, b);
  return p;
}

// Model b's gradients into slice b of the lists (gradient_list.h's order).
void store(std::vector<Tensor>& out, const InputGradients& g, int64_t b) {
  const Tensor* from[] = {&g.x, &g.w1, &g.b1, &g.w2, &g.b2};
  for (size_t k = 0; k < out.size(); ++k) {
    if (out[k].numel() > 0 && from[k]->defined()) out[k].select(0, b).copy_(*from[k]);
  }
}

using BatchedTraces = std::tuple<Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>>;

// (tr H, tr H²) of every model, (B,) float64, and with `with_gradients` their gradients.
BatchedTraces batched_traces_kernel(const Tensor& x, const Tensor& target, const Tensor& w1,
                                    const optional<Tensor>& b1, const Tensor& w2,
                                    const optional<Tensor>& b2, c10::string_view activation,
                                    c10::string_view reduction, bool with_gradients,
                                    bool need_grad_x, c10::string_view loss) {
  const MlpProblem first =
      checked_first_model(x, target, w1, b1, w2, b2, activation, reduction, loss);
  const CallThreads threads(x.device());
  const int64_t batch = w1.size(0);
  Tensor trace = at::empty({batch}, x.options().dtype(at::kDouble));
  Tensor trace_sq = at::empty({batch}, x.options().dtype(at::kDouble));
  std::vector<Tensor> trace_grads, trace_sq_grads;
  if (with_gradients) {
    trace_grads = empty_gradient_list(x, need_grad_x, w1, b1, w2, b2, c10::SymInt(batch));
    trace_sq_grads = empty_gradient_list(x, need_grad_x, w1, b1, w2, b2, c10::SymInt(batch));
  }
  const Gradients gradients = !with_gradients ? Gradients::None
                              : need_grad_x   ? Gradients::ParametersAndX
                                              : Gradients::Parameters;
  auto run_models = [&](int64_t begin, int64_t end) {
    // This kernel runs below autograd, but the thread-local dispatch state does not follow the
    // work into the pool's threads: without this guard the engines' ATen calls there would meet
    // the Autograd key of inputs that require grad.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t b = begin; b < end; ++b) {
      const TracesResult t =
          evaluate_traces(model_problem(first, w1, b1, w2, b2, b), gradients);
      trace.select(0, b).copy_(t.trace);
      trace_sq.select(0, b).copy_(t.trace_sq);
      if (with_gradients) {
        store(trace_grads, *t.trace_grad, b);
        store(trace_sq_grads, *t.trace_sq_grad, b);
      }
    }
  };
  // On the CPU a task per model (grain 1): a model is tens of microseconds or more of work. An
  // accelerator's engine launches its own kernels: the models go one after another.
  if (x.is_cpu()) {
    at::parallel_for(0, batch, 1, run_models);
  } else {
    run_models(0, batch);
  }
  return {trace, trace_sq, trace_grads, trace_sq_grads};
}

Tensor ws_bound_batched_kernel(const Tensor& x, const Tensor& target, const Tensor& w1,
                               const optional<Tensor>& b1, const Tensor& w2,
                               const optional<Tensor>& b2, c10::string_view activation,
                               c10::string_view reduction, c10::string_view loss) {
  const ProblemArgs args(x, target, w1, b1, w2, b2, activation, reduction, loss);
  // Under torch.inference_mode(), which skips the Autograd key (ops/low_precision.h).
  if (low_precision::applies(args)) return low_precision::ws_bound_batched(args);
  const auto [trace, trace_sq, unused_grads, unused_sq_grads] = batched_traces_kernel(
      x, target, w1, b1, w2, b2, activation, reduction, false, false, loss);
  const int64_t n = count_params(w1.size(1), w1.size(2), w2.size(1), b1.has_value(),
                                 b2.has_value());
  return ws_upper_bound_batched(trace, trace_sq, n, x.scalar_type());
}

// ---- Meta: the same checks, outputs of the right shapes. ----

BatchedTraces batched_traces_meta(const Tensor& x, const Tensor& target, const Tensor& w1,
                                  const optional<Tensor>& b1, const Tensor& w2,
                                  const optional<Tensor>& b2, c10::string_view activation,
                                  c10::string_view reduction, bool with_gradients,
                                  bool need_grad_x, c10::string_view loss) {
  checked_first_model(x, target, w1, b1, w2, b2, activation, reduction, loss);
  const int64_t batch = w1.size(0);
  auto traces = [&] { return at::empty({batch}, x.options().dtype(at::kDouble)); };
  std::vector<Tensor> trace_grads, trace_sq_grads;
  if (with_gradients) {
    trace_grads = empty_gradient_list(x, need_grad_x, w1, b1, w2, b2, c10::SymInt(batch));
    trace_sq_grads = empty_gradient_list(x, need_grad_x, w1, b1, w2, b2, c10::SymInt(batch));
  }
  return {traces(), traces(), trace_grads, trace_sq_grads};
}

Tensor ws_bound_batched_meta(const Tensor& x, const Tensor& target, const Tensor& w1,
                             const optional<Tensor>& b1, const Tensor& w2,
                             const optional<Tensor>& b2, c10::string_view activation,
                             c10::string_view reduction, c10::string_view loss) {
  checked_first_model(x, target, w1, b1, w2, b2, activation, reduction, loss);
  return at::empty_symint({w1.sym_size(0)}, x.options());
}

}  // namespace
}  // namespace torch_ws

// One kernel for every backend (CPU, CUDA, any other): the engines pick each device's path.
TORCH_LIBRARY_IMPL(torch_ws, CompositeExplicitAutograd, m) {
  m.impl("ws_bound_batched", &torch_ws::ws_bound_batched_kernel);
  m.impl("_batched_traces", &torch_ws::batched_traces_kernel);
}
TORCH_LIBRARY_IMPL(torch_ws, Meta, m) {
  m.impl("ws_bound_batched", &torch_ws::ws_bound_batched_meta);
  m.impl("_batched_traces", &torch_ws::batched_traces_meta);
}
