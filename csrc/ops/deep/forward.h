// The forward pass of a deep MLP (docs/math.md §12.1), as every op of the deep family reads it:
// the traces (deep_traces.cpp) and the Hessian-vector products (deep_products.cpp).
#pragma once

#include "core/losses.h"
#include "core/problem.h"

#include <ATen/ATen.h>

#include <vector>

namespace torch_ws {

// Layers l = 1..o (o = L + 1; index 0 is the input): z[l] the features leaving layer l
// (z[0] = x), d1[l] = φ'(a_l), d2[l] = φ''(a_l) for hidden l, weight[l] = W_l; the logits' loss
// terms S, e and e's magnitude (losses.h), with the target viewed as the logits.
struct DeepForward {
  std::vector<at::Tensor> z, d1, d2, weight;
  at::Tensor target;
  OutputTerms terms;
};

DeepForward deep_forward(const MlpProblem& p);

// The same z, φ', φ'', S, e and e's magnitude (terms' other members left empty), as one autograd
// node with a hand-derived reverse pass where reverse mode alone records (no tangent, no torch.func
// transform, no gradient wanted in the target); else deep_forward itself. What the traces' chain
// reads (coefficient_values).
DeepForward deep_forward_recorded(const MlpProblem& p);

}  // namespace torch_ws
