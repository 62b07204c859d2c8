"""Thin, documented Python entry points to the ``torch.ops.torch_ws`` C++ ops."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from . import _functorch

#: Activations the closed form supports (read from the C++ table, csrc/core/activations.h).
ACTIVATIONS = tuple(torch.ops.torch_ws._supported("activation"))
#: Loss reductions, as in the PyTorch losses.
REDUCTIONS = tuple(torch.ops.torch_ws._supported("reduction"))
#: Output losses (the C++ table, csrc/core/losses.h): "bce" is ``BCEWithLogitsLoss`` on
#: ``Linear(H, 1)``, "cross_entropy" ``CrossEntropyLoss`` on ``Linear(H, C)`` with C ≥ 2, "mse"
#: ``MSELoss`` on ``Linear(H, C)`` with C ≥ 1.
LOSSES = tuple(torch.ops.torch_ws._supported("loss"))


def hessian_traces(
    x: Tensor,
    target: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    activation: str = "tanh",
    reduction: str = "mean",
    loss: str = "bce",
) -> tuple[Tensor, Tensor]:
    """Exact (tr H, tr H²) of the loss Hessian with respect to all parameters, in closed form.

    The model is ``Linear(D, H) → activation → Linear(H, C)`` with the loss ``loss``; H is the
    n×n Hessian of that loss with respect to θ = (w1, b1, w2, b2), n = :func:`num_params`.
    tr H is the sum of its eigenvalues, tr H² = ‖H‖_F² the sum of their squares. Two exact
    engines compute them, chosen by arithmetic count (``TORCH_WS_ENGINE`` forces one): pairwise
    sums over N×N Gram-matrix tiles, O(N²(D + H)) time and O(N(D + H) + T²) memory; or, on the
    CPU for small networks (n ≤ 4096) with one logit, the n×n Hessian assembled in closed form,
    O(N·n²) time. Heads of C ≥ 2 logits take the first, with C×C logit blocks per pair of
    samples: O(N²(D + C²H)) time.

    Args:
        x: inputs, (N, D), float32 or float64.
        target: what ``loss`` compares the logits with; must not require grad:

            - ``"bce"``: probabilities in [0, 1] (soft labels allowed), (N,) or (N, 1);
            - ``"cross_entropy"``: class indices (N,) int64 in [0, C), or class probabilities
              (N, C) in [0, 1] (soft labels, label smoothing; rows of any sum, exactly as
              ``F.cross_entropy`` takes them);
            - ``"mse"``: real values (N, C), or (N,) when C = 1.
        w1, b1: ``nn.Linear(D, H)`` weight (H, D) and bias (H,) or ``None`` (no bias parameter).
        w2, b2: ``nn.Linear(H, C)`` weight (C, H) and bias (C,) or ``None``.
        activation: one of :data:`ACTIVATIONS`; for "relu" and "leaky_relu" (slope 0.01) the
            result is that of the almost-everywhere Hessian (docs/math.md §3).
        reduction: ``"mean"`` or ``"sum"``, as in the PyTorch loss (``"mean"`` of ``"mse"``
            divides by N·C, as ``F.mse_loss`` does).
        loss: one of :data:`LOSSES`: ``"bce"`` (``F.binary_cross_entropy_with_logits``, C = 1),
            ``"cross_entropy"`` (``F.cross_entropy``, C ≥ 2) or ``"mse"`` (``F.mse_loss``).

    Returns:
        ``(trace, trace_sq)``, 0-dim tensors of the input dtype, accumulated in float64 and
        differentiable with respect to x, w1, b1, w2 and b2 (once: no double backward).
        NaN inputs give NaN results.
    """
    _check_options("hessian_traces", activation, reduction, loss)
    if _functorch.in_reverse_mode_transform():
        return _functorch.hessian_traces(x, target, w1, b1, w2, b2, activation, reduction, loss)
    return torch.ops.torch_ws.hessian_traces.default(
        x, target, w1, b1, w2, b2, activation, reduction, loss
    )


def _check_options(op: str, activation, reduction, loss) -> None:
    """The string options must be str: PyTorch's argument parser would decode bytes (b"tanh")
    silently, so a caller passing the wrong type would never hear of it."""
    for name, value in (("activation", activation), ("reduction", reduction), ("loss", loss)):
        if not isinstance(value, str):
            raise TypeError(f"torch_ws.{op}: {name} must be a str, got {type(value).__name__} "
                            f"{value!r}")


def ws_bound(
    x: Tensor,
    target: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    activation: str = "tanh",
    reduction: str = "mean",
    loss: str = "bce",
) -> Tensor:
    """Wolkowicz-Styan upper bound λ_sup ≥ λ_max of the loss Hessian, differentiable.

    λ_sup = m + s·√(n−1), where m = tr(H)/n is the mean eigenvalue and
    s = √(tr(H²)/n − m²) their standard deviation (clamped at 0). It is close to
    ‖H‖_F when one eigenvalue dominates, the usual shape of a trained network's Hessian.
    Its gradient (hand-derived, in C++) is the steepest-descent direction toward flatter minima
    used by HSR regularization; at s = 0 the gradient of m is used.

    Arguments are those of :func:`hessian_traces`. Returns a 0-dim tensor of the input dtype.
    """
    _check_options("ws_bound", activation, reduction, loss)
    if _functorch.in_reverse_mode_transform():
        return _functorch.ws_bound(x, target, w1, b1, w2, b2, activation, reduction, loss,
                                   num_params(w1, b1, w2, b2))
    return torch.ops.torch_ws.ws_bound.default(
        x, target, w1, b1, w2, b2, activation, reduction, loss
    )


def ws_bound_batched(
    x: Tensor,
    target: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    activation: str = "tanh",
    reduction: str = "mean",
    loss: str = "bce",
) -> Tensor:
    """:func:`ws_bound` of B networks of one shape on one data set, in one call.

    Model b is ``Linear(D, H) → activation → Linear(H, C)`` with weights ``w1[b]``, ``b1[b]``,
    ``w2[b]``, ``b2[b]``; all share the inputs ``x`` and the ``target``. Result b equals
    ``ws_bound(x, target, w1[b], b1[b], w2[b], b2[b], ...)``: every model runs the single-model
    engine; the batch saves the per-call cost (one dispatch, validation and autograd node for B
    models, and on the CPU the models run in parallel threads). At the papers' scale (N = 200,
    H = 3 or 10) value and gradient of 512 models cost 1.4–2× less per model than 512 calls of
    :func:`ws_bound` on one thread, and 2.6–3.6× less on this 2-core machine's two
    (benchmarks/bench_batched.py); for a single model :func:`ws_bound` is cheaper.

    Args:
        x, target: as in :func:`hessian_traces`, shared by every model.
        w1: (B, H, D); b1: (B, H) or ``None``; w2: (B, C, H); b2: (B, C) or ``None``.
        activation, reduction, loss: as in :func:`hessian_traces`, shared by every model.

    Returns:
        The B bounds, shape (B,), in the input dtype; differentiable (reverse mode, once) with
        respect to x, w1, b1, w2 and b2: ``bounds.sum().backward()`` gives each model's own
        gradient in its slice. Forward mode and torch.func's reverse-mode transforms raise
        (``torch.vmap`` of :func:`ws_bound` over models is their batched form).
    """
    _check_options("ws_bound_batched", activation, reduction, loss)
    if _functorch.in_reverse_mode_transform():
        raise NotImplementedError(
            "torch_ws.ws_bound_batched: torch.func's reverse-mode transforms (grad, vjp, jacrev) "
            "are not supported; differentiate it with torch.autograd (backward or "
            "torch.autograd.grad), or use torch.func.vmap over torch_ws.ws_bound"
        )
    return torch.ops.torch_ws.ws_bound_batched.default(
        x, target, w1, b1, w2, b2, activation, reduction, loss
    )


def num_params(w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor]) -> int:
    """n = H·D + H·[b1] + C·H + C·[b2]: the number of parameters, i.e. the Hessian's size.

    ``w1`` is (H, D), ``w2`` is (C, H); a ``None`` bias is a parameter that does not exist."""
    if w1.dim() != 2 or w2.dim() != 2:
        raise ValueError(
            f"num_params: expected w1 (H, D) and w2 (C, H), got shapes {tuple(w1.shape)} and "
            f"{tuple(w2.shape)}"
        )
    hidden, in_dim = w1.shape
    return torch.ops.torch_ws._num_params(in_dim, hidden, w2.shape[0], b1 is not None, b2 is not None)


def explicit_hessian(x: Tensor, target: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
                     b2: Optional[Tensor], activation: str = "tanh", reduction: str = "mean",
                     loss: str = "bce") -> Tensor:
    """The n×n loss Hessian itself, for small networks: assembled in closed form in C++
    (docs/math.md §3, §8.5), O(N·C·n²) time and O(n²) float64 memory, every head.

    Rows and columns follow θ = (W1 row-major, b1, W2 row-major, b2) (``torch_ws.model.
    flatten_params``). Not differentiable (the result is detached): for a bound's gradient use
    :func:`ws_bound` or :func:`spectral_bound`. Arguments as for :func:`hessian_traces`.

    Returns:
        (n, n) float64 tensor on x's device.
    """
    return torch.ops.torch_ws._hessian.default(
        x.detach(), target.detach(), w1.detach(), _detached(b1), w2.detach(), _detached(b2),
        activation, reduction, loss)


def _detached(t: Optional[Tensor]) -> Optional[Tensor]:
    return t.detach() if t is not None else None


class WSBounds(NamedTuple):
    """All Wolkowicz-Styan bounds on the loss Hessian's spectrum (docs/math.md §5).

    ``lambda_max_lower ≤ λ_max ≤ lambda_max_upper``, ``lambda_min_lower ≤ λ_min ≤
    lambda_min_upper`` and ``λ_max − λ_min ≤ spread_upper``; ``trace`` = tr H,
    ``trace_sq`` = tr H², ``num_params`` = n.
    """

    lambda_max_upper: Tensor
    lambda_max_lower: Tensor
    lambda_min_lower: Tensor
    lambda_min_upper: Tensor
    spread_upper: Tensor
    trace: Tensor
    trace_sq: Tensor
    num_params: int


def ws_bounds(
    x: Tensor,
    target: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    activation: str = "tanh",
    reduction: str = "mean",
    loss: str = "bce",
) -> WSBounds:
    """Every Wolkowicz-Styan bound on the extreme eigenvalues of the loss Hessian.

    With m = tr(H)/n and s = √(tr(H²)/n − m²):
    m + s/√(n−1) ≤ λ_max ≤ m + s√(n−1),  m − s√(n−1) ≤ λ_min ≤ m − s/√(n−1),
    λ_max − λ_min ≤ s√(2n). Arguments are those of :func:`hessian_traces`; every field is
    differentiable (through the traces' C++ backward), computed in float64 and returned in the
    input dtype.
    """
    trace, trace_sq = hessian_traces(x, target, w1, b1, w2, b2, activation, reduction, loss)
    n = num_params(w1, b1, w2, b2)
    bound_trace, bound_trace_sq = trace, trace_sq
    if _float32_underflow_risk(x, trace_sq):
        # Traces too small for float32 (a saturated network): the bounds from the float64 traces
        # of the same values, as ws_bound's are, still rounded outward to float32 (issue 30: the
        # float32 traces rounded to 0 and every bound with them).
        def wide(t):
            return t.double() if t is not None and t.is_floating_point() else t

        bound_trace, bound_trace_sq = hessian_traces(
            wide(x), wide(target), wide(w1), wide(b1), wide(w2), wide(b2), activation, reduction,
            loss)
    bounds = torch.ops.torch_ws._ws_bounds_from_traces(bound_trace, bound_trace_sq, n, x.dtype)
    return WSBounds(*bounds, trace=trace, trace_sq=trace_sq, num_params=n)


#: Below this tr(H²) a float32 evaluation may have lost terms to underflow (the same threshold as
#: the C++ engines' float64 re-evaluation, csrc/engines/dispatch.cpp).
_FLOAT32_UNDERFLOW_RISK = 2.0 ** -60


def _float32_underflow_risk(x: Tensor, trace_sq: Tensor) -> bool:
    # Read only where the value can be read: a plain CPU tensor, outside tracing and functorch.
    if x.dtype != torch.float32 or type(trace_sq) is not torch.Tensor:
        return False
    if trace_sq.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(trace_sq):
        return False
    value = float(trace_sq.detach())
    return value == value and value < _FLOAT32_UNDERFLOW_RISK


class SpectralBound(NamedTuple):
    """The spectral bound on the loss Hessian's extreme eigenvalues (docs/math.md §9).

    ``upper ≥ λ_max`` and ``lambda_min_lower ≤ λ_min`` are guarantees; the other fields are the
    parts and diagnostics they come from.
    """

    #: min(λ_max(GGN) + λ_max(R), Wolkowicz-Styan), widened by the rounding allowance and
    #: rounded up: a guaranteed upper bound on λ_max(H).
    upper: Tensor
    #: λ_max of the Gauss-Newton part Σ_i J_iᵀ S_i J_i (exact; where N·C > 16384 and n > 4096
    #: the top Ritz value of Lanczos on its products, within the certificate's width of it).
    ggn_lambda_max: Tensor
    #: λ_max of the residual part R = Σ_i e_i·∇²z_i (exact, ≥ 0).
    residual_lambda_max: Tensor
    #: λ_min(R), widened and rounded down: a guaranteed lower bound on λ_min(H) (GGN ⪰ 0).
    lambda_min_lower: Tensor
    #: ‖Mv − λv‖ of the Gauss-Newton eigenpair (the eigensolver's residual; where N·C > 16384
    #: ‖GGN·u − λu‖ of the unit vector u in parameter space; not differentiable).
    residual: Tensor
    #: Lanczos steps for the Gauss-Newton part (int64; 0: the dense eigensolver).
    iterations: Tensor


def spectral_bound(
    x: Tensor,
    target: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    activation: str = "tanh",
    reduction: str = "mean",
    loss: str = "bce",
) -> SpectralBound:
    """A guaranteed upper bound on λ_max of the loss Hessian that stays tight at large n.

    The Hessian splits as H = GGN + R: the Gauss-Newton part GGN = Σ_i J_iᵀ S_i J_i (J_i the
    Jacobian of sample i's logits, S_i the loss Hessian in them) and the residual
    R = Σ_i Σ_c e_ic ∇²z_ic (e_i the loss gradient in the logits). By Weyl's inequality
    λ_max(H) ≤ λ_max(GGN) + λ_max(R), and both parts are computed exactly:

    - λ_max(GGN) is the top eigenvalue of the N·C × N·C dual matrix J̃J̃ᵀ (J̃_i = L_iᵀJ_i with
      S_i = L_iL_iᵀ), whose entries are closed forms in the Gram matrices of the inputs and of
      the hidden features. Up to 512 rows a dense ``eigh`` solves it; above, Lanczos finds the
      top eigenpair and a Cholesky factorization of τI − J̃J̃ᵀ *certifies* the bound τ (it is
      never an unchecked estimate). Above 16384 rows the matrix (2 GiB) is never formed: the
      Gauss-Newton matrix in parameter space takes its place, formed from its closed-form
      products where n ≤ 4096, else by Lanczos on them, certified by its own exact traces (the
      trace cap, then Kato-Temple; docs/math.md §9.2 "Without the dual matrix"); the field is
      then the top Ritz value.
    - R is block-diagonal over hidden units: H blocks of size D + [b1] + C, each solved by
      ``eigh``. λ_min(R) ≤ λ_min(H) because GGN is positive semi-definite: a guaranteed lower
      bound on the most negative curvature (saddle points measured, not estimated).

    ``upper`` is the smaller of this sum and :func:`ws_bound` (both are guarantees), widened by
    the computation's rounding allowance. Everything is computed in float64 whatever the inputs'
    dtype. Cost: O(N²(D + H)) to form the dual matrix plus its eigenproblem (O(N³) dense, a few
    hundred matrix-vector products and one O(N³/3) Cholesky factorization above 512 rows), and
    O(H·N·D²) for R's blocks; the gradient is O(N·H·(D + C)).

    Arguments are those of :func:`hessian_traces`. Returns a :class:`SpectralBound`.
    ``upper``, ``ggn_lambda_max``, ``residual_lambda_max`` and ``lambda_min_lower`` are
    differentiable (reverse mode, once) with respect to x, w1, b1, w2 and b2: the gradient of
    a simple eigenvalue is that of its eigenvector's Rayleigh quotient; where the top eigenvalue
    is repeated it is the gradient along the eigenvector the solver returned (a supergradient
    of the convex λ_max in the matrix). ``upper``'s is that of whichever bound gave it.
    torch.func.grad, vjp and jacrev give the same gradients (``vmap(grad(f))`` one call per
    entry); forward mode raises; plain ``torch.vmap`` runs one call per entry.
    """
    _check_options("spectral_bound", activation, reduction, loss)
    if _functorch.in_reverse_mode_transform():
        return SpectralBound(*_functorch.spectral_bound(x, target, w1, b1, w2, b2, activation,
                                                        reduction, loss))
    return SpectralBound(*torch.ops.torch_ws.spectral_bound.default(
        x, target, w1, b1, w2, b2, activation, reduction, loss
    ))


def hessian_vector_products(x: Tensor, target: Tensor, w1: Tensor, b1: Optional[Tensor],
                            w2: Tensor, b2: Optional[Tensor], vectors: Tensor,
                            activation: str = "tanh", reduction: str = "mean",
                            loss: str = "bce") -> Tensor:
    """H·v for each row v of ``vectors``, in closed form in C++ (docs/math.md §11.1).

    The forward-over-reverse of the network written out as matrix products: O(N·(D + C)·H) per
    vector and k vectors at once, never an n×n, N×N or (N·C)² array. θ follows the flat order
    (W1 row-major, b1, W2 row-major, b2) of ``torch_ws.model.flatten_params``. Not
    differentiable (the result is detached). Other arguments as for :func:`hessian_traces`.

    Args:
        vectors: (n,) or (k, n), any floating dtype, on x's device.

    Returns:
        H·v in ``vectors``' shape and x's dtype (bfloat16/float16 computed in float32).
    """
    return torch.ops.torch_ws.hessian_vector_products.default(
        x.detach(), target.detach(), w1.detach(), _detached(b1), w2.detach(), _detached(b2),
        vectors.detach(), activation, reduction, loss)


#: What gave an interval's outer bound (docs/math.md §11.2): the Wolkowicz-Styan bound of the
#: traces, the trace cap (interlacing), Kato-Temple on the top Ritz pair (λ_2 bounded by the
#: cap), Weyl's sum of the Gauss-Newton and residual parts (spectral_bound), or Kato-Temple with
#: λ_2 bounded by Weyl, λ_2(GGN) + λ_max(R) (the last two tried up to N·C = 2048 dual rows).
INTERVAL_SOURCES = (
    "wolkowicz_styan", "trace_cap", "kato_temple", "weyl", "kato_temple_weyl", "assembled_hessian")


class EigenvalueInterval(NamedTuple):
    """A certified interval on an extreme eigenvalue of the loss Hessian (docs/math.md §11).

    ``lower ≤ λ ≤ upper`` holds for the computed numbers (every rounding error bounded, §11.3),
    both in x's dtype and rounded outward. For λ_max, ``lower`` is a Rayleigh quotient and
    ``upper`` the smallest of the guarantees named by ``source`` (one of
    :data:`INTERVAL_SOURCES`); for λ_min the roles are mirrored. ``ritz_values`` (k,) float64
    are the Rayleigh-Ritz values, the extreme one first, and ``ritz_vectors`` (k, n) float64
    their vectors: pass them as ``start`` to the next call to track the eigenvalue during
    training. ``products`` counts the Hessian-vector products used.
    """

    lower: Tensor
    upper: Tensor
    source: str
    ritz_values: Tensor
    ritz_vectors: Tensor
    products: int

    def __repr__(self) -> str:
        # The ends in full; the Ritz values and vectors (k and k × n numbers) summarized, so that
        # printing a result (or a Sharpness holding one) stays readable.
        values = self.ritz_values
        shown = ", ".join(f"{float(v):.4g}" for v in values[:3])
        more = f", … ({values.numel()} values)" if values.numel() > 3 else ""
        return (f"EigenvalueInterval(lower={self.lower!r}, upper={self.upper!r}, "
                f"source={self.source!r}, products={self.products}, "
                f"ritz_values=[{shown}{more}], "
                f"ritz_vectors=<{tuple(self.ritz_vectors.shape)} {self.ritz_vectors.dtype}>)")


def _eigenvalue_interval(largest: bool, x, target, w1, b1, w2, b2, activation, reduction, loss,
                         steps, start, seed) -> EigenvalueInterval:
    if _functorch.in_transform():
        # torch.func: reverse-mode transforms through a Python Function (functorch cannot run
        # the C++ one); the rest refused with clear errors.
        outputs = _functorch.eigenvalue_interval(x, target, w1, b1, w2, b2, activation,
                                                 reduction, loss, largest, steps,
                                                 _detached(start), seed)
    else:
        outputs = torch.ops.torch_ws.eigenvalue_interval.default(
            x, target, w1, b1, w2, b2, activation, reduction, loss, largest, steps,
            _detached(start), seed)
    lower, upper, source, values, vectors, products = outputs
    return EigenvalueInterval(lower, upper, INTERVAL_SOURCES[int(source)], values, vectors,
                              int(products))


def lambda_max_interval(x: Tensor, target: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
                        b2: Optional[Tensor], activation: str = "tanh", reduction: str = "mean",
                        loss: str = "bce", *, steps: int = 32, start: Optional[Tensor] = None,
                        seed: int = 0) -> EigenvalueInterval:
    """A certified interval ``lower ≤ λ_max(H) ≤ upper`` (docs/math.md §11).

    ``steps`` Lanczos steps (full reorthogonalization) on closed-form Hessian-vector products
    build a basis Q; Rayleigh-Ritz on it gives the lower bound (the top Ritz vector's Rayleigh
    quotient, recomputed and certified) and, with the exact tr(H²), the trace cap: by
    interlacing, λ_max² ≤ tr(H²) − Σ of the other Ritz values' squares. Where the cap certifies
    that λ_2 lies below the top Ritz value minus its residual, Kato-Temple closes the interval
    to the residual's square. Where the interval is still wider than 1% and N·C ≤ 2048, the
    spectral parts (:func:`spectral_bound`) join: Weyl's λ_2(GGN) + λ_max(R) ≥ λ_2 for
    Kato-Temple (source ``"kato_temple_weyl"``), and λ_max(GGN) + λ_max(R) itself (``"weyl"``).
    ``upper`` is the smallest of these and the Wolkowicz-Styan bound. The interval is tight when
    the top eigenvalue stands out of a light bulk, or the top two are GGN's and certified apart
    (trained networks); on networks with a heavy bulk it stays at Weyl's or the cap's, except
    where n is small (n ≤ 4096, N·n² ≤ 2³⁴): there, if still wider than 1%, both ends come
    from the Hessian assembled in closed form (source ``"assembled_hessian"``, docs/math.md
    §11.6; its top eigenvalue certified by a Cholesky factorization, no gap needed).
    Computed in float64 whatever x's dtype. Differentiable in x and the parameters: with the
    basis held fixed both ends are smooth functions of them that stay bounds (docs/math.md
    §11.4), as is the deep networks' (:func:`torch_ws.deep_lambda_max_interval`); by backward
    or torch.func.grad, vjp and jacrev, once (forward mode and vmap raise).

    Args:
        x, target, w1, b1, w2, b2, activation, reduction, loss: as for :func:`hessian_traces`.
        steps: Lanczos steps ≥ 1 (capped at n), one Hessian-vector product each (plus one to
            certify the top Ritz pair).
        start: (n,) or (r, n), e.g. the ``ritz_vectors`` of the previous call (a warm start;
            the guarantee does not depend on it): the first min(r, steps) basis vectors are its
            rows (orthonormalized), the rest Krylov directions from them. Default: a random
            vector from ``seed``.
        seed: the seed of the random start (and of restarts when the Krylov space closes).
    """
    return _eigenvalue_interval(True, x, target, w1, b1, w2, b2, activation, reduction, loss,
                                steps, start, seed)


def lambda_min_interval(x: Tensor, target: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
                        b2: Optional[Tensor], activation: str = "tanh", reduction: str = "mean",
                        loss: str = "bce", *, steps: int = 32, start: Optional[Tensor] = None,
                        seed: int = 0) -> EigenvalueInterval:
    """A certified interval ``lower ≤ λ_min(H) ≤ upper``: :func:`lambda_max_interval` of −H
    (``upper`` is the bottom Ritz value, ``lower`` the guarantee named by ``source``)."""
    return _eigenvalue_interval(False, x, target, w1, b1, w2, b2, activation, reduction, loss,
                                steps, start, seed)
