// The thread count of one call (threads.h; docs/engines.md "Threads on a busy machine").
#include "core/threads.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__linux__)
#include <dlfcn.h>
#include <dirent.h>
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
// by value; the lower-case symbol is the Fortran one, by pointer), where torch's BLAS is MKL: MKL follows it
// before its global count, which torch.set_num_threads sets, and before OpenMP's (so OpenMP's
// per-thread count alone leaves torch's matrix products on the global count). Looked up at run
// time: a torch built on another BLAS has none, and then there is nothing of MKL's to set.
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
// The machine's runnable tasks now (running or waiting for a core), this process's included:
// /proc/loadavg's fourth field, "runnable/total" (the count /proc/stat's procs_running gives, at a
// tenth of the cost of generating /proc/stat); -1 where it cannot be read.
int64_t runnable_tasks() {
  // Opened once and read again from its start each call (pread: no seek, thread-safe).
  static const int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buffer[128];
  const ssize_t length = pread(fd, buffer, sizeof buffer - 1, 0);
  if (length <= 0) return -1;
  buffer[length] = '\0';
  double one, five, fifteen;
  long long runnable = -1, total = 0;
  const int fields =
      std::sscanf(buffer, "%lf %lf %lf %lld/%lld", &one, &five, &fifteen, &runnable, &total);
  return fields == 5 ? static_cast<int64_t>(runnable) : -1;
}

// This process's threads in state R (running or runnable): the calling one, and OpenMP workers
// still spinning after an earlier region.
int64_t own_runnable_threads() {
  DIR* tasks = opendir("/proc/self/task");
  if (tasks == nullptr) return 1;
  int64_t count = 0;
  while (const dirent* entry = readdir(tasks)) {
    if (entry->d_name[0] == '.') continue;
    const std::string path = std::string("/proc/self/task/") + entry->d_name + "/stat";
    FILE* file = std::fopen(path.c_str(), "r");
    if (file == nullptr) continue;
    char buffer[256];
    const size_t read = std::fread(buffer, 1, sizeof buffer - 1, file);
    std::fclose(file);
    buffer[read] = '\0';
    // "tid (name) S ...": the state follows the last ')'.
    const char* close = std::strrchr(buffer, ')');
    if (close != nullptr && close[1] == ' ' && close[2] == 'R') ++count;
  }
  closedir(tasks);
  return std::max<int64_t>(count, 1);
}

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

// The cores no other process is running on now; -1 where that cannot be known (a cpuset, or no
// /proc).
int64_t free_cores() {
  bool all_online = false;
  const int64_t cores = allowed_cores(all_online);
  if (!all_online || cores <= 0) return -1;
  const int64_t runnable = runnable_tasks();
  if (runnable < 0) return -1;
  // The calling thread is one of them; only where there are more is it worth reading whose.
  const int64_t elsewhere =
      runnable <= 1 ? 0 : std::max<int64_t>(0, runnable - own_runnable_threads());
  return std::max<int64_t>(1, cores - elsewhere);
}
#else
int64_t free_cores() { return -1; }
#endif

}  // namespace

int64_t call_threads(int64_t work) {
  const int64_t threads = current_threads();
  if (threads <= 1 || fixed_by_environment()) return threads;
  if (work < kSmallCallWork) return 1;
  const int64_t free = free_cores();
  return free < 0 ? threads : std::min(threads, free);
}

CallThreads::CallThreads(int64_t work, const at::Device& device) {
  threads_ = current_threads();
  if (!device.is_cpu()) return;
  const int chosen = static_cast<int>(call_threads(work));
  if (chosen == threads_) return;
#ifdef _OPENMP
  previous_ = threads_;
  omp_set_num_threads(chosen);
  if (const MklSetLocal set_local = mkl_set_local()) {
    previous_mkl_ = set_local(chosen);
    mkl_set_ = true;
  }
  threads_ = chosen;
#endif
}

CallThreads::~CallThreads() {
#ifdef _OPENMP
  if (previous_ > 0) omp_set_num_threads(previous_);
  if (mkl_set_) mkl_set_local()(previous_mkl_);  // 0: back to MKL's global count
#endif
}

int64_t forward_work(const at::Tensor& x, const at::Tensor& first_weight,
                     const at::Tensor& last_weight) {
  // Any shapes (the call's checks come first, but a size must never be the error a user sees).
  auto rows = [](const at::Tensor& w) { return w.dim() >= 2 ? w.size(-2) : int64_t{1}; };
  return x.numel() * rows(first_weight) * rows(last_weight);
}

}  // namespace torch_ws
