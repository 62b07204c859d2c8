// Forward: per-sample features, tr H, the whole-matrix pairwise engine, and the forward kernels.
#include "traces.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <cstdlib>
#include <string>

namespace torch_ws {

SampleFeatures sample_features(const MlpProblem& p, bool for_backward) {
  SampleFeatures f;
  f.x = p.x.contiguous();
  const at::Tensor& w2 = p.w2;  // (H,)
  // A = X W1ᵀ + b1, then φ and its derivatives (φ''' only for the backward's chain through Φ2).
  at::Tensor pre = p.b1 ? at::addmm(*p.b1, f.x, p.w1.t()) : at::mm(f.x, p.w1.t());
  ActivationValues<at::Tensor> act = activation_values(p.activation, pre, for_backward ? 3 : 2);
  f.phi0 = act.phi0.contiguous();
  f.phi1 = act.phi1.contiguous();
  f.phi2 = act.phi2.contiguous();
  f.phi3 = act.phi3;
  f.U = f.phi1 * w2;
  f.V = f.phi2 * w2;
  // z = Φ0 w2ᵀ + b2; s and e are the loss's second and first derivatives in the logit.
  at::Tensor z = at::mv(f.phi0, w2);
  if (p.b2) z = z + *p.b2;
  f.scale = p.reduction == Reduction::Mean ? 1.0 / static_cast<double>(p.num_samples()) : 1.0;
  LogitTerms<at::Tensor> logit = logit_terms(z, p.target, f.scale);
  f.y = logit.y;
  f.s = logit.s;
  f.e = logit.e;
  f.has_b1 = p.b1.has_value();
  f.has_b2 = p.b2.has_value();
  return f;
}

Diagonals diagonals(const SampleFeatures& f) {
  return {(f.x * f.x).sum(1) + (f.has_b1 ? 1 : 0), (f.U * f.U).sum(1),
          (f.phi0 * f.phi0).sum(1) + (f.has_b2 ? 1 : 0), f.V.sum(1)};
}

at::Tensor trace_float64(const SampleFeatures& f, const Diagonals& d) {
  return (f.s * (d.k * d.q + d.r) + f.e * d.k * d.v).sum(at::kDouble);
}

at::Tensor TraceSqAdjoints::pack() const {
  return at::cat({U, V, phi0, phi1, x, s.unsqueeze(1), e.unsqueeze(1)}, 1);
}

TraceSqAdjoints TraceSqAdjoints::unpack(const at::Tensor& packed, int64_t hidden, int64_t in_dim) {
  TORCH_CHECK(packed.dim() == 2 && packed.size(1) == 4 * hidden + in_dim + 2,
              "torch_ws: saved tr(H²) adjoints of shape ", packed.sizes(),
              " do not match H = ", hidden, ", D = ", in_dim);
  auto cols = [&](int64_t start, int64_t width) { return packed.narrow(1, start, width); };
  const int64_t h = hidden;
  return {cols(0, h), cols(h, h), cols(2 * h, h), cols(3 * h, h), cols(4 * h, in_dim),
          packed.select(1, 4 * h + in_dim), packed.select(1, 4 * h + in_dim + 1)};
}

PairwiseResult pairwise_whole(const SampleFeatures& f, bool with_adjoints) {
  // Gram matrices (math.md §2) and the residual terms of tr(H²) (§4), all N×N.
  at::Tensor K = at::mm(f.x, f.x.t());
  if (f.has_b1) K.add_(1);
  at::Tensor Q = at::mm(f.U, f.U.t());
  at::Tensor R = at::mm(f.phi0, f.phi0.t());
  if (f.has_b2) R.add_(1);
  at::Tensor G = K * Q + R;
  at::Tensor UU = f.U * f.U, Uphi0 = f.U * f.phi0;
  at::Tensor P1 = at::mm(UU, f.V.t()), P2 = at::mm(Uphi0, f.phi1.t());
  at::Tensor P3 = at::mm(f.V, f.V.t()), P4 = at::mm(f.phi1, f.phi1.t());
  at::Tensor KK = K * K;
  at::Tensor B = KK * P1 + 2 * K * P2;
  at::Tensor C = KK * P3 + 2 * K * P4;

  // tr(H²) = sᵀ(G∘G)s + 2sᵀBe + eᵀCe, summed entry by entry in float64.
  at::Tensor s_col = f.s.unsqueeze(1), s_row = f.s.unsqueeze(0);
  at::Tensor e_col = f.e.unsqueeze(1), e_row = f.e.unsqueeze(0);
  PairwiseResult out;
  out.trace_sq = (s_col * (G * G * s_row + 2 * B * e_row) + e_col * C * e_row).sum(at::kDouble);
  if (!with_adjoints) return out;

  // Reverse mode through the lines above (math.md §6), upstream gradient 1.
  TraceSqAdjoints a;
  a.s = 2 * (at::mv(G * G, f.s) + at::mv(B, f.e));
  a.e = 2 * (at::mv(B.t(), f.s) + at::mv(C, f.e));  // C is symmetric
  at::Tensor G_bar = 2 * (s_col * G * s_row);          // symmetric
  at::Tensor B_bar = 2 * (s_col * e_row);              // not symmetric
  at::Tensor C_bar = e_col * e_row;                    // symmetric
  // G = K∘Q + R;  B = KK∘P1 + 2K∘P2;  C = KK∘P3 + 2K∘P4.
  at::Tensor K_bar = G_bar * Q + 2 * B_bar * (K * P1 + P2) + 2 * C_bar * (K * P3 + P4);
  at::Tensor Q_bar = G_bar * K;                  // symmetric
  at::Tensor P1_bar = B_bar * KK, P2_bar = 2 * B_bar * K;
  at::Tensor P3_bar = C_bar * KK, P4_bar = 2 * C_bar * K;  // symmetric
  // Each Gram product P = L Rᵀ sends back L̄ = P̄R and R̄ = P̄ᵀL.
  at::Tensor P2_bar_phi1 = at::mm(P2_bar, f.phi1);
  a.U = 2 * at::mm(Q_bar, f.U) + 2 * f.U * at::mm(P1_bar, f.V) + f.phi0 * P2_bar_phi1;
  a.V = at::mm(P1_bar.t(), UU) + 2 * at::mm(P3_bar, f.V);
  a.phi0 = 2 * at::mm(G_bar, f.phi0) + f.U * P2_bar_phi1;  // R̄ = Ḡ
  a.phi1 = at::mm(P2_bar.t(), Uphi0) + 2 * at::mm(P4_bar, f.phi1);
  a.x = at::mm(K_bar + K_bar.t(), f.x);
  out.adjoints = std::move(a);
  return out;
}

int64_t tile_setting() {
  const char* env = std::getenv("TORCH_WS_TILE_SIZE");
  const std::string value = env ? env : "";
  if (value.empty() || value == "0" || value == "auto") return kAutoTile;
  if (value == "whole") return kWholeMatrices;
  int64_t tile = 0;
  try {
    tile = std::stoll(value);
  } catch (const std::exception&) {
  }
  TORCH_CHECK(tile > 0, "torch_ws: TORCH_WS_TILE_SIZE must be a positive integer, 'auto' or "
              "'whole', got '", value, "'");
  return tile;
}

namespace {

int64_t tile_size_from(int64_t num_samples, int64_t setting) {
  if (setting > 0) return setting;
  // One tile (no per-tile overhead) for small problems; otherwise tiles whose dozen T×T work
  // arrays stay cache-sized while their T×T×H products still run near the BLAS peak.
  constexpr int64_t kSingleTileLimit = 512, kTile = 256;
  return num_samples <= kSingleTileLimit ? num_samples : kTile;
}

}  // namespace

int64_t tile_size_for(int64_t num_samples) {
  return tile_size_from(num_samples, tile_setting());
}

PairwiseResult pairwise_trace_sq(const SampleFeatures& f, bool with_adjoints) {
  const int64_t setting = tile_setting();
  if (f.x.is_cpu() && setting != kWholeMatrices) {
    return pairwise_tiled_cpu(f, with_adjoints, tile_size_from(f.x.size(0), setting));
  }
  return pairwise_whole(f, with_adjoints);
}

namespace {

// The traces of a checked problem, float64, and (optionally) the adjoints of tr(H²).
struct TracesResult {
  at::Tensor trace, trace_sq;
  std::optional<TraceSqAdjoints> adjoints;
};

TracesResult traces(const MlpProblem& p, bool with_adjoints) {
  if (!with_adjoints && engine_for(p.x, p.w1, p.b1.has_value(), p.b2.has_value()) ==
                            Engine::ParameterSpace) {
    HessianResult r = hessian_cpu(p);
    auto scalar = [&](double v) { return at::scalar_tensor(v, r.hessian.options()); };
    return {scalar(r.trace), scalar(r.trace_sq), std::nullopt};
  }
  SampleFeatures f = sample_features(p, /*for_backward=*/false);
  PairwiseResult pairwise = pairwise_trace_sq(f, with_adjoints);
  return {trace_float64(f, diagonals(f)), pairwise.trace_sq, std::move(pairwise.adjoints)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> hessian_traces_kernel(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction) {
  MlpProblem p = check_problem("torch_ws.hessian_traces", x, target, w1, b1, w2, b2, activation,
                               reduction);
  TracesResult t = traces(p, /*with_adjoints=*/false);
  return {t.trace.to(x.scalar_type()), t.trace_sq.to(x.scalar_type())};
}

at::Tensor ws_bound_kernel(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                           const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                           const std::optional<at::Tensor>& b2, c10::string_view activation,
                           c10::string_view reduction) {
  MlpProblem p =
      check_problem("torch_ws.ws_bound", x, target, w1, b1, w2, b2, activation, reduction);
  TracesResult t = traces(p, /*with_adjoints=*/false);
  return ws_upper_bound(t.trace, t.trace_sq, p.num_params()).to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_with_adjoints_kernel(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction) {
  MlpProblem p =
      check_problem("torch_ws", x, target, w1, b1, w2, b2, activation, reduction);
  TracesResult t = traces(p, /*with_adjoints=*/true);
  at::Tensor bound = ws_upper_bound(t.trace, t.trace_sq, p.num_params());
  return {bound.to(x.scalar_type()), t.trace, t.trace_sq, t.adjoints->pack()};
}

}  // namespace torch_ws
