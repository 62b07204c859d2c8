// Argument validation shared by every op and every dispatch key: each message says what was
// expected and what arrived. Sizes are compared as SymInts (sym_size), so the Meta kernels run the
// very same checks on FakeTensors with dynamic shapes, adding shape guards instead of
// specializing.
#include "problem.h"

#include <c10/util/Exception.h>

#include <functional>
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
  return w2().reshape({hidden()});
}

namespace {

void check_float_tensor(std::string_view op, const char* name, const at::Tensor& t,
                        const at::Tensor& x) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": expected ",
              name, " to be float32 or float64 (bfloat16 and float16 inputs are computed in "
              "float32 when every floating input has that one dtype), got ", t.scalar_type());
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

// Asserts `ok` (a 0-d bool tensor): at once on the CPU, asynchronously on an accelerator (reading
// the answer back would block the stream), not at all on meta tensors nor on the fake tensors of
// a trace through a composite kernel (Python dispatch key: no values while tracing).
void check_values(std::string_view op, const at::Tensor& target, const at::Tensor& ok,
                  const std::string& expected, const std::function<std::string()>& arrived) {
  if (target.is_meta() || target.key_set().has(c10::DispatchKey::Python)) return;
  if (target.is_cpu()) {
    TORCH_CHECK(ok.item<bool>(), op, ": expected targets ", expected, ", got ", arrived());
    return;
  }
  at::_assert_async(ok, std::string(op) + ": expected targets " + expected);
}

// NaN compares false on both sides, so NaN targets pass and propagate to a NaN result, as they do
// in the PyTorch losses.
void check_probabilities(std::string_view op, const at::Tensor& target) {
  auto range = [&] {
    const auto [lowest, highest] = at::aminmax(target);
    return c10::str("values in [", lowest.item<double>(), ", ", highest.item<double>(), "]");
  };
  check_values(op, target, at::logical_not(at::logical_or(target < 0, target > 1)).all(),
               "in [0, 1] (probabilities)", range);
}

void check_class_indices(std::string_view op, const at::Tensor& target, int64_t num_classes) {
  auto range = [&] {
    const auto [lowest, highest] = at::aminmax(target);
    return c10::str("indices in [", lowest.item<int64_t>(), ", ", highest.item<int64_t>(), "]");
  };
  check_values(op, target, at::logical_and(target >= 0, target < num_classes).all(),
               "to be class indices in [0, " + std::to_string(num_classes) + ") for C = " +
                   std::to_string(num_classes) + " outputs",
               range);
}

// Rows of class probabilities: entries in [0, 1] and each row summing to 1 up to the dtype's
// rounding (soft labels and label smoothing are probabilities; the formulas of docs/math.md §8.1
// are exact for any row sum, so the tolerance only catches a wrong target, not a wrong answer).
// Class probabilities in [0, 1], rows of any sum: F.cross_entropy takes any row sum, and the
// closed form is exact for it (the Hessian in the logits is τ(diag p − ppᵀ) with τ the row's sum,
// losses.h, docs/math.md §8.1). So float32 rows cast to float64, which sum to 1 within float32's
// rounding only, are what they are and not refused.
void check_class_probabilities(std::string_view op, const at::Tensor& target) {
  check_probabilities(op, target);
}

// The targets of `loss` for C outputs, checked, as the engines read them (MlpProblem::target).
at::Tensor checked_target(std::string_view op, const at::Tensor& target, const at::Tensor& x,
                          Loss loss, int64_t num_outputs) {
  const LossEntry& head = loss_entry(loss);
  const c10::SymInt n = x.sym_size(0);
  TORCH_CHECK(target.defined(), op, ": target is an undefined tensor");
  TORCH_CHECK(!target.requires_grad(), op, ": target requires grad, but the bound is not "
              "differentiable in the labels; pass target.detach()");
  TORCH_CHECK(target.device() == x.device(), op, ": all tensors must be on one device; x is on ",
              x.device(), " but target is on ", target.device());
  const bool is_vector = target.dim() == 1 && target.sym_size(0) == n;
  const bool is_matrix =
      target.dim() == 2 && target.sym_size(0) == n && target.sym_size(1) == num_outputs;
  auto expected = [&] {
    return std::string(head.name) + " (" + head.as_torch + ") expects targets " + head.targets +
           " with N = ";
  };

  if (loss == Loss::CrossEntropy && target.scalar_type() == at::kLong) {
    TORCH_CHECK(is_vector, op, ": ", expected(), n, ", C = ", num_outputs,
                "; got int64 target of shape ", target.sym_sizes());
    check_class_indices(op, target, num_outputs);
    return at::zeros_symint({n, num_outputs}, x.options())
        .scatter_(1, target.unsqueeze(1), 1.0);
  }
  TORCH_CHECK(target.scalar_type() == x.scalar_type(), op, ": ", expected(), n,
              ", C = ", num_outputs, "; got target of dtype ", target.scalar_type(),
              " where x is ", x.scalar_type(),
              loss == Loss::CrossEntropy ? " (class indices are int64)" : "");
  switch (loss) {
    case Loss::CrossEntropy:
      // A (N,) floating target is class indices in the wrong dtype (what F.cross_entropy would
      // refuse too): say so, rather than only that the shape is not (N, C).
      TORCH_CHECK(!is_vector, op, ": ", expected(), n, ", C = ", num_outputs, "; got a ",
                  target.scalar_type(), " target of shape ", target.sym_sizes(),
                  ": class indices must be int64 (pass target.long())");
      TORCH_CHECK(is_matrix, op, ": ", expected(), n, ", C = ", num_outputs,
                  "; got target of shape ", target.sym_sizes());
      check_class_probabilities(op, target);
      return target;
    case Loss::MeanSquaredError:
      TORCH_CHECK(is_matrix || (num_outputs == 1 && is_vector), op, ": ", expected(), n, ", C = ",
                  num_outputs, "; got target of shape ", target.sym_sizes());
      return num_outputs == 1 && is_matrix ? target.squeeze(1) : target;
    case Loss::BinaryCrossEntropy:
    default:
      TORCH_CHECK(is_vector || is_matrix, op, ": ", expected(), n, "; got target of shape ",
                  target.sym_sizes());
      check_probabilities(op, target);
      return is_matrix ? target.squeeze(1) : target;
  }
}

}  // namespace

namespace {

// The names and x, checked as every entry point checks them: the start of a problem.
MlpProblem checked_names_and_inputs(std::string_view op, const at::Tensor& x,
                                    std::string_view activation, std::string_view reduction,
                                    std::string_view loss) {
  MlpProblem p;
  p.activation = parse_activation(op, activation);
  p.reduction = parse_reduction(op, reduction);
  p.loss = parse_loss(op, loss);
  TORCH_CHECK(x.defined(), op, ": x is an undefined tensor");
  check_float_tensor(op, "x", x, x);
  TORCH_CHECK(x.dim() == 2, op, ": expected x of shape (N, D), got a ", x.dim(),
              "-d tensor of shape ", x.sym_sizes());
  TORCH_CHECK(x.sym_size(0) > 0, op, ": expected a non-empty batch (N >= 1), got x of shape ",
              x.sym_sizes());
  TORCH_CHECK(x.sym_size(1) > 0, op, ": expected at least one input feature (D >= 1), got x of "
              "shape ", x.sym_sizes());
  p.x = x;
  return p;
}

}  // namespace

MlpProblem check_problem(std::string_view op, const at::Tensor& x, const at::Tensor& target,
                         const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                         std::string_view activation, std::string_view reduction,
                         std::string_view loss) {
  MlpProblem p = checked_names_and_inputs(op, x, activation, reduction, loss);
  const LossEntry& head = loss_entry(p.loss);
  const c10::SymInt d = x.sym_size(1);

  check_float_tensor(op, "w1", w1, x);
  TORCH_CHECK(w1.dim() == 2, op, ": expected w1 of shape (H, D) as in nn.Linear(D, H).weight, "
              "got a ", w1.dim(), "-d tensor of shape ", w1.sym_sizes());
  const c10::SymInt h = w1.sym_size(0);
  TORCH_CHECK(h > 0, op, ": expected at least one hidden unit (H >= 1), got w1 of shape ",
              w1.sym_sizes());
  TORCH_CHECK(w1.sym_size(1) == d, op, ": w1 has ", w1.sym_size(1), " input columns but x has D = ",
              d, " features; expected w1 of shape (H, ", d, ")");

  check_float_tensor(op, "w2", w2, x);
  TORCH_CHECK(w2.dim() == 2, op, ": expected w2 of shape (C, H) as in nn.Linear(H, C).weight, "
              "got a ", w2.dim(), "-d tensor of shape ", w2.sym_sizes());
  // The output width is a layer width, as H and D are: read as an int (a guard when traced).
  const int64_t c = w2.sym_size(0).guard_int(__FILE__, __LINE__);
  const bool c_fits = c >= head.min_outputs && (head.max_outputs < 0 || c <= head.max_outputs);
  TORCH_CHECK(c_fits, op, ": loss '", head.name, "' (", head.as_torch, ") expects w2 with ",
              head.max_outputs == 1 ? std::string("exactly one output row")
                                    : "at least " + std::to_string(head.min_outputs) + " output rows",
              " (Linear(H, C) with C ", head.max_outputs == head.min_outputs ? "= " : ">= ",
              head.min_outputs, "), got w2 of shape ", w2.sym_sizes());
  TORCH_CHECK(w2.sym_size(1) == h, op, ": w2 has ", w2.sym_size(1), " columns but w1 has H = ", h,
              " rows; expected w2 of shape (", c, ", ", h, ")");

  if (b1) {
    check_float_tensor(op, "b1", *b1, x);
    check_vector(op, "b1", *b1, h, "(H,)");
  }
  if (b2) {
    check_float_tensor(op, "b2", *b2, x);
    check_vector(op, "b2", *b2, c, "(C,) with C the rows of w2");
  }

  p.target = checked_target(op, target, x, p.loss, c);
  p.w1() = w1;
  p.b1() = b1;
  p.w2() = w2;
  p.b2() = b2;
  return p;
}

MlpProblem check_deep_problem(std::string_view op, const at::Tensor& x, const at::Tensor& target,
                              at::TensorList weights,
                              const c10::List<std::optional<at::Tensor>>& biases,
                              std::string_view activation, std::string_view reduction,
                              std::string_view loss) {
  MlpProblem p = checked_names_and_inputs(op, x, activation, reduction, loss);
  const LossEntry& head = loss_entry(p.loss);
  const auto num_layers = static_cast<int64_t>(weights.size());
  TORCH_CHECK(num_layers >= 2, op, ": expected the weights of at least two nn.Linear layers "
              "(one hidden layer and the output), got ", num_layers);
  TORCH_CHECK(biases.size() == 0 || static_cast<int64_t>(biases.size()) == num_layers, op,
              ": expected one bias entry per layer (None for a layer without bias) or an empty "
              "list, got ", biases.size(), " for ", num_layers, " weights");
  p.layers.assign(num_layers, Layer{});
  c10::SymInt width = x.sym_size(1);
  for (int64_t l = 0; l < num_layers; ++l) {
    const std::string name = "weights[" + std::to_string(l) + "]";
    const at::Tensor& w = weights[l];
    check_float_tensor(op, name.c_str(), w, x);
    TORCH_CHECK(w.dim() == 2 && w.sym_size(0) > 0, op, ": expected ", name, " of shape (out, in) "
                "as in nn.Linear(in, out).weight, got shape ", w.sym_sizes());
    TORCH_CHECK(w.sym_size(1) == width, op, ": ", name, " has ", w.sym_size(1), " input columns "
                "but the layer before gives ", width, " features; expected shape (out, ", width, ")");
    width = w.sym_size(0);
    p.layers[l].weight = w;
    if (biases.size() > 0) {
      const std::optional<at::Tensor> bias = biases.get(l);
      if (bias && bias->defined()) {
        const std::string bias_name = "biases[" + std::to_string(l) + "]";
        check_float_tensor(op, bias_name.c_str(), *bias, x);
        check_vector(op, bias_name.c_str(), *bias, width, "(out,) of the layer's weight");
        p.layers[l].bias = *bias;
      }
    }
  }
  const int64_t c = width.guard_int(__FILE__, __LINE__);
  const bool c_fits = c >= head.min_outputs && (head.max_outputs < 0 || c <= head.max_outputs);
  TORCH_CHECK(c_fits, op, ": loss '", head.name, "' (", head.as_torch, ") expects an output layer "
              "with ", head.max_outputs == 1 ? std::string("exactly one output")
                                             : "at least " + std::to_string(head.min_outputs) + " outputs",
              ", got ", c);
  p.target = checked_target(op, target, x, p.loss, c);
  return p;
}

InputGradients zero_gradients(const MlpProblem& p, bool need_grad_x) {
  auto zeros = [](const std::optional<at::Tensor>& t) {
    return t ? at::zeros_like(*t) : at::Tensor();
  };
  return {need_grad_x ? at::zeros_like(p.x) : at::Tensor(), at::zeros_like(p.w1()), zeros(p.b1()),
          at::zeros_like(p.w2()), zeros(p.b2())};
}

MlpProblem with_dtype(MlpProblem p, at::ScalarType dtype) {
  p.x = p.x.to(dtype);
  if (p.target.is_floating_point()) p.target = p.target.to(dtype);
  for (Layer& layer : p.layers) {
    layer.weight = layer.weight.to(dtype);
    if (layer.bias) layer.bias = layer.bias->to(dtype);
  }
  return p;
}

InputGradients with_dtype(InputGradients g, at::ScalarType dtype) {
  for (at::Tensor* t : {&g.x, &g.w1, &g.b1, &g.w2, &g.b2}) {
    if (t->defined()) *t = t->to(dtype);
  }
  return g;
}

}  // namespace torch_ws
