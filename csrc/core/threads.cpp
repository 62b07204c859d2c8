// The thread count of one call (threads.h; docs/engines.md "Threads on a busy machine").
#include "core/threads.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

#if defined(__linux__)
#include <dlfcn.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace torch_ws {
namespace {

int current_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// MKL's per-thread count (mkl_set_num_threads_local: the C entry point MKL_Set_Num_Threads_Local,
// by value; the lower-case symbol is the Fortran one, by pointer), where torch's BLAS is MKL: MKL
// follows it before its global count, which torch.set_num_threads sets, and before OpenMP's (so
// OpenMP's per-thread count alone leaves torch's matrix products on the global count). Looked up
// at run time: a torch built on another BLAS has none, and then there is nothing of MKL's to set.
using MklSetLocal = int (*)(int);
MklSetLocal mkl_set_local() {
#if defined(__linux__)
  static const MklSetLocal function =
      reinterpret_cast<MklSetLocal>(dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local"));
  return function;
#else
  return nullptr;
#endif
}

bool fixed_by_environment() {
  const char* value = std::getenv("TORCH_WS_THREADS");
  return value != nullptr && std::strcmp(value, "fixed") == 0;
}

#if defined(__linux__)
// The cores this process may run on, and whether they are all the machine's online cores.
int64_t allowed_cores(bool& all_online) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) {
    all_online = false;
    return 0;
  }
  const int64_t allowed = CPU_COUNT(&set);
  static const int64_t online = sysconf(_SC_NPROCESSORS_ONLN);  // a file read: once
  all_online = allowed >= online;
  return allowed;
}

// Seconds of CPU time the whole machine has spent busy (user, nice, system, irq, softirq,
// steal: /proc/stat's first line, in clock ticks), or a negative number where it cannot be read.
double machine_busy_seconds() {
  static const int fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);  // read again from its start
  static const double tick = 1.0 / static_cast<double>(sysconf(_SC_CLK_TCK));
  if (fd < 0) return -1;
  char buffer[256];
  const ssize_t length = pread(fd, buffer, sizeof buffer - 1, 0);
  if (length <= 0) return -1;
  buffer[length] = '\0';
  unsigned long long user, nice, system, idle, iowait, irq, softirq, steal;
  const int fields = std::sscanf(buffer, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &user,
                                 &nice, &system, &idle, &iowait, &irq, &softirq, &steal);
  if (fields != 8) return -1;
  return static_cast<double>(user + nice + system + irq + softirq + steal) * tick;
}

// Seconds of CPU time this process has used, all its threads (spinning ones included).
double own_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The cores other processes keep busy, as CPU time: what the machine spent busy less what this
// process spent, over the last window of at least kWindow seconds, per second. CPU time, not a
// count of runnable tasks at one instant: that count was one too high for a millisecond or two
// after each large call of this process (a kernel thread finishing its work), which put 3 in 10
// back-to-back calls on one thread on the idle machine; a CPU-bound process beside it is ~1 core
// in every window. Until a first window has passed: none (the window starts at load, below).
constexpr double kWindow = 0.1;
struct Usage {
  double wall = 0, busy = 0, own = 0;
};
std::mutex usage_mutex;
Usage window_start;
double others_cores = 0;

double cores_busy_elsewhere() {
  const double wall = wall_seconds();
  std::lock_guard<std::mutex> lock(usage_mutex);
  // Within the window: the last figure, at the cost of one clock read.
  if (window_start.wall != 0 && wall - window_start.wall < kWindow) return others_cores;
  const double busy = machine_busy_seconds();
  if (busy < 0) return -1;
  const Usage now{wall, busy, own_seconds()};
  if (window_start.wall != 0) {
    others_cores = std::max(0.0, ((now.busy - window_start.busy) - (now.own - window_start.own)) /
                                     (now.wall - window_start.wall));
  }
  window_start = now;
  return others_cores;
}

// The first window starts when the library loads, so that a process's first calls (usually a
// tenth of a second or more later) already see one.
const bool window_started_at_load = (cores_busy_elsewhere(), true);

// The cores no other process is keeping busy; -1 where that cannot be known (confined to a
// subset of the cores, or no /proc).
int64_t free_cores() {
  bool all_online = false;
  const int64_t cores = allowed_cores(all_online);
  if (!all_online || cores <= 0) return -1;
  const double elsewhere = cores_busy_elsewhere();
  if (elsewhere < 0) return -1;
  // A busy process is ~1 core; the interpreter's and the kernel's crumbs are far below a half.
  return std::max<int64_t>(1, cores - static_cast<int64_t>(std::lround(elsewhere)));
}
#else
int64_t free_cores() { return -1; }
#endif

}  // namespace

int64_t call_threads() {
  const int64_t threads = current_threads();
  if (threads <= 1 || fixed_by_environment()) return threads;
  const int64_t free = free_cores();
  return free < 0 ? threads : std::min(threads, free);
}

CallThreads::CallThreads(const at::Device& device) {
  if (!device.is_cpu()) return;
  const int threads = current_threads();
  const int chosen = static_cast<int>(call_threads());
  if (chosen == threads) return;
#ifdef _OPENMP
  previous_ = threads;
  omp_set_num_threads(chosen);
  if (const MklSetLocal set_local = mkl_set_local()) {
    previous_mkl_ = set_local(chosen);
    mkl_set_ = true;
  }
#endif
}

CallThreads::~CallThreads() {
#ifdef _OPENMP
  if (previous_ > 0) omp_set_num_threads(previous_);
  if (mkl_set_) mkl_set_local()(previous_mkl_);  // 0: back to MKL's global count
#endif
}

}  // namespace torch_ws
