"""The whole-set bounds over the ranks of a torch.distributed group, each rank holding a shard.

The ranks all-gather the shards (O(N·D) bytes per rank), so each holds the whole data set, and
split the work of one evaluation on it in the order one process would choose (docs/math.md §4.1;
every number comes from the C++ engines):

- parameter space (small networks): each rank assembles its own samples' terms of the n×n
  Hessian (``torch.ops.torch_ws._hessian``), the ranks all-reduce H (O(n²) bytes), and each
  takes its samples' share of the gradient of α·tr H + β·tr(H²) by the reverse mode of the
  assembly with H̄ = αI + 2βH (``_hessian_backward``);
- sample space: the pairs of blocks of samples are dealt to the ranks by cost
  (``_traces_share``); the ranks all-reduce their parts of tr H and tr(H²), then of the gradient.

The result equals one process's call on the concatenated shards (up to the order of float64
sums), for every head, at every size one process takes. Networks with several hidden layers
split by their own engine table (``DeepShards``): where it takes the assembled Hessian (docs/
math.md §12.7) each rank assembles its samples' blocks (``_deep_assembled_hessian`` with a
share), the ranks all-reduce H and its certified forming error, and the gradient share is
autograd's reverse mode of the rank's assembly with H̄ = αI + 2βH; where it takes the Gram forms
(§12.3, §12.4) each rank evaluates the pairs (i, j) whose row i is one of its samples, against
every j (``_deep_gram_form_traces`` with a share: the per-sample chain over the union, linear in
N, then the rank's rows of the quadratic pair sums), the ranks all-reduce tr H, tr(H²) and their
certified errors, and the gradient share is autograd's reverse mode of the rank's pair sums.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .model import MlpSpec

#: The problem facts the ranks must agree on, in the order of the message naming a disagreement.
_FACT_NAMES = ("input shape", "dtype", "W1 shape", "W2 shape", "b1", "b2", "activation", "loss",
               "reduction")
_DEEP_FACT_NAMES = ("input shape", "dtype", "layer shapes", "biases", "activation", "loss",
                    "reduction")


def _facts(spec, x: Tensor) -> tuple[tuple, tuple]:
    """(names, values) of the facts of an MlpSpec or a DeepMlpSpec."""
    if isinstance(spec, MlpSpec):
        w1, b1, w2, b2 = spec.params
        return _FACT_NAMES, (tuple(x.shape[1:]), str(x.dtype), tuple(w1.shape), tuple(w2.shape),
                             b1 is not None, b2 is not None, spec.activation, spec.loss,
                             spec.reduction)
    return _DEEP_FACT_NAMES, (tuple(x.shape[1:]), str(x.dtype),
                              tuple(tuple(layer.weight.shape) for layer in spec.linears),
                              tuple(layer.bias is not None for layer in spec.linears),
                              spec.activation, spec.loss, spec.reduction)


def gather_shards(spec, x: Tensor, target: Tensor, group) -> tuple[Tensor, Tensor, int]:
    """The union of the ranks' shards (x, prepared target), concatenated in rank order on the
    model's device, on every rank, and where this rank's shard begins in it. Every rank raises
    the same error when the ranks disagree on the problem (``spec``: an MlpSpec or a
    DeepMlpSpec)."""
    import torch.distributed as dist

    names, facts = _facts(spec, x)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    everyone = [None] * world
    dist.all_gather_object(everyone, (facts, x.detach().cpu(), target.detach().cpu()),
                           group=group)
    for other_rank, (other, _, _) in enumerate(everyone):
        if other != facts:
            differ = [f"{name}: {a} here, {b} on rank {other_rank}"
                      for name, a, b in zip(names, facts, other) if a != b]
            raise ValueError("torch_ws: the ranks disagree on " + "; ".join(differ))
    device = spec.leaves[0].device
    x_all = torch.cat([part[1] for part in everyone]).to(device)
    target_all = torch.cat([part[2] for part in everyone]).to(device)
    return x_all, target_all, sum(len(part[1]) for part in everyone[:rank])


def bounds_and_weights(traces: Tensor, num_params: int, dtype,
                       errors: tuple[float, float] = (0.0, 0.0)) -> tuple[list[Tensor], tuple]:
    """The five WS bounds from the float64 traces (``_ws_bounds_from_traces``, widened for
    ``dtype`` and by the traces' certified ``errors``) and λ_sup's weights (∂λ_sup/∂tr H,
    ∂λ_sup/∂tr(H²))."""
    leaves = [traces[0].clone().requires_grad_(True), traces[1].clone().requires_grad_(True)]
    with torch.enable_grad():
        bounds = torch.ops.torch_ws._ws_bounds_from_traces(*leaves, num_params, dtype,
                                                          float(errors[0]), float(errors[1]))
        weights = torch.autograd.grad(bounds[0], leaves)
    return [b.detach() for b in bounds], weights


class Shards:
    """This rank's part of one whole-set evaluation over ``group``: the shards all-gathered and
    checked (every rank raises the same error when the ranks disagree on the problem), the
    evaluation order chosen as one process would choose it, and this rank's part of the work.

    Args:
        spec: the model and loss.
        x, target: this rank's shard (the target prepared by ``spec.prepare_target``); a rank
            may hold no samples.
        group: the process group.
    """

    def __init__(self, spec: MlpSpec, x: Tensor, target: Tensor, group):
        import torch.distributed as dist

        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        x_all, target_all, self.begin = gather_shards(spec, x, target, group)
        self.dtype = x.dtype
        self.end = self.begin + len(x)
        self.spec = spec
        self.num_params = spec.num_params
        params = [p.detach() if p is not None else None for p in spec.params]
        self.args = (x_all, target_all, *params, spec.activation, spec.reduction, spec.loss)
        w1, b1, _, b2 = params
        self.parameter_space = torch.ops.torch_ws._engine(
            x_all, w1, b1 is not None, b2 is not None, spec.num_outputs) == "parameter"
        self.hessian: Optional[Tensor] = None

    def _all_reduce(self, tensor: Tensor) -> Tensor:
        torch.distributed.all_reduce(tensor, group=self.group)
        return tensor

    def traces(self) -> tuple[Tensor, tuple[float, float]]:
        """(tr H, tr H²) of the union of the shards, float64, on every rank, and the certified
        errors the bounds widen by beyond their allowance: none for one hidden layer, whose
        rounding the allowance covers (docs/math.md §5.1)."""
        if self.parameter_space:
            self.hessian = self._all_reduce(
                torch.ops.torch_ws._hessian(*self.args, self.begin, self.end))
            traces = torch.stack([self.hessian.diagonal().sum(), (self.hessian ** 2).sum()])
            return traces, (0.0, 0.0)
        trace, trace_sq, _ = torch.ops.torch_ws._traces_share(*self.args, self.rank, self.world)
        return self._all_reduce(torch.stack([trace, trace_sq])), (0.0, 0.0)

    def gradient_share(self, d_trace: float, d_trace_sq: float) -> list[Tensor]:
        """This rank's part of the gradient of d_trace·tr H + d_trace_sq·tr H² with respect to
        the present parameters ((w1, b1, w2, b2) without absent biases); the parts of all ranks
        sum to the whole gradient."""
        if self.parameter_space:
            # d(α tr H + β tr H²) = ⟨αI + 2βH, dH⟩, H the all-reduced Hessian, held fixed.
            eye = torch.eye(self.num_params, dtype=torch.float64, device=self.hessian.device)
            hessian_bar = d_trace * eye + (2 * d_trace_sq) * self.hessian
            grads = torch.ops.torch_ws._hessian_backward(hessian_bar, *self.args, self.begin,
                                                         self.end)
        else:
            _, _, grads = torch.ops.torch_ws._traces_share(*self.args, self.rank, self.world,
                                                           [d_trace, d_trace_sq])
        present = [p is not None for p in self.spec.params]
        return [g for g, keep in zip(grads[1:], present) if keep]

    def gradient(self, d_trace: float, d_trace_sq: float) -> list[Tensor]:
        """The whole gradient, on every rank (the ranks' parts all-reduced)."""
        return [self._all_reduce(g) for g in self.gradient_share(d_trace, d_trace_sq)]


class GlobalBatchBound(torch.autograd.Function):
    """λ_sup of the union of the ranks' batches, for ``HSRRegularizer(global_batch=True)``. The
    backward returns this rank's part of the gradient times the world size:
    DistributedDataParallel averages gradients over the ranks, which then leaves the whole
    gradient in every rank's ``.grad``."""

    @staticmethod
    def forward(ctx, spec: MlpSpec, x: Tensor, target: Tensor, group, *leaves):
        shards = Shards(spec, x, target, group)
        traces, _ = shards.traces()
        bounds, weights = bounds_and_weights(traces, shards.num_params, x.dtype)
        ctx.shards, ctx.weights = shards, weights
        return bounds[0].to(x.dtype)

    @staticmethod
    def backward(ctx, grad_bound):
        scale = float(grad_bound)
        d_trace, d_trace_sq = (float(w) * scale for w in ctx.weights)
        shares = ctx.shards.gradient_share(d_trace, d_trace_sq)
        return (None, None, None, None, *(share * ctx.shards.world for share in shares))


class DeepGlobalBatchBound(torch.autograd.Function):
    """λ_sup of the union of the ranks' batches for a deep network, for
    ``HSRRegularizer(global_batch=True)``: split as :class:`DeepShards` (the backward returns
    this rank's share of the gradient times the world size, as :class:`GlobalBatchBound`)."""

    @staticmethod
    def forward(ctx, spec, x: Tensor, target: Tensor, group, *leaves):
        # The share recorded once where the backward will run (ctx.needs_input_grad: spec, x,
        # target, group, then the leaves).
        shards = DeepShards(spec, x, target, group, record=any(ctx.needs_input_grad[4:]))
        ctx.shards = shards
        traces, errors = shards.traces()
        bounds, ctx.weights = bounds_and_weights(traces, shards.num_params, x.dtype, errors)
        return bounds[0].to(x.dtype)

    @staticmethod
    def backward(ctx, grad_bound):
        shards = ctx.shards
        scale = float(grad_bound)
        d_trace, d_trace_sq = (float(w) * scale for w in ctx.weights)
        shares = shards.gradient_share(d_trace, d_trace_sq)
        return (None, None, None, None, *(share * shards.world for share in shares))


class DeepShards:
    """This rank's part of one whole-set evaluation of a deep network over ``group``, split by
    the engine the deep engine table takes for the union (``parameter_space``):

    - the assembled Hessian: each rank assembles its samples' blocks with the whole set's loss
      scale, and the ranks all-reduce H and its certified forming error (docs/math.md §12.7);
    - the Gram forms: each rank evaluates the pairs (i, j) with i among its samples and j any
      (the per-sample chain over the union first), and the ranks all-reduce tr H, tr(H²) and
      their certified errors (§12.3, §12.4).

    Args:
        spec: the :class:`~torch_ws.DeepMlpSpec`.
        x, target: this rank's shard (the target prepared by ``spec.prepare_target``).
        group: the process group.
        record: whether the gradient will be asked for: :meth:`traces` then evaluates the share
            with autograd recording through the parameters, and :meth:`gradient_share` takes its
            gradient from that one evaluation (otherwise it evaluates the share again).
    """

    def __init__(self, spec, x: Tensor, target: Tensor, group, record: bool = False):
        import torch.distributed as dist

        self.group = group
        self.world = dist.get_world_size(group)
        self.x_all, self.target_all, self.begin = gather_shards(spec, x, target, group)
        self.dtype = x.dtype
        self.end = self.begin + len(x)
        self.spec = spec
        self.num_params = spec.num_params
        self.args = spec.op_args(self.x_all, self.target_all)
        self.parameter_space = torch.ops.torch_ws._deep_engine(*self._detached()) == "parameter"
        self.hessian: Optional[Tensor] = None
        self.record = record
        # What gradient_share differentiates: this rank's share as traces() evaluated it, with
        # its autograd history (_evaluate_share's outputs); used once.
        self._recorded: Optional[tuple] = None

    def _evaluate_share(self, args: tuple) -> tuple:
        """This rank's share by the union's engine: (its block of H, forming error) assembled, or
        (tr H, tr H², their errors) of its rows of the Gram forms."""
        op = (torch.ops.torch_ws._deep_assembled_hessian if self.parameter_space
              else torch.ops.torch_ws._deep_gram_form_traces)
        return op(*args, self.begin, self.end)

    def _records(self) -> bool:
        return self.record and self.end > self.begin  # a rank without samples adds nothing

    def _detached(self) -> tuple:
        x, target, weights, biases, *rest = self.args
        return (x, target, [w.detach() for w in weights],
                [b.detach() if b is not None else None for b in biases], *rest)

    def _summing_error(self) -> float:
        """γ_world: the all-reduce sums `world` float64 terms (docs/math.md §12.5)."""
        world = float(self.world)
        return 2 * world * 2.0 ** -53 / (1 - world * 2.0 ** -53)

    def traces(self) -> tuple[Tensor, tuple[float, float]]:
        """(tr H, tr H²) of the union of the shards, float64, on every rank, and their certified
        errors: each rank's share all-reduced, with the shares' certified errors summed and the
        all-reduce's own rounding added."""
        # With history where the share is recorded for gradient_share, else detached.
        with torch.set_grad_enabled(self._records()):
            share = self._evaluate_share(self.args if self._records() else self._detached())
        if self._records():
            self._recorded = share
        if not self.parameter_space:
            trace, trace_sq, trace_error, trace_sq_error = share
            values = torch.stack([trace, trace_sq]).detach()
            errors = torch.stack([trace_error, trace_sq_error]) + \
                self._summing_error() * values.abs()
            torch.distributed.all_reduce(values, group=self.group)
            torch.distributed.all_reduce(errors, group=self.group)
            # The errors' own sum rounds too (non-negative terms): widened by the same γ.
            errors = errors * (1 + self._summing_error())
            return values, (float(errors[0]), float(errors[1]))
        share, forming_error = share
        if self._records():
            share = share.detach().clone()  # the all-reduce writes into it
        summing = self._summing_error() * float(share.norm())
        error = torch.tensor([float(forming_error) + summing], dtype=torch.float64,
                             device=share.device)
        torch.distributed.all_reduce(share, group=self.group)
        torch.distributed.all_reduce(error, group=self.group)
        self.hessian = share
        trace, trace_sq, trace_error, trace_sq_error = \
            torch.ops.torch_ws._assembled_hessian_traces(share, float(error))
        return torch.stack([trace, trace_sq]), (float(trace_error), float(trace_sq_error))

    def gradient(self, d_trace: float, d_trace_sq: float) -> list[Tensor]:
        """The whole gradient of d_trace·tr H + d_trace_sq·tr H² in the present parameters, on
        every rank (the ranks' shares all-reduced)."""
        grads = self.gradient_share(d_trace, d_trace_sq)
        for g in grads:
            torch.distributed.all_reduce(g, group=self.group)
        return grads

    def gradient_share(self, d_trace: float, d_trace_sq: float) -> list[Tensor]:
        """This rank's part of that gradient; the parts of all ranks sum to the whole gradient.
        Assembled Hessian: d(α tr H + β tr H²) = ⟨αI + 2βH, dH⟩ with H the all-reduced Hessian
        held fixed, this rank's samples' part of dH by autograd through its assembly. Gram forms:
        autograd through this rank's share of the pair sums (tr H and tr(H²) are sums over the
        shares)."""
        leaves = self.spec.leaves
        grads = [None] * len(leaves)
        if self.end > self.begin:  # a rank without samples adds nothing
            recorded, self._recorded = self._recorded, None
            with torch.enable_grad():
                if recorded is None:  # not recorded by traces(): evaluated again, recording
                    recorded = self._evaluate_share(self.args)
                if self.parameter_space:
                    eye = torch.eye(self.num_params, dtype=torch.float64,
                                    device=self.hessian.device)
                    hessian_bar = d_trace * eye + (2 * d_trace_sq) * self.hessian
                    objective = (hessian_bar * recorded[0]).sum()
                else:
                    objective = d_trace * recorded[0] + d_trace_sq * recorded[1]
                grads = torch.autograd.grad(objective, leaves, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves)]


def distributed_bounds(shards, grad: bool, progress: Optional[Callable[[str], None]] = None):
    """The whole-set :class:`~torch_ws.WSBounds` from ``shards`` (a :class:`Shards` or a
    :class:`DeepShards`); with ``grad``, the whole gradient of ``lambda_max_upper`` is added to
    the parameters' ``.grad`` on every rank. ``progress(stage)`` is called before each stage."""
    from .ops import WSBounds

    step = progress or (lambda stage: None)
    spec, dtype = shards.spec, shards.dtype
    step("traces" + (" (Hessian shares)" if shards.parameter_space else " (pair shares)"))
    traces, errors = shards.traces()
    bounds, (d_trace, d_trace_sq) = bounds_and_weights(traces, shards.num_params, dtype, errors)
    if grad:
        step("gradient")
        for g, p in zip(shards.gradient(float(d_trace), float(d_trace_sq)), spec.leaves):
            g = g.to(p.dtype)
            p.grad = g if p.grad is None else p.grad + g
    return WSBounds(*(b.to(dtype) for b in bounds), trace=traces[0].to(dtype),
                    trace_sq=traces[1].to(dtype), num_params=shards.num_params)
