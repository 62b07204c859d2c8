"""``torch_ws.sharpness``: how sharp is my model, in one call."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from .deep import DeepMlpSpec, _deep_interval
from .model import MlpSpec, unwrap_model
from .ops import EigenvalueInterval, lambda_max_interval


class Sharpness(NamedTuple):
    """The loss Hessian's curvature of a model on a batch.

    ``lambda_max``: the certified interval on the top eigenvalue (:class:`EigenvalueInterval`);
    ``trace`` = tr H and ``trace_sq`` = tr(H²), exact (0-d, in x's dtype, summed in float64).
    """

    lambda_max: EigenvalueInterval
    trace: Tensor
    trace_sq: Tensor


def sharpness(model: nn.Module, x: Tensor, target: Tensor, loss="bce",
              reduction: Optional[str] = None, *, steps: Optional[int] = None,
              start: Optional[Tensor] = None, seed: int = 0) -> Sharpness:
    """The top Hessian eigenvalue (a certified interval), tr H and tr(H²) of ``model``'s loss on
    ``(x, target)``.

    Args:
        model: ``nn.Sequential(nn.Linear(D, H), activation, nn.Linear(H, C))`` (DDP,
            DataParallel and torch.compile wrappers are unwrapped), as :class:`HSRRegularizer`
            takes it; or a deeper ``nn.Sequential(Linear, φ, Linear, φ, …, Linear)`` with one
            activation φ (then :func:`torch_ws.deep_lambda_max_interval` and
            :func:`torch_ws.deep_hessian_traces`, docs/math.md §12).
        x, target: the batch; targets as the loss takes them (class indices for
            ``"cross_entropy"``).
        loss: ``"bce"``, ``"cross_entropy"``, ``"mse"`` or the PyTorch loss module.
        reduction: ``"mean"`` (default) or ``"sum"``; read from a loss module.
        steps: the Lanczos steps; ``None``: the default of :func:`torch_ws.lambda_max_interval`
            for one hidden layer, the automatic count of
            :func:`torch_ws.deep_lambda_max_interval` for deeper networks.
        start, seed: as for :func:`torch_ws.lambda_max_interval` (pass the previous
            call's ``lambda_max.ritz_vectors`` as ``start`` when tracking during training).

    Example::

        s = torch_ws.sharpness(model, x, y, loss="cross_entropy")
        print(f"{s.lambda_max.lower:.4g} <= lambda_max <= {s.lambda_max.upper:.4g}")
    """
    core = unwrap_model(model)
    if isinstance(core, nn.Sequential) and len(core) > 3:
        deep = DeepMlpSpec.from_module(core, loss=loss, reduction=reduction, caller="sharpness")
        args = deep.op_args(x, deep.prepare_target(x, target, caller="sharpness"))
        # The interval's certificate computes the exact traces (the costly part at large N·H):
        # they are taken from it, not evaluated again. A measurement, not differentiated (as
        # below): deep_lambda_max_interval is the differentiable one.
        with torch.no_grad():
            interval, trace, trace_sq = _deep_interval(True, *args, steps, start, seed)
        return Sharpness(interval, trace, trace_sq)
    spec = MlpSpec.from_module(model, loss=loss, reduction=reduction, caller="sharpness")
    args = spec.op_args(x, spec.prepare_target(x, target, caller="sharpness"))
    with torch.no_grad():
        # None: lambda_max_interval's own default count, stated there alone.
        counted = {} if steps is None else {"steps": steps}
        interval = lambda_max_interval(*args, start=start, seed=seed, **counted)
        trace, trace_sq = torch.ops.torch_ws.hessian_traces.default(
            *(a.detach() if isinstance(a, Tensor) else a for a in args))
    return Sharpness(interval, trace, trace_sq)
