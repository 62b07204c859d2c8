// The certificate of the eigenvalue interval (docs/math.md §11.2, §11.3), for any network whose
// loss Hessian comes as closed-form products: Lanczos with full reorthogonalization builds a basis
// Q, Rayleigh-Ritz on Q gives the lower end, and the exact tr(H²) (the trace cap by interlacing,
// then Kato-Temple on the top Ritz pair) the upper one, every rounding error bounded. The one-
// hidden-layer family (ops/eigenvalue_interval) and the deep one (ops/deep) differ only in their
// products and traces; this is the part they share.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

namespace torch_ws {

// H·v in closed form for blocks of directions, and what bounds its rounding (§11.3).
class SymmetricProducts {
 public:
  virtual ~SymmetricProducts() = default;
  // H·v for each row v of `directions` (k, n); (k, n) in the problem's dtype.
  virtual at::Tensor apply(const at::Tensor& directions) const = 0;
  // The same chain with every factor replaced by a majorant of its magnitude, applied to
  // |directions|: an elementwise majorant of the sums of absolute terms behind H·v.
  virtual at::Tensor majorant(const at::Tensor& directions) const = 0;
  // γ with |fl(H·v) − H·v| ≤ γ·majorant(v) elementwise.
  virtual double error_factor() const = 0;
  virtual int64_t num_params() const = 0;

 protected:
  // Numbers in one run's (N, k, width) intermediates: near a megabyte, where the elementwise
  // steps between the products run from cache (batching beyond that made the one-hidden-layer
  // products memory-bound and 3x slower per vector at N = 2048, H = 256; the deep products at
  // 2¹⁸ 13% slower on digits [64, 64], at 2¹⁹ 45%).
  static constexpr int64_t kRunNumbers = int64_t{1} << 17;
  // How many directions make a run: as many as keep the (N, k, width) intermediates of one run
  // near `numbers` (at least one).
  static int64_t run_length(int64_t num_samples, int64_t width, int64_t numbers = kRunNumbers);
  // `run` applied to the rows of `directions` in runs of run_length, concatenated.
  static at::Tensor in_runs(const at::Tensor& directions, int64_t num_samples, int64_t width,
                            const std::function<at::Tensor(const at::Tensor&)>& run,
                            int64_t numbers = kRunNumbers);
};

// Which guarantee gave the bound away from the Ritz value (the op's `source` output).
// KatoTempleWeyl: Kato-Temple with λ_2 bounded by the family's own Weyl bound (§11.2);
// AssembledHessian: λ_max of the assembled n × n Hessian itself, certified (certify_on_assembled
// below).
enum class IntervalSource : int64_t {
  WolkowiczStyan = 0,
  TraceCap = 1,
  KatoTemple = 2,
  Weyl = 3,
  KatoTempleWeyl = 4,
  AssembledHessian = 5
};

// What the certificate knows of σH (σ = ±1) before any product: its exact traces and the
// Wolkowicz-Styan bound on its top eigenvalue, each already a guarantee for the computed numbers.
struct TraceFacts {
  double trace;          // tr(σH) as computed (NaN or ±Inf: no interval)
  double trace_sq;       // tr(H²) as computed
  double trace_sq_high;  // ≥ the exact tr(H²)
  double ws_upper;       // ≥ λ_max(σH)
};

// lower ≤ λ_max(σH) ≤ upper, and what the gradients of both ends are made of (§11.4).
struct RitzCertificate {
  double lower, upper;
  IntervalSource source;
  at::Tensor ritz_values;   // (k,) float64, μ_1 ≥ … ≥ μ_k of σH on Q (NaN where no interval)
  at::Tensor ritz_vectors;  // (k, n) in the problem's dtype, their vectors
  int64_t products;         // Hessian-vector products used
  // For the gradients: the top Ritz vector u (unnormalized), σH·u, uᵀu, θ = uᵀσHu/uᵀu, the
  // Ritz values' certified error ε_T, and whether the basis was orthonormal enough (η < 1/2)
  // for the cap to subtract Ritz values. Undefined/NaN where no interval was computed.
  at::Tensor u, hu;
  double denominator = 0, theta = 0, eps_T = 0;
  bool orthonormal_enough = false;
  // θ's certified upper end and the certified residual ρ ≥ ‖σHû − θû‖ (what Kato-Temple takes),
  // and, where source is KatoTempleWeyl, the smooth value of the λ_2 bound it used.
  double theta_high = 0, rho = 0, nu_value = 0;
  // Where the assembled Hessian gave an end (certify_on_assembled): its top eigenvector z (n,)
  // float64, unit; `lower_from_assembled` where it gave the lower end too.
  at::Tensor assembled_vector;
  bool lower_from_assembled = false;
};

// Kato-Temple on the certificate's top Ritz pair with a bound on λ_2(σH) that the family
// certified itself (e.g. Weyl: λ_2(H) ≤ λ_2(GGN) + λ_max(R), §11.2): `nu_upper` ≥ λ_2(σH),
// `nu_value` the smooth function it rounds up (for the derivatives). Where θ_low − ν > ρ, replaces
// `upper` (and source, KatoTempleWeyl) if smaller; returns whether it did.
bool kato_temple_with_second(RitzCertificate& certificate, double nu_upper, double nu_value);

// Both ends from the assembled Hessian (docs/math.md §11.6): `hessian` the computed n × n H
// (float64, symmetric), `forming_error` ≥ ‖fl(H) − H‖₂, `norm` ≥ ‖H‖_F. The top eigenpair (z, λ)
// of σH by core/dense_eigen.h gives λ_max(σH) ≤ λ + allowance (a Cholesky certificate) and
// λ_max(σH) ≥ zᵀσHz less its rounding; each replaces the certificate's end where tighter (upper:
// source AssembledHessian). Returns whether either did.
bool certify_on_assembled(RitzCertificate& certificate, double sign, const at::Tensor& hessian,
                          double forming_error, double norm);

// Each end of the interval of λ_max(σH) as a smooth function of the parameters with the basis
// held fixed (docs/math.md §11.4), to first order:
//   d(end) = Σ_i ritz[i]·⟨r_i, dH r_i⟩ + image·⟨Hu, dH u⟩ + trace·d tr H + trace_sq·d tr(H²)
//            (+ nu·dν for Kato-Temple with the family's own λ_2 bound ν),
// r_i the certificate's Ritz vectors (u = r_0) and Hu its product `hu`; the forms and traces are
// those of H, not σH. Each family turns this into gradients its own way (one hidden layer: the
// hand-derived reverse pass of the forms; deep networks: autograd through the products).
struct EndDerivative {
  std::vector<double> ritz;  // one coefficient per Ritz vector, 0 where it does not enter
  double image = 0, trace = 0, trace_sq = 0;
  // Source KatoTempleWeyl: the coefficient of dν, the family's own λ_2 bound, whose gradient
  // the family adds (ν's smooth function is the family's).
  double nu = 0;
  // An end from the assembled Hessian: the coefficient of ⟨z, dH z⟩, z the certificate's
  // assembled_vector (the lower end: the Rayleigh quotient of the fixed z; the upper: λ_max(σH)
  // itself, whose derivative is σ⟨z, dH z⟩ where it is simple).
  double assembled = 0;
};
struct EndDerivatives {
  EndDerivative lower, upper;
};
// NaN coefficients where the certificate computed no interval (NaN or ±Inf input).
EndDerivatives end_derivatives(const RitzCertificate& certificate, double sign,
                               const TraceFacts& facts, int64_t num_params);

// The interval of λ_max(σH) from `steps` Lanczos steps (the first rows `start`, else a random
// vector from `seed`), with `products` giving σ-free H·v in float64. `op` names the caller in
// errors.
RitzCertificate certify_top(const SymmetricProducts& products, double sign, const TraceFacts& facts,
                            int64_t steps, const std::optional<at::Tensor>& start, int64_t seed,
                            const at::TensorOptions& options, const char* op);

// Checks the rows a products op is given: floating, (n,) or (k, n), on x's device; `order`
// describes θ's flat order for the message.
void check_directions(const char* op, int64_t n, const at::Device& device,
                      const at::Tensor& vectors, const char* order);

// Checks `steps` and `start` against n (the network's parameter count) and x's device.
void check_steps_and_start(const char* op, int64_t n, const at::Device& device, int64_t steps,
                           const std::optional<at::Tensor>& start);

}  // namespace torch_ws
