"""The one model description every entry point reads: :class:`MlpSpec`.

A model ``nn.Sequential(nn.Linear(D, H), act, nn.Linear(H, C))`` and its training loss are parsed
here, once: the wrappers training puts around a model, the layers, the activation (by the C++
table's mapping, the one LibTorch's ``torch_ws::HSRRegularizer`` uses too), the loss and its
options, and the targets' preparation. :class:`torch_ws.HSRRegularizer`,
:func:`torch_ws.dataset_bounds` and the distributed path take a spec and nothing else of the
model, so they accept the same models and refuse the others with the same words.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import LOSSES, REDUCTIONS, num_params


def _without_backtrace(error: Exception) -> str:
    return str(error).split("\nException raised from")[0]


def activation_name(module: nn.Module, caller: str = "HSRRegularizer") -> str:
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
        return torch.ops.torch_ws._activation_for_module(caller, type(module).__name__, "nn.",
                                                         **options)
    except ValueError as error:  # keep the C++ message, drop the C++ backtrace
        raise ValueError(_without_backtrace(error)) from None


#: The PyTorch loss modules a spec reads, by torch_ws loss name.
LOSS_MODULES = {
    nn.BCEWithLogitsLoss: "bce",
    nn.CrossEntropyLoss: "cross_entropy",
    nn.MSELoss: "mse",
}


def loss_options(loss, reduction: Optional[str],
                 caller: str = "HSRRegularizer") -> tuple[str, str, float]:
    """(loss name, reduction, label smoothing) of a loss given as a name or a PyTorch loss module,
    or a ValueError naming what cannot be honoured exactly (class weights, ``pos_weight``,
    ``ignore_index``, ``reduction="none"``)."""
    smoothing = 0.0
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"{caller}: loss must be one of {LOSSES} or one of "
                             f"{[m.__name__ for m in LOSS_MODULES]}, got {loss!r}")
        name = loss
        module_reduction = None
    elif type(loss) in LOSS_MODULES:
        name = LOSS_MODULES[type(loss)]
        kind = type(loss).__name__
        if getattr(loss, "weight", None) is not None:
            raise ValueError(f"{caller}: {kind} with a class weight cannot be honoured "
                             "exactly (the closed form weighs every sample equally); pass the "
                             "loss without weight")
        if getattr(loss, "pos_weight", None) is not None:
            raise ValueError(f"{caller}: {kind} with pos_weight cannot be honoured exactly; "
                             "pass the loss without pos_weight")
        if isinstance(loss, nn.CrossEntropyLoss):
            if loss.ignore_index != -100:
                raise ValueError(
                    f"{caller}: CrossEntropyLoss(ignore_index={loss.ignore_index}) cannot be "
                    "honoured exactly (ignored samples would change N); pass the loss with the "
                    "default ignore_index and drop those samples from the batch")
            smoothing = float(loss.label_smoothing)
        module_reduction = loss.reduction
        if module_reduction not in REDUCTIONS:
            raise ValueError(f"{caller}: {kind}(reduction={module_reduction!r}) has no "
                             f"scalar loss to bound; expected a reduction in {REDUCTIONS}")
        if reduction is not None and reduction != module_reduction:
            raise ValueError(f"{caller}: reduction={reduction!r} contradicts the loss "
                             f"module's reduction={module_reduction!r}; pass one of them")
    else:
        raise ValueError(f"{caller}: loss must be one of {LOSSES} or an instance of "
                         f"{[m.__name__ for m in LOSS_MODULES]}, got {type(loss).__name__}")
    reduction = reduction or module_reduction or "mean"
    if reduction not in REDUCTIONS:
        raise ValueError(f"{caller}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
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


def _check_plain_linear(layer: nn.Module, name: str, caller: str) -> None:
    """Accepts exactly the layers whose function is nn.Linear's x·Wᵀ + b in the parameters that
    training updates; refuses the others, saying why (the closed form would silently describe
    another function, or the Hessian in other parameters)."""
    kind = type(layer).__name__
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"{caller}: the {name} layer must be nn.Linear, got {kind}")
    if type(layer).forward is not nn.Linear.forward:
        raise ValueError(
            f"{caller}: the {name} layer is {kind}, a subclass of nn.Linear with its own "
            "forward; the closed form describes nn.Linear's x·Wᵀ + b only")
    if torch.nn.utils.parametrize.is_parametrized(layer):
        raise ValueError(
            f"{caller}: the {name} layer is parametrized (torch.nn.utils.parametrize, e.g. "
            "weight_norm or spectral_norm): training updates the parametrization's tensors, "
            "and the Hessian in those is not the one in W that the closed form gives; remove "
            "the parametrization (parametrize.remove_parametrizations) to bound the plain layer")
    if layer._forward_pre_hooks or layer._forward_hooks or not isinstance(
            layer.weight, nn.Parameter):
        raise ValueError(
            f"{caller}: the {name} layer has forward hooks or a computed weight (e.g. the old "
            "torch.nn.utils.weight_norm or spectral_norm), which change what it computes or "
            "which tensors training updates; the closed form describes a plain nn.Linear")


def _hint_for(module: nn.Module, last: bool) -> str:
    """Why a module that is not part of Linear → φ → … → Linear is refused, and what to do."""
    if isinstance(module, (nn.Flatten, nn.Unflatten)):
        return "flatten x before the call (x.flatten(1)) and pass the network without it"
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return ("the bounds are of the deterministic network (dropout in eval mode is the "
                "identity): pass the network without it")
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
        return "normalization layers are not in the closed form (Linear → φ → … → Linear only)"
    if last and isinstance(module, nn.Sigmoid):
        return ("the losses take logits: drop the final Sigmoid and pass loss='bce' "
                "(nn.BCEWithLogitsLoss)")
    if last and isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        return (f"the losses take logits: drop the final {type(module).__name__} and pass "
                "loss='cross_entropy' (nn.CrossEntropyLoss)")
    if isinstance(module, nn.Sequential):
        return "a nested nn.Sequential: list its layers in the outer one"
    return ""


def sequential_misfit(model: nn.Sequential) -> str:
    """Where ``model`` departs from nn.Sequential(nn.Linear, φ, nn.Linear, …, nn.Linear), in words
    for an error message ("" when the modules alternate as they should; the activations
    themselves are checked by :func:`activation_name`)."""
    modules = list(model)
    for index, module in enumerate(modules):
        kind = type(module).__name__
        last = index == len(modules) - 1
        if index % 2 == 0 and not isinstance(module, nn.Linear):
            hint = _hint_for(module, last) or (
                "the modules alternate nn.Linear, activation, nn.Linear, …, with one activation "
                "between two layers")
            where = "after the last nn.Linear" if last else "where nn.Linear was expected"
            return f"module {index} is {kind} {where}: {hint}"
        if index % 2 == 1:
            hint = _hint_for(module, last)
            if isinstance(module, nn.Linear):
                return (f"module {index} is nn.Linear where an activation was expected: put one "
                        "between the two layers (or merge them)")
            if hint:
                return f"module {index} is {kind}: {hint}"
    if len(modules) % 2 == 0 and modules:
        return (f"module {len(modules) - 1} ({type(modules[-1]).__name__}) comes after the last "
                "nn.Linear: the network must end with nn.Linear, giving the logits")
    return ""


@dataclass(frozen=True, eq=False)
class MlpSpec:
    """A model ``Linear(D, H) → φ → Linear(H, C)`` and its loss, as the closed forms read them.

    The spec holds references to the two layers (not copies): it always sees their current
    parameters. Build one with :meth:`from_module`.

    Attributes:
        hidden, output: the two ``nn.Linear`` layers.
        activation: the torch_ws activation name of φ (see ``torch_ws.ACTIVATIONS``).
        loss, reduction: the torch_ws loss name and ``"mean"`` or ``"sum"``.
        label_smoothing: the cross-entropy's label smoothing (0 otherwise).
    """

    hidden: nn.Linear
    output: nn.Linear
    activation: str
    loss: str
    reduction: str
    label_smoothing: float = 0.0

    @classmethod
    def from_module(cls, model: nn.Module, loss="bce", reduction: Optional[str] = None,
                    activation: Optional[nn.Module] = None, output: Optional[nn.Module] = None,
                    caller: str = "HSRRegularizer") -> "MlpSpec":
        """Parses ``nn.Sequential(nn.Linear(D, H), act, nn.Linear(H, C))`` (or the first Linear
        with ``activation`` and ``output`` given separately) and its loss, or raises a ValueError
        that starts with ``caller`` and says what was expected and what arrived.

        Args:
            model: the network; ``nn.DataParallel``, ``DistributedDataParallel`` and
                ``torch.compile`` wrappers are unwrapped (they share the parameters).
            loss: ``"bce"`` (C = 1), ``"cross_entropy"`` (C ≥ 2), ``"mse"``, or the PyTorch loss
                module (``nn.BCEWithLogitsLoss``, ``nn.CrossEntropyLoss`` with label smoothing,
                ``nn.MSELoss``).
            reduction: ``"mean"`` or ``"sum"``; read from a loss module (default ``"mean"``).
            activation, output: the activation module and the output layer, when ``model`` is
                the first layer alone.
            caller: the public name that error messages start with.
        """
        model = unwrap_model(model)
        if activation is None and output is None:
            sequential = isinstance(model, nn.Sequential)
            # With three modules the checks below name the layer that does not fit.
            misfit = sequential_misfit(model) if sequential and len(model) != 3 else ""
            if not sequential or len(model) != 3:
                raise ValueError(
                    f"{caller} expects nn.Sequential(nn.Linear(D, H), activation, "
                    f"nn.Linear(H, C)) or the three modules separately, got {type(model).__name__}"
                    + (f" with {len(model)} modules" if sequential else "")
                    + (f"; {misfit}" if misfit else "")
                    + ("; for several hidden layers, torch_ws.deep_ws_bounds gives the traces and"
                       " WS bounds with gradients (torch_ws.DeepMlpSpec reads the network)"
                       if sequential and len(model) > 3 and not misfit else ""))
            hidden, activation, output = model[0], model[1], model[2]
        elif activation is None or output is None:
            raise ValueError(f"{caller}: pass the activation and the output layer together")
        else:
            hidden = model
        for name, layer in (("first", hidden), ("last", output)):
            _check_plain_linear(layer, name, caller)
        loss_name, reduction, smoothing = loss_options(loss, reduction, caller)
        width = output.out_features
        if loss_name == "bce" and width != 1:
            raise ValueError(
                f"{caller}: the output layer must be nn.Linear(H, 1) for loss 'bce' (binary "
                f"cross-entropy on one logit), got out_features={width}; for C classes pass "
                "loss='cross_entropy'")
        if loss_name == "cross_entropy" and width < 2:
            raise ValueError(
                f"{caller}: loss 'cross_entropy' needs nn.Linear(H, C) with C >= 2 classes, "
                f"got out_features={width}; for one logit pass loss='bce'")
        if output.in_features != hidden.out_features:
            raise ValueError(
                f"{caller}: the hidden layer has {hidden.out_features} units but the output "
                f"layer expects {output.in_features}")
        return cls(hidden, output, activation_name(activation, caller), loss_name, reduction,
                   smoothing)

    @property
    def params(self) -> tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor]]:
        """(w1, b1, w2, b2), the layers' current parameters (biases may be None)."""
        return self.hidden.weight, self.hidden.bias, self.output.weight, self.output.bias

    @property
    def leaves(self) -> list[Tensor]:
        """The parameters that exist, in (w1, b1, w2, b2) order."""
        return [p for p in self.params if p is not None]

    @property
    def num_outputs(self) -> int:
        return self.output.out_features

    @property
    def num_params(self) -> int:
        """n, the size of the loss Hessian."""
        return num_params(*self.params)

    def prepare_target(self, x: Tensor, target: Tensor, caller: str = "HSRRegularizer") -> Tensor:
        """The targets as the ops take them: in x's dtype, except class indices for the
        cross-entropy (int64), which label smoothing turns into probabilities as
        ``F.cross_entropy`` does."""
        if target.requires_grad:  # the op refuses it too: detaching here would hide that
            raise ValueError(f"{caller}: target requires grad, but the bound is not "
                             "differentiable in the labels; pass target.detach()")
        if self.loss != "cross_entropy":
            return target.to(x.dtype)
        classes = self.num_outputs
        if not target.is_floating_point():
            if self.label_smoothing == 0:
                return target.long()
            target = F.one_hot(target.long(), classes).to(x.dtype)
        target = target.to(x.dtype)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / classes
        return target

    def op_args(self, x: Tensor, target: Tensor) -> tuple:
        """The arguments of every torch_ws op for this model on (x, prepared target):
        (x, target, w1, b1, w2, b2, activation, reduction, loss)."""
        return (x, target, *self.params, self.activation, self.reduction, self.loss)

    def describe(self) -> str:
        """The spec in words, for ``__repr__``s."""
        smoothing = f", label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        return (f"in_features={self.hidden.in_features}, hidden={self.hidden.out_features}, "
                f"outputs={self.num_outputs}, activation={self.activation!r}, "
                f"loss={self.loss!r}, reduction={self.reduction!r}{smoothing}")


# ---- The model as a function of its parameters (what training, plots and examples evaluate). ----

#: φ for each activation name, as the PyTorch function the matching module computes.
ACTIVATION_FUNCTIONS = {
    "linear": lambda a: a,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "gelu": F.gelu,
    "silu": F.silu,
    "gelu_tanh": lambda a: F.gelu(a, approximate="tanh"),
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
}


def mlp_logits(x: Tensor, w1, b1, w2, b2, activation: str) -> Tensor:
    """z = Linear(H, C)(φ(Linear(D, H)(x))): (N, C), or (N,) when C = 1."""
    z = F.linear(ACTIVATION_FUNCTIONS[activation](F.linear(x, w1, b1)), w2, b2)
    return z.squeeze(-1) if z.shape[-1] == 1 else z


def mlp_loss(x: Tensor, target: Tensor, w1, b1, w2, b2, activation: str, reduction: str = "mean",
             loss: str = "bce") -> Tensor:
    """The training loss whose Hessian torch_ws bounds, as PyTorch computes it:
    ``binary_cross_entropy_with_logits`` ("bce"), ``cross_entropy`` or ``mse_loss``."""
    z = mlp_logits(x, w1, b1, w2, b2, activation)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(z, target.reshape(-1), reduction=reduction)
    if loss == "cross_entropy":
        return F.cross_entropy(z, target, reduction=reduction)
    if loss == "mse":
        return F.mse_loss(z, target.reshape(z.shape), reduction=reduction)
    raise ValueError(f"mlp_loss: unknown loss {loss!r}")


def flatten_params(w1, b1, w2, b2) -> Tensor:
    """θ = (W1 row-major, b1, W2 row-major, b2): the order of the rows and columns of
    :func:`torch_ws.explicit_hessian`."""
    return torch.cat([p.reshape(-1) for p in (w1, b1, w2, b2) if p is not None])


def unflatten_params(theta: Tensor, w1, b1, w2, b2) -> list:
    """The inverse of :func:`flatten_params`, shaped like the given tensors (None stays None)."""
    out, offset = [], 0
    for p in (w1, b1, w2, b2):
        if p is None:
            out.append(None)
            continue
        out.append(theta[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
    return out
