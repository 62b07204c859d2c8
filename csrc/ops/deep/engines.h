// The deep family's engines for tr H and tr(H²) (docs/math.md §12.3, §12.7), in one table
// (engines.cpp): each row says what it costs and why it refuses a problem; the automatic choice,
// TORCH_WS_ENGINE (read as for one hidden layer, engines/dispatch.h), the error messages, the
// _deep_engines op and the certified rounding errors all read it. Both engines are ATen: autograd
// differentiates them (every mode, torch.func; in reverse mode through hand-derived nodes where
// docs/math.md §12.4 says), and they run on any device.
#pragma once

#include "core/problem.h"
#include "engines/dispatch.h"  // Engine
#include "core/ritz_certificate.h"
#include "ops/deep/jacobian_chain.h"

#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

namespace torch_ws {

// The engines themselves, on values or magnitudes (jacobian_chain.h); float64 0-d tensors.
//   sample space: Gram forms in N × N feature kernels (gram_forms.cpp), in tiles of rows;
std::pair<at::Tensor, at::Tensor> gram_form_traces(const JacobianChain& chain);
//   or the share of its pairs (i, j) with i in [begin, end) (end < 0: N), in tiles of tile_rows
//   rows i (0: the default, 2²² numbers per (rows, N) matrix): what one rank of dataset_bounds
//   evaluates (tr H's diagonal terms of those samples, tr(H²)'s pairs of those rows).
struct GramShare {
  int64_t begin = 0, end = -1, tile_rows = 0;
};
std::pair<at::Tensor, at::Tensor> gram_form_traces(const JacobianChain& chain, GramShare share);
// On a chain of magnitudes: §12.5's M_tr, and an upper bound on M_sq whose pairs' sums are
// factorised by Cauchy–Schwarz on the feature kernels (docs/math.md §12.5): O(N·H²) for what the
// evaluation on magnitudes would take O(N²·H²). For the share's rows i, as gram_form_traces.
std::pair<at::Tensor, at::Tensor> gram_form_magnitudes(const JacobianChain& magnitudes,
                                                       GramShare share = {});
//   parameter space: the n × n Hessian assembled by blocks (assembled_hessian.cpp).
std::pair<at::Tensor, at::Tensor> assembled_hessian_traces(const JacobianChain& chain);
// The same blocks as one n × n matrix in nn.Sequential.parameters() order, symmetrized.
at::Tensor assembled_hessian(const JacobianChain& chain);
// On a chain of magnitudes: an upper bound on ‖M‖_F, M the blocks of that chain (≥ |terms| of
// every entry), by the triangle inequality over the samples (no block is formed), widened by its
// own rounding.
double assembled_frobenius_bound(const JacobianChain& magnitudes);
// On a chain of magnitudes: §12.7's M_tr (tr H's evaluation on magnitudes) and an upper bound on
// M_sq = ‖M‖²_F (assembled_frobenius_bound squared): O(N·H²), not the assembly's O(N·n²).
std::pair<at::Tensor, at::Tensor> assembled_hessian_magnitudes(const JacobianChain& magnitudes);

// The n × n Hessian of §12.7 (float64, symmetric, in nn.Sequential.parameters() order) and a
// bound on ‖fl(H) − H‖_F ≥ ‖fl(H) − H‖₂ (its entries' certified errors): what the eigenvalue
// intervals certify on (core/ritz_certificate.h certify_on_assembled). `p` in float64; any depth,
// one hidden layer included. With a share [begin, end) of the samples: those samples' terms
// only, with the whole set's loss scale (what the ranks of dataset_bounds all-reduce).
struct AssembledHessian {
  at::Tensor matrix;
  double forming_error;
};
AssembledHessian assemble_hessian(const MlpProblem& p, int64_t begin = 0, int64_t end = -1);

// Where the interval of λ_max(σH) in `certificate` is still wider than 1% and the assembly is
// cheap next to what a user waits for (n ≤ 4096 and N·n² ≤ 2³⁴ multiply-adds, ~0.5 s on 2
// cores), both ends from the assembled Hessian (core/ritz_certificate.h certify_on_assembled);
// `trace_sq_high` ≥ tr(H²) bounds ‖H‖_F. Both families' intervals call it. Returns whether it
// tightened an end.
bool try_assembled_certificate(RitzCertificate& certificate, double sign, const MlpProblem& p,
                               double trace_sq_high);
// Whether try_assembled_certificate would assemble this problem's Hessian (n ≤ 4096,
// N·n² ≤ 2³⁴): shapes only.
bool assembled_certificate_applies(const MlpProblem& p);

// The Lanczos steps of a deep interval called with steps = 0, the automatic count
// (docs/math.md §12.6): 32 where the assembled Hessian certifies the ends anyway; else as many
// as cost about an eighth of the exact traces' work (the chosen engine's row), 32 to 128: beyond
// the assembly the trace cap is what closes the interval, and it tightens with every Ritz value
// it subtracts, while the traces dominate the call. Shapes only (the Meta kernels call it).
int64_t automatic_interval_steps(const MlpProblem& p);

// The engine a deep problem gets: TORCH_WS_ENGINE's, or the one taking it with the least
// weighted work. Reads shapes only (so fake tensors trace it).
Engine choose_deep_engine(const MlpProblem& p);
// Every engine, in words: its name, its cost, whether it takes the problem or why not; the
// automatic choice marked.
std::vector<std::string> describe_deep_engines(const MlpProblem& p);

// tr H and tr(H²) by `engine`, on the coefficients given (values or magnitudes).
std::pair<at::Tensor, at::Tensor> deep_traces_by(Engine engine, const Coefficients& c);
// §12.5's M_tr and M_sq of `engine`'s evaluation (or upper bounds on them), from the coefficients'
// magnitudes.
std::pair<at::Tensor, at::Tensor> deep_magnitudes_by(Engine engine, const Coefficients& magnitudes);

// The longest chain of sums and products behind one computed trace by `engine`, in units of the
// rounding unit (docs/math.md §12.5): what γ of the certified rounding error is made of.
double deep_error_chain(Engine engine, const MlpProblem& p);

}  // namespace torch_ws
