"""Bounds over a whole data set: the Hessian of the loss over every sample a DataLoader (or any
iterable of batches) yields, not of one batch; on one process, or over the ranks of a
torch.distributed group, each holding a shard."""
from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

import torch
from torch import Tensor, nn

from . import reference
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


class _SampleTerms(NamedTuple):
    """The per-sample quantities of docs/math.md §2 for one logit and binary cross-entropy."""

    x: Tensor
    phi0: Tensor
    phi1: Tensor
    u: Tensor      # w2_k φ'(a_ik)
    v: Tensor      # w2_k φ''(a_ik)
    s: Tensor      # c·ℓ''(z_i)
    e: Tensor      # c·ℓ'(z_i)


def _sample_terms(x, t, params, activation: str, scale: float) -> _SampleTerms:
    w1, b1, w2, b2 = params
    w = w2.reshape(-1)
    pre = torch.nn.functional.linear(x, w1, b1)
    phi0, phi1, phi2 = reference._activation_derivatives(activation, pre)
    z = phi0 @ w + (b2 if b2 is not None else 0.0)
    prob = torch.sigmoid(z)
    return _SampleTerms(x, phi0, phi1, phi1 * w, phi2 * w, scale * prob * torch.sigmoid(-z),
                        scale * (prob - t))


def _pair_sums(rows, cols, params, activation: str, scale: float):
    """Σ_{i ∈ rows, j ∈ cols} f(i, j), the pairs' share of tr(H²) (docs/math.md §4), for one
    logit and binary cross-entropy, in float64 plain tensor operations (autograd differentiates
    it in the parameters). rows and cols are (x, target) pairs of sample sets."""
    _, b1, _, b2 = params
    a = _sample_terms(*rows, params, activation, scale)
    b = _sample_terms(*cols, params, activation, scale)
    k = a.x @ b.x.T + (1.0 if b1 is not None else 0.0)
    g = k * (a.u @ b.u.T) + a.phi0 @ b.phi0.T + (1.0 if b2 is not None else 0.0)
    kk = k * k
    pair_b = kk * ((a.u * a.u) @ b.v.T) + 2 * k * ((a.u * a.phi0) @ b.phi1.T)
    pair_c = kk * (a.v @ b.v.T) + 2 * k * (a.phi1 @ b.phi1.T)
    return a.s @ (g * g) @ b.s + 2 * a.s @ pair_b @ b.e + a.e @ pair_c @ b.e


def _own_trace(rows, params, activation: str, scale: float):
    """Σ_{i ∈ rows} of the per-sample terms of tr H (docs/math.md §4)."""
    _, b1, _, b2 = params
    a = _sample_terms(*rows, params, activation, scale)
    k = (a.x * a.x).sum(1) + (1.0 if b1 is not None else 0.0)
    g = k * a.u.square().sum(1) + a.phi0.square().sum(1) + (1.0 if b2 is not None else 0.0)
    return (a.s * g + a.e * k * a.v.sum(1)).sum()


#: The largest n whose n×n Hessian the ranks all-reduce for heads of C ≥ 2 logits (128 MiB of
#: float64), the parameter-space engine's limit.
_MAX_HESSIAN_PARAMS = 4096


def _check_targets(loss: str, target: Tensor, num_outputs: int) -> None:
    """The checks the C++ ops make of the targets, for the distributed path that bypasses them."""
    if loss == "bce" and not ((target >= 0) & (target <= 1)).all():
        raise ValueError("torch_ws: expected targets in [0, 1] (probabilities) for loss 'bce'")
    if loss == "cross_entropy" and not target.is_floating_point():
        if not ((target >= 0) & (target < num_outputs)).all():
            raise ValueError(f"torch_ws: expected class indices in [0, {num_outputs}) for "
                             f"loss 'cross_entropy'")


def _hessian_share(rows, params, activation: str, loss: str, scale: float) -> Tensor:
    """Σ_{i ∈ rows} (J_iᵀ S_i J_i + Σ_c e_ic ∇²z_ic), the rows' share of the n×n Hessian
    (docs/math.md §3, §8), in float64 tensor operations (differentiable in the parameters).
    θ is ordered (W1_k, b1_k) for each unit k, then w2 row-major, then b2: the traces do not
    depend on the order."""
    x, t = rows
    w1, b1, w2, b2 = params
    num, hidden, outputs = x.shape[0], w1.shape[0], w2.shape[0]
    pre = torch.nn.functional.linear(x, w1, b1)
    phi0, phi1, phi2 = reference._activation_derivatives(activation, pre)
    z = torch.nn.functional.linear(phi0, w2, b2)
    if loss == "bce":  # one logit: S_i = c·σ(z)σ(−z), e_i = c·(σ(z) − t)
        prob = torch.sigmoid(z)
        curvature = (scale * prob * torch.sigmoid(-z)).unsqueeze(2)
        e = scale * (prob - t.reshape(-1, 1))
    else:
        curvature, e = reference._loss_in_logits(z, t, loss, scale)  # (N, C, C), (N, C)
    ones = torch.ones(num, 1, dtype=x.dtype, device=x.device)
    x_ext = torch.cat([x, ones], 1) if b1 is not None else x
    width = x_ext.shape[1]
    eye = torch.eye(outputs, dtype=x.dtype, device=x.device)
    # J_i: ∂z_c/∂W1_k = w2[c, k] φ'(a_ik) x̃_i, ∂z_c/∂w2[c', k] = δ_cc' φ(a_ik), ∂z_c/∂b2_c' = δ_cc'.
    jacobian = [(w2.unsqueeze(0).unsqueeze(3) * phi1.unsqueeze(1).unsqueeze(3)
                 * x_ext.unsqueeze(1).unsqueeze(2)).reshape(num, outputs, hidden * width),
                (eye.view(1, outputs, outputs, 1) * phi0.view(num, 1, 1, hidden)).reshape(
                    num, outputs, outputs * hidden)]
    if b2 is not None:
        jacobian.append(eye.expand(num, outputs, outputs))
    jacobian = torch.cat(jacobian, 2)                                   # (N, C, n)
    gauss_newton = torch.einsum("ncp,ncd,ndq->pq", jacobian, curvature, jacobian)
    # Σ_c e_ic ∇²z_ic: per unit k the (W1_k, b1_k) block Σ_i (Σ_c e_ic w2[c, k]) φ''_ik x̃x̃ᵀ,
    # and its column against w2[c, k], Σ_i e_ic φ'_ik x̃_i.
    blocks = torch.einsum("nk,nd,nf->kdf", (e @ w2) * phi2, x_ext, x_ext)
    cross = torch.einsum("nc,nk,nd->kdc", e, phi1, x_ext)
    cross = (cross.unsqueeze(3) * torch.eye(hidden, dtype=x.dtype, device=x.device).view(
        hidden, 1, 1, hidden)).reshape(hidden * width, outputs * hidden)
    n = gauss_newton.shape[0]
    tail = n - hidden * width - outputs * hidden                        # b2's rows, if any
    zeros = cross.new_zeros
    residual = torch.cat([
        torch.cat([torch.block_diag(*blocks), cross, zeros(hidden * width, tail)], 1),
        torch.cat([cross.T, zeros(outputs * hidden, outputs * hidden + tail)], 1),
        zeros(tail, n),
    ], 0)
    return gauss_newton + residual


class _Shards:
    """A rank's part of the whole-set traces over a process group. Built by all-gathering the
    shards (O(N·D) bytes per rank) after checking that the ranks agree on the problem. Two
    orders, as for one process (docs/math.md §4): the rank's samples' share of the n×n Hessian,
    all-reduced (O(n²) bytes), or the pairs (i, j) with i among its samples against all N
    samples (an even share of the N² pairs for even shards)."""

    def __init__(self, reg: HSRRegularizer, x: Tensor, target: Tensor, group, block_size: int):
        import torch.distributed as dist

        hidden, output = reg._layers
        facts = (tuple(x.shape[1:]), str(x.dtype), tuple(hidden.weight.shape),
                 tuple(output.weight.shape), hidden.bias is not None, output.bias is not None,
                 reg.activation, reg.loss, reg.reduction)
        self.world = dist.get_world_size(group)
        everyone = [None] * self.world
        dist.all_gather_object(everyone, (facts, x.detach().cpu(), target.detach().cpu()),
                               group=group)
        for rank, (other, _, _) in enumerate(everyone):
            if other != facts:
                names = ("input shape", "dtype", "W1 shape", "W2 shape", "b1", "b2",
                         "activation", "loss", "reduction")
                differ = [f"{n}: {a} here, {b} on rank {rank}"
                          for n, a, b in zip(names, facts, other) if a != b]
                raise ValueError("torch_ws: the ranks disagree on " + "; ".join(differ))
        self.loss, self.num_outputs = reg.loss, output.out_features
        self.num_params = torch.ops.torch_ws._num_params(
            x.shape[1], hidden.out_features, output.out_features, hidden.bias is not None,
            output.bias is not None)
        _check_targets(reg.loss, target, output.out_features)
        device = hidden.weight.device
        x_all = torch.cat([part[1] for part in everyone]).to(device, torch.float64)
        t_all = torch.cat([part[2] for part in everyone]).to(device)
        t_all = t_all.reshape(-1) if reg.loss == "bce" else t_all
        if t_all.is_floating_point():
            t_all = t_all.to(torch.float64)
        start = sum(len(part[1]) for part in everyone[:dist.get_rank(group)])
        # This rank's rows and all N columns, both in blocks: each pair of blocks holds a few
        # block_size × block_size matrices at a time.
        end = start + len(x)
        self.row_blocks = [(x_all[i:min(i + block_size, end)], t_all[i:min(i + block_size, end)])
                           for i in range(start, end, block_size)]
        self.blocks = [(x_all[j:j + block_size], t_all[j:j + block_size])
                       for j in range(0, len(x_all), block_size)]
        # c in L = c·Σ ℓ_i over the union ("mean" of the squared error divides by N·C too).
        self.scale = 1.0
        if reg.reduction == "mean":
            self.scale = 1.0 / (len(x_all) * (self.num_outputs if reg.loss == "mse" else 1))
        self.layers = (hidden.weight, hidden.bias, output.weight, output.bias)
        self.activation = reg.activation
        self.group = group
        # The evaluation order one process would use (docs/math.md §4; TORCH_WS_ENGINE forces
        # one): the n×n Hessian's shares, summed over the ranks (O(n²) bytes each), where it is
        # the smaller object; the pairwise sums otherwise. Heads of C ≥ 2 logits have only the
        # first here.
        if reg.loss == "bce":
            self.parameter_space = torch.ops.torch_ws._engine(
                x_all, hidden.weight.detach(), hidden.bias is not None,
                output.bias is not None) == "parameter"
        elif self.num_params <= _MAX_HESSIAN_PARAMS:
            self.parameter_space = True
        else:
            raise NotImplementedError(
                f"torch_ws: over torch.distributed, loss {reg.loss!r} is implemented by "
                f"all-reducing the n×n Hessian, for n <= {_MAX_HESSIAN_PARAMS}; this network "
                f"has n = {self.num_params}")
        self.hessian = None

    def _hessian_share(self, rows, params) -> Tensor:
        return _hessian_share(rows, params, self.activation, self.loss, self.scale)

    def _zeros(self, *shape):
        return torch.zeros(shape, dtype=torch.float64, device=self.layers[0].device)

    def _params(self):
        return [p.to(torch.float64) if p is not None else None for p in self.layers]

    def global_traces(self) -> Tensor:
        """(tr H, tr H²) of the union of the shards, float64, on every rank."""
        if self.parameter_space:
            with torch.no_grad():
                params = self._params()
                # Zeros to start from: a rank may hold no samples.
                hessian = sum((self._hessian_share(rows, params) for rows in self.row_blocks),
                              start=self._zeros(self.num_params, self.num_params))
            torch.distributed.all_reduce(hessian, group=self.group)
            self.hessian = hessian
            return torch.stack([hessian.trace(), (hessian * hessian).sum()])
        with torch.no_grad():
            params = self._params()
            trace = sum((_own_trace(rows, params, self.activation, self.scale)
                         for rows in self.row_blocks), start=self._zeros())
            trace_sq = sum((_pair_sums(rows, cols, params, self.activation, self.scale)
                            for rows in self.row_blocks for cols in self.blocks),
                           start=self._zeros())
            sums = torch.stack([trace, trace_sq])
        torch.distributed.all_reduce(sums, group=self.group)
        return sums

    def share_gradients(self, d_trace, d_trace_sq) -> list[Tensor]:
        """This rank's share of the gradient of d_trace·tr H + d_trace_sq·tr H² with respect to
        the present parameters (the pairs whose first sample is its own), one block's graph at a
        time; the shares of all ranks sum to the whole gradient."""
        leaves = [p for p in self.layers if p is not None]
        total = [torch.zeros_like(p) for p in leaves]
        if self.parameter_space:
            # d(α tr H + β tr H²) = ⟨H̄, dH⟩ with H̄ = αI + 2βH (docs/math.md §6), H summed over
            # all ranks and held fixed: each rank differentiates ⟨H̄, its share of H⟩.
            eye = torch.eye(len(self.hessian), dtype=self.hessian.dtype,
                            device=self.hessian.device)
            hessian_bar = d_trace * eye + 2 * d_trace_sq * self.hessian
            shares = [lambda rows=rows: (hessian_bar * self._hessian_share(
                          rows, self._params())).sum()
                      for rows in self.row_blocks]
        else:
            shares = self._pair_shares(d_trace, d_trace_sq)
        with torch.enable_grad():
            for share in shares:
                for t, g in zip(total, torch.autograd.grad(share(), leaves)):
                    t += g
        return total

    def _pair_shares(self, d_trace, d_trace_sq):
        shares = [lambda rows=rows: d_trace * _own_trace(rows, self._params(), self.activation,
                                                         self.scale)
                  for rows in self.row_blocks]
        shares += [lambda rows=rows, cols=cols: d_trace_sq * _pair_sums(
                       rows, cols, self._params(), self.activation, self.scale)
                   for rows in self.row_blocks for cols in self.blocks]
        return shares


def _bounds_and_coefficients(traces: Tensor, num_params: int, dtype):
    """The five WS bounds from the traces, and (∂λ_sup/∂tr H, ∂λ_sup/∂tr H²)."""
    leaves = [traces[0].clone().requires_grad_(True), traces[1].clone().requires_grad_(True)]
    with torch.enable_grad():
        bounds = torch.ops.torch_ws._ws_bounds_from_traces(*leaves, num_params, dtype)
        coefficients = torch.autograd.grad(bounds[0], leaves)
    return [b.detach() for b in bounds], coefficients


def _distributed_bounds(reg: HSRRegularizer, x: Tensor, target: Tensor, group, grad: bool,
                        block_size: int) -> WSBounds:
    """The whole-set bounds when each rank of ``group`` holds a shard (x, target): each rank
    computes its share (of the Hessian, or of the pairs of samples: :class:`_Shards`), and the
    sums and parameter gradients are all-reduced."""
    shards = _Shards(reg, x, target, group, block_size)
    traces = shards.global_traces()
    bounds, (d_trace, d_trace_sq) = _bounds_and_coefficients(traces, shards.num_params, x.dtype)
    if grad:
        leaves = [p for p in shards.layers if p is not None]
        for share, p in zip(shards.share_gradients(d_trace, d_trace_sq), leaves):
            torch.distributed.all_reduce(share, group=group)
            p.grad = share if p.grad is None else p.grad + share
    return WSBounds(*(b.to(x.dtype) for b in bounds), trace=traces[0].to(x.dtype),
                    trace_sq=traces[1].to(x.dtype), num_params=shards.num_params)


class GlobalBatchBound(torch.autograd.Function):
    """λ_sup of the union of the ranks' batches, for :class:`HSRRegularizer` with
    ``global_batch=True``. The backward returns this rank's share of the gradient times the
    world size: DistributedDataParallel averages gradients over the ranks, which then leaves the
    whole gradient in every rank's ``.grad``."""

    @staticmethod
    def forward(ctx, reg, x, target, group, block_size, *leaves):
        shards = _Shards(reg, x, target, group, block_size)
        traces = shards.global_traces()
        bounds, coefficients = _bounds_and_coefficients(traces, shards.num_params, x.dtype)
        ctx.shards, ctx.coefficients = shards, coefficients
        return bounds[0].to(x.dtype)

    @staticmethod
    def backward(ctx, grad_bound):
        d_trace, d_trace_sq = (c * grad_bound.to(torch.float64) for c in ctx.coefficients)
        shares = ctx.shards.share_gradients(d_trace, d_trace_sq)
        return (None, None, None, None, None,
                *(share * ctx.shards.world for share in shares))


def dataset_bounds(model: nn.Module, data: Iterable, loss="bce", reduction: Optional[str] = None,
                   grad: bool = False, progress: bool = False, group=None,
                   block_size: int = 1024) -> WSBounds:
    """Every Wolkowicz-Styan bound of the loss Hessian over the whole data set.

    The loss is that of ``model`` over all N samples that ``data`` yields (averaged over all N
    for reduction ``"mean"``, not per batch), so the result equals one :func:`ws_bounds` call on
    the concatenated data. The batches are read once and kept (x and targets: O(N·D) memory, on
    the model's device); the engines then take all N at once, never forming N×N arrays
    (O(N(D + H) + T²) memory in tiles, or O(n²) for the n×n Hessian of a small network). Time is
    that of one call on N samples: O(N²(D + H)), or O(N·n²) for small networks.

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
        group: a ``torch.distributed`` process group; default: the whole world when
            ``torch.distributed`` is initialized, else none. With a group, each rank passes its
            own shard and every rank gets the bounds (and, with ``grad``, the gradient) of the
            union of the shards: the shards are all-gathered (O(N·D) bytes per rank), and each
            rank evaluates in the order one process would choose (docs/math.md §4), in float64
            tensor operations on blocks of ``block_size`` samples: its samples' share of the
            n×n Hessian, all-reduced (small networks), or the pairs of samples whose first
            sample is its own against all N; the gradients are all-reduced too. Heads of
            C ≥ 2 logits take the first order, for n ≤ 4096. The ranks must agree on the
            model's shapes, activation, loss and reduction (checked: a clear error on every
            rank).
        block_size: the samples per block of the distributed sums.

    Returns:
        :class:`WSBounds` of the whole-set loss, detached.
    """
    reg = HSRRegularizer(model, reduction=reduction, loss=loss)
    hidden, output = reg._layers
    if group is None and torch.distributed.is_available() and torch.distributed.is_initialized():
        group = torch.distributed.group.WORLD
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
    if not xs and group is None:
        raise ValueError("dataset_bounds: data yielded no batches")
    if not xs:
        # A rank without samples still takes part (the others wait for its shard): an empty
        # shard of the layout the loss expects.
        x = hidden.weight.new_empty(0, hidden.in_features).detach()
        classes = output.out_features
        target = (torch.empty(0, dtype=torch.long, device=x.device) if reg.loss == "cross_entropy"
                  else x.new_empty((0, classes) if reg.loss == "mse" and classes > 1 else (0,)))
        xs, targets = [x], [target]
    x = torch.cat(xs)
    target = reg._target(x, torch.cat(targets))
    if group is not None:
        return _distributed_bounds(reg, x, target, group, grad, block_size)
    with torch.set_grad_enabled(grad):
        bounds = ws_bounds(x, target, hidden.weight, hidden.bias, output.weight, output.bias,
                           reg.activation, reg.reduction, reg.loss)
        if grad:
            bounds.lambda_max_upper.backward()
    return WSBounds(*(b.detach() for b in bounds[:7]), num_params=bounds.num_params)
