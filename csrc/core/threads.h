// How many threads one call of an op runs on (docs/engines.md, "Threads on a busy machine").
//
// A parallel region ends when its slowest thread does. On a machine whose cores other processes
// keep busy, one of the call's threads often waits a scheduler time slice (4–16 ms) for a core,
// while the others spin at the region's end (OpenMP's wait policy) on cores the late thread or the
// other processes need: a call made of many regions then takes up to twice its one-thread time
// (issue 30; benchmarks/bench_contention.py). So, for the duration of a call, on the CPU:
//   - a small call (below kSmallCallWork multiply-adds of one forward pass) runs on one thread:
//     a region's start and end cost about what a second core saves there, and one late thread
//     stalls the call;
//   - a larger one runs on at most the cores no other process is running on at its start
//     (the machine's runnable count less this process's own runnable threads), where this
//     process may run on every online core; where it is confined to a subset (a cpuset:
//     containers, batch schedulers) the machine-wide count says nothing of its cores, and the
//     call keeps torch's count.
// Never more than torch's own count (torch.get_num_threads()). The count is set for the calling
// thread only (OpenMP's per-thread count, which ATen's parallel_for follows, and MKL's per-thread
// count, which its matrix products follow) and restored at the end of the call. TORCH_WS_THREADS=fixed keeps torch's count for every call.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace torch_ws {

// Below this many multiply-adds of one forward pass (N·D·H·C), a call runs on one thread.
constexpr int64_t kSmallCallWork = int64_t{1} << 20;

class CallThreads {
 public:
  // `work`: N·D·H·C of the call's problem (forward_work below); `device`: the inputs' device
  // (nothing changes off the CPU).
  CallThreads(int64_t work, const at::Device& device);
  ~CallThreads();
  CallThreads(const CallThreads&) = delete;
  CallThreads& operator=(const CallThreads&) = delete;

  // The thread count chosen for the call.
  int threads() const { return threads_; }

 private:
  int previous_ = 0;  // the calling thread's OpenMP count before the call; 0: unchanged
  int previous_mkl_ = 0;  // MKL's per-thread count before the call (0: its global one)
  bool mkl_set_ = false;
  int threads_ = 1;
};

// N·D·H·C for x (…, N, D), the first layer's weight (…, H, D) and the last one's (…, C, H): the
// multiply-adds of one forward pass, batch included.
int64_t forward_work(const at::Tensor& x, const at::Tensor& first_weight,
                     const at::Tensor& last_weight);

// The cores a call beginning now would take (the rule above, without changing anything): what
// `torch.ops.torch_ws._call_threads(work)` reports, for the tests and the benchmark.
int64_t call_threads(int64_t work);

}  // namespace torch_ws
