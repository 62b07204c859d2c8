// The spectral family's schemas: spectral_bound (docs/math.md §9) and its internal
// _spectral_parts, _spectral_backward and _residual_majorant. Kernels in kernels.cpp, the math in
// spectral_bound.cpp, autograd in autograd.cpp; C++ signatures in ops/schemas.h.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(torch_ws, m) {
  // λ_max(H) ≤ λ_max(GGN) + λ_max(R) (docs/math.md §9); `upper` is the smaller of that and the
  // Wolkowicz-Styan bound, `lambda_min_lower` = λ_min(R) ≤ λ_min(H), `residual` the GGN
  // eigenpair's ‖Mv − λv‖, `iterations` its Lanczos steps (int64; 0: dense solver).
  m.def(
      "spectral_bound(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\") -> (Tensor upper, "
      "Tensor ggn_lambda_max, Tensor residual_lambda_max, Tensor lambda_min_lower, "
      "Tensor residual, Tensor iterations)");
  // spectral_bound's outputs, whether the Wolkowicz-Styan bound gave `upper` (bool), and the
  // eigenvectors its gradient needs (float64; the units int64), which _spectral_backward takes.
  m.def(
      "_spectral_parts(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation, str reduction, str loss) -> (Tensor upper, Tensor ggn_lambda_max, "
      "Tensor residual_lambda_max, Tensor lambda_min_lower, Tensor residual, Tensor iterations, "
      "Tensor ws_wins, Tensor ggn_vector, Tensor residual_max_vector, Tensor residual_max_unit, "
      "Tensor residual_min_vector, Tensor residual_min_unit)");
  // λ_max(R) ≤ the residual's majorant plus its allowance (float64, 0-dim; docs/math.md §11.2
  // "At scale"): what the interval's λ_2 bound above 2048 dual rows adds for R. For the tests.
  m.def(
      "_residual_majorant(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation, str reduction, str loss) -> Tensor");
  // The gradients (x, w1, b1, w2, b2) of grad_upper·upper + grad_ggn·λ_max(GGN) +
  // grad_residual_max·λ_max(R) + grad_lambda_min·λ_min(R); x's empty unless need_grad_x.
  m.def(
      "_spectral_backward(Tensor grad_upper, Tensor grad_ggn, Tensor grad_residual_max, "
      "Tensor grad_lambda_min, Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, str activation, str reduction, str loss, Tensor ws_wins, Tensor ggn_vector, "
      "Tensor residual_max_vector, Tensor residual_max_unit, Tensor residual_min_vector, "
      "Tensor residual_min_unit, bool need_grad_x) -> Tensor[]");
}
