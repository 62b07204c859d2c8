"""Bounds over a whole data set: the loss Hessian of the loss over every sample a DataLoader (or
any iterable of batches) yields, not of one batch."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from .ops import WSBounds, ws_bounds
from .regularizer import HSRRegularizer


def _batch_parts(batch, index: int) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, target = batch
        if isinstance(x, Tensor) and isinstance(target, Tensor):
            return x, target
    raise TypeError(f"dataset_bounds: expected each batch to be (x, target), two tensors; batch "
                    f"{index} is {type(batch).__name__}"
                    + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else ""))


def _check_like_first(x: Tensor, target: Tensor, first: tuple[Tensor, Tensor], index: int):
    x0, t0 = first
    if x.dim() != 2 or x.shape[1] != x0.shape[1] or x.dtype != x0.dtype:
        raise ValueError(f"dataset_bounds: batch {index} has x of shape {tuple(x.shape)} and "
                         f"dtype {x.dtype}, but batch 0 has (·, {x0.shape[1]}) and {x0.dtype}")
    if target.shape[1:] != t0.shape[1:] or target.dtype != t0.dtype or len(target) != len(x):
        raise ValueError(f"dataset_bounds: batch {index} has a target of shape "
                         f"{tuple(target.shape)} and dtype {target.dtype} for {len(x)} samples; "
                         f"batch 0's target is (·, {tuple(t0.shape[1:])}) of {t0.dtype}")


def dataset_bounds(model: nn.Module, data: Iterable, loss="bce", reduction: Optional[str] = None,
                   grad: bool = False, progress: bool = False) -> WSBounds:
    """Every Wolkowicz-Styan bound of the loss Hessian over the whole data set.

    The loss is that of ``model`` over all N samples that ``data`` yields (averaged over all N
    for reduction ``"mean"``, not per batch), so the result equals one :func:`ws_bounds` call on
    the concatenated data. The batches are read once and kept (x and targets: O(N·D) memory, on
    the model's device); the pairwise sums then run in the engines' tiles, whose memory is
    O(N(D + H) + T²), never N×N. Time is that of one call on N samples: O(N²(D + H)).

    Args:
        model: ``nn.Sequential(nn.Linear(D, H), act, nn.Linear(H, C))``, as for
            :class:`HSRRegularizer`.
        data: a ``DataLoader`` or any iterable of ``(x, target)`` batches (a last partial batch
            is fine); every batch has the same D, dtype and target layout.
        loss, reduction: as for :class:`HSRRegularizer` (a loss module is read as there).
        grad: also accumulate the gradient of the whole-set bound ``lambda_max_upper`` into
            the model's parameters' ``.grad`` (as ``backward()`` does): the full-batch HSR
            direction.
        progress: a progress bar over the batches.

    Returns:
        :class:`WSBounds` of the whole-set loss, detached.
    """
    reg = HSRRegularizer(model, reduction=reduction, loss=loss)
    hidden, output = reg._layers
    batches = data
    if progress:
        from tqdm import tqdm

        batches = tqdm(data, desc="dataset_bounds", unit="batch")
    xs, targets = [], []
    for index, batch in enumerate(batches):
        x, target = _batch_parts(batch, index)
        if index == 0:
            if x.dim() != 2:
                raise ValueError(f"dataset_bounds: expected x of shape (batch, D), got "
                                 f"{tuple(x.shape)} in batch 0")
            first = (x, target)
        _check_like_first(x, target, first, index)
        xs.append(x.detach().to(hidden.weight.device))
        targets.append(target.detach().to(hidden.weight.device))
    if not xs:
        raise ValueError("dataset_bounds: data yielded no batches")
    x = torch.cat(xs)
    target = reg._target(x, torch.cat(targets))
    with torch.set_grad_enabled(grad):
        bounds = ws_bounds(x, target, hidden.weight, hidden.bias, output.weight, output.bias,
                           reg.activation, reg.reduction, reg.loss)
        if grad:
            bounds.lambda_max_upper.backward()
    return WSBounds(*(b.detach() for b in bounds[:7]), num_params=bounds.num_params)
