"""Data sets of the experiments, deterministic for a seed."""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: The binary data sets of the papers' protocol; "digits" (10 classes) has an experiment of its own
#: (digits.py), chosen by the same --dataset option.
DATASETS = ("gaussians", "breast_cancer")


@dataclass
class Dataset:
    """Train and test splits (float64); y holds 0/1 labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def dim(self) -> int:
        return self.x_train.shape[1]


def _balanced_gaussians(n: int, gen: torch.Generator):
    # Class 0 ~ N((−1,−1), 2I), class 1 ~ N((1,1), 2I), half of the points each.
    n0 = n // 2
    std = 2.0**0.5
    x0 = torch.randn(n0, 2, generator=gen, dtype=torch.float64) * std - 1.0
    x1 = torch.randn(n - n0, 2, generator=gen, dtype=torch.float64) * std + 1.0
    y = torch.cat([torch.zeros(n0), torch.ones(n - n0)]).double()
    return torch.cat([x0, x1]), y


def make_dataset(name: str, train_size: int, test_size: int, seed: int, standardize: bool = True) -> Dataset:
    """``gaussians``: the papers' two 2-D Gaussian classes. ``breast_cancer``: scikit-learn's
    bundled Wisconsin data (30 features), split into a balanced training set of ``train_size`` and
    the rest as test set, standardized with the training split's statistics unless
    ``standardize=False`` (then the raw values, up to about 4,000)."""
    gen = torch.Generator().manual_seed(seed)
    if name == "gaussians":
        x_tr, y_tr = _balanced_gaussians(train_size, gen)
        x_te, y_te = _balanced_gaussians(test_size, gen)
        return Dataset(name, x_tr, y_tr, x_te, y_te)
    if name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        data = load_breast_cancer()
        x = torch.tensor(data.data, dtype=torch.float64)
        y = torch.tensor(data.target, dtype=torch.float64)
        idx0 = torch.nonzero(y == 0).squeeze(1)
        idx1 = torch.nonzero(y == 1).squeeze(1)
        idx0 = idx0[torch.randperm(len(idx0), generator=gen)]
        idx1 = idx1[torch.randperm(len(idx1), generator=gen)]
        half = train_size // 2
        if half > min(len(idx0), len(idx1)) - 1:
            raise ValueError(
                f"breast_cancer has {len(idx0)} and {len(idx1)} samples per class; "
                f"train_size={train_size} leaves no test set"
            )
        train = torch.cat([idx0[:half], idx1[: train_size - half]])
        test = torch.cat([idx0[half:], idx1[train_size - half :]])
        if standardize:
            mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-12)
            x = (x - mean) / std
        return Dataset(name, x[train], y[train], x[test], y[test])
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
