// Argument validation shared by every op and every dispatch key: each message says what was
// expected and what arrived. Sizes are compared as SymInts (sym_size), so the Meta kernels run the
// very same checks on FakeTensors with dynamic shapes, adding shape guards instead of
// specializing.
#include "problem.h"

#include <c10/util/Exception.h>

#include <string>

namespace torch_ws {

Reduction parse_reduction(std::string_view op, std::string_view name) {
  if (name == "mean") return Reduction::Mean;
  if (name == "sum") return Reduction::Sum;
  TORCH_CHECK(false, op, ": unknown reduction '", std::string(name),
              "'; expected one of: mean, sum (as in BCEWithLogitsLoss)");
}

at::Tensor MlpProblem::output_row() const {
  TORCH_INTERNAL_ASSERT(num_outputs() == 1, "the engines implement one output (C = 1), got C = ",
                        num_outputs());
  return w2.reshape({hidden()});
}

namespace {

void check_float_tensor(std::string_view op, const char* name, const at::Tensor& t,
                        const at::Tensor& x) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": expected ",
              name, " to be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": all tensors must share one dtype; x is ",
              x.scalar_type(), " but ", name, " is ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": all tensors must be on one device; x is on ",
              x.device(), " but ", name, " is on ", t.device());
}

void check_vector(std::string_view op, const char* name, const at::Tensor& t,
                  const c10::SymInt& length, const char* expected_text) {
  TORCH_CHECK(t.dim() == 1 && t.sym_size(0) == length, op, ": expected ", name, " of shape ",
              expected_text, " = [", length, "], got shape ", t.sym_sizes());
}

// Targets of binary cross-entropy are probabilities. NaN compares false on both sides, so NaN
// targets pass and propagate to a NaN result, as they do in BCEWithLogitsLoss.
void check_probabilities(std::string_view op, const at::Tensor& target) {
  if (target.is_meta()) return;  // no values to read while tracing
  if (target.is_cpu()) {
    const auto [lowest, highest] = at::aminmax(target);
    const double lo = lowest.item<double>(), hi = highest.item<double>();
    TORCH_CHECK(!(lo < 0 || hi > 1), op, ": expected targets in [0, 1] (probabilities), got "
                "values in [", lo, ", ", hi, "]");
    return;
  }
  // On an accelerator reading the range back would block the stream: assert on the device.
  at::_assert_async(at::logical_not(at::logical_or(target < 0, target > 1)).all(),
                    std::string(op) + ": expected targets in [0, 1] (probabilities)");
}

}  // namespace

MlpProblem check_problem(std::string_view op, const at::Tensor& x, const at::Tensor& target,
                         const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                         std::string_view activation, std::string_view reduction, Loss loss) {
  MlpProblem p;
  p.activation = parse_activation(op, activation);
  p.reduction = parse_reduction(op, reduction);
  p.loss = loss;
  const LossEntry& head = loss_entry(loss);

  TORCH_CHECK(x.defined(), op, ": x is an undefined tensor");
  check_float_tensor(op, "x", x, x);
  TORCH_CHECK(x.dim() == 2, op, ": expected x of shape (N, D), got a ", x.dim(),
              "-d tensor of shape ", x.sym_sizes());
  const c10::SymInt n = x.sym_size(0), d = x.sym_size(1);
  TORCH_CHECK(n > 0, op, ": expected a non-empty batch (N >= 1), got x of shape ", x.sym_sizes());
  TORCH_CHECK(d > 0, op, ": expected at least one input feature (D >= 1), got x of shape ",
              x.sym_sizes());

  check_float_tensor(op, "w1", w1, x);
  TORCH_CHECK(w1.dim() == 2, op, ": expected w1 of shape (H, D) as in nn.Linear(D, H).weight, "
              "got a ", w1.dim(), "-d tensor of shape ", w1.sym_sizes());
  const c10::SymInt h = w1.sym_size(0);
  TORCH_CHECK(h > 0, op, ": expected at least one hidden unit (H >= 1), got w1 of shape ",
              w1.sym_sizes());
  TORCH_CHECK(w1.sym_size(1) == d, op, ": w1 has ", w1.sym_size(1), " input columns but x has D = ",
              d, " features; expected w1 of shape (H, ", d, ")");

  const int64_t c = head.num_outputs;
  check_float_tensor(op, "w2", w2, x);
  TORCH_CHECK(w2.dim() == 2, op, ": expected w2 of shape (", c, ", H) as in nn.Linear(H, ", c,
              ").weight, got a ", w2.dim(), "-d tensor of shape ", w2.sym_sizes());
  TORCH_CHECK(w2.sym_size(0) == c, op, ": expected w2 with exactly ",
              c == 1 ? std::string("one output row") : std::to_string(c) + " output rows", " (",
              head.as_torch, " on Linear(H, ", c, ")), got shape ", w2.sym_sizes());
  TORCH_CHECK(w2.sym_size(1) == h, op, ": w2 has ", w2.sym_size(1), " columns but w1 has H = ", h,
              " rows; expected w2 of shape (", c, ", ", h, ")");

  if (b1) {
    check_float_tensor(op, "b1", *b1, x);
    check_vector(op, "b1", *b1, h, "(H,)");
  }
  if (b2) {
    check_float_tensor(op, "b2", *b2, x);
    check_vector(op, "b2", *b2, c, c == 1 ? "(1,)" : "(C,)");
  }

  check_float_tensor(op, "target", target, x);
  const bool target_ok = (target.dim() == 1 && target.sym_size(0) == n) ||
                         (target.dim() == 2 && target.sym_size(0) == n && target.sym_size(1) == 1);
  TORCH_CHECK(target_ok, op, ": expected target of shape (N,) or (N, 1) with N = ", n,
              ", got shape ", target.sym_sizes());
  TORCH_CHECK(!target.requires_grad(), op, ": target requires grad, but the bound is not "
              "differentiable in the labels; pass target.detach()");
  check_probabilities(op, target);

  p.x = x;
  p.target = target.dim() == 1 ? target : target.squeeze(1);
  p.w1 = w1;
  p.b1 = b1;
  p.w2 = w2;
  p.b2 = b2;
  return p;
}

}  // namespace torch_ws
