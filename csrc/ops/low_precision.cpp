// The low-precision policy of the public ops (low_precision.h).
#include "ops/low_precision.h"

#include "core/ws_bound.h"
#include "ops/schemas.h"

#include <algorithm>
#include <vector>

namespace torch_ws::low_precision {

using at::Tensor;

bool applies(at::ScalarType dtype, at::TensorList tensors) {
  if (dtype != at::kBFloat16 && dtype != at::kHalf) return false;
  return std::all_of(tensors.begin(), tensors.end(), [&](const Tensor& t) {
    return !t.defined() || !t.is_floating_point() || t.scalar_type() == dtype;
  });
}

bool applies(const ProblemArgs& p) { return applies(p.x.scalar_type(), p.tensors()); }

namespace {

Tensor as_float32(const Tensor& t) { return t.is_floating_point() ? t.to(at::kFloat) : t; }

// The same problem on float32 copies of its floating tensors.
ProblemArgs in_float32(const ProblemArgs& p) {
  ProblemArgs out = p;
  out.x = as_float32(p.x);
  out.target = as_float32(p.target);
  for (Layer& layer : out.layers) {
    layer.weight = as_float32(layer.weight);
    if (layer.bias) layer.bias = as_float32(*layer.bias);
  }
  return out;
}

}  // namespace

std::tuple<Tensor, Tensor> hessian_traces(const ProblemArgs& p) {
  static auto op = find_op<HessianTracesSignature>("torch_ws::hessian_traces");
  auto [trace, trace_sq] = in_float32(p).call(op);
  return {trace.to(p.x.scalar_type()), trace_sq.to(p.x.scalar_type())};
}

Tensor ws_bound(const ProblemArgs& p) {
  static auto op = find_op<WsBoundSignature>("torch_ws::ws_bound");
  return round_directed(in_float32(p).call(op), p.x.scalar_type(), /*up=*/true);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spectral_bound(const ProblemArgs& p) {
  static auto op = find_op<SpectralBoundSignature>("torch_ws::spectral_bound");
  auto [upper, ggn, residual_max, lambda_min, residual, iterations] = in_float32(p).call(op);
  const auto dtype = p.x.scalar_type();
  return {round_directed(upper, dtype, /*up=*/true), ggn.to(dtype), residual_max.to(dtype),
          round_directed(lambda_min, dtype, /*up=*/false), residual.to(dtype), iterations};
}

Tensor ws_bound_batched(const ProblemArgs& p) {
  static auto op = find_op<WsBoundBatchedSignature>("torch_ws::ws_bound_batched");
  return round_directed(in_float32(p).call(op), p.x.scalar_type(), /*up=*/true);
}

}  // namespace torch_ws::low_precision
