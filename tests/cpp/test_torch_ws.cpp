// C++ tests of the LibTorch API: the bound's gradient against central finite differences of the
// C++ bound itself, in float64; ws_bounds against the explicit formulas from the traces; bad input
// raises c10::Error with a clear message; the HSRRegularizer matches ws_bound and fills .grad().
// Each case is its own ctest test: `test_torch_ws CASE` runs one (CMakeLists.txt lists them).
#include <torch/torch.h>
#include <torch_ws/torch_ws.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>  // setenv: TORCH_WS_ENGINE
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace {

int passed = 0, failed = 0;

void check(bool ok, const std::string& what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::cerr << "FAILED: " << what << "\n";
  }
}

void expect_error(const std::function<void()>& fn, const std::string& fragment,
                  const std::string& what) {
  try {
    fn();
    check(false, what + " (no exception)");
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    check(msg.find(fragment) != std::string::npos, what + ": message was: " + msg);
  }
}

struct Problem {
  torch::Tensor x, target, w1, b1, w2, b2;
};

Problem make_problem(int64_t n, int64_t d, int64_t h) {
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  Problem p;
  p.x = torch::randn({n, d}, opts);
  p.target = torch::randint(0, 2, {n}, opts);
  p.w1 = torch::randn({h, d}, opts);
  p.b1 = torch::randn({h}, opts);
  p.w2 = torch::randn({1, h}, opts);
  p.b2 = torch::randn({1}, opts);
  return p;
}

double bound_of(const Problem& p, const std::string& act) {
  return torch_ws::ws_bound(p.x, p.target, p.w1, p.b1, p.w2, p.b2, act).item<double>();
}

// The largest error, relative to max(1, |fd|), of the .grad() of `leaves` against central
// differences (step 1e-6) of `value_of`, entry by entry. Runs without grad.
double max_gradient_error(const std::vector<torch::Tensor*>& leaves,
                          const std::function<double()>& value_of) {
  torch::NoGradGuard no_grad;
  const double step = 1e-6;
  double max_err = 0;
  for (auto* t : leaves) {
    auto flat = t->view(-1);
    auto grad = t->grad().view(-1);
    for (int64_t i = 0; i < flat.numel(); ++i) {
      const double orig = flat[i].item<double>();
      flat[i] = orig + step;
      const double up = value_of();
      flat[i] = orig - step;
      const double down = value_of();
      flat[i] = orig;
      const double fd = (up - down) / (2 * step);
      max_err = std::max(max_err,
                         std::abs(fd - grad[i].item<double>()) / std::max(1.0, std::abs(fd)));
    }
  }
  return max_err;
}

// Gradient of the bound via the op's backward against central differences, entry by entry.
void test_gradient_against_finite_differences(const std::string& act) {
  torch::manual_seed(0);
  Problem p = make_problem(6, 2, 3);
  std::vector<torch::Tensor*> leaves = {&p.x, &p.w1, &p.b1, &p.w2, &p.b2};
  for (auto* t : leaves) t->requires_grad_(true);
  auto bound = torch_ws::ws_bound(p.x, p.target, p.w1, p.b1, p.w2, p.b2, act);
  bound.backward();
  const double max_err = max_gradient_error(leaves, [&] { return bound_of(p, act); });
  check(max_err < 1e-6, act + ": gradient vs finite differences, max error " +
                            std::to_string(max_err));
  check(std::isfinite(bound.item<double>()), act + ": finite bound");
}

void test_traces_consistent_with_bound() {
  torch::manual_seed(1);
  Problem p = make_problem(8, 3, 4);
  auto [trace, trace_sq] = torch_ws::hessian_traces(p.x, p.target, p.w1, p.b1, p.w2, p.b2);
  const double n = 3 * 4 + 4 + 4 + 1;
  const double m = trace.item<double>() / n;
  const double s = std::sqrt(trace_sq.item<double>() / n - m * m);
  const double expected = m + s * std::sqrt(n - 1);
  const double bound = bound_of(p, "tanh");
  check(std::abs(bound - expected) <= 1e-12 * std::abs(expected), "bound from traces");
}

void test_bad_input() {
  torch::manual_seed(4);
  Problem p = make_problem(6, 3, 4);
  p.target[0] = 1;  // so that target * 3 leaves [0, 1] whatever the draw
  expect_error([&] { torch_ws::ws_bound(p.x, p.target, p.w1, p.b1, p.w2, p.b2, "elu"); },
               "unknown activation 'elu'; expected one of: linear, sigmoid, tanh", "activation");
  expect_error([&] { torch_ws::ws_bound(p.x, p.target, p.w1, p.b1, torch::randn({2, 4}, torch::kFloat64), p.b2); },
               "exactly one output row", "two output rows");
  expect_error([&] { torch_ws::ws_bound(p.x.to(torch::kFloat32), p.target, p.w1, p.b1, p.w2, p.b2); },
               "one dtype", "mixed dtypes");
  expect_error([&] { torch_ws::ws_bound(p.x, p.target * 3, p.w1, p.b1, p.w2, p.b2); },
               "targets in [0, 1]", "target range");
  expect_error([&] { torch_ws::ws_bound(p.x, p.target, p.w1, p.b1, p.w2, p.b2, "tanh", "max"); },
               "unknown reduction 'max'", "reduction");
  expect_error([&] { torch_ws::ws_bound(p.x.slice(0, 0, 0), p.target.slice(0, 0, 0), p.w1, p.b1, p.w2, p.b2); },
               "non-empty batch", "empty batch");
}

void test_ws_bounds() {
  torch::manual_seed(3);
  Problem p = make_problem(8, 3, 4);
  const auto b = torch_ws::ws_bounds(p.x, p.target, p.w1, p.b1, p.w2, p.b2, "sigmoid");
  const double n = 3 * 4 + 4 + 4 + 1;
  check(b.num_params == 21, "ws_bounds: n = 21");
  const double m = b.trace.item<double>() / n;
  const double s = std::sqrt(b.trace_sq.item<double>() / n - m * m);
  auto close = [](const torch::Tensor& t, double expected) {
    return std::abs(t.item<double>() - expected) <= 1e-12 * std::max(1.0, std::abs(expected));
  };
  check(close(b.lambda_max_upper, m + s * std::sqrt(n - 1)), "ws_bounds: lambda_max_upper");
  check(close(b.lambda_max_lower, m + s / std::sqrt(n - 1)), "ws_bounds: lambda_max_lower");
  check(close(b.lambda_min_lower, m - s * std::sqrt(n - 1)), "ws_bounds: lambda_min_lower");
  check(close(b.lambda_min_upper, m - s / std::sqrt(n - 1)), "ws_bounds: lambda_min_upper");
  check(close(b.spread_upper, s * std::sqrt(2 * n)), "ws_bounds: spread_upper");
  check(torch::equal(b.lambda_max_upper, torch_ws::ws_bound(p.x, p.target, p.w1, p.b1, p.w2,
                                                            p.b2, "sigmoid")),
        "ws_bounds: lambda_max_upper equals ws_bound");
}

// The deep entry points: one hidden layer through them equals the one-layer ops; two hidden
// layers give gradients in every layer and bounds that bracket their own traces' moments.
void test_deep() {
  torch::manual_seed(5);
  Problem p = make_problem(9, 3, 4);
  const auto [trace, trace_sq] =
      torch_ws::deep_hessian_traces(p.x, p.target, {p.w1, p.w2}, {p.b1, p.b2}, "tanh");
  const auto [one_trace, one_trace_sq] =
      torch_ws::hessian_traces(p.x, p.target, p.w1, p.b1, p.w2, p.b2, "tanh");
  check(std::abs(trace.item<double>() - one_trace.item<double>()) <=
            1e-12 * std::abs(one_trace.item<double>()),
        "deep_hessian_traces: L = 1 equals hessian_traces (tr H)");
  check(std::abs(trace_sq.item<double>() - one_trace_sq.item<double>()) <=
            1e-12 * one_trace_sq.item<double>(),
        "deep_hessian_traces: L = 1 equals hessian_traces (tr H²)");
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  std::vector<torch::Tensor> weights = {torch::randn({5, 3}, opts), torch::randn({4, 5}, opts),
                                        torch::randn({1, 4}, opts)};
  for (auto& w : weights) w.requires_grad_(true);
  const auto b = torch_ws::deep_ws_bounds(p.x, p.target, weights, {}, "gelu");
  check(b.num_params == 15 + 20 + 4, "deep_ws_bounds: n without biases");
  const double n = static_cast<double>(b.num_params), m = b.trace.item<double>() / n;
  const double s = std::sqrt(b.trace_sq.item<double>() / n - m * m);
  check(b.lambda_max_upper.item<double>() >= m + s * std::sqrt(n - 1),
        "deep_ws_bounds: lambda_max_upper at least its formula");
  b.lambda_max_upper.backward();
  for (const auto& w : weights) {
    check(w.grad().defined() && w.grad().abs().sum().item<double>() > 0,
          "deep_ws_bounds: gradient in every layer");
  }
  bool refused = false;
  try {
    torch_ws::deep_hessian_traces(p.x, p.target, {p.w1, torch::randn({1, 3}, opts)});
  } catch (const c10::Error& e) {
    refused = std::string(e.what()).find("weights[1] has 3 input columns") != std::string::npos;
  }
  check(refused, "deep_hessian_traces: inconsistent widths refused, naming the layer");

  // The deep products and interval: with one hidden layer, the Hessian the products assemble
  // has the closed-form traces; with two, the interval brackets a Rayleigh quotient of them.
  const int64_t n1 = p.w1.numel() + p.b1.numel() + p.w2.numel() + p.b2.numel();
  const auto assembled = torch_ws::deep_hessian_vector_products(
      p.x, p.target, {p.w1, p.w2}, {p.b1, p.b2}, torch::eye(n1, opts), "tanh");
  check(std::abs(assembled.trace().item<double>() - one_trace.item<double>()) <=
                1e-12 * std::abs(one_trace.item<double>()) &&
            std::abs(assembled.pow(2).sum().item<double>() - one_trace_sq.item<double>()) <=
                1e-12 * one_trace_sq.item<double>(),
        "deep_hessian_vector_products: L = 1 assembles a Hessian with hessian_traces' traces");
  std::vector<torch::Tensor> plain_weights;
  for (const auto& w : weights) plain_weights.push_back(w.detach());
  // Both engines of the deep family (TORCH_WS_ENGINE) give the same traces.
  setenv("TORCH_WS_ENGINE", "sample", 1);
  const auto [gram_trace, gram_trace_sq] =
      torch_ws::deep_hessian_traces(p.x, p.target, plain_weights);
  setenv("TORCH_WS_ENGINE", "parameter", 1);
  const auto [assembled_trace, assembled_trace_sq] =
      torch_ws::deep_hessian_traces(p.x, p.target, plain_weights);
  unsetenv("TORCH_WS_ENGINE");
  check(std::abs(gram_trace.item<double>() - assembled_trace.item<double>()) <=
                1e-10 * std::abs(gram_trace.item<double>()) &&
            std::abs(gram_trace_sq.item<double>() - assembled_trace_sq.item<double>()) <=
                1e-10 * gram_trace_sq.item<double>(),
        "deep_hessian_traces: the Gram forms and the assembled Hessian agree");
  const auto top = torch_ws::deep_eigenvalue_interval(p.x, p.target, plain_weights, {}, "gelu");
  const auto u = torch::randn({b.num_params}, opts);
  const double quotient =
      (u.dot(torch_ws::deep_hessian_vector_products(p.x, p.target, plain_weights, {}, u, "gelu")) /
       u.dot(u)).item<double>();
  check(top.lower.item<double>() <= top.upper.item<double>() &&
            quotient <= top.upper.item<double>() &&
            top.upper.item<double>() <= b.lambda_max_upper.item<double>(),
        "deep_eigenvalue_interval: upper above any Rayleigh quotient, below the WS bound");
  // Differentiable through LibTorch autograd: with as many steps as parameters the interval
  // closes on λ_max, so upper's gradient along a direction matches a central finite difference.
  const int64_t all_steps = b.num_params;
  const auto closed = torch_ws::deep_eigenvalue_interval(p.x, p.target, weights, {}, "gelu", "mean",
                                                         "bce", true, all_steps);
  for (auto& w : weights) w.mutable_grad().reset();  // deep_ws_bounds' gradient is there
  closed.upper.backward();
  const auto direction = torch::randn({4, 5}, opts);
  const double h = 1e-5;
  auto upper_at = [&](double step) {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> moved = plain_weights;
    moved[1] = moved[1] + step * direction;
    return torch_ws::deep_eigenvalue_interval(p.x, p.target, moved, {}, "gelu", "mean", "bce",
                                              true, all_steps)
        .upper.item<double>();
  };
  const double difference = (upper_at(h) - upper_at(-h)) / (2 * h);
  const double derivative = (weights[1].grad() * direction).sum().item<double>();
  check(std::abs(difference - derivative) <= 1e-6 * (1 + std::abs(derivative)),
        "deep_eigenvalue_interval: upper's gradient matches a finite difference");
}

void test_regularizer() {
  torch::manual_seed(2);
  torch::nn::Sequential model(torch::nn::Linear(3, 5), torch::nn::Tanh(), torch::nn::Linear(5, 1));
  model->to(torch::kFloat64);
  torch_ws::HSRRegularizer reg(model);
  auto x = torch::randn({10, 3}, torch::kFloat64);
  auto y = torch::randint(0, 2, {10}, torch::kFloat64);
  auto* l1 = model->ptr(0)->as<torch::nn::Linear>();
  auto* l2 = model->ptr(2)->as<torch::nn::Linear>();
  auto value = reg(x, y);
  auto direct = torch_ws::ws_bound(x, y, l1->weight, l1->bias, l2->weight, l2->bias, "tanh");
  check(torch::equal(value, direct), "regularizer equals ws_bound");
  value.backward();
  bool all_grads = true;
  for (const auto& param : model->parameters()) {
    all_grads = all_grads && param.grad().defined() && param.grad().abs().sum().item<double>() > 0;
  }
  check(all_grads, "regularizer gradient reaches every parameter");
  check(reg.activation() == "tanh", "activation read from the model");
  torch::nn::Sequential gelu(torch::nn::Linear(3, 5),
                             torch::nn::GELU(torch::nn::GELUOptions().approximate("tanh")),
                             torch::nn::Linear(5, 1));
  check(torch_ws::HSRRegularizer(gelu).activation() == "gelu_tanh", "GELU tanh detected");
  torch::nn::Sequential silu(torch::nn::Linear(3, 5), torch::nn::SiLU(), torch::nn::Linear(5, 1));
  check(torch_ws::HSRRegularizer(silu).activation() == "silu", "SiLU detected");
}

// A deeper Sequential (two hidden layers): the regularizer is deep_ws_bounds' lambda_max_upper, its
// gradient reaches every layer, the cross-entropy keeps int64 class indices; mixed activations,
// inconsistent widths, an even number of modules and the spectral bound are refused, naming why.
void test_regularizer_deep() {
  torch::manual_seed(4);
  torch::nn::Sequential model(torch::nn::Linear(3, 5), torch::nn::Tanh(), torch::nn::Linear(5, 4),
                              torch::nn::Tanh(), torch::nn::Linear(4, 3));
  model->to(torch::kFloat64);
  torch_ws::HSRRegularizer reg(model, "mean", "cross_entropy");
  check(reg.hidden_layers() == 2 && reg.activation() == "tanh", "deep regularizer: L and φ read");
  auto x = torch::randn({9, 3}, torch::kFloat64);
  auto y = torch::randint(0, 3, {9}, torch::kLong);
  std::vector<at::Tensor> weights;
  std::vector<std::optional<at::Tensor>> biases;
  for (size_t i = 0; i < model->size(); i += 2) {
    auto* layer = model->ptr(i)->as<torch::nn::Linear>();
    weights.push_back(layer->weight);
    biases.push_back(layer->bias);
  }
  auto value = reg(x, y);
  auto direct =
      torch_ws::deep_ws_bounds(x, y, weights, biases, "tanh", "mean", "cross_entropy")
          .lambda_max_upper;
  check(torch::equal(value, direct), "deep regularizer equals deep_ws_bounds' lambda_max_upper");
  value.backward();
  bool all_grads = true;
  for (const auto& param : model->parameters()) {
    all_grads = all_grads && param.grad().defined() && param.grad().abs().sum().item<double>() > 0;
  }
  check(all_grads, "deep regularizer gradient reaches every layer");
  torch::nn::Sequential mixed(torch::nn::Linear(3, 5), torch::nn::Tanh(), torch::nn::Linear(5, 4),
                              torch::nn::ReLU(), torch::nn::Linear(4, 1));
  expect_error([&] { torch_ws::HSRRegularizer r(mixed); },
               "every hidden layer must have the same activation (the closed form has one φ), "
               "got 1: tanh, 3: relu",
               "mixed activations refused, naming them");
  torch::nn::Sequential narrow(torch::nn::Linear(3, 5), torch::nn::Tanh(), torch::nn::Linear(6, 4),
                               torch::nn::Tanh(), torch::nn::Linear(4, 1));
  expect_error([&] { torch_ws::HSRRegularizer r(narrow); },
               "layer 0 gives 5 features but layer 1 expects 6", "inconsistent widths refused");
  torch::nn::Sequential even(torch::nn::Linear(3, 5), torch::nn::Tanh(), torch::nn::Linear(5, 4),
                             torch::nn::Tanh());
  expect_error([&] { torch_ws::HSRRegularizer r(even); }, "got a Sequential of 4 modules",
               "an even number of modules refused");
  torch::nn::Sequential deep_one(torch::nn::Linear(3, 5), torch::nn::Tanh(), torch::nn::Linear(5, 4),
                                 torch::nn::Tanh(), torch::nn::Linear(4, 1));
  expect_error([&] { torch_ws::HSRRegularizer r(deep_one, "mean", "bce", "spectral"); },
               "bound 'spectral' is for one hidden layer", "the spectral bound refused when deep");
}

// The same refusals, with the same reasons, as the Python HSRRegularizer (one mapping).
void test_regularizer_refusals() {
  torch::nn::Sequential relu6(torch::nn::Linear(3, 5), torch::nn::ReLU6(), torch::nn::Linear(5, 1));
  expect_error([&] { torch_ws::HSRRegularizer r(relu6); }, "ReLU6 is not supported",
               "ReLU6 refused");
  torch::nn::Sequential elu(torch::nn::Linear(3, 5), torch::nn::ELU(), torch::nn::Linear(5, 1));
  expect_error([&] { torch_ws::HSRRegularizer r(elu); }, "ELU is not supported", "ELU refused");
  torch::nn::Sequential leaky(
      torch::nn::Linear(3, 5), torch::nn::LeakyReLU(torch::nn::LeakyReLUOptions().negative_slope(0.2)),
      torch::nn::Linear(5, 1));
  expect_error([&] { torch_ws::HSRRegularizer r(leaky); }, "LeakyReLU only with negative_slope=0.01",
               "LeakyReLU with another slope refused");
  torch::nn::Sequential relu(torch::nn::Linear(3, 5), torch::nn::ReLU(), torch::nn::Linear(5, 1));
  check(torch_ws::HSRRegularizer(relu).activation() == "relu", "ReLU accepted");
  torch::nn::Sequential leaky_default(torch::nn::Linear(3, 5), torch::nn::LeakyReLU(),
                                      torch::nn::Linear(5, 1));
  check(torch_ws::HSRRegularizer(leaky_default).activation() == "leaky_relu", "LeakyReLU accepted");
  torch::nn::Sequential softplus(torch::nn::Linear(3, 5),
                                 torch::nn::Softplus(torch::nn::SoftplusOptions().beta(2)),
                                 torch::nn::Linear(5, 1));
  expect_error([&] { torch_ws::HSRRegularizer r(softplus); }, "Softplus only with beta=1",
               "Softplus beta=2 refused");
  torch::nn::Sequential softsign(torch::nn::Linear(3, 5), torch::nn::Softsign(),
                                 torch::nn::Linear(5, 1));
  expect_error([&] { torch_ws::HSRRegularizer r(softsign); },
               "unsupported activation Softsign; expected one of: torch::nn::Identity",
               "Softsign refused");
  torch::nn::Sequential wide(torch::nn::Linear(3, 5), torch::nn::Tanh(), torch::nn::Linear(5, 2));
  expect_error([&] { torch_ws::HSRRegularizer r(wide); }, "Linear(H, 1)", "two outputs refused");
  torch::nn::Sequential short_model(torch::nn::Linear(3, 4), torch::nn::Tanh());
  expect_error([&] { torch_ws::HSRRegularizer r(short_model); }, "Sequential of 2 modules",
               "two modules refused with the size message");
}

// The multi-class and regression heads through the C++ API: the regularizer reads the loss and
// keeps int64 class indices, and the bound's gradient matches central finite differences.
void test_losses() {
  torch::manual_seed(3);
  auto f64 = torch::kFloat64;
  torch::nn::Sequential model(torch::nn::Linear(3, 4), torch::nn::SiLU(), torch::nn::Linear(4, 3));
  model->to(f64);
  torch_ws::HSRRegularizer reg(model, "sum", "cross_entropy");
  check(reg.loss() == "cross_entropy" && reg.reduction() == "sum", "loss and reduction kept");
  auto x = torch::randn({9, 3}, f64);
  auto labels = torch::randint(0, 3, {9}, torch::kLong);
  auto* l1 = model->ptr(0)->as<torch::nn::Linear>();
  auto* l2 = model->ptr(2)->as<torch::nn::Linear>();
  auto direct = torch_ws::ws_bound(x, labels, l1->weight, l1->bias, l2->weight, l2->bias, "silu",
                                   "sum", "cross_entropy");
  check(torch::equal(reg(x, labels), direct), "cross-entropy regularizer equals ws_bound");

  for (const char* loss : {"cross_entropy", "mse"}) {
    auto target = std::string(loss) == "mse" ? torch::randn({9, 3}, f64) : labels;
    auto w2 = l2->weight.detach().clone().requires_grad_(true);
    auto bound = [&](const torch::Tensor& w) {
      return torch_ws::ws_bound(x, target, l1->weight.detach(), l1->bias.detach(), w,
                                l2->bias.detach(), "silu", "mean", loss);
    };
    auto grad = torch::autograd::grad({bound(w2)}, {w2})[0];
    double worst = 0;
    const double step = 1e-6;
    for (int64_t k = 0; k < w2.numel(); ++k) {
      auto plus = w2.detach().clone(), minus = w2.detach().clone();
      plus.view(-1)[k] += step;
      minus.view(-1)[k] -= step;
      const double fd = (bound(plus).item<double>() - bound(minus).item<double>()) / (2 * step);
      worst = std::max(worst, std::abs(fd - grad.view(-1)[k].item<double>()) /
                                  std::max(1e-3, std::abs(fd)));
    }
    check(worst < 1e-5, std::string(loss) + ": gradient matches finite differences, worst " +
                            std::to_string(worst));
  }
  torch::nn::Sequential one(torch::nn::Linear(3, 4), torch::nn::Tanh(), torch::nn::Linear(4, 1));
  expect_error([&] { torch_ws::HSRRegularizer r(one, "mean", "cross_entropy"); },
               "Linear(H, C) with C >= 2", "cross-entropy on one logit refused");
  expect_error([&] { torch_ws::HSRRegularizer r(one, "mean", "hinge"); },
               "unknown loss 'hinge'; expected one of: bce, cross_entropy, mse", "unknown loss");
}

// The spectral bound from C++: upper is at most ws_bound (it is the smaller of two guarantees),
// R's extreme eigenvalues straddle 0, and upper's gradient matches central differences.
void test_spectral_bound() {
  torch::manual_seed(3);
  Problem p = make_problem(8, 2, 3);
  std::vector<torch::Tensor*> leaves = {&p.w1, &p.b1, &p.w2, &p.b2};
  for (auto* t : leaves) t->requires_grad_(true);
  auto r = torch_ws::spectral_bound(p.x, p.target, p.w1, p.b1, p.w2, p.b2, "tanh");
  const double ws =
      torch_ws::ws_bound(p.x, p.target, p.w1, p.b1, p.w2, p.b2, "tanh").item<double>();
  check(r.upper.item<double>() <= ws, "spectral: upper <= ws_bound");
  check(r.lambda_min_lower.item<double>() <= 0 && r.residual_lambda_max.item<double>() >= 0,
        "spectral: R's extreme eigenvalues straddle 0");
  check(r.iterations.scalar_type() == torch::kInt64, "spectral: iterations is int64");
  r.upper.backward();
  const double max_err = max_gradient_error(leaves, [&] {
    return torch_ws::spectral_bound(p.x, p.target, p.w1, p.b1, p.w2, p.b2, "tanh").upper
        .item<double>();
  });
  check(max_err < 1e-6, "spectral: gradient vs finite differences, max error " +
                            std::to_string(max_err));
}

// The certified interval from C++ (tests/test_interval.py checks it against explicit Hessians):
// its ends are ordered and consistent with spectral_bound's guarantee, the products are counted,
// a warm start's interval still holds λ_max, and λ_min's lies below.
void test_eigenvalue_interval() {
  torch::manual_seed(4);
  Problem p = make_problem(10, 2, 3);
  auto r = torch_ws::eigenvalue_interval(p.x, p.target, p.w1, p.b1, p.w2, p.b2, "tanh");
  const double lower = r.lower.item<double>(), upper = r.upper.item<double>();
  check(lower <= upper, "interval: lower <= upper");
  const double spectral =
      torch_ws::spectral_bound(p.x, p.target, p.w1, p.b1, p.w2, p.b2, "tanh").upper.item<double>();
  check(lower <= spectral, "interval: lower <= spectral_bound's upper (both bound λ_max)");
  check(r.products.item<int64_t>() == std::min<int64_t>(32, r.ritz_vectors.size(1)) + 1,
        "interval: products = steps + 1");
  auto warm = torch_ws::eigenvalue_interval(p.x, p.target, p.w1, p.b1, p.w2, p.b2, "tanh", "mean",
                                            "bce", true, 4, r.ritz_vectors);
  check(warm.lower.item<double>() <= upper && lower <= warm.upper.item<double>(),
        "interval: a warm start's interval overlaps the first (both hold λ_max)");
  auto bottom = torch_ws::eigenvalue_interval(p.x, p.target, p.w1, p.b1, p.w2, p.b2, "tanh",
                                              "mean", "bce", false);
  check(bottom.upper.item<double>() <= lower, "interval: λ_min's interval lies below λ_max's");
  // The Hessian the closed-form products assemble has the traces of the trace engines, and its
  // eigenvalues lie in the intervals.
  const int64_t n = r.ritz_vectors.size(1);
  const auto H = torch_ws::hessian_vector_products(p.x, p.target, p.w1, p.b1, p.w2, p.b2,
                                                   torch::eye(n, p.x.options()), "tanh");
  const auto [trace, trace_sq] =
      torch_ws::hessian_traces(p.x, p.target, p.w1, p.b1, p.w2, p.b2, "tanh");
  check(std::abs(H.trace().item<double>() - trace.item<double>()) <=
                1e-12 * std::abs(trace.item<double>()) &&
            std::abs(H.pow(2).sum().item<double>() - trace_sq.item<double>()) <=
                1e-12 * trace_sq.item<double>(),
        "hessian_vector_products: the assembled Hessian has hessian_traces' traces");
  const auto eigenvalues = at::linalg_eigvalsh((H + H.t()) / 2);
  check(lower <= eigenvalues[n - 1].item<double>() && eigenvalues[n - 1].item<double>() <= upper &&
            bottom.lower.item<double>() <= eigenvalues[0].item<double>() &&
            eigenvalues[0].item<double>() <= bottom.upper.item<double>(),
        "interval: eigvalsh of the assembled Hessian lies in both intervals");
}

// HSRRegularizer(..., "spectral") is spectral_bound's upper, with its gradient; an unknown bound
// is refused.
void test_regularizer_spectral() {
  torch::manual_seed(7);
  torch::nn::Sequential model(torch::nn::Linear(2, 5), torch::nn::Tanh(), torch::nn::Linear(5, 1));
  model->to(torch::kFloat64);
  Problem p = make_problem(12, 2, 5);
  torch_ws::HSRRegularizer reg(model, "mean", "bce", "spectral");
  check(reg.bound() == "spectral", "regularizer: bound() is spectral");
  at::Tensor value = reg(p.x, p.target);
  auto* hidden = model[0]->as<torch::nn::Linear>();
  auto* output = model[2]->as<torch::nn::Linear>();
  const auto expected = torch_ws::spectral_bound(p.x, p.target, hidden->weight, hidden->bias,
                                                 output->weight, output->bias, "tanh");
  check(value.item<double>() == expected.upper.item<double>(),
        "regularizer: spectral value is spectral_bound's upper");
  value.backward();
  auto g = torch::autograd::grad({expected.upper}, {hidden->weight});
  check(torch::allclose(hidden->weight.grad(), g[0], 1e-12, 1e-14),
        "regularizer: spectral gradient is spectral_bound's");
  expect_error([&] { torch_ws::HSRRegularizer r(model, "mean", "bce", "lanczos"); },
               "unknown bound 'lanczos'; expected ws or spectral", "regularizer: unknown bound");
}

// ws_bound_batched from C++: each entry and each model's gradient slice equal ws_bound of that
// model alone; a 2-D w1 is refused with the expected shape.
void test_ws_bound_batched() {
  torch::manual_seed(5);
  const int64_t models = 3;
  Problem p = make_problem(10, 2, 4);
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  torch::Tensor w1 = torch::randn({models, 4, 2}, opts).requires_grad_(true);
  torch::Tensor b1 = torch::randn({models, 4}, opts).requires_grad_(true);
  torch::Tensor w2 = torch::randn({models, 1, 4}, opts).requires_grad_(true);
  torch::Tensor b2 = torch::randn({models, 1}, opts).requires_grad_(true);
  torch::Tensor bounds = torch_ws::ws_bound_batched(p.x, p.target, w1, b1, w2, b2, "tanh");
  check(bounds.sizes() == torch::IntArrayRef({models}), "batched: one bound per model");
  bounds.sum().backward();
  for (int64_t b = 0; b < models; ++b) {
    std::vector<torch::Tensor> one = {w1[b].detach().clone().requires_grad_(true),
                                      b1[b].detach().clone().requires_grad_(true),
                                      w2[b].detach().clone().requires_grad_(true),
                                      b2[b].detach().clone().requires_grad_(true)};
    torch::Tensor single =
        torch_ws::ws_bound(p.x, p.target, one[0], one[1], one[2], one[3], "tanh");
    single.backward();
    check(std::abs(single.item<double>() - bounds[b].item<double>()) <=
              1e-13 * std::abs(single.item<double>()),
          "batched: model " + std::to_string(b) + "'s bound");
    const torch::Tensor* slices[] = {&w1, &b1, &w2, &b2};
    for (size_t k = 0; k < one.size(); ++k) {
      check(torch::allclose(slices[k]->grad()[b], one[k].grad(), 1e-12, 1e-14),
            "batched: model " + std::to_string(b) + "'s gradient " + std::to_string(k));
    }
  }
  expect_error([&] { torch_ws::ws_bound_batched(p.x, p.target, p.w1, p.b1, p.w2, p.b2); },
               "expected w1 of shape (B, H, D)", "batched: 2-D w1 refused");
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::function<void()>> cases = {
      {"traces_consistent_with_bound", test_traces_consistent_with_bound},
      {"ws_bounds", test_ws_bounds},
      {"deep", test_deep},
      {"bad_input", test_bad_input},
      {"regularizer", test_regularizer},
      {"regularizer_refusals", test_regularizer_refusals},
      {"regularizer_deep", test_regularizer_deep},
      {"losses", test_losses},
      {"spectral_bound", test_spectral_bound},
      {"eigenvalue_interval", test_eigenvalue_interval},
      {"ws_bound_batched", test_ws_bound_batched},
      {"regularizer_spectral", test_regularizer_spectral},
  };
  // One gradient case per activation of the C++ table (the _supported op reads it), so a new
  // activation gets its case here; CMakeLists.txt's TORCH_WS_CPP_TESTS names them for ctest.
  static auto supported =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("torch_ws::_supported", "")
          .typed<std::vector<std::string>(c10::string_view)>();
  for (const std::string& act : supported.call("activation")) {
    cases["gradient_" + act] = [act] { test_gradient_against_finite_differences(act); };
  }
  if (argc > 1) {  // one case, as ctest runs them
    auto it = cases.find(argv[1]);
    if (it == cases.end()) {
      std::cerr << "unknown case '" << argv[1] << "'; cases:";
      for (const auto& [name, fn] : cases) std::cerr << " " << name;
      std::cerr << "\n";
      return 2;
    }
    it->second();
  } else {  // every case
    for (const auto& [name, fn] : cases) fn();
  }
  std::cout << passed << " passed, " << failed << " failed\n";
  return failed == 0 && passed > 0 ? 0 : 1;
}
