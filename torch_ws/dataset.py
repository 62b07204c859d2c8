"""Bounds over a whole data set: the Hessian of the loss over every sample a DataLoader (or any
iterable of batches) yields, not of one batch; on one process, or over the ranks of a
torch.distributed group, each holding a shard."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from .deep import DeepMlpSpec, deep_ws_bounds
from .distributed import DeepShards, Shards, distributed_bounds
from .model import MlpSpec, unwrap_model
from .ops import WSBounds, ws_bounds


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
                   grad: bool = False, progress: bool = False, group=None) -> WSBounds:
    """Every Wolkowicz-Styan bound of the loss Hessian over the whole data set.

    The loss is that of ``model`` over all N samples that ``data`` yields (averaged over all N
    for reduction ``"mean"``, not per batch), so the result equals one :func:`ws_bounds` call on
    the concatenated data. The batches are read once and kept (x and targets: O(N·D) memory, on
    the model's device); the engines then take all N at once, never forming N×N arrays
    (O(N(D + H) + T²) memory in tiles, or O(n²) for the n×n Hessian of a small network). Time is
    that of one call on N samples: O(N²(D + H)), or O(N·n²) for small networks.

    Args:
        model: ``nn.Sequential(nn.Linear(D, H), act, nn.Linear(H, C))``, as for
            :class:`HSRRegularizer` (read by :meth:`torch_ws.MlpSpec.from_module`); or a
            deeper ``nn.Sequential(Linear, act, Linear, act, …, Linear)`` (one activation; read
            by :meth:`torch_ws.DeepMlpSpec.from_module`, bounded by
            :func:`torch_ws.deep_ws_bounds`; over a process group the ranks split the work
            by the deep engine chosen: their samples' blocks of the assembled Hessian (small
            n), or their rows of the Gram forms' pair sums).
        data: a ``DataLoader`` or any iterable of ``(x, target)`` batches (a last partial batch
            is fine); every batch has the same D, dtype and target layout.
        loss, reduction: as for :class:`HSRRegularizer` (a loss module is read as there); a
            model of C ≥ 2 logits needs ``loss="cross_entropy"`` or ``"mse"`` (or the module).
        grad: also accumulate the gradient of the whole-set bound ``lambda_max_upper`` into
            the model's parameters' ``.grad`` (as ``backward()`` does): the full-batch HSR
            direction.
        progress: a progress bar over the batches read, then over the computation's stages.
        group: a ``torch.distributed`` process group; default: the whole world when
            ``torch.distributed`` is initialized, else none. With a group, each rank passes its
            own shard and every rank gets the bounds (and, with ``grad``, the gradient) of the
            union of the shards: the shards are all-gathered (O(N·D) bytes per rank), and the
            ranks split one evaluation in the order one process would choose
            (docs/math.md §4.1): each assembles its own samples' share of the n×n Hessian,
            all-reduced (small networks), or the pairs of blocks of samples dealt to it; the
            gradients are all-reduced too. Every head and every size one process takes. The
            ranks must agree on the model's shapes, activation, loss and reduction (checked: a
            clear error on every rank).

    Returns:
        :class:`WSBounds` of the whole-set loss, detached.
    """
    core = unwrap_model(model)
    deep = isinstance(core, nn.Sequential) and len(core) > 3
    if deep:
        # Several hidden layers: deep_ws_bounds on the concatenated data (docs/math.md §12).
        spec = DeepMlpSpec.from_module(core, loss=loss, reduction=reduction,
                                       caller="dataset_bounds")
        device = spec.linears[0].weight.device
    else:
        spec = MlpSpec.from_module(model, loss=loss, reduction=reduction, caller="dataset_bounds")
        device = spec.hidden.weight.device
    if group is None and torch.distributed.is_available() and torch.distributed.is_initialized():
        group = torch.distributed.group.WORLD
    bar = None
    batches = data
    if progress:
        from tqdm import tqdm

        batches = bar = tqdm(data, desc="dataset_bounds", unit="batch")
    xs, targets = [], []
    for index, batch in enumerate(batches):
        x, target = _batch_parts(batch, index)
        if index == 0:
            if x.dim() != 2:
                raise ValueError(f"dataset_bounds: expected x of shape (batch, D), got "
                                 f"{tuple(x.shape)} in batch 0")
            first = (x, target)
        _check_like_first(x, target, first, index)
        if target.requires_grad:
            raise ValueError(f"dataset_bounds: the target of batch {index} requires grad, but "
                             "the bound is not differentiable in the labels; pass "
                             "target.detach()")
        xs.append(x.detach().to(device))
        targets.append(target.to(device))
    if not xs and group is None:
        raise ValueError("dataset_bounds: data yielded no batches")
    if not xs:
        # A rank without samples still takes part (the others wait for its shard): an empty
        # shard of the layout the loss expects.
        first, last = (spec.linears[0], spec.linears[-1]) if deep else (spec.hidden, spec.output)
        x = first.weight.new_empty(0, first.in_features).detach()
        classes = last.out_features
        target = (torch.empty(0, dtype=torch.long, device=x.device)
                  if spec.loss == "cross_entropy"
                  else x.new_empty((0, classes) if spec.loss == "mse" and classes > 1 else (0,)))
        xs, targets = [x], [target]
    x = torch.cat(xs)
    target = spec.prepare_target(x, torch.cat(targets), caller="dataset_bounds")

    def stage(name: str):
        if bar is not None:
            bar.set_postfix_str(f"{len(x)} samples: {name}")
            bar.refresh()

    try:
        if group is not None and not deep:
            stage("gathering the shards")
            return distributed_bounds(Shards(spec, x, target, group), grad, progress=stage)
        if group is not None:
            # Several hidden layers: split by the deep engine the union gets (DeepShards).
            stage("gathering the shards")
            return distributed_bounds(DeepShards(spec, x, target, group, record=grad), grad,
                                      progress=stage)
        stage("bounds and gradient" if grad else "bounds")
        with torch.set_grad_enabled(grad):
            bounds = (deep_ws_bounds if deep else ws_bounds)(*spec.op_args(x, target))
            if grad:
                bounds.lambda_max_upper.backward()
        stage("done")
        return WSBounds(*(b.detach() for b in bounds[:7]), num_params=bounds.num_params)
    finally:
        if bar is not None:
            bar.close()
