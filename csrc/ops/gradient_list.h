// The gradient lists of the internal ops (_traces_with_gradients, _batched_traces,
// _spectral_backward): the gradients with respect to (x, w1, b1, w2, b2), in that order; x's is
// empty unless asked for, an absent bias's is empty. One definition of the layout, for the
// kernels that fill the lists and the Meta kernels that give their shapes.
#pragma once

#include "core/problem.h"

#include <optional>
#include <vector>

namespace torch_ws {

// The list of one set of gradients (undefined entries become empty tensors).
inline std::vector<at::Tensor> gradient_list(const InputGradients& g, const at::Tensor& x) {
  auto or_empty = [&](const at::Tensor& t) {
    return t.defined() ? t : at::empty({0}, x.options());
  };
  return {or_empty(g.x), g.w1, or_empty(g.b1), g.w2, or_empty(g.b2)};
}

// Uninitialized tensors of the list's shapes: each parameter's own (with a leading model
// dimension when the parameters have one), x's as x's, or (models, N, D) when `models` is
// given.
inline std::vector<at::Tensor> empty_gradient_list(
    const at::Tensor& x, bool need_grad_x, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2,
    const std::optional<at::Tensor>& b2, const std::optional<c10::SymInt>& models = std::nullopt) {
  auto like = [](const at::Tensor& t) { return at::empty_symint(t.sym_sizes(), t.options()); };
  // A fresh empty tensor per entry: outputs of an op must not alias each other.
  auto none = [&] { return at::empty({0}, x.options()); };
  at::Tensor grad_x = none();
  if (need_grad_x) {
    grad_x = models ? at::empty_symint({*models, x.sym_size(0), x.sym_size(1)}, x.options())
                    : like(x);
  }
  return {grad_x, like(w1), b1 ? like(*b1) : none(), like(w2), b2 ? like(*b2) : none()};
}

}  // namespace torch_ws
