// The problem's arguments as one value (problem_args.h).
#include "ops/problem_args.h"

#include <algorithm>

namespace torch_ws {

using at::Tensor;
using std::optional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

ProblemArgs::ProblemArgs(const Tensor& x, const Tensor& target, const Tensor& w1,
                         const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
                         c10::string_view activation, c10::string_view reduction,
                         c10::string_view loss)
    : x(x),
      target(target),
      layers{{w1, b1}, {w2, b2}},
      activation(activation),
      reduction(reduction),
      loss(loss) {}

std::vector<Tensor> ProblemArgs::inputs() const {
  std::vector<Tensor> out = {x};
  for (const Layer& layer : layers) {
    out.push_back(layer.weight);
    out.push_back(layer.bias.value_or(Tensor()));
  }
  return out;
}

std::vector<Tensor> ProblemArgs::tensors() const {
  std::vector<Tensor> out = {x, target};
  for (const Layer& layer : layers) {
    out.push_back(layer.weight);
    if (layer.bias) out.push_back(*layer.bias);
  }
  return out;
}

bool ProblemArgs::records_grad() const {
  const std::vector<Tensor> all = inputs();
  return torch::autograd::GradMode::is_enabled() &&
         std::any_of(all.begin(), all.end(),
                     [](const Tensor& t) { return t.defined() && t.requires_grad(); });
}

int64_t ProblemArgs::num_params() const {
  auto width = [](const Tensor& t, int64_t dim) {
    return t.sym_size(dim).guard_int(__FILE__, __LINE__);
  };
  return count_params(width(w1(), 0), width(w1(), 1), width(w2(), 0), b1().has_value(),
                      b2().has_value());
}

void ProblemArgs::save(AutogradContext* ctx, const variable_list& extra) const {
  variable_list all = {x, target, w1(), b1().value_or(Tensor()), w2(), b2().value_or(Tensor())};
  all.insert(all.end(), extra.begin(), extra.end());
  ctx->save_for_backward(all);
  ctx->saved_data["activation"] = activation;
  ctx->saved_data["reduction"] = reduction;
  ctx->saved_data["loss"] = loss;
}

std::pair<ProblemArgs, variable_list> ProblemArgs::load(AutogradContext* ctx) {
  const variable_list all = ctx->get_saved_variables();
  // x, target, w1, b1, w2, b2, then `extra`; an absent bias was saved as an undefined tensor.
  auto bias = [&](size_t k) { return all[k].defined() ? optional<Tensor>(all[k]) : std::nullopt; };
  ProblemArgs p(all[0], all[1], all[2], bias(3), all[4], bias(5),
                ctx->saved_data["activation"].toStringRef(),
                ctx->saved_data["reduction"].toStringRef(), ctx->saved_data["loss"].toStringRef());
  return {std::move(p), variable_list(all.begin() + 6, all.end())};
}

}  // namespace torch_ws
