// How many threads one call of an op runs on (docs/engines.md, "Threads on a busy machine").
//
// A parallel region ends when its slowest thread does. On a machine whose cores other processes
// keep busy, one of the call's threads often waits a scheduler time slice (4–16 ms) for a core,
// while the others spin at the region's end (OpenMP's wait policy) on cores the late thread or the
// other processes need: a call made of many regions then takes up to twice its one-thread time,
// and a sub-millisecond call's tail a hundred times (issue 30; benchmarks/bench_contention.py).
// So, for the duration of a call on the CPU, the call runs on at most the cores other processes
// do not keep busy: the machine's busy CPU time less this process's, per second, over the last
// tenth of a second or more (/proc/stat), where this process may run on every online core. Where
// it is confined to a subset (a cpuset: containers, batch schedulers) the machine-wide figure
// says nothing of its cores, and the call keeps torch's count. Never more than torch's own count
// (torch.get_num_threads()). The count is set for the calling thread only (OpenMP's per-thread
// count, which ATen's parallel_for follows, and MKL's per-thread count, which its matrix products
// follow) and restored at the end of the call. TORCH_WS_THREADS=fixed keeps torch's count.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace torch_ws {

class CallThreads {
 public:
  // Nothing changes off the CPU.
  explicit CallThreads(const at::Device& device);
  ~CallThreads();
  CallThreads(const CallThreads&) = delete;
  CallThreads& operator=(const CallThreads&) = delete;

 private:
  int previous_ = 0;      // the calling thread's OpenMP count before the call; 0: unchanged
  int previous_mkl_ = 0;  // MKL's per-thread count before the call (0: its global one)
  bool mkl_set_ = false;
};

// The threads a call beginning now would run on (the rule above, without changing anything):
// what `torch.ops.torch_ws._call_threads()` reports, for the tests and the benchmarks.
int64_t call_threads();

}  // namespace torch_ws
