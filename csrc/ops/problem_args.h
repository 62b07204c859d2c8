// The problem's arguments as they cross the dispatcher, before any check: the nine arguments the
// public ops' schemas share (x, target, w1, b1, w2, b2, activation, reduction, loss) as one value,
// which the Autograd kernels, their Functions and the low-precision policy pass on instead of
// spelling the nine out. check_problem (core/problem.h) turns them into the checked MlpProblem.
//
// It holds its tensors (reference-counted handles) and names by value, so a Function can save it
// in its AutogradContext and restore it in the backward. The network is a list of affine layers,
// as in MlpProblem: a deeper network (a later issue) is a longer list, not more arguments.
#pragma once

#include "core/problem.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace torch_ws {

struct ProblemArgs {
  at::Tensor x;
  at::Tensor target;
  std::vector<Layer> layers;  // Linear(D, H), then Linear(H, C)
  std::string activation, reduction, loss;

  // The arguments in the order of the schemas (ops/<family>/schemas.cpp).
  ProblemArgs(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
              const std::optional<at::Tensor>& b1, const at::Tensor& w2,
              const std::optional<at::Tensor>& b2, c10::string_view activation,
              c10::string_view reduction, c10::string_view loss);

  // The one-hidden-layer names the schemas and docs/math.md use, as in MlpProblem.
  const at::Tensor& w1() const { return layers.front().weight; }
  const std::optional<at::Tensor>& b1() const { return layers.front().bias; }
  const at::Tensor& w2() const { return layers.back().weight; }
  const std::optional<at::Tensor>& b2() const { return layers.back().bias; }

  // The differentiable inputs in the order of the engines' gradients (SavedTraces,
  // InputGradients): x, then each layer's weight and bias, an absent bias as an undefined tensor.
  std::vector<at::Tensor> inputs() const;

  // Every tensor argument that is present: x, target, then each layer's weight and bias. A
  // Function is applied to these (skeleton.h), so that its node connects to them.
  std::vector<at::Tensor> tensors() const;

  // Whether autograd will record a call on these arguments: grad mode is on and some input
  // requires grad. If not, the plain kernels run and skip the gradient work.
  bool records_grad() const;

  // n from the layers' shapes (count_params). It does not depend on the batch: tracing with
  // dynamic shapes specializes the layer widths only.
  int64_t num_params() const;

  // Calls an op whose arguments are the problem's nine (hessian_traces, ws_bound,
  // spectral_bound, _spectral_parts, ws_bound_batched).
  template <typename Signature>
  auto call(const c10::TypedOperatorHandle<Signature>& op) const {
    return op.call(x, target, w1(), b1(), w2(), b2(), activation, reduction, loss);
  }

  // Saves the problem in `ctx` for the backward: its tensors (an absent bias as an undefined one),
  // then `extra`, through save_for_backward (which takes one list per context, hence `extra`),
  // and the names in saved_data. load returns the problem and `extra`.
  void save(torch::autograd::AutogradContext* ctx,
            const torch::autograd::variable_list& extra = {}) const;
  static std::pair<ProblemArgs, torch::autograd::variable_list> load(
      torch::autograd::AutogradContext* ctx);
};

}  // namespace torch_ws
