#!/usr/bin/env bash
# One command for the first GPU (issue 27): on a machine with a CUDA GPU and torch installed, and no
# package registry, this builds torch_ws against that torch, checks the ops on CUDA against the CPU,
# runs the CUDA-axis tests (the "cuda" case of every device-parametrized test) and times ws_bound
# on CUDA and on the CPU, then prints what passed. It installs nothing and reaches no network.
#
#   bash benchmarks/device_check.sh          (or: make device-check)
#
# Each step has a time limit (build 180 s, tests 210 s, timing 60 s), so that it ends within 8
# minutes; here the CPU halves of the same 1,200 test cases take 31 s on 2 cores. Environment:
#   PYTHON=python3        the interpreter that has torch (default: the first of python3, python)
#   JOBS=N                compile N files at once (default: every core)
#   DEVICE_CHECK_BUILD_DIR=DIR   where it builds (default build/device-check; the source tree and
#                         build/cmake are left alone, so a CPU build made by `make` stays valid)
#   DEVICE_CHECK_ALLOW_CPU=1     without a GPU, go on anyway (build, CPU halves, skipped CUDA
#                         tests, no timing): a dry run of this script; it still exits 2.
#   DEVICE_CHECK_BENCH_SIZES="2048 8192"   the N of the timing (a dry run times only when set)
#   DEVICE_CHECK_BUILDER=cpp_extension     skip CMake (the fallback used when a CUDA torch's
#                         CMake package finds no CUDA toolkit)
# Exit status: 0 when a GPU was found and every step passed; 1 when a step failed; 2 when there
# is no usable CUDA device (or no torch).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${DEVICE_CHECK_BUILD_DIR:-$ROOT/build/device-check}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 4)}
ALLOW_CPU=${DEVICE_CHECK_ALLOW_CPU:-0}
BUILD_TIMEOUT=${DEVICE_CHECK_BUILD_TIMEOUT:-180}
TEST_TIMEOUT=${DEVICE_CHECK_TEST_TIMEOUT:-210}
BENCH_TIMEOUT=${DEVICE_CHECK_BENCH_TIMEOUT:-60}
START=$SECONDS
SUMMARY=()
FAILED=0

say() { echo "== device-check [$((SECONDS - START))s]: $*"; }
record() {  # record STATUS STEP DETAIL
  SUMMARY+=("$(printf '%-4s  %-22s %s' "$1" "$2" "$3")")
  [ "$1" = FAIL ] && FAILED=$((FAILED + 1))
  return 0
}
finish() {  # finish EXIT_STATUS
  echo
  echo "================ torch_ws device check: summary ================"
  for line in "${SUMMARY[@]}"; do echo "$line"; done
  local passed=0 skipped=0
  for line in "${SUMMARY[@]}"; do
    case $line in PASS*) passed=$((passed + 1)) ;; SKIP*|NOTE*) skipped=$((skipped + 1)) ;; esac
  done
  echo "steps: $passed passed, $FAILED failed, $skipped skipped or noted; $((SECONDS - START)) s in all"
  echo "logs and results: $BUILD"
  exit "$1"
}

mkdir -p "$BUILD" || { echo "device-check: cannot create $BUILD" >&2; exit 1; }

# ---- 1. The interpreter, torch, the GPU, and which test tools exist (nothing is installed). ----
PY=""
for candidate in "${PYTHON:-}" python3 python; do
  [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 || continue
  if "$candidate" -c "import torch" >/dev/null 2>&1; then PY=$candidate; break; fi
done
if [ -z "$PY" ]; then
  record FAIL "torch" "no python3/python (or \$PYTHON) here imports torch: nothing to check"
  finish 2
fi
# One interpreter start for every fact (importing torch takes seconds).
FACTS=$("$PY" - 2>"$BUILD/facts.log" <<'EOF'
import importlib, platform, shlex
import torch
gpu = torch.cuda.is_available()
facts = {
    "TORCH_VERSION": torch.__version__, "TORCH_CUDA": torch.version.cuda or "",
    "PY_VERSION": platform.python_version(), "TORCH_PREFIX": torch.utils.cmake_prefix_path,
    "GPU": torch.cuda.get_device_name(0) if gpu else "",
    "GPU_COUNT": torch.cuda.device_count() if gpu else 0,
}
for module in ("pytest", "hypothesis", "ninja"):
    try:
        facts[module.upper() + "_VERSION"] = getattr(importlib.import_module(module), "__version__", "")
        facts["HAVE_" + module.upper()] = 1
    except Exception:  # missing, or broken: the same to this check
        facts["HAVE_" + module.upper()] = 0
for key, value in facts.items():
    print(f"{key}={shlex.quote(str(value))}")
EOF
)
eval "$FACTS"
if [ -z "${TORCH_VERSION:-}" ]; then
  record FAIL "torch" "$PY could not report torch's facts: $BUILD/facts.log"; cat "$BUILD/facts.log"
  finish 2
fi
say "python $PY_VERSION ($(command -v "$PY")), torch $TORCH_VERSION, CUDA build: ${TORCH_CUDA:-none}"
if [ -n "$GPU" ]; then
  record PASS "GPU" "$GPU_COUNT device(s): $GPU; torch $TORCH_VERSION (CUDA $TORCH_CUDA), python $PY_VERSION"
else
  if [ -z "$TORCH_CUDA" ]; then
    why="torch $TORCH_VERSION is a CPU-only build (torch.version.cuda is None)"
  else
    why="torch $TORCH_VERSION is built for CUDA $TORCH_CUDA, but torch.cuda.is_available() is False (no device or driver visible"
    command -v nvidia-smi >/dev/null 2>&1 || why="$why; nvidia-smi not found"
    why="$why)"
  fi
  say "NO CUDA GPU: $why"
  if [ "$ALLOW_CPU" != 1 ]; then
    record FAIL "GPU" "NO CUDA GPU: $why. Nothing was built or run (DEVICE_CHECK_ALLOW_CPU=1 for a dry run)."
    finish 2
  fi
  record FAIL "GPU" "NO CUDA GPU: $why; dry run on the CPU (DEVICE_CHECK_ALLOW_CPU=1)"
fi
if [ "$HAVE_PYTEST" = 1 ]; then
  record NOTE "pytest" "pytest $PYTEST_VERSION found; hypothesis $([ "$HAVE_HYPOTHESIS" = 1 ] && echo found || echo 'MISSING (tests/test_properties.py is left out; it has no CUDA cases)')"
else
  record NOTE "pytest" "pytest is NOT INSTALLED: the CUDA-axis pytest cases cannot run; the inline CUDA-vs-CPU check (step 'ops on CUDA') stands in for them"
fi

# ---- 2. Build libtorch_ws.so against this torch (CMake; the CUDA toolkit a CUDA torch's CMake
#         package asks for is looked up; without one, torch.utils.cpp_extension builds it). ----
LIB=""
cuda_root() {  # a CUDA toolkit root with nvcc and cuda_runtime.h, or nothing
  local nvcc_dir candidates=("${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda)
  if command -v nvcc >/dev/null 2>&1; then
    nvcc_dir=$(dirname "$(readlink -f "$(command -v nvcc)")")
    candidates+=("$(dirname "$nvcc_dir")")
  fi
  candidates+=(/usr/local/cuda-* /opt/cuda)
  for root in "${candidates[@]}"; do
    [ -n "$root" ] && [ -x "$root/bin/nvcc" ] && [ -f "$root/include/cuda_runtime.h" ] && { echo "$root"; return; }
  done
}
configure_cmake() {  # configure_cmake DIR CUDA_ROOT: 0 when configured
  local configure=(cmake -S "$ROOT" -B "$1" -DCMAKE_BUILD_TYPE=Release
                   -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DTORCH_WS_BUILD_TESTS=OFF)
  [ -n "$2" ] && configure+=(-DCUDA_TOOLKIT_ROOT_DIR="$2" -DCUDAToolkit_ROOT="$2")
  # Generator and compiler on a fresh cache only: changing the compiler of an existing cache makes
  # CMake delete it and drop the other -D options.
  if [ ! -f "$1/CMakeCache.txt" ]; then
    command -v ninja >/dev/null 2>&1 && configure+=(-G Ninja)
    [ -n "$2" ] && configure+=(-DCMAKE_CUDA_COMPILER="$2/bin/nvcc")
  fi
  "${configure[@]}" >> "$BUILD/configure.log" 2>&1
}
build_with_cmake() {
  local cmake_dir=$BUILD/cmake root=""
  command -v cmake >/dev/null 2>&1 || { say "cmake not found"; return 3; }
  if [ -n "$TORCH_CUDA" ]; then
    root=$(cuda_root)
    if [ -z "$root" ]; then
      say "torch is built for CUDA $TORCH_CUDA and its CMake package needs a CUDA toolkit (nvcc, cuda_runtime.h): none found (CUDA_HOME, nvcc on PATH, /usr/local/cuda*)"
      return 3
    fi
    say "CUDA toolkit: $root"
  fi
  : > "$BUILD/configure.log"
  if ! configure_cmake "$cmake_dir" "$root"; then
    local configured=0
    if [ -f "$cmake_dir/CMakeCache.txt" ]; then
      say "CMake configure failed on the existing $cmake_dir: configuring afresh"
      rm -rf "$cmake_dir"
      configure_cmake "$cmake_dir" "$root" && configured=1
    fi
    [ $configured = 1 ] || { say "CMake configure failed: $BUILD/configure.log"; tail -20 "$BUILD/configure.log"; return 3; }
  fi
  timeout "$BUILD_TIMEOUT" cmake --build "$cmake_dir" --target torch_ws --parallel "$JOBS" > "$BUILD/build.log" 2>&1 \
    || { say "CMake build failed: $BUILD/build.log"; grep -E "error|FAILED" "$BUILD/build.log" | head -20; return 1; }
  LIB=$cmake_dir/libtorch_ws.so
}
build_with_cpp_extension() {  # the same sources and flags as CMakeLists.txt, C++ only
  # cpp_extension runs `ninja` from PATH: the interpreter's bin/ holds the one `pip install ninja` put.
  PATH="$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH" \
  timeout "$BUILD_TIMEOUT" "$PY" - "$ROOT" "$BUILD/ext" "$JOBS" > "$BUILD/build-ext.log" 2>&1 <<'EOF' || { say "cpp_extension build failed: $BUILD/build-ext.log"; grep -E "error" "$BUILD/build-ext.log" | head -20; return 1; }
import glob, os, sys
root, out, jobs = sys.argv[1:4]
os.makedirs(os.path.join(out, "src"), exist_ok=True)
os.environ["MAX_JOBS"] = jobs
from torch.utils import cpp_extension
# cpp_extension names each object after its file alone (two engines' folders hold a
# parameter_space.cpp): compile one wrapper per source, named after its path, that includes it.
sources = []
for path in sorted(glob.glob(os.path.join(root, "csrc", "**", "*.cpp"), recursive=True)):
    wrapper = os.path.join(out, "src", os.path.relpath(path, os.path.join(root, "csrc")).replace(os.sep, "__"))
    text = f'#include "{path}"\n'
    if not os.path.exists(wrapper) or open(wrapper).read() != text:
        open(wrapper, "w").write(text)
    sources.append(wrapper)
path = cpp_extension.load(
    name="libtorch_ws", sources=sources, build_directory=out, is_python_module=False, verbose=True,
    extra_include_paths=[os.path.join(root, "include"), os.path.join(root, "csrc")],
    extra_cflags=["-O3", "-DNDEBUG", "-fopenmp-simd", "-fopenmp"], extra_ldflags=["-fopenmp"])
print("built", path)
EOF
  LIB=$BUILD/ext/libtorch_ws.so
}
say "building libtorch_ws.so against torch $TORCH_VERSION ($JOBS jobs; log under $BUILD)"
build_start=$SECONDS
if [ "${DEVICE_CHECK_BUILDER:-cmake}" = cpp_extension ]; then status=3; else build_with_cmake; status=$?; fi
if [ $status = 3 ]; then
  if [ "$HAVE_NINJA" = 1 ] || command -v ninja >/dev/null 2>&1; then
    say "falling back to torch.utils.cpp_extension (C++ only: the ops reach CUDA through ATen)"
    build_with_cpp_extension; status=$?
    how="torch.utils.cpp_extension (no usable CMake/CUDA toolkit)"
  else
    say "no ninja either (torch.utils.cpp_extension needs it): cannot build"
    status=1
  fi
else
  how="CMake"
fi
if [ $status != 0 ] || [ ! -f "$LIB" ]; then
  record FAIL "build" "libtorch_ws.so did not build (see $BUILD/*.log)"
  finish 1
fi
record PASS "build" "$how, $((SECONDS - build_start)) s"

# The package as installed: a copy of torch_ws/ with this library in lib/, imported from outside the
# source tree (the checkout's own torch_ws/ would shadow it from the repository root).
rm -rf "$BUILD/pkg" && mkdir -p "$BUILD/pkg" "$BUILD/run"
cp -r "$ROOT/torch_ws" "$BUILD/pkg/" && rm -f "$BUILD/pkg/torch_ws/lib/"*.so
mkdir -p "$BUILD/pkg/torch_ws/lib" && cp "$LIB" "$BUILD/pkg/torch_ws/lib/libtorch_ws.so"
export PYTHONPATH="$BUILD/pkg${PYTHONPATH:+:$PYTHONPATH}"
cd "$BUILD/run" || finish 1

# ---- 3. The ops on CUDA against the CPU (values and gradients, float64), without pytest. ----
say "ops on CUDA against the CPU"
DEVICE=cuda; [ -n "$GPU" ] || DEVICE=cpu
if timeout "$TEST_TIMEOUT" "$PY" - "$DEVICE" > "$BUILD/ops.log" 2>&1 <<'EOF'
import sys
import torch
import torch_ws
device = sys.argv[1]
assert "/pkg/torch_ws/" in torch_ws.__file__, torch_ws.__file__  # this build, not a checkout's
print("torch_ws from", torch_ws.__file__)
gen = torch.Generator().manual_seed(0)
checked = 0
for loss, c in (("bce", 1), ("cross_entropy", 3), ("mse", 2)):
    for activation in ("tanh", "relu"):
        n, d, h = 64, 5, 7
        x = torch.randn(n, d, generator=gen, dtype=torch.float64)
        target = {"bce": lambda: (torch.rand(n, generator=gen) > 0.5).double(),
                  "cross_entropy": lambda: torch.randint(0, c, (n,), generator=gen),
                  "mse": lambda: torch.randn(n, c, generator=gen, dtype=torch.float64)}[loss]()
        params = [torch.randn(h, d, generator=gen, dtype=torch.float64) / d**0.5,
                  torch.randn(h, generator=gen, dtype=torch.float64) * 0.1,
                  torch.randn(c, h, generator=gen, dtype=torch.float64) / h**0.5,
                  torch.randn(c, generator=gen, dtype=torch.float64) * 0.1]
        results = {}
        for dev in ("cpu", device):
            p = [t.to(dev).requires_grad_() for t in params]
            bound = torch_ws.ws_bound(x.to(dev), target.to(dev), *p, activation=activation, loss=loss)
            trace, trace_sq = torch_ws.hessian_traces(x.to(dev), target.to(dev), *[t.detach() for t in p],
                                                      activation=activation, loss=loss)
            bound.backward()
            results[dev] = [bound.detach(), trace, trace_sq] + [t.grad for t in p]
            assert bound.device.type == dev, (bound.device, dev)
        for a, b in zip(results["cpu"], results[device]):
            torch.testing.assert_close(b.cpu(), a, rtol=1e-7, atol=1e-10)
        checked += 1
        print(f"{loss:14s} {activation:5s} ws_bound {results[device][0].item():.6e} on {device} == cpu")
print(f"ops on {device}: {checked} problems, value, traces and gradients equal to the CPU's")
EOF
then
  record PASS "ops on CUDA" "$(tail -1 "$BUILD/ops.log")"
else
  record FAIL "ops on CUDA" "see $BUILD/ops.log: $(grep -E 'Error|error' "$BUILD/ops.log" | tail -1)"
fi

# ---- 4. The CUDA-axis tests: every test whose id has "cuda" (the device parametrization). ----
if [ "$HAVE_PYTEST" = 1 ]; then
  say "pytest -k cuda (tests/, not slow)"
  PYTEST=("$PY" -m pytest "$ROOT/tests" -q -k cuda -m "not slow" -p no:cacheprovider --rootdir "$ROOT")
  IGNORED=""
  # Test modules that do not import here (a test dependency missing) are left out, by name.
  "${PYTEST[@]}" --collect-only > "$BUILD/collect.log" 2>&1
  for broken in $(grep -oE '^ERROR [^ ]+\.py' "$BUILD/collect.log" | awk '{print $2}' | xargs -r -n1 basename | sort -u); do
    PYTEST+=(--ignore "$ROOT/tests/$broken"); IGNORED="$IGNORED $broken"
  done
  timeout "$TEST_TIMEOUT" "${PYTEST[@]}" > "$BUILD/pytest.log" 2>&1; status=$?
  counts=$(grep -E '(passed|failed|skipped|error|deselected|no tests ran)' "$BUILD/pytest.log" | tail -1)
  [ -n "$IGNORED" ] && counts="$counts; not importable here, left out:$IGNORED"
  if [ $status = 0 ]; then
    if [ -n "$GPU" ]; then record PASS "CUDA tests" "$counts"
    else record SKIP "CUDA tests" "$counts (no GPU: the cuda cases skip)"; fi
  elif [ $status = 124 ]; then
    record FAIL "CUDA tests" "stopped after ${TEST_TIMEOUT}s; $counts (see $BUILD/pytest.log)"
  else
    record FAIL "CUDA tests" "$counts (see $BUILD/pytest.log)"
    grep -E '^(FAILED|ERROR)' "$BUILD/pytest.log" | head -15
  fi
else
  record SKIP "CUDA tests" "pytest is NOT INSTALLED here (and cannot be: no registry); only step 'ops on CUDA' checked CUDA"
fi

# ---- 5. One GPU timing: ws_bound value + gradient, CUDA against the CPU. ----
BENCH_SIZES=${DEVICE_CHECK_BENCH_SIZES:-}
if [ -z "$GPU" ] && [ -z "$BENCH_SIZES" ]; then
  record SKIP "GPU timing" "no GPU"
  finish 2
fi
BENCH_SIZES=${BENCH_SIZES:-2048 8192}
say "timing ws_bound (value and gradient) on $DEVICE and on the CPU, N = $BENCH_SIZES"
if timeout "$BENCH_TIMEOUT" "$PY" - "$DEVICE" "$BUILD/device_check.json" $BENCH_SIZES > "$BUILD/bench.log" 2>&1 <<'EOF'
import json, platform, statistics, sys, time
import torch
import torch_ws
device, out, sizes = sys.argv[1], sys.argv[2], [int(n) for n in sys.argv[3:]]
D, H = 32, 64

def problem(n, dev):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=gen)
    target = (torch.rand(n, generator=gen) > 0.5).float()
    params = [torch.randn(H, D, generator=gen) / D**0.5, torch.randn(H, generator=gen) * 0.1,
              torch.randn(1, H, generator=gen) / H**0.5, torch.randn(1, generator=gen) * 0.1]
    return x.to(dev), target.to(dev), [p.to(dev).requires_grad_() for p in params]

def sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()

def median_seconds(n, dev, budget=8.0, reps=15):
    x, target, params = problem(n, dev)
    def step():
        bound = torch_ws.ws_bound(x, target, *params)
        grads = torch.autograd.grad(bound, params)
        sync(dev)
        return bound, grads
    step()  # warm-up (kernels, allocator)
    times, begin = [], time.perf_counter()
    while len(times) < reps and (len(times) < 3 or time.perf_counter() - begin < budget):
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times), step()[0].item()

rows = []
print(f"ws_bound + gradient, D={D}, H={H}, tanh, BCE, float32; median seconds")
print(f"{'N':>6} {'cpu s':>10} {device + ' s':>10} {'speed-up':>9}  bound cpu / {device}")
for n in sizes:
    cpu_s, cpu_reps, cpu_bound = median_seconds(n, "cpu")
    dev_s, dev_reps, dev_bound = median_seconds(n, device) if device != "cpu" else (cpu_s, cpu_reps, cpu_bound)
    rows.append({"N": n, "D": D, "H": H, "cpu_s": cpu_s, "device_s": dev_s, "cpu_reps": cpu_reps,
                 "device_reps": dev_reps, "bound_cpu": cpu_bound, "bound_device": dev_bound})
    print(f"{n:>6} {cpu_s:>10.4f} {dev_s:>10.4f} {cpu_s / dev_s:>8.1f}x  {cpu_bound:.5g} / {dev_bound:.5g}")
facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
         "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
         "cpu_threads": torch.get_num_threads()}
json.dump({"machine": facts, "rows": rows}, open(out, "w"), indent=2)
last = rows[-1]
print(f"N={last['N']}: cpu {last['cpu_s']:.4f} s, {device} {last['device_s']:.4f} s ({last['cpu_s'] / last['device_s']:.1f}x)")
EOF
then
  cat "$BUILD/bench.log"
  record PASS "GPU timing" "$(tail -1 "$BUILD/bench.log") -> $BUILD/device_check.json"
else
  record FAIL "GPU timing" "see $BUILD/bench.log: $(tail -1 "$BUILD/bench.log")"
fi

if [ -z "$GPU" ]; then finish 2; fi
[ $FAILED = 0 ] && finish 0 || finish 1
