// The per-sample formulas of the sample-space gradient (docs/math.md §6.1), written once for two
// value types: tensors (chain.cpp, any device: per-sample values as (N, 1) columns, w2 as an
// (H,) row, so that they broadcast over the (N, H) arrays) and scalars (the fused CPU loop of
// cpu/weighted_chain.cpp, one entry at a time).
#pragma once

namespace torch_ws {
namespace chain_terms {

// tr H = Σ_i s_i (k_i q_i + r_i) + e_i k_i v_i. Its adjoints with respect to the per-sample
// arrays: s̄ and ē, and the factors of the others, Ū = u·U, Φ̄0 = phi0·Φ0, V̄_ik = v (every k),
// X̄ = x·X (Φ̄1 = 0). k = ‖x‖² + [b1], q = ‖U‖², r = ‖Φ0‖² + [b2], v = Σ_k V.
template <typename T>
struct TraceAdjoints {
  T s, e, u, phi0, v, x;
};

template <typename T>
TraceAdjoints<T> trace_adjoints(const T& s, const T& e, const T& k, const T& q, const T& r,
                                const T& v) {
  return {k * q + r, k * v, 2 * s * k, 2 * s, e * k, 2 * (s * q + e * v)};
}

// z̄ from s̄ and ē: s and e depend on the logit z, ds/dz = c·ℓ''' and de/dz = c·ℓ'' = s.
template <typename T>
T logit_adjoint(const T& ds_dz, const T& s, const T& s_bar, const T& e_bar) {
  return ds_dz * s_bar + s * e_bar;
}

// Ā from the adjoints of Φ0, Φ1, U, V and z, through U = Φ1 diag(w2), V = Φ2 diag(w2),
// z = Φ0 w2ᵀ + b2 and Φk = φ^(k)(A).
template <typename T, typename Column, typename Row>
T pre_activation_adjoint(const T& phi0_bar, const T& phi1_bar, const T& U_bar, const T& V_bar,
                         const Column& z_bar, const Row& w2, const T& phi1, const T& phi2,
                         const T& phi3) {
  return (phi0_bar + z_bar * w2) * phi1 + (phi1_bar + U_bar * w2) * phi2 + V_bar * w2 * phi3;
}

// One sample's share of w̄2 (summed over the samples): through U, V and z.
template <typename T, typename Column>
T output_weight_adjoint(const T& U_bar, const T& V_bar, const Column& z_bar, const T& phi0,
                        const T& phi1, const T& phi2) {
  return U_bar * phi1 + V_bar * phi2 + z_bar * phi0;
}

}  // namespace chain_terms
}  // namespace torch_ws
