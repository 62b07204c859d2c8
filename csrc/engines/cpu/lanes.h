// Lanes: the CPU engines split their work into at most at::get_num_threads() lanes, each with its
// own accumulators, and reduce them in lane order afterwards, so results depend only on the
// problem and the thread count (deterministic), never on scheduling.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <cstdint>

namespace torch_ws {

// Runs fn(lane) for every lane in [0, lanes) on the intra-op thread pool. OpenMP's worker threads
// do not inherit the caller's thread-local state (grad mode, the dispatch keys the autograd kernel
// has excluded), so each lane takes it over. A single lane runs inline: no parallel region, and
// BLAS keeps its own threads.
template <typename Fn>
void run_lanes(int64_t lanes, const Fn& fn) {
  if (lanes <= 1) {
    fn(int64_t{0});
    return;
  }
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, lanes, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard state_guard(caller_state);
    for (int64_t lane = begin; lane < end; ++lane) fn(lane);
  });
}

// How many lanes `work` units (multiply-adds) deserve: one below `min_work_per_lane` each (a
// parallel region costs microseconds), never more than the threads or `max_lanes`.
inline int64_t lanes_for(double work, double min_work_per_lane, int64_t max_lanes) {
  const auto by_work = static_cast<int64_t>(work / min_work_per_lane);
  return std::max<int64_t>(1, std::min<int64_t>({by_work, at::get_num_threads(), max_lanes}));
}

}  // namespace torch_ws
