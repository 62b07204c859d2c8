"""Shared helpers of the deep-network tests (tests/test_deep*.py, test_dataset.py): the heads,
bias settings and activation modules, a problem builder, and the test-only truth, the loss of the
real network and its explicit Hessian by torch.func.hessian."""
import math

import torch
import torch.nn.functional as F
from torch.func import hessian

import reference

ACTIVATION_MODULES = {
    "linear": torch.nn.Identity, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh,
    "softplus": torch.nn.Softplus, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU,
    "gelu_tanh": lambda: torch.nn.GELU(approximate="tanh"), "relu": torch.nn.ReLU,
    "leaky_relu": torch.nn.LeakyReLU,
}
HEADS = [("bce", 1, "labels"), ("cross_entropy", 3, "indices"), ("cross_entropy", 3, "probs"),
         ("mse", 2, "values")]
BIASES = ["all", "none", "mixed"]


def make_problem(widths, head, bias, seed, dtype=torch.float64, n=5, d=3):
    loss, outputs, kind = head
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    dims = [d] + list(widths) + [outputs]
    weights = [torch.randn(o, i, generator=g, dtype=dtype) / math.sqrt(i) * 1.5
               for i, o in zip(dims, dims[1:])]
    with_bias = {"all": [True] * len(weights), "none": [False] * len(weights),
                 "mixed": [i % 2 == 0 for i in range(len(weights))]}[bias]
    biases = [torch.randn(o, generator=g, dtype=dtype) if b else None
              for o, b in zip(dims[1:], with_bias)]
    target = {"labels": lambda: torch.rand(n, generator=g, dtype=dtype),
              "indices": lambda: torch.randint(0, outputs, (n,), generator=g),
              "probs": lambda: torch.softmax(torch.randn(n, outputs, generator=g, dtype=dtype), 1),
              "values": lambda: torch.randn(n, outputs, generator=g, dtype=dtype)}[kind]()
    return x, target, weights, biases


def network_loss(x, target, weights, biases, activation, reduction, loss):
    phi = reference.ACTIVATION_FUNCTIONS[activation]
    h = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = F.linear(h, w, b)
        if i < len(weights) - 1:
            h = phi(h)
    return reference.loss_of_logits(h.squeeze(1) if loss == "bce" else h, target, reduction, loss)


def explicit_hessian(x, target, weights, biases, activation, reduction, loss):
    """The n × n Hessian in (w_1, b_1, w_2, b_2, …) order, differentiable in the inputs."""
    params = [t for pair in zip(weights, biases) for t in pair if t is not None]
    sizes = [t.numel() for t in params]
    theta = torch.cat([t.reshape(-1) for t in params])

    def loss_of(th):
        pieces = iter(torch.split(th, sizes))
        ws, bs = [], []
        for w, b in zip(weights, biases):
            ws.append(next(pieces).view_as(w))
            bs.append(next(pieces).view_as(b) if b is not None else None)
        return network_loss(x, target, ws, bs, activation, reduction, loss)

    return hessian(loss_of)(theta)
