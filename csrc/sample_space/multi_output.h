// The multi-output sample-space engine (docs/math.md §8): heads of C ≥ 2 logits, any device.
#pragma once

#include "core/engine.h"
#include "core/problem.h"

namespace torch_ws {

// tr H, tr(H²) and, with gradients, the gradients of each, with the pairwise sums over blocks of
// `tile` samples (tile = N: whole matrices).
TracesResult multi_output_traces(const MlpProblem& p, Gradients gradients, int64_t tile);

}  // namespace torch_ws
