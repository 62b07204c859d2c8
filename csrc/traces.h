// Closed-form traces of the loss Hessian of Linear(D,H) → φ → Linear(H,1) with BCE-with-logits
// (math.md §2–§6), split into three stages:
//   1. per-sample features (φ^(k)(A), U, V, s, e): O(N(D+H)), device-agnostic ATen;
//   2. the pairwise stage: tr(H²) = Σ_ij f(i, j) over Gram-matrix entries, and optionally its
//      adjoints with respect to the per-sample arrays, in one pass (tr(H²)'s gradient is linear
//      in the upstream gradient, so the forward can produce it and the backward never recomputes
//      a Gram matrix). Two engines: whole N×N matrices in ATen (any device), and T×T tiles fused
//      and reduced on the fly on the CPU (tiled_cpu.cpp);
//   3. the chain from those adjoints to x, w1, b1, w2, b2 (traces_backward.cpp): O(N(D+H)).
#pragma once

#include "activations.h"
#include "ws_bound.h"

#include <ATen/ATen.h>

#include <optional>
#include <string_view>
#include <tuple>

namespace torch_ws {

enum class Reduction { Mean, Sum };

// n = H·D + H·[b1] + H + [b2]: the length of θ and the size of the Hessian.
inline int64_t count_params(int64_t hidden, int64_t in_dim, bool has_b1, bool has_b2) {
  return hidden * in_dim + (has_b1 ? hidden : 0) + hidden + (has_b2 ? 1 : 0);
}

// The loss's derivatives in the logit z (math.md §2): y = σ(z), s = c·y(1 − y) computed as
// c·σ(z)σ(−z) (no cancellation when σ saturates), e = c·(y − t). For tensors (the sample-space
// engines) and for one double (the parameter-space engine).
template <typename T>
struct LogitTerms {
  T y, s, e;
};
template <typename T, typename Target>
LogitTerms<T> logit_terms(const T& z, const Target& target, double scale) {
  T y = primitives::sigmoid(z);
  T s = scale * (y * primitives::sigmoid(-z));
  T e = scale * (y - target);
  return {y, s, e};
}

// The checked arguments of every op: shapes, dtypes, devices and option strings validated once.
struct MlpProblem {
  at::Tensor x;                  // (N, D)
  at::Tensor target;             // (N,), flattened from (N,) or (N, 1)
  at::Tensor w1;                 // (H, D)
  std::optional<at::Tensor> b1;  // (H,)
  at::Tensor w2;                 // (H,), flattened from the (1, H) row
  std::optional<at::Tensor> b2;  // (1,)
  Activation activation;
  Reduction reduction;

  int64_t num_samples() const { return x.size(0); }
  int64_t num_params() const {
    return count_params(w1.size(0), w1.size(1), b1.has_value(), b2.has_value());
  }
};

// Validates the arguments with TORCH_CHECK (messages say what was expected and what arrived).
// `check_values` also scans the targets for values outside [0, 1].
MlpProblem check_problem(const char* op_name, const at::Tensor& x, const at::Tensor& target,
                         const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                         std::string_view activation, std::string_view reduction,
                         bool check_values = true);

// The gradients of (x, w1, b1, w2, b2); empty tensors for x unless asked, and for absent biases.
using MlpGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Stage 1 (math.md §2): everything per sample.
struct SampleFeatures {
  at::Tensor x;                       // (N, D), contiguous
  at::Tensor phi0, phi1, phi2, phi3;  // φ^(k)(A), (N, H); phi3 only when built for the backward
  at::Tensor U, V;                    // U = Φ1 diag(w2), V = Φ2 diag(w2)
  at::Tensor y, s, e;                 // σ(z), c·y(1−y), c·(y − t)
  double scale;                       // c: 1/N for "mean", 1 for "sum"
  bool has_b1, has_b2;                // the bias "1"s in K and R
};
SampleFeatures sample_features(const MlpProblem& p, bool for_backward);

// The per-sample diagonals tr(H) is made of: k = K_ii = ‖x_i‖² + [b1], q = Q_ii = ‖U_i‖²,
// r = R_ii = ‖Φ0_i‖² + [b2], v = (Φ2 w2ᵀ)_i. Shared by the forward and the backward chain.
struct Diagonals {
  at::Tensor k, q, r, v;
};
Diagonals diagonals(const SampleFeatures& f);

// tr H = Σ_i s_i (k_i q_i + r_i) + e_i k_i v_i (math.md §4): O(N(D+H)), float64.
at::Tensor trace_float64(const SampleFeatures& f, const Diagonals& d);

// The adjoints of tr(H²) with respect to the per-sample arrays, packed column-wise into one
// (N, 4H + D + 2) tensor so that autograd saves a single O(N(D+H)) buffer.
struct TraceSqAdjoints {
  at::Tensor U, V, phi0, phi1, x, s, e;  // (N,H) ×4, (N,D), (N,), (N,)
  at::Tensor pack() const;
  static TraceSqAdjoints unpack(const at::Tensor& packed, int64_t hidden, int64_t in_dim);
};

// Stage 2: tr(H²) in float64 and, if `with_adjoints`, its adjoints.
struct PairwiseResult {
  at::Tensor trace_sq;
  std::optional<TraceSqAdjoints> adjoints;
};
PairwiseResult pairwise_whole(const SampleFeatures& f, bool with_adjoints);
PairwiseResult pairwise_tiled_cpu(const SampleFeatures& f, bool with_adjoints, int64_t tile);
// The engine setting TORCH_WS_TILE_SIZE: unset, "", "0" or "auto" → kAutoTile; "whole" →
// kWholeMatrices; a positive integer → that tile size; anything else raises.
constexpr int64_t kAutoTile = 0, kWholeMatrices = -1;
int64_t tile_setting();
// The tile size the CPU engine uses for N samples (the setting, or the automatic choice).
// Registered as torch_ws::_tile_size for benchmarks.
int64_t tile_size_for(int64_t num_samples);
// How many distinct threads run the lanes of an at::parallel_for given one lane per thread:
// at::get_num_threads() when this library was built with OpenMP, 1 when the parallel loops
// silently run serially. Registered as torch_ws::_parallel_threads for tests.
int64_t parallel_threads();
// Chooses the engine: tiled on CPU, whole matrices on other devices or with the "whole" setting.
PairwiseResult pairwise_trace_sq(const SampleFeatures& f, bool with_adjoints);

// ---- The parameter-space engine (parameter_space_cpu.cpp), CPU only. ----
// tr(H²) = ‖H‖²_F, and for a small network the n×n Hessian is smaller than the N×N Gram matrices:
// it assembles H = Σ_i s_i g_i g_iᵀ + e_i M_i (math.md §3) in O(N·n²) and saves H itself for the
// backward, instead of the per-sample adjoints.
enum class Engine { Auto, SampleSpace, ParameterSpace };
// The largest n the parameter-space engine takes (its n×n float64 Hessian is then 128 MiB).
constexpr int64_t kMaxParameterSpaceParams = 4096;
// The setting TORCH_WS_ENGINE: unset, "" or "auto" → Auto; "sample"; "parameter"; else raises.
Engine engine_setting();
// The engine for this problem (never Auto): the setting, or the one with less arithmetic. Shapes
// the checks would refuse give SampleSpace, whose kernels then report them.
Engine engine_for(const at::Tensor& x, const at::Tensor& w1, bool has_b1, bool has_b2);

struct HessianResult {
  double trace, trace_sq;
  at::Tensor hessian;  // (n, n) float64
};
HessianResult hessian_cpu(const MlpProblem& p);
// The gradients of grad_trace·tr H + grad_trace_sq·tr(H²) from the saved Hessian.
MlpGrads hessian_cpu_backward(const MlpProblem& p, double grad_trace, double grad_trace_sq,
                              const at::Tensor& hessian, bool need_grad_x);

// ---- Kernels registered for CPU and CUDA (ops.cpp holds the schemas). ----

std::tuple<at::Tensor, at::Tensor> hessian_traces_kernel(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction);
at::Tensor ws_bound_kernel(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                           const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                           const std::optional<at::Tensor>& b2, c10::string_view activation,
                           c10::string_view reduction);
// (bound, trace, trace_sq, packed tr(H²) adjoints): the forward that autograd runs. The traces
// are float64; the bound and the adjoints have the input dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_with_adjoints_kernel(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction);

// Stage 3 (traces_backward.cpp): the gradients of grad_trace·tr(H) + grad_trace_sq·tr(H²) for
// (x, w1, b1, w2, b2). grad_x is an empty tensor unless `need_grad_x`; the bias gradients are
// empty tensors for absent biases.
MlpGrads hessian_traces_backward_kernel(
    const at::Tensor& grad_trace, const at::Tensor& grad_trace_sq,
    const at::Tensor& trace_sq_adjoints, const at::Tensor& x, const at::Tensor& target,
    const at::Tensor& w1, const std::optional<at::Tensor>& b1, const at::Tensor& w2,
    const std::optional<at::Tensor>& b2, c10::string_view activation, c10::string_view reduction,
    bool need_grad_x);
MlpGrads ws_bound_backward_kernel(
    const at::Tensor& grad_bound, const at::Tensor& trace, const at::Tensor& trace_sq,
    const at::Tensor& trace_sq_adjoints, const at::Tensor& x, const at::Tensor& target,
    const at::Tensor& w1, const std::optional<at::Tensor>& b1, const at::Tensor& w2,
    const std::optional<at::Tensor>& b2, c10::string_view activation, c10::string_view reduction,
    bool need_grad_x);

// ---- The parameter-space engine's kernels, CPU only (parameter_space_cpu.cpp). ----
// (bound, trace, trace_sq, hessian): as forward_with_adjoints, saving the (n, n) float64 Hessian.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_with_hessian_kernel(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction);
MlpGrads hessian_traces_backward_from_hessian_kernel(
    const at::Tensor& grad_trace, const at::Tensor& grad_trace_sq, const at::Tensor& hessian,
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction, bool need_grad_x);
MlpGrads ws_bound_backward_from_hessian_kernel(
    const at::Tensor& grad_bound, const at::Tensor& trace, const at::Tensor& trace_sq,
    const at::Tensor& hessian, const at::Tensor& x, const at::Tensor& target,
    const at::Tensor& w1, const std::optional<at::Tensor>& b1, const at::Tensor& w2,
    const std::optional<at::Tensor>& b2, c10::string_view activation, c10::string_view reduction,
    bool need_grad_x);

}  // namespace torch_ws
