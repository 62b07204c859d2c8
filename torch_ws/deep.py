"""Networks with several hidden layers: exact tr H, tr(H²) and the Wolkowicz-Styan bounds
(docs/math.md §12), from the C++ op ``torch.ops.torch_ws.deep_hessian_traces``.

What is there so far (issue 29): the traces and bounds, differentiable in every layer and in x
(by autograd through the op's ATen kernel, not a hand-derived backward), for every loss,
activation, reduction and bias setting, float32 and float64, on any device; HSRRegularizer
takes such a network with bound="ws"; closed-form Hessian-vector products and the certified
interval on λ_max and λ_min (§12.6, differentiable by autograd through the products and traces
with the basis held fixed), which ``torch_ws.sharpness`` uses for deep networks and
``HSRRegularizer(bound="interval")`` penalizes; ``torch_ws.dataset_bounds`` (over
torch.distributed: the work split over the ranks by either engine). Two engines, chosen per
call: the Gram forms (§12.3, in tiles of rows, checkpointed in reverse mode: §12.4) and, for
small n, the Hessian assembled by blocks (§12.7). Not yet: a hand-derived backward, the
spectral bound.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .model import (_check_plain_linear, activation_name, loss_options, sequential_misfit,
                    unwrap_model)
from ._functorch import differentiation_levels, refuse_vmap
from .ops import INTERVAL_SOURCES, EigenvalueInterval, WSBounds


def _bias_list(weights: Sequence[Tensor], biases: Optional[Sequence[Optional[Tensor]]]):
    return [None] * len(weights) if biases is None else list(biases)


def deep_num_params(weights: Sequence[Tensor], biases: Optional[Sequence[Optional[Tensor]]] = None
                    ) -> int:
    """n = Σ_l (out_l·in_l + [b_l]·out_l): the number of parameters, the Hessian's size."""
    return sum(w.numel() + (b.numel() if b is not None else 0)
               for w, b in zip(weights, _bias_list(weights, biases)))


def deep_hessian_traces(
    x: Tensor,
    target: Tensor,
    weights: Sequence[Tensor],
    biases: Optional[Sequence[Optional[Tensor]]] = None,
    activation: str = "tanh",
    reduction: str = "mean",
    loss: str = "bce",
) -> tuple[Tensor, Tensor]:
    """Exact (tr H, tr H²) of the loss Hessian of ``Linear → φ → … → Linear`` in closed form.

    The network is ``nn.Sequential(nn.Linear(D, H_1), φ, nn.Linear(H_1, H_2), φ, …,
    nn.Linear(H_L, C))``: L ≥ 1 hidden layers of any widths, one activation φ for all of them.
    H is the n×n Hessian of the loss with respect to every weight and bias,
    n = :func:`deep_num_params`. Computed by one of two engines, whichever needs less work
    (``torch.ops.torch_ws._deep_engines`` lists them; ``TORCH_WS_ENGINE`` forces one): the Gram
    forms of docs/math.md §12.3, per-sample Jacobians between layers (N·L²·H² numbers) and N×N
    Gram matrices, O(N·L³H³ + N²·L²H²) time, never the n×n Hessian; or, for n ≤ 12,288, the
    Hessian assembled by blocks of layers (§12.7), O(N·n²) time. Differentiable (autograd through
    the op's ATen kernel, which keeps the engine's intermediates for the backward).

    Args:
        x: inputs (N, D), float32 or float64.
        target: as for :func:`torch_ws.hessian_traces` (probabilities for "bce", class indices
            or class probabilities for "cross_entropy", values for "mse").
        weights: the L + 1 ``nn.Linear`` weights, (H_1, D), (H_2, H_1), …, (C, H_L).
        biases: ``None`` (no layer has a bias) or one entry per layer, ``None`` where a layer has
            none.
        activation, reduction, loss: as for :func:`torch_ws.hessian_traces`.

    Returns:
        (tr H, tr H²) as 0-d tensors in x's dtype (summed in float64).
    """
    refuse_vmap("torch_ws.deep_hessian_traces")
    return torch.ops.torch_ws.deep_hessian_traces(
        x, target, list(weights), _bias_list(weights, biases), activation, reduction, loss)


def deep_ws_bounds(
    x: Tensor,
    target: Tensor,
    weights: Sequence[Tensor],
    biases: Optional[Sequence[Optional[Tensor]]] = None,
    activation: str = "tanh",
    reduction: str = "mean",
    loss: str = "bce",
) -> WSBounds:
    """Every Wolkowicz-Styan bound on the extreme eigenvalues of a deep MLP's loss Hessian, from
    :func:`deep_hessian_traces` (arguments as there), rounded outward as :func:`torch_ws.ws_bounds`
    does for one hidden layer, and widened by the allowance of docs/math.md §5.1 plus a certified
    bound on the traces' own rounding error (§12.5: the Gram forms sum terms of both signs, so
    their error is measured against the sum of the terms' magnitudes, evaluated by a second pass
    on magnitudes). The bounds come from the float64 traces (the op's precision), so a float32
    network's traces below float32's range lose nothing; every field is differentiable."""
    refuse_vmap("torch_ws.deep_ws_bounds")
    *bounds, trace, trace_sq = torch.ops.torch_ws.deep_ws_bounds(
        x, target, list(weights), _bias_list(weights, biases), activation, reduction, loss)
    n = deep_num_params(weights, biases)
    return WSBounds(*bounds, trace=trace, trace_sq=trace_sq, num_params=n)


def _detached_list(tensors: Sequence[Optional[Tensor]]) -> list:
    return [t.detach() if t is not None else None for t in tensors]


def deep_hessian_vector_products(
    x: Tensor,
    target: Tensor,
    weights: Sequence[Tensor],
    biases: Optional[Sequence[Optional[Tensor]]],
    vectors: Tensor,
    activation: str = "tanh",
    reduction: str = "mean",
    loss: str = "bce",
) -> Tensor:
    """H·v for each row v of ``vectors``, in closed form in C++ (docs/math.md §12.6), for the
    deep MLP of :func:`deep_hessian_traces` (arguments as there).

    The forward-over-reverse of the network written out as matrix products: O(N·n) per vector
    and k vectors at once, never an n×n, N×N or (N·C)² array. θ is the network's parameters in
    ``nn.Sequential.parameters()`` order (W_1 row-major, b_1, W_2 row-major, b_2, …). Not
    differentiable (the inputs are detached).

    Args:
        vectors: (n,) or (k, n), any floating dtype, on x's device; n = :func:`deep_num_params`.

    Returns:
        H·v in ``vectors``' shape and x's dtype.
    """
    refuse_vmap("torch_ws.deep_hessian_vector_products",
                "pass the vectors as the rows of one (k, n) tensor")
    return torch.ops.torch_ws.deep_hessian_vector_products(
        x.detach(), target.detach(), _detached_list(weights),
        _detached_list(_bias_list(weights, biases)), vectors.detach(), activation, reduction, loss)


def _deep_interval(largest: bool, x, target, weights, biases, activation, reduction, loss, steps,
                   start, seed) -> tuple[EigenvalueInterval, Tensor, Tensor]:
    """The interval, and the exact (tr H, tr H²) its certificate used (what sharpness reports)."""
    # Its ends are differentiable once (docs/math.md §11.4: the first-order description of each
    # end is exact, its second order is not the end's). Nested torch.func transforms would run the
    # recorded forms through autograd twice and return a wrong second derivative: refused.
    if differentiation_levels() >= 2:
        raise RuntimeError("torch_ws.deep_eigenvalue_interval: second derivatives of the "
                           "interval's ends (torch.func.hessian, grad of grad, jacfwd of "
                           "jacrev) are not supported: they are differentiable once")
    refuse_vmap("torch_ws.deep_lambda_max_interval" if largest
                else "torch_ws.deep_lambda_min_interval")
    (lower, upper, source, values, vectors, products, trace,
     trace_sq) = torch.ops.torch_ws.deep_eigenvalue_interval(
        x, target, list(weights), _bias_list(weights, biases), activation, reduction, loss,
        largest, 0 if steps is None else steps, start, seed)
    interval = EigenvalueInterval(lower, upper, INTERVAL_SOURCES[int(source)], values, vectors,
                                  int(products))
    return interval, trace, trace_sq


def deep_lambda_max_interval(
    x: Tensor,
    target: Tensor,
    weights: Sequence[Tensor],
    biases: Optional[Sequence[Optional[Tensor]]] = None,
    activation: str = "tanh",
    reduction: str = "mean",
    loss: str = "bce",
    *,
    steps: Optional[int] = None,
    start: Optional[Tensor] = None,
    seed: int = 0,
) -> EigenvalueInterval:
    """A certified interval ``lower ≤ λ_max(H) ≤ upper`` for a deep MLP (docs/math.md §12.6).

    The certificate of :func:`torch_ws.lambda_max_interval` (Lanczos with full
    reorthogonalization on :func:`deep_hessian_vector_products`, Rayleigh-Ritz, the trace cap from
    the exact tr(H²) of :func:`deep_hessian_traces` plus its certified rounding error, then
    Kato-Temple), every rounding error bounded; ``upper`` is the smallest of these and the
    Wolkowicz-Styan bound (``source`` says which; Weyl is not available for deep networks).
    Where n is small (n ≤ 4096, N·n² ≤ 2³⁴) and the interval is still wider than 1%, both ends
    come from the Hessian assembled in closed form (source ``"assembled_hessian"``, §11.6).
    Computed in float64 whatever x's dtype. ``lower`` and ``upper`` (and the op's traces) are
    differentiable in x and every layer, in reverse and forward mode: with the basis held fixed
    each end is a smooth function of them that stays a bound (docs/math.md §11.4, §12.6); with
    inputs that require grad the exact traces and the basis' quadratic forms are evaluated with
    autograd recording, and the backward runs through them (about 2.4× the interval's time).

    Args:
        x, target, weights, biases, activation, reduction, loss: as for
            :func:`deep_hessian_traces`.
        steps: the Lanczos steps (Hessian-vector products of the basis). ``None``: the
            automatic count, 32 where the assembled Hessian closes the interval anyway (small n),
            else as many as cost about an eighth of the exact traces, up to 128 (docs/math.md
            §12.6: beyond the assembly the trace cap closes the interval, and it tightens with
            every Ritz value it subtracts). The count used is ``len(ritz_values)``.
        start, seed: as for :func:`torch_ws.lambda_max_interval` (``start``: e.g. the
            previous call's ``ritz_vectors``, (r, n) with n = :func:`deep_num_params`).
    """
    return _deep_interval(True, x, target, weights, biases, activation, reduction, loss, steps,
                          start, seed)[0]


def deep_lambda_min_interval(
    x: Tensor,
    target: Tensor,
    weights: Sequence[Tensor],
    biases: Optional[Sequence[Optional[Tensor]]] = None,
    activation: str = "tanh",
    reduction: str = "mean",
    loss: str = "bce",
    *,
    steps: Optional[int] = None,
    start: Optional[Tensor] = None,
    seed: int = 0,
) -> EigenvalueInterval:
    """A certified interval ``lower ≤ λ_min(H) ≤ upper`` for a deep MLP:
    :func:`deep_lambda_max_interval` of −H, mirrored (arguments as there)."""
    return _deep_interval(False, x, target, weights, biases, activation, reduction, loss, steps,
                          start, seed)[0]


@dataclass(frozen=True, eq=False)
class DeepMlpSpec:
    """``nn.Sequential(Linear, φ, Linear, φ, …, Linear)`` and its loss, as the deep op reads them.

    Holds references to the layers (it sees their current parameters). Build one with
    :meth:`from_module`; ``op_args(x, target)`` gives the arguments of
    :func:`deep_hessian_traces` and :func:`deep_ws_bounds`.
    """

    linears: tuple
    activation: str
    loss: str
    reduction: str
    label_smoothing: float = 0.0  # not taken (from_module refuses it); here for a uniform spec

    @classmethod
    def from_module(cls, model: nn.Module, loss="bce", reduction: Optional[str] = None,
                    caller: str = "DeepMlpSpec") -> "DeepMlpSpec":
        """Parses the network or raises a ValueError that says what was expected and what
        arrived. Every hidden layer must have the same activation (the same module type and
        options): the closed form has one φ; a network mixing them is refused. Label smoothing
        is not taken here (pass smoothed probabilities as the target)."""
        model = unwrap_model(model)
        sequential = isinstance(model, nn.Sequential)
        misfit = sequential_misfit(model) if sequential else ""
        if not sequential or len(model) < 3 or len(model) % 2 == 0 or misfit:
            raise ValueError(
                f"{caller} expects nn.Sequential(nn.Linear, activation, nn.Linear, …, "
                f"nn.Linear) with L >= 1 hidden layers, got {type(model).__name__}"
                + (f" with {len(model)} modules" if sequential else "")
                + (f"; {misfit}" if misfit else ""))
        linears = tuple(model[i] for i in range(0, len(model), 2))
        for index, layer in zip(range(0, len(model), 2), linears):
            _check_plain_linear(layer, f"module {index}", caller)
        names = [activation_name(model[i], caller) for i in range(1, len(model), 2)]
        if len(set(names)) != 1:
            listing = ", ".join(f"{i}: {name}" for i, name in zip(range(1, len(model), 2), names))
            raise ValueError(f"{caller}: every hidden layer must have the same activation (the "
                             f"closed form has one φ), got {listing}")
        for before, after in zip(linears, linears[1:]):
            if after.in_features != before.out_features:
                raise ValueError(f"{caller}: a layer gives {before.out_features} features but the "
                                 f"next expects {after.in_features}")
        loss_name, reduction, smoothing = loss_options(loss, reduction, caller)
        if smoothing:
            raise ValueError(f"{caller}: label smoothing is not taken here; pass the smoothed "
                             "class probabilities as the target and a loss without smoothing")
        width = linears[-1].out_features
        if loss_name == "bce" and width != 1:
            raise ValueError(f"{caller}: the output layer must have one output for loss 'bce', "
                             f"got out_features={width}; for C classes pass loss='cross_entropy'")
        if loss_name == "cross_entropy" and width < 2:
            raise ValueError(f"{caller}: loss 'cross_entropy' needs C >= 2 outputs, got "
                             f"out_features={width}; for one logit pass loss='bce'")
        return cls(linears, names[0], loss_name, reduction)

    @property
    def weights(self) -> list[Tensor]:
        """The layers' current weights, first to last."""
        return [layer.weight for layer in self.linears]

    @property
    def biases(self) -> list[Optional[Tensor]]:
        """The layers' current biases, None where a layer has none."""
        return [layer.bias for layer in self.linears]

    @property
    def leaves(self) -> list[Tensor]:
        """The parameters that exist, layer by layer (weight, then bias)."""
        return [t for layer in self.linears for t in (layer.weight, layer.bias) if t is not None]

    @property
    def num_params(self) -> int:
        """n, the size of the loss Hessian."""
        return deep_num_params(self.weights, self.biases)

    def prepare_target(self, x: Tensor, target: Tensor, caller: str = "DeepMlpSpec") -> Tensor:
        """The targets as the deep op takes them: in x's dtype, class indices as int64."""
        if target.requires_grad:
            raise ValueError(f"{caller}: target requires grad, but the bound is not "
                             "differentiable in the labels; pass target.detach()")
        if self.loss != "cross_entropy" or target.is_floating_point():
            return target.to(x.dtype)
        return target.long()

    def op_args(self, x: Tensor, target: Tensor) -> tuple:
        """(x, target, weights, biases, activation, reduction, loss) for the deep functions."""
        return (x, self.prepare_target(x, target), self.weights, self.biases, self.activation,
                self.reduction, self.loss)

    def describe(self) -> str:
        """The spec in words, for ``__repr__``s."""
        widths = [layer.out_features for layer in self.linears[:-1]]
        return (f"in_features={self.linears[0].in_features}, hidden={widths}, "
                f"outputs={self.linears[-1].out_features}, activation={self.activation!r}, "
                f"loss={self.loss!r}, reduction={self.reduction!r}")
