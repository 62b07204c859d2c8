// Argument validation shared by every op: each message says what was expected and what arrived.
#include "traces.h"

#include <c10/util/Exception.h>

#include <string>

namespace torch_ws {

namespace {

Reduction parse_reduction(const char* op, std::string_view name) {
  if (name == "mean") return Reduction::Mean;
  if (name == "sum") return Reduction::Sum;
  TORCH_CHECK(false, op, ": unknown reduction '", std::string(name),
              "'; expected one of: mean, sum (as in BCEWithLogitsLoss)");
}

void check_float_tensor(const char* op, const char* name, const at::Tensor& t,
                        const at::Tensor& x) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": expected ",
              name, " to be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": all tensors must share one dtype; x is ",
              x.scalar_type(), " but ", name, " is ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": all tensors must be on one device; x is on ",
              x.device(), " but ", name, " is on ", t.device());
}

void check_shape(const char* op, const char* name, const at::Tensor& t,
                 at::IntArrayRef expected, const char* expected_text) {
  TORCH_CHECK(t.sizes() == expected, op, ": expected ", name, " of shape ", expected_text, " = ",
              expected, ", got shape ", t.sizes());
}

}  // namespace

MlpProblem check_problem(const char* op, const at::Tensor& x, const at::Tensor& target,
                         const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                         std::string_view activation, std::string_view reduction,
                         bool check_values) {
  MlpProblem p;
  p.activation = parse_activation(activation);
  p.reduction = parse_reduction(op, reduction);

  TORCH_CHECK(x.defined(), op, ": x is an undefined tensor");
  check_float_tensor(op, "x", x, x);
  TORCH_CHECK(x.dim() == 2, op, ": expected x of shape (N, D), got a ", x.dim(),
              "-d tensor of shape ", x.sizes());
  const int64_t n = x.size(0), d = x.size(1);
  TORCH_CHECK(n > 0, op, ": expected a non-empty batch (N >= 1), got x of shape ", x.sizes());
  TORCH_CHECK(d > 0, op, ": expected at least one input feature (D >= 1), got x of shape ",
              x.sizes());

  check_float_tensor(op, "w1", w1, x);
  TORCH_CHECK(w1.dim() == 2, op, ": expected w1 of shape (H, D) as in nn.Linear(D, H).weight, got a ",
              w1.dim(), "-d tensor of shape ", w1.sizes());
  const int64_t h = w1.size(0);
  TORCH_CHECK(h > 0, op, ": expected at least one hidden unit (H >= 1), got w1 of shape ",
              w1.sizes());
  TORCH_CHECK(w1.size(1) == d, op, ": w1 has ", w1.size(1), " input columns but x has D = ", d,
              " features; expected w1 of shape (H, ", d, ")");

  check_float_tensor(op, "w2", w2, x);
  TORCH_CHECK(w2.dim() == 2, op, ": expected w2 of shape (1, H) as in nn.Linear(H, 1).weight, got a ",
              w2.dim(), "-d tensor of shape ", w2.sizes());
  TORCH_CHECK(w2.size(0) == 1, op, ": expected w2 with exactly one output row (binary "
              "classification, Linear(H, 1)), got shape ", w2.sizes());
  TORCH_CHECK(w2.size(1) == h, op, ": w2 has ", w2.size(1), " columns but w1 has H = ", h,
              " rows; expected w2 of shape (1, ", h, ")");

  if (b1) {
    check_float_tensor(op, "b1", *b1, x);
    check_shape(op, "b1", *b1, {h}, "(H,)");
  }
  if (b2) {
    check_float_tensor(op, "b2", *b2, x);
    check_shape(op, "b2", *b2, {1}, "(1,)");
  }

  check_float_tensor(op, "target", target, x);
  const bool target_ok = (target.dim() == 1 && target.size(0) == n) ||
                         (target.dim() == 2 && target.size(0) == n && target.size(1) == 1);
  TORCH_CHECK(target_ok, op, ": expected target of shape (N,) or (N, 1) with N = ", n,
              ", got shape ", target.sizes());
  TORCH_CHECK(!target.requires_grad(), op, ": target requires grad, but the bound is not "
              "differentiable in the labels; pass target.detach()");
  if (check_values) {
    // One pass (aminmax). Its NaN propagates and compares false on both sides, so NaN targets
    // pass here and propagate to a NaN result.
    const auto [lowest, highest] = at::aminmax(target);
    const double lo = lowest.item<double>(), hi = highest.item<double>();
    TORCH_CHECK(!(lo < 0 || hi > 1), op, ": expected targets in [0, 1] (probabilities), got "
                "values in [", lo, ", ", hi, "]");
  }

  p.x = x;
  p.target = target.reshape({n});
  p.w1 = w1;
  p.b1 = b1;
  p.w2 = w2.reshape({h});
  p.b2 = b2;
  return p;
}

}  // namespace torch_ws
