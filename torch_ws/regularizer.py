"""HSR (Hessian Spectral Range) regularization: the Wolkowicz-Styan bound as a training penalty."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .ops import REDUCTIONS, num_params, ws_bound

def activation_name(module: nn.Module) -> str:
    """The torch_ws activation name of a smooth activation module, or a ValueError saying why the
    module is refused (ReLU and its kin are not smooth: the bound needs the second and third
    derivatives).

    The mapping is the C++ one (csrc/core/modules.h) that LibTorch's ``torch_ws::HSRRegularizer``
    uses too, so both accept the same models."""
    options = {}
    if isinstance(module, nn.GELU):
        options["approximate"] = module.approximate
    if isinstance(module, nn.Softplus):
        options.update(beta=float(module.beta), threshold=float(module.threshold))
    try:
        return torch.ops.torch_ws._activation_for_module(
            "HSRRegularizer", type(module).__name__, "nn.", **options
        )
    except ValueError as error:  # keep the C++ message, drop the C++ backtrace
        raise ValueError(str(error).split("\nException raised from")[0]) from None


class HSRRegularizer(nn.Module):
    """λ_sup, the Wolkowicz-Styan upper bound on the loss Hessian's largest eigenvalue, of a
    three-layer MLP at its current parameters: add ``rho * reg(x, y)`` to the loss to descend
    toward flat minima (HSR regularization).

    Example::

        model = nn.Sequential(nn.Linear(2, 10), nn.Tanh(), nn.Linear(10, 1))
        reg = torch_ws.HSRRegularizer(model)
        loss = criterion(model(x).squeeze(-1), y) + rho * reg(x, y)
        loss.backward()   # gradients of the bound reach every parameter (and x if it needs grad)

    Args:
        model: ``nn.Sequential(nn.Linear(D, H), act, nn.Linear(H, 1))``, or the first Linear
            when ``activation`` and ``output`` are given as the next two arguments.
        activation, output: the activation module and ``nn.Linear(H, 1)``, when ``model`` is the
            first layer alone.
        reduction: ``"mean"`` or ``"sum"``, matching the training loss's reduction.

    The regularizer holds references to the layers (not copies): it always sees the current
    parameters. Targets are cast to the input dtype (integer 0/1 labels are fine).
    """

    def __init__(
        self,
        model: nn.Module,
        activation: Optional[nn.Module] = None,
        output: Optional[nn.Module] = None,
        reduction: str = "mean",
    ):
        super().__init__()
        if activation is None and output is None:
            if not isinstance(model, nn.Sequential) or len(model) != 3:
                raise ValueError(
                    "HSRRegularizer expects nn.Sequential(nn.Linear(D, H), activation, "
                    f"nn.Linear(H, 1)) or the three modules separately, got {type(model).__name__}"
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
        if output.out_features != 1:
            raise ValueError(
                "HSRRegularizer: the output layer must be nn.Linear(H, 1) (binary cross-entropy "
                f"on one logit), got out_features={output.out_features}"
            )
        if output.in_features != hidden.out_features:
            raise ValueError(
                f"HSRRegularizer: the hidden layer has {hidden.out_features} units but the output "
                f"layer expects {output.in_features}"
            )
        if reduction not in REDUCTIONS:
            raise ValueError(f"HSRRegularizer: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.activation = activation_name(activation)
        self.reduction = reduction
        # Plain attributes, not submodules: the regularizer must not re-register (and so
        # duplicate in .parameters()) the model's layers.
        self.__dict__["_layers"] = (hidden, output)

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        """λ_sup at the current parameters for inputs ``x`` (N, D) and labels ``target`` (N,)
        or (N, 1) in [0, 1]; a 0-dim tensor differentiable into every parameter and into x."""
        hidden, output = self._layers
        return ws_bound(
            x,
            target.detach().to(x.dtype),
            hidden.weight,
            hidden.bias,
            output.weight,
            output.bias,
            self.activation,
            self.reduction,
        )

    def extra_repr(self) -> str:
        hidden, output = self._layers
        n = num_params(hidden.weight, hidden.bias, output.weight, output.bias)
        return (
            f"in_features={hidden.in_features}, hidden={hidden.out_features}, "
            f"activation={self.activation!r}, reduction={self.reduction!r}, num_params={n}"
        )
