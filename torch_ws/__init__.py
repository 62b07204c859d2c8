"""torch_ws: exact Hessian traces and guaranteed eigenvalue bounds, with exact gradients, for MLPs
``Linear(D, H) → φ → Linear(H, C)`` trained with ``BCEWithLogitsLoss``, ``CrossEntropyLoss`` or
``MSELoss``.

tr(H) and tr(H²) of the loss Hessian have closed forms in N×N Gram matrices of the data, so the
Wolkowicz-Styan bound on the largest Hessian eigenvalue costs a few matrix products (and the
spectral bound a few small eigenproblems), never an n×n Hessian unless that is the smaller
object. The ops are C++ (``torch.ops.torch_ws.*``) with a hand-derived backward, so a bound can
be trained against directly (HSR regularization). Lanczos on closed-form Hessian-vector products,
capped by the exact traces, gives a certified interval on λ_max (``lambda_max_interval``,
``sharpness``). docs/math.md is the specification.
"""
import torch

from . import _library

_library.load()  # registers torch.ops.torch_ws (CPU, CUDA, Meta and Autograd kernels)

from .ops import (
    ACTIVATIONS,
    LOSSES,
    REDUCTIONS,
    EigenvalueInterval,
    INTERVAL_SOURCES,
    SpectralBound,
    WSBounds,
    explicit_hessian,
    hessian_traces,
    hessian_vector_products,
    lambda_max_interval,
    lambda_min_interval,
    num_params,
    spectral_bound,
    ws_bound,
    ws_bound_batched,
    ws_bounds,
)
from .model import MlpSpec
from .regularizer import HSRRegularizer
from .dataset import dataset_bounds
from .sharpness import Sharpness, sharpness
from .deep import (
    DeepMlpSpec,
    deep_hessian_traces,
    deep_hessian_vector_products,
    deep_lambda_max_interval,
    deep_lambda_min_interval,
    deep_num_params,
    deep_ws_bounds,
)

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "REDUCTIONS",
    "WSBounds",
    "dataset_bounds",
    "DeepMlpSpec",
    "deep_hessian_traces",
    "deep_hessian_vector_products",
    "deep_lambda_max_interval",
    "deep_lambda_min_interval",
    "deep_num_params",
    "deep_ws_bounds",
    "EigenvalueInterval",
    "explicit_hessian",
    "HSRRegularizer",
    "MlpSpec",
    "SpectralBound",
    "hessian_traces",
    "hessian_vector_products",
    "INTERVAL_SOURCES",
    "lambda_max_interval",
    "lambda_min_interval",
    "num_params",
    "Sharpness",
    "sharpness",
    "spectral_bound",
    "ws_bound",
    "ws_bound_batched",
    "ws_bounds",
]
__version__ = "0.1.0"
