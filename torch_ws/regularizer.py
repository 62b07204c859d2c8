"""HSR (Hessian Spectral Range) regularization: the Wolkowicz-Styan bound as a training penalty."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .deep import DeepMlpSpec, deep_lambda_max_interval, deep_ws_bounds
from .model import MlpSpec, unwrap_model
from .ops import ACTIVATIONS, LOSSES, REDUCTIONS, lambda_max_interval, spectral_bound, ws_bound


#: The upper bounds on λ_max an HSRRegularizer can penalize.
BOUNDS = ("ws", "spectral", "interval")


class HSRRegularizer(nn.Module):
    """λ_sup, the Wolkowicz-Styan upper bound on the loss Hessian's largest eigenvalue, of a
    three-layer MLP at its current parameters: add ``rho * reg(x, y)`` to the loss to descend
    toward flat minima (HSR regularization).

    Example::

        model = nn.Sequential(nn.Linear(2, 10), nn.Tanh(), nn.Linear(10, 1))
        reg = torch_ws.HSRRegularizer(model)
        loss = criterion(model(x).squeeze(-1), y) + rho * reg(x, y)
        loss.backward()   # gradients of the bound reach every parameter (and x if it needs grad)

        # a 10-class head: the loss module the training uses, as it is
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
        reg = torch_ws.HSRRegularizer(model, loss=criterion)

    Args:
        model: ``nn.Sequential(nn.Linear(D, H), act, nn.Linear(H, C))``, or the first Linear
            when ``activation`` and ``output`` are given as the next two arguments. A model
            wrapped in ``nn.DataParallel``, ``DistributedDataParallel`` or ``torch.compile`` is
            unwrapped (the wrapper shares the parameters). A deeper
            ``nn.Sequential(Linear, act, Linear, act, …, Linear)`` (one activation) takes the
            WS bound of :func:`torch_ws.deep_ws_bounds` (``bound="ws"``) or the interval's
            ``upper`` of :func:`torch_ws.deep_lambda_max_interval` (``bound="interval"``), and
            ``global_batch`` with ``bound="ws"``; no ``"spectral"`` or label smoothing there.
        activation, output: the activation module and ``nn.Linear(H, C)``, when ``model`` is the
            first layer alone.
        reduction: ``"mean"`` or ``"sum"``, matching the training loss's reduction; read from
            ``loss`` when that is a module (default ``"mean"``).
        loss: the training loss: ``"bce"`` (C = 1), ``"cross_entropy"`` (C ≥ 2), ``"mse"``, or
            the module itself: ``nn.BCEWithLogitsLoss()``, ``nn.CrossEntropyLoss()`` (with
            ``label_smoothing`` honoured), ``nn.MSELoss()``. Options that change the Hessian in
            ways the closed form does not cover (class ``weight``, ``pos_weight``,
            ``ignore_index``) are refused.
        bound: which guaranteed upper bound on λ_max to penalize: ``"ws"`` (the
            Wolkowicz-Styan bound, :func:`torch_ws.ws_bound`: a few Gram-matrix products) or
            ``"spectral"`` (:func:`torch_ws.spectral_bound`'s ``upper``: λ_max(GGN) + λ_max(R),
            1.02–1.55× λ_max in benchmarks/bench_spectral.py where WS drifts to 18.7× at
            n = 201,217, at the cost of eigenproblems per call: 4 ms at N=200 D=2 H=10,
            1.3 s at N=2048 D=128 H=256 on 2 cores) or ``"interval"``
            (:func:`torch_ws.lambda_max_interval`'s ``upper``: Lanczos on closed-form
            Hessian-vector products capped by the exact traces, within 10⁻⁸ of λ_max once the
            top eigenvalue stands out of the bulk; each call's Lanczos starts from the previous
            call's top Ritz vector).
        global_batch: under ``torch.distributed`` (DistributedDataParallel), the bound of the
            union of all ranks' batches rather than of this rank's: every rank passes its own
            batch and gets the same value. Its backward leaves this rank's share of the whole
            gradient times the world size, so that DDP's averaging over ranks gives every rank
            the whole-union gradient. x gets no gradient from it. The WS bound only, every
            head and size, deep networks included (see :func:`torch_ws.dataset_bounds` for
            how the sums are divided).
        group: the process group for ``global_batch`` (default: the whole world).

    The regularizer holds references to the layers (not copies): it always sees the current
    parameters, and ``.to()``, ``.double()``, ``.cuda()`` on it convert those layers (so the
    model they belong to) as they would a submodule. It pickles with the layers' parameters and
    loads with ``torch.load``'s defaults (``weights_only=True``); the loaded regularizer bounds
    the saved parameters, shared with a model saved in the same file. To regularize a model
    rebuilt from a ``state_dict``, build a new regularizer around it.

    Targets are cast to the input dtype (integer 0/1 labels are fine), except class indices for
    the cross-entropy, which stay int64.
    """

    def __init__(
        self,
        model: nn.Module,
        activation: Optional[nn.Module] = None,
        output: Optional[nn.Module] = None,
        reduction: Optional[str] = None,
        loss="bce",
        bound: str = "ws",
        global_batch: bool = False,
        group=None,
    ):
        super().__init__()
        if bound not in BOUNDS:
            raise ValueError(f"HSRRegularizer: bound must be one of {BOUNDS}, got {bound!r}")
        if global_batch and bound != "ws":
            raise ValueError("HSRRegularizer: global_batch=True is implemented for bound='ws' "
                             f"only, got bound={bound!r}")
        self.bound = bound
        self.global_batch = global_batch
        self.__dict__["_group"] = group
        # A plain attribute, not a submodule: the regularizer must not re-register (and so
        # duplicate in .parameters()) the model's layers.
        core = unwrap_model(model)
        if (activation is None and output is None and isinstance(core, nn.Sequential)
                and len(core) > 3):
            # Several hidden layers: the deep ops' WS bound or interval (docs/math.md §12).
            if bound == "spectral":
                raise ValueError(
                    "HSRRegularizer: for several hidden layers bound='ws' (also with "
                    "global_batch) or 'interval' is implemented, got bound='spectral'")
            self.__dict__["spec"] = DeepMlpSpec.from_module(core, loss=loss, reduction=reduction,
                                                            caller="HSRRegularizer")
            return
        self.__dict__["spec"] = MlpSpec.from_module(model, loss=loss, reduction=reduction,
                                                    activation=activation, output=output)

    # The spec's facts, as the regularizer's own attributes.
    activation = property(lambda self: self.spec.activation)
    loss = property(lambda self: self.spec.loss)
    reduction = property(lambda self: self.spec.reduction)
    label_smoothing = property(lambda self: self.spec.label_smoothing)

    @property
    def _layers(self) -> tuple:
        if isinstance(self.spec, DeepMlpSpec):
            return self.spec.linears
        return self.spec.hidden, self.spec.output

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        """The chosen upper bound on λ_max at the current parameters for inputs ``x`` (N, D) and
        the targets of the loss (see :func:`torch_ws.hessian_traces`); a 0-dim tensor
        differentiable into every parameter and into x."""
        deep = isinstance(self.spec, DeepMlpSpec)
        if deep and self.bound == "ws" and not self.global_batch:
            return deep_ws_bounds(*self.spec.op_args(x, target)).lambda_max_upper
        target = self.spec.prepare_target(x, target)
        if self.global_batch:
            return self._global_bound(x, target)
        args = self.spec.op_args(x, target)
        if self.bound == "spectral":
            return spectral_bound(*args).upper
        if self.bound == "interval":
            start = self.__dict__.get("_ritz_vectors")
            if start is not None and (start.shape[1] != self.spec.num_params
                                      or start.device != x.device):
                start = None
            interval = (deep_lambda_max_interval if deep else lambda_max_interval)(*args,
                                                                                    start=start)
            self.__dict__["_ritz_vectors"] = interval.ritz_vectors[:1]  # the warm start
            return interval.upper
        return ws_bound(*args)

    def _global_bound(self, x: Tensor, target: Tensor) -> Tensor:
        import torch.distributed as dist

        from .distributed import DeepGlobalBatchBound, GlobalBatchBound

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("HSRRegularizer(global_batch=True) needs torch.distributed to be "
                               "initialized (init_process_group)")
        group = self._group or dist.group.WORLD
        function = DeepGlobalBatchBound if isinstance(self.spec, DeepMlpSpec) else GlobalBatchBound
        return function.apply(self.spec, x, target, group, *self.spec.leaves)

    def _apply(self, fn, recurse=True):
        # The regularizer's state is the referenced layers' parameters (kept out of
        # .parameters() so as not to list the model's twice): conversions reach them, as they
        # would a submodule's, rather than doing nothing.
        for layer in self._layers:
            layer._apply(fn)
        return super()._apply(fn, recurse)

    def __reduce_ex__(self, protocol):
        # Pickled as its options and the layers' parameters, rebuilt by a function torch.load
        # allows with weights_only=True (the default): the default pickle of a Module names
        # classes (nn.Linear, the activation) that the weights-only unpickler refuses.
        if isinstance(self.spec, DeepMlpSpec):
            return _restore_deep_regularizer, (
                self.activation, self.loss, self.reduction,
                [layer.weight for layer in self._layers], [layer.bias for layer in self._layers],
                self.training, self.bound)
        hidden, output = self._layers
        return _restore_regularizer, (
            self.activation, self.loss, self.reduction, self.label_smoothing,
            hidden.weight, hidden.bias, output.weight, output.bias, self.training, self.bound,
            getattr(self, "global_batch", False),
        )

    def extra_repr(self) -> str:
        return (f"{self.spec.describe()}, bound={self.bound!r}, "
                f"num_params={self.spec.num_params}"
                + (", global_batch=True" if self.global_batch else ""))


def _linear_holding(weight, bias) -> nn.Linear:
    """An nn.Linear whose parameters are the given (unpickled) tensors, allocating nothing."""
    layer = torch.nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0],
                                     bias=bias is not None, device="meta")
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    return layer


def _restore_regularizer(activation, loss, reduction, label_smoothing, w1, b1, w2, b2, training,
                         bound="ws", global_batch=False):
    """An HSRRegularizer over two Linear layers holding the unpickled parameters (the inverse of
    ``HSRRegularizer.__reduce_ex__``)."""
    if (activation not in ACTIVATIONS or loss not in LOSSES or reduction not in REDUCTIONS
            or bound not in BOUNDS):
        raise ValueError(f"HSRRegularizer: cannot restore activation={activation!r}, "
                         f"loss={loss!r}, reduction={reduction!r}, bound={bound!r}; expected one "
                         f"of {ACTIVATIONS}, {LOSSES}, {REDUCTIONS}, {BOUNDS}")
    layers = [_linear_holding(w1, b1), _linear_holding(w2, b2)]
    reg = HSRRegularizer.__new__(HSRRegularizer)
    nn.Module.__init__(reg)
    reg.bound = bound
    reg.global_batch = bool(global_batch)
    reg.__dict__["_group"] = None  # a process group does not travel; the world's is used
    reg.__dict__["spec"] = MlpSpec(layers[0], layers[1], activation, loss, reduction,
                                   float(label_smoothing))
    return reg.train(training)


def _restore_deep_regularizer(activation, loss, reduction, weights, biases, training,
                              bound="ws"):
    """An HSRRegularizer over a deep network's Linear layers holding the unpickled parameters
    (the inverse of ``HSRRegularizer.__reduce_ex__`` for several hidden layers)."""
    if activation not in ACTIVATIONS or loss not in LOSSES or reduction not in REDUCTIONS:
        raise ValueError(f"HSRRegularizer: cannot restore activation={activation!r}, "
                         f"loss={loss!r}, reduction={reduction!r}")
    layers = [_linear_holding(weight, bias) for weight, bias in zip(weights, biases)]
    reg = HSRRegularizer.__new__(HSRRegularizer)
    nn.Module.__init__(reg)
    if bound not in ("ws", "interval"):
        raise ValueError(f"HSRRegularizer: cannot restore bound={bound!r} for a deep network")
    reg.bound = bound
    reg.global_batch = False
    reg.__dict__["_group"] = None
    reg.__dict__["spec"] = DeepMlpSpec(tuple(layers), activation, loss, reduction)
    return reg.train(training)


torch.serialization.add_safe_globals([_restore_regularizer, _restore_deep_regularizer])
