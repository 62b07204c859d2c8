"""torch_ws: closed-form Hessian traces and Wolkowicz-Styan eigenvalue bounds for 3-layer MLPs.

For ``nn.Sequential(nn.Linear(D, H), act, nn.Linear(H, 1))`` trained with ``BCEWithLogitsLoss``,
the traces tr(H) and tr(H²) of the loss Hessian have closed forms in N×N Gram matrices of the
data, so the Wolkowicz-Styan upper bound on the largest Hessian eigenvalue costs a few matrix
products, never an n×n Hessian. The ops are C++ (``torch.ops.torch_ws.*``) with a hand-derived
backward, so the bound can be trained against directly (HSR regularization).
"""
import torch

from . import _library

_library.load()  # registers torch.ops.torch_ws (CPU, CUDA, Meta and Autograd kernels)

from .ops import (
    ACTIVATIONS,
    LOSSES,
    REDUCTIONS,
    SpectralBound,
    WSBounds,
    explicit_hessian,
    hessian_traces,
    num_params,
    spectral_bound,
    ws_bound,
    ws_bound_batched,
    ws_bounds,
)
from .model import MlpSpec
from .regularizer import HSRRegularizer
from .dataset import dataset_bounds

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "REDUCTIONS",
    "WSBounds",
    "dataset_bounds",
    "explicit_hessian",
    "HSRRegularizer",
    "MlpSpec",
    "SpectralBound",
    "hessian_traces",
    "num_params",
    "spectral_bound",
    "ws_bound",
    "ws_bound_batched",
    "ws_bounds",
]
__version__ = "0.1.0"
