// The one entry to the engines: which engine a problem gets, read from one table (dispatch.cpp:
// each engine says whether it takes a problem and why not, and what it costs; the automatic
// choice, TORCH_WS_ENGINE, the _engine and _engines ops and the error messages all read it),
// and the evaluation itself. Every kernel of every op calls these; nothing else chooses an
// engine or a tile size.
//
// Four exact engines compute the same sums, two orders (docs/math.md §4) for each head:
//   one logit (docs/math.md §4):
//   - sample space (any device): tr(H²) as pairwise sums over samples, O(N²(D + H)) work, in T×T
//     tiles on the CPU (O(N(D + H) + T²) memory) or whole N×N matrices elsewhere;
//   - parameter space (CPU, n ≤ 4096): the n×n Hessian assembled in closed form, O(N·n²) work;
//   C ≥ 2 logits (docs/math.md §8), ATen on any device:
//   - sample space in blocks of T samples, O(N²(D + C²H)) work;
//   - parameter space (n ≤ 4096), the Hessian from the per-sample Jacobians, O(N·C·n²) work.
// With gradients, each returns the gradients of tr H and of tr(H²) themselves: the backward of
// every op is then a linear combination of these (docs/math.md §6), whatever the engine.
#pragma once

#include "core/problem.h"
#include "core/share.h"
#include "core/traces.h"

#include <c10/util/Exception.h>

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace torch_ws {

// The two evaluation orders, the names TORCH_WS_ENGINE takes.
enum class Engine { SampleSpace, ParameterSpace };
const char* engine_name(Engine engine);

// The largest n the parameter-space engines take (their n×n float64 Hessian is then 128 MiB).
constexpr int64_t kMaxParameterSpaceParams = 4096;

// The engine TORCH_WS_ENGINE names ("sample", "parameter"), or nullopt when it is unset or
// "auto"; raises on anything else. Read by this family's table and the deep family's
// (ops/deep/engines.cpp).
std::optional<Engine> engine_from_environment();

// What both engine tables (this family's and ops/deep/engines.cpp) say in the same words: the
// error for TORCH_WS_ENGINE naming an engine that refuses the problem (raised where `why` is not
// empty), and an engine's line in the _engines / _deep_engines listings.
void check_named_engine(Engine named, const std::string& why);
std::string engine_line(Engine engine, const char* cost, const std::string& why, bool chosen);

// The choice both engine tables make (this family's and ops/deep/engines.cpp), over the rows
// that serve the problem (`serves`): TORCH_WS_ENGINE's engine if it names one (raising with its
// row's refusal), else the row that takes the problem with the least weighted work. A row has
// `engine`, `refusal(shape)` (empty: it takes the problem) and `work(shape)`.
template <typename Row, std::size_t kRows, typename Shape, typename Serves>
Engine choose_from_table(const Row (&rows)[kRows], const Shape& shape, Serves serves) {
  const std::optional<Engine> named = engine_from_environment();
  const Row* best = nullptr;
  double best_work = 0;
  for (const Row& row : rows) {
    if (!serves(row)) continue;
    if (named) {
      if (row.engine != *named) continue;
      check_named_engine(*named, row.refusal(shape));
      return *named;
    }
    if (!row.refusal(shape).empty()) continue;
    const double work = row.work(shape);
    if (!best || work < best_work) {
      best = &row;
      best_work = work;
    }
  }
  TORCH_INTERNAL_ASSERT(best, "no engine row takes the problem");  // the sample rows take any
  return best->engine;
}

// The engine for this problem: TORCH_WS_ENGINE ("auto", "sample", "parameter"; raises on anything
// else, or with the table's reason when the named engine refuses the problem), or the one that
// takes it with the least weighted work.
Engine choose_engine(const ProblemShape& shape);
// Every engine of the problem's head, in words: its name, its cost, and whether it takes the
// problem (or why not); the automatic choice is marked.
std::vector<std::string> describe_engines(const ProblemShape& shape);

// The tile size of the CPU pairwise stage for N samples: TORCH_WS_TILE_SIZE (a positive
// integer, "auto" or unset, "whole" for whole matrices → 0), or the automatic choice.
int64_t tile_size_for(int64_t num_samples);
// The block size of the multi-output engine (C ≥ 2 logits), under the same setting.
int64_t multi_output_tile_size_for(int64_t num_samples, int64_t num_outputs);
// The chunk of samples whose Jacobians the multi-output parameter-space engine holds at once,
// under the same setting.
int64_t multi_output_chunk_for(int64_t num_samples, int64_t num_outputs, int64_t num_params);

ProblemShape shape_of(const MlpProblem& p);

TracesResult evaluate_traces(const MlpProblem& p, Gradients gradients);

// One share of the sample-space engine's sums (core/share.h), whatever engine evaluate_traces
// would choose: the parts that several processes add up (docs/math.md §4.1).
TracesResult evaluate_share(const MlpProblem& p, Gradients gradients, const Share& share);

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
