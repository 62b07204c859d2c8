// The per-pair formulas of tr(H²) (docs/math.md §4) and their adjoints (§6), written once as
// templates over the value type: one Gram entry at a time (the CPU tile loop; a CUDA kernel, for
// which they are __host__ __device__) and whole N×N tensors (the whole-matrix path, any device).
//
// For a pair of samples (i, j) with Gram entries K, Q, R, P1..P4 (sample_space.h names the
// products) and per-sample loss terms s, e:
//   G_ij = K Q + R                     (the tangent kernel g_i·g_j)
//   B_ij = K² P1 + 2 K P2              (not symmetric: P1, P2 are not)
//   C_ij = K² P3 + 2 K P4
//   f(i, j) = s_i s_j G² + 2 s_i B_ij e_j + e_i C_ij e_j,     tr(H²) = Σ_ij f(i, j).
#pragma once

#include <c10/macros/Macros.h>

// A template called with at::Tensor from host code is fine; tell nvcc not to warn about the
// host-only instantiations of these __host__ __device__ templates.
#if defined(__CUDACC__)
#define TORCH_WS_HOST_DEVICE_TEMPLATE _Pragma("nv_exec_check_disable") C10_HOST_DEVICE
#else
#define TORCH_WS_HOST_DEVICE_TEMPLATE C10_HOST_DEVICE
#endif

namespace torch_ws {
namespace pair_terms {

// G = K Q + R.
template <typename T>
TORCH_WS_HOST_DEVICE_TEMPLATE inline T tangent_kernel(const T& K, const T& Q, const T& R) {
  return K * Q + R;
}

// The residual kernels B = K² P1 + 2K P2 and C = K² P3 + 2K P4 share one form,
// K² P_outer + 2K P_inner, with ∂/∂K = 2(K P_outer + P_inner), ∂/∂P_outer = K²,
// ∂/∂P_inner = 2K.
template <typename T>
TORCH_WS_HOST_DEVICE_TEMPLATE inline T residual_kernel(const T& K, const T& P_outer,
                                                       const T& P_inner) {
  return K * K * P_outer + 2 * K * P_inner;
}
template <typename T>
TORCH_WS_HOST_DEVICE_TEMPLATE inline T residual_kernel_dK(const T& K, const T& P_outer,
                                                          const T& P_inner) {
  return 2 * (K * P_outer + P_inner);
}

// f(i, j) for one ordered pair.
template <typename T>
TORCH_WS_HOST_DEVICE_TEMPLATE inline T pair_value(const T& s_i, const T& e_i, const T& s_j,
                                                  const T& e_j, const T& G, const T& B_ij,
                                                  const T& C) {
  return s_i * s_j * G * G + 2 * s_i * B_ij * e_j + e_i * C * e_j;
}

// The adjoints (upstream gradient 1) of the kernels G, B_ij, C for one ordered pair (i, j):
// ∂f/∂G = 2 s_i s_j G, ∂f/∂B_ij = 2 s_i e_j, ∂f/∂C = e_i e_j.
template <typename T>
struct KernelAdjoints {
  T G, B, C;
};
template <typename T>
TORCH_WS_HOST_DEVICE_TEMPLATE inline KernelAdjoints<T> pair_kernel_adjoints(
    const T& s_i, const T& e_i, const T& s_j, const T& e_j, const T& G) {
  return {2 * s_i * s_j * G, 2 * s_i * e_j, e_i * e_j};
}

// The adjoints of the Gram entries of one ordered pair from the adjoints of its kernels.
template <typename T>
struct GramAdjoints {
  T K, Q, R, P1, P2, P3, P4;
};
template <typename T>
TORCH_WS_HOST_DEVICE_TEMPLATE inline GramAdjoints<T> gram_adjoints(
    const T& K, const T& Q, const T& P1, const T& P2, const T& P3, const T& P4, const T& G_bar,
    const T& B_bar, const T& C_bar) {
  return {G_bar * Q + B_bar * residual_kernel_dK(K, P1, P2) + C_bar * residual_kernel_dK(K, P3, P4),
          G_bar * K,
          G_bar,
          B_bar * K * K,
          B_bar * 2 * K,
          C_bar * K * K,
          C_bar * 2 * K};
}

// ∂f(i, j)/∂(s_i, e_i, s_j, e_j).
template <typename T>
struct SampleTermAdjoints {
  T s_i, e_i, s_j, e_j;
};
template <typename T>
TORCH_WS_HOST_DEVICE_TEMPLATE inline SampleTermAdjoints<T> pair_sample_adjoints(
    const T& s_i, const T& e_i, const T& s_j, const T& e_j, const T& G, const T& B_ij,
    const T& C) {
  const T G2 = G * G;
  return {s_j * G2 + 2 * B_ij * e_j, C * e_j, s_i * G2, 2 * s_i * B_ij + e_i * C};
}

}  // namespace pair_terms
}  // namespace torch_ws
