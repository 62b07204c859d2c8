// The one entry to the engines: which evaluation order a problem gets (decided here, in one place,
// the same with and without gradients) and the evaluation itself. Every kernel of every op calls
// evaluate_traces(); nothing else chooses an engine or a tile size.
//
// Two exact engines compute the same sums for heads of one logit (docs/math.md §4):
//   - sample space (any device): tr(H²) as pairwise sums over samples, O(N²(D + H)) work, in T×T
//     tiles on the CPU (O(N(D + H) + T²) memory) or whole N×N matrices elsewhere;
//   - parameter space (CPU, n ≤ 4096): the n×n Hessian assembled in closed form, O(N·n²) work.
// Heads of C ≥ 2 logits have two engines of their own (docs/math.md §8), ATen on any device:
// sample space in blocks of T samples, O(N²(D + C²H)) work, and parameter space (n ≤ 4096),
// the Hessian assembled from the per-sample Jacobians, O(N·C·n²) work.
// With gradients, both return the gradients of tr H and of tr(H²) themselves: the backward of
// every op is then a linear combination of these (docs/math.md §6), whatever the engine.
#pragma once

#include "problem.h"
#include "share.h"

#include <functional>
#include <optional>
#include <utility>

namespace torch_ws {

enum class Engine { SampleSpace, ParameterSpace };
const char* engine_name(Engine engine);

// The largest n the parameter-space engine takes (its n×n float64 Hessian is then 128 MiB).
constexpr int64_t kMaxParameterSpaceParams = 4096;

// The shapes the engine choice reads.
struct ProblemShape {
  c10::Device device;
  int64_t num_samples, in_dim, hidden, num_outputs;
  bool has_b1, has_b2;
};

// The engine for this problem: TORCH_WS_ENGINE ("auto", "sample", "parameter"; raises on anything
// else or on a setting the problem cannot take), or the one with less weighted arithmetic.
Engine choose_engine(const ProblemShape& shape);

// The tile size of the CPU pairwise stage for N samples: TORCH_WS_TILE_SIZE (a positive
// integer, "auto" or unset, "whole" for whole matrices → 0), or the automatic choice.
int64_t tile_size_for(int64_t num_samples);
// The block size of the multi-output engine (C ≥ 2 logits), under the same setting.
int64_t multi_output_tile_size_for(int64_t num_samples, int64_t num_outputs);
// The chunk of samples whose Jacobians the multi-output parameter-space engine holds at once,
// under the same setting.
int64_t multi_output_chunk_for(int64_t num_samples, int64_t num_outputs, int64_t num_params);

// What the caller needs besides the traces.
enum class Gradients { None, Parameters, ParametersAndX };

struct TracesResult {
  at::Tensor trace, trace_sq;  // 0-d float64 on the problem's device
  // With gradients: of tr H and of tr(H²), in the input dtype.
  std::optional<InputGradients> trace_grad, trace_sq_grad;
};

TracesResult evaluate_traces(const MlpProblem& p, Gradients gradients);

// One share of the sample-space engine's sums (core/share.h), whatever engine evaluate_traces
// would choose: the parts that several processes add up (docs/math.md §4.3).
TracesResult evaluate_share(const MlpProblem& p, Gradients gradients, const Share& share);

// The weights (α, β) of a scalar F(tr H, tr(H²)), ∇F = α·∇tr H + β·∇tr(H²), as 0-d float64
// tensors, from the 0-d float64 traces.
using TraceWeights =
    std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&)>;

struct WeightedTraces {
  at::Tensor trace, trace_sq;  // 0-d float64 on the problem's device
  InputGradients grad;         // of F, in the input dtype
};

// The traces and the gradient of one scalar of them (docs/math.md §6.3). The same numbers as
// weighing evaluate_traces' two gradients, at the cost of one: the sample-space engine of one
// logit weighs the per-sample adjoints and runs its chain once (on the CPU's tiled path, fused).
// With a share: that share's part of the sample-space engine's traces and of the gradient of
// α·tr H + β·tr(H²), the weights computed from the share's own traces (callers that sum shares
// pass weights that ignore them).
WeightedTraces evaluate_weighted_gradient(const MlpProblem& p, bool need_grad_x,
                                          const TraceWeights& weights,
                                          const std::optional<Share>& share = std::nullopt);

}  // namespace torch_ws
