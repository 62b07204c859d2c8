// The low-precision policy of the public ops (low_precision.h).
#include "ops/low_precision.h"

#include "core/ws_bound.h"
#include "ops/schemas.h"

namespace torch_ws::low_precision {

using at::Tensor;
using std::optional;

bool applies(const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
             const Tensor& w2, const optional<Tensor>& b2) {
  const at::ScalarType dtype = x.scalar_type();
  if (dtype != at::kBFloat16 && dtype != at::kHalf) return false;
  auto same = [&](const Tensor& t) {
    return !t.defined() || !t.is_floating_point() || t.scalar_type() == dtype;
  };
  return same(target) && same(w1) && same(w2) && same(b1.value_or(Tensor())) &&
         same(b2.value_or(Tensor()));
}

namespace {

Tensor as_float32(const Tensor& t) { return t.is_floating_point() ? t.to(at::kFloat) : t; }
optional<Tensor> as_float32(const optional<Tensor>& t) {
  return t ? optional<Tensor>(as_float32(*t)) : t;
}

}  // namespace

std::tuple<Tensor, Tensor> hessian_traces(const Tensor& x, const Tensor& target, const Tensor& w1,
                                          const optional<Tensor>& b1, const Tensor& w2,
                                          const optional<Tensor>& b2, c10::string_view activation,
                                          c10::string_view reduction, c10::string_view loss) {
  static auto op = find_op<HessianTracesSignature>("torch_ws::hessian_traces");
  auto [trace, trace_sq] = op.call(as_float32(x), as_float32(target), as_float32(w1),
                                   as_float32(b1), as_float32(w2), as_float32(b2), activation,
                                   reduction, loss);
  return {trace.to(x.scalar_type()), trace_sq.to(x.scalar_type())};
}

Tensor ws_bound(const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
                const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
                c10::string_view reduction, c10::string_view loss) {
  static auto op = find_op<WsBoundSignature>("torch_ws::ws_bound");
  const Tensor bound = op.call(as_float32(x), as_float32(target), as_float32(w1), as_float32(b1),
                               as_float32(w2), as_float32(b2), activation, reduction, loss);
  return round_directed(bound, x.scalar_type(), /*up=*/true);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spectral_bound(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss) {
  static auto op = find_op<SpectralBoundSignature>("torch_ws::spectral_bound");
  auto [upper, ggn, residual_max, lambda_min, residual, iterations] =
      op.call(as_float32(x), as_float32(target), as_float32(w1), as_float32(b1), as_float32(w2),
              as_float32(b2), activation, reduction, loss);
  const auto dtype = x.scalar_type();
  return {round_directed(upper, dtype, /*up=*/true), ggn.to(dtype), residual_max.to(dtype),
          round_directed(lambda_min, dtype, /*up=*/false), residual.to(dtype), iterations};
}

Tensor ws_bound_batched(const Tensor& x, const Tensor& target, const Tensor& w1,
                        const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
                        c10::string_view activation, c10::string_view reduction,
                        c10::string_view loss) {
  static auto op = find_op<WsBoundBatchedSignature>("torch_ws::ws_bound_batched");
  const Tensor bound = op.call(as_float32(x), as_float32(target), as_float32(w1), as_float32(b1),
                               as_float32(w2), as_float32(b2), activation, reduction, loss);
  return round_directed(bound, x.scalar_type(), /*up=*/true);
}

}  // namespace torch_ws::low_precision
