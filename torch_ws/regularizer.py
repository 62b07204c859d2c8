"""HSR (Hessian Spectral Range) regularization: the Wolkowicz-Styan bound as a training penalty."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import ACTIVATIONS, LOSSES, REDUCTIONS, num_params, spectral_bound, ws_bound


def activation_name(module: nn.Module) -> str:
    """The torch_ws activation name of an activation module, or a ValueError saying why the module
    is refused (one without an entry in the activation table, or options the table's function
    does not have).

    The mapping is the C++ one (csrc/core/modules.h) that LibTorch's ``torch_ws::HSRRegularizer``
    uses too, so both accept the same models."""
    options = {}
    if isinstance(module, nn.GELU):
        options["approximate"] = module.approximate
    if isinstance(module, nn.Softplus):
        options.update(beta=float(module.beta), threshold=float(module.threshold))
    if isinstance(module, nn.LeakyReLU):
        options["negative_slope"] = float(module.negative_slope)
    try:
        return torch.ops.torch_ws._activation_for_module(
            "HSRRegularizer", type(module).__name__, "nn.", **options
        )
    except ValueError as error:  # keep the C++ message, drop the C++ backtrace
        raise ValueError(str(error).split("\nException raised from")[0]) from None


#: The PyTorch loss modules the regularizer reads, by torch_ws loss name.
LOSS_MODULES = {
    nn.BCEWithLogitsLoss: "bce",
    nn.CrossEntropyLoss: "cross_entropy",
    nn.MSELoss: "mse",
}


def loss_options(loss, reduction: Optional[str]) -> tuple[str, str, float]:
    """(loss name, reduction, label smoothing) of a loss given as a name or a PyTorch loss module,
    or a ValueError naming what cannot be honoured exactly (class weights, ``pos_weight``,
    ``ignore_index``, ``reduction="none"``)."""
    smoothing = 0.0
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"HSRRegularizer: loss must be one of {LOSSES} or one of "
                             f"{[m.__name__ for m in LOSS_MODULES]}, got {loss!r}")
        name = loss
        module_reduction = None
    elif type(loss) in LOSS_MODULES:
        name = LOSS_MODULES[type(loss)]
        kind = type(loss).__name__
        if getattr(loss, "weight", None) is not None:
            raise ValueError(f"HSRRegularizer: {kind} with a class weight cannot be honoured "
                             "exactly (the closed form weighs every sample equally); pass the "
                             "loss without weight")
        if getattr(loss, "pos_weight", None) is not None:
            raise ValueError(f"HSRRegularizer: {kind} with pos_weight cannot be honoured exactly; "
                             "pass the loss without pos_weight")
        if isinstance(loss, nn.CrossEntropyLoss):
            if loss.ignore_index != -100:
                raise ValueError(
                    f"HSRRegularizer: CrossEntropyLoss(ignore_index={loss.ignore_index}) cannot be "
                    "honoured exactly (ignored samples would change N); pass the loss with the "
                    "default ignore_index and drop those samples from the batch")
            smoothing = float(loss.label_smoothing)
        module_reduction = loss.reduction
        if module_reduction not in REDUCTIONS:
            raise ValueError(f"HSRRegularizer: {kind}(reduction={module_reduction!r}) has no "
                             f"scalar loss to bound; expected a reduction in {REDUCTIONS}")
        if reduction is not None and reduction != module_reduction:
            raise ValueError(f"HSRRegularizer: reduction={reduction!r} contradicts the loss "
                             f"module's reduction={module_reduction!r}; pass one of them")
    else:
        raise ValueError(f"HSRRegularizer: loss must be one of {LOSSES} or an instance of "
                         f"{[m.__name__ for m in LOSS_MODULES]}, got {type(loss).__name__}")
    reduction = reduction or module_reduction or "mean"
    if reduction not in REDUCTIONS:
        raise ValueError(f"HSRRegularizer: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return name, reduction, smoothing


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside the wrappers training puts around a model: ``nn.DataParallel`` and
    ``DistributedDataParallel`` (``.module``) and ``torch.compile`` (``._orig_mod``), which share
    its parameters; anything else is returned as it is."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


#: The upper bounds on λ_max an HSRRegularizer can penalize.
BOUNDS = ("ws", "spectral")


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
            unwrapped (the wrapper shares the parameters).
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
            1.3 s at N=2048 D=128 H=256 on 2 cores).
        global_batch: under ``torch.distributed`` (DistributedDataParallel), the bound of the
            union of all ranks' batches rather than of this rank's: every rank passes its own
            batch and gets the same value. Its backward leaves this rank's share of the whole
            gradient times the world size, so that DDP's averaging over ranks gives every rank
            the whole-union gradient. x gets no gradient from it. The WS bound only; heads of
            C ≥ 2 logits need n ≤ 4096 (see :func:`torch_ws.dataset_bounds` for how the sums
            are divided).
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
        model = unwrap_model(model)
        if activation is None and output is None:
            if not isinstance(model, nn.Sequential) or len(model) != 3:
                raise ValueError(
                    "HSRRegularizer expects nn.Sequential(nn.Linear(D, H), activation, "
                    f"nn.Linear(H, C)) or the three modules separately, got {type(model).__name__}"
                    + (f" with {len(model)} modules" if isinstance(model, nn.Sequential) else "")
                )
            hidden, activation, output = model[0], model[1], model[2]
        elif activation is None or output is None:
            raise ValueError("HSRRegularizer: pass the activation and the output layer together")
        else:
            hidden = model
        for name, layer in (("first", hidden), ("last", output)):
            if not isinstance(layer, nn.Linear):
                raise ValueError(
                    f"HSRRegularizer: the {name} layer must be nn.Linear, got {type(layer).__name__}"
                )
        self.loss, self.reduction, self.label_smoothing = loss_options(loss, reduction)
        width = output.out_features
        if self.loss == "bce" and width != 1:
            raise ValueError(
                "HSRRegularizer: the output layer must be nn.Linear(H, 1) for loss 'bce' (binary "
                f"cross-entropy on one logit), got out_features={width}; for C classes use "
                "loss='cross_entropy'"
            )
        if self.loss == "cross_entropy" and width < 2:
            raise ValueError(
                "HSRRegularizer: loss 'cross_entropy' needs nn.Linear(H, C) with C >= 2 classes, "
                f"got out_features={width}; for one logit use loss='bce'"
            )
        if output.in_features != hidden.out_features:
            raise ValueError(
                f"HSRRegularizer: the hidden layer has {hidden.out_features} units but the output "
                f"layer expects {output.in_features}"
            )
        self.activation = activation_name(activation)
        # Plain attributes, not submodules: the regularizer must not re-register (and so
        # duplicate in .parameters()) the model's layers.
        self.__dict__["_layers"] = (hidden, output)

    def _target(self, x: Tensor, target: Tensor) -> Tensor:
        if target.requires_grad:  # the op refuses it too: detaching here would hide that
            raise ValueError("HSRRegularizer: target requires grad, but the bound is not "
                             "differentiable in the labels; pass target.detach()")
        if self.loss != "cross_entropy":
            return target.to(x.dtype)
        classes = self._layers[1].out_features
        if not target.is_floating_point():
            if self.label_smoothing == 0:
                return target.long()
            # Smoothing turns class indices into probabilities, as F.cross_entropy does.
            target = F.one_hot(target.long(), classes).to(x.dtype)
        target = target.to(x.dtype)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / classes
        return target

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        """The chosen upper bound on λ_max at the current parameters for inputs ``x`` (N, D) and
        the targets of the loss (see :func:`torch_ws.hessian_traces`); a 0-dim tensor
        differentiable into every parameter and into x."""
        hidden, output = self._layers
        if self.global_batch:
            return self._global_bound(x, target)
        args = (x, self._target(x, target), hidden.weight, hidden.bias, output.weight,
                output.bias, self.activation, self.reduction, self.loss)
        if self.bound == "spectral":
            return spectral_bound(*args).upper
        return ws_bound(*args)

    def _global_bound(self, x: Tensor, target: Tensor) -> Tensor:
        import torch.distributed as dist

        from .dataset import GlobalBatchBound

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("HSRRegularizer(global_batch=True) needs torch.distributed to be "
                               "initialized (init_process_group)")
        hidden, output = self._layers
        leaves = [p for p in (hidden.weight, hidden.bias, output.weight, output.bias)
                  if p is not None]
        group = self._group or dist.group.WORLD
        return GlobalBatchBound.apply(self, x, self._target(x, target), group, 1024, *leaves)

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
        hidden, output = self._layers
        return _restore_regularizer, (
            self.activation, self.loss, self.reduction, self.label_smoothing,
            hidden.weight, hidden.bias, output.weight, output.bias, self.training, self.bound,
            getattr(self, "global_batch", False),
        )

    def extra_repr(self) -> str:
        hidden, output = self._layers
        n = num_params(hidden.weight, hidden.bias, output.weight, output.bias)
        smoothing = f", label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        return (
            f"in_features={hidden.in_features}, hidden={hidden.out_features}, "
            f"outputs={output.out_features}, activation={self.activation!r}, "
            f"loss={self.loss!r}, reduction={self.reduction!r}{smoothing}, "
            f"bound={self.bound!r}, num_params={n}"
            + (", global_batch=True" if self.global_batch else "")
        )


def _restore_regularizer(activation, loss, reduction, label_smoothing, w1, b1, w2, b2, training,
                         bound="ws", global_batch=False):
    """An HSRRegularizer over two Linear layers holding the unpickled parameters (the inverse of
    ``HSRRegularizer.__reduce_ex__``)."""
    if (activation not in ACTIVATIONS or loss not in LOSSES or reduction not in REDUCTIONS
            or bound not in BOUNDS):
        raise ValueError(f"HSRRegularizer: cannot restore activation={activation!r}, "
                         f"loss={loss!r}, reduction={reduction!r}, bound={bound!r}; expected one "
                         f"of {ACTIVATIONS}, {LOSSES}, {REDUCTIONS}, {BOUNDS}")
    layers = []
    for weight, bias in ((w1, b1), (w2, b2)):
        layer = torch.nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0],
                                         bias=bias is not None, device="meta")
        layer.weight = weight
        if bias is not None:
            layer.bias = bias
        layers.append(layer)
    reg = HSRRegularizer.__new__(HSRRegularizer)
    nn.Module.__init__(reg)
    reg.activation, reg.loss, reg.reduction = activation, loss, reduction
    reg.label_smoothing = float(label_smoothing)
    reg.bound = bound
    reg.global_batch = bool(global_batch)
    reg.__dict__["_group"] = None  # a process group does not travel; the world's is used
    reg.__dict__["_layers"] = tuple(layers)
    return reg.train(training)


torch.serialization.add_safe_globals([_restore_regularizer])
