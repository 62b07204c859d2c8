"""Reproduction of the papers' experiments: `torch-ws reproduce` (see :func:`run`)."""
from .config import ReproduceConfig
from .experiment import reanalyse, run

__all__ = ["ReproduceConfig", "reanalyse", "run"]
