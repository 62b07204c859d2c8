// The forward pass of a deep MLP (docs/math.md §12.1), as every op of the deep family reads it:
// the traces (deep_traces.cpp) and the Hessian-vector products (deep_products.cpp).
#pragma once

#include "core/losses.h"
#include "core/problem.h"

#include <ATen/ATen.h>

#include <vector>

namespace torch_ws {

// Layers l = 1..o (o = L + 1; index 0 is the input): z[l] the features leaving layer l
// (z[0] = x), d1[l] = φ'(a_l), d2[l] = φ''(a_l) (d3[l] = φ'''(a_l) where asked) for hidden l,
// weight[l] = W_l; the logits' loss terms S, e and e's magnitude (losses.h), with the target
// viewed as the logits.
struct DeepForward {
  std::vector<at::Tensor> z, d1, d2, d3, weight;
  at::Tensor target;
  OutputTerms terms;
};

// `derivatives`: 2, or 3 for d3 too (what the forward pass's reverse pass reads).
DeepForward deep_forward(const MlpProblem& p, int derivatives = 2);

// The same z, φ', φ'', S, e and e's magnitude (terms' other members left empty), as one autograd
// node with a hand-derived reverse pass where reverse mode alone records (no tangent, no torch.func
// transform, no gradient wanted in the target); else deep_forward itself. What the traces' chain
// reads (coefficient_values).
DeepForward deep_forward_recorded(const MlpProblem& p);

// What the deep family's autograd nodes save of a problem and build it back from: its
// differentiable tensors (x, then each layer's weight and bias where it has one), and its kind
// (activation, reduction, loss, then each layer's bias flag), with the target saved beside.
std::vector<at::Tensor> tensors_of(const MlpProblem& p);
std::vector<int64_t> kind_of(const MlpProblem& p);
// The problem of that kind, target and tensors (tensors_of's order).
MlpProblem problem_of(const std::vector<int64_t>& kind, const at::Tensor& target,
                      const std::vector<at::Tensor>& tensors);

}  // namespace torch_ws
