"""The derivation of docs/math.md §12 (deep MLPs) against torch.func.hessian of the real
nn.Sequential: tr H, tr(H²) and their parts tr G, tr R, tr G², tr(GR), tr(R²), the layer-pair
blocks and the nonzero spectrum from the N·r × N·r kernel. The formulas run in plain PyTorch
(tests/deep_reference.py), independently of the C++ op that evaluates them (tests/test_deep.py)."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, hessian, jacrev

import deep_reference

MODULES = {"tanh": torch.nn.Tanh, "softplus": torch.nn.Softplus, "gelu": torch.nn.GELU,
           "sigmoid": torch.nn.Sigmoid}


@pytest.fixture(autouse=True)
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def explicit(net, x, target, loss, reduction):
    """H, G (from the Jacobians) and R = H − G of the real module, and each entry's layer."""
    names = [k for k, _ in net.named_parameters()]
    shapes = [v.shape for _, v in net.named_parameters()]
    theta = torch.cat([v.detach().reshape(-1) for v in net.parameters()])
    scale = 1.0 / x.shape[0] if reduction == "mean" else 1.0

    def unflatten(th):
        out, offset = {}, 0
        for name, shape in zip(names, shapes):
            size = math.prod(shape)
            out[name], offset = th[offset:offset + size].reshape(shape), offset + size
        return out

    def logits(th):
        return functional_call(net, unflatten(th), (x,))

    def loss_of(th):
        f = logits(th)
        if loss == "ce":
            return scale * F.cross_entropy(f, target, reduction="sum")
        if loss == "bce":
            return scale * F.binary_cross_entropy_with_logits(f[:, 0], target, reduction="sum")
        return scale * ((f - target) ** 2).sum()

    H = hessian(loss_of)(theta)
    J = jacrev(logits)(theta)
    _, S = deep_reference.loss_derivs(logits(theta).detach(), target, loss, reduction)
    G = torch.einsum("icp,icd,idq->pq", J, S, J)
    layer = torch.cat([torch.full((math.prod(s),), int(k.split(".")[0]) // 2 + 1)
                       for k, s in zip(names, shapes)])
    return H, G, H - G, layer


CASES = list(itertools.product([[3, 4], [4, 3, 5]], [("bce", 1), ("ce", 3), ("mse", 2)],
                               ["tanh", "softplus", "gelu", "sigmoid"], [True, False]))


@pytest.mark.parametrize("widths,head,activation,bias", CASES,
                         ids=[f"{w}-{h[0]}-{a}-{'bias' if b else 'nobias'}" for w, h, a, b in CASES])
def test_deep_traces_match_the_explicit_hessian(widths, head, activation, bias):
    loss, outputs = head
    seed = CASES.index((widths, head, activation, bias))
    reduction = "mean" if seed % 2 else "sum"
    torch.manual_seed(seed)
    x = torch.randn(4, 3)
    target = {"ce": lambda: torch.randint(0, outputs, (4,)), "bce": lambda: torch.rand(4),
              "mse": lambda: torch.randn(4, outputs)}[loss]()
    dims = [3] + widths + [outputs]
    layers = []
    for i in range(len(dims) - 1):
        layers.append(torch.nn.Linear(dims[i], dims[i + 1], bias=bias))
        if i < len(dims) - 2:
            layers.append(MODULES[activation]())
    net = torch.nn.Sequential(*layers)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    weights = [m.weight.detach() for m in linears]
    biases = [m.bias.detach() for m in linears] if bias else None

    H, G, R, layer = explicit(net, x, target, loss, reduction)
    got = deep_reference.deep_traces(x, target, weights, biases, activation, loss, reduction,
                                     check_generic=True)
    truth = dict(trH=H.trace(), trH2=(H * H).sum(), trG=G.trace(), trR=R.trace(),
                 trG2=(G * G).sum(), trGR=(G * R).sum(), trR2=(R * R).sum())
    # tr(GR) can cancel (|tr GR| ~ 1e-3 ‖G‖‖R‖): measured against the norms' product
    scale = dict(truth, trGR=(G * G).sum().sqrt() * (R * R).sum().sqrt(),
                 trH=H.diagonal().abs().sum(), trR=R.diagonal().abs().sum())
    for key, value in truth.items():
        assert abs(float(got[key] - value)) <= 1e-12 * float(scale[key]), key
        if key in got["generic"]:  # the second route, through the factorisation's blocks
            assert abs(float(got["generic"][key] - value)) <= 1e-12 * float(scale[key]), key
    # the Gram forms of §12.3 (no pair kernel Γ), term by term and in total
    for term in ("Q1", "Q2", "Q3", "T1", "T2"):
        assert abs(float(got[term + "_gram"] - got[term])) <= 1e-12 * float(truth["trH2"]), term
    assert float(got["trH2_gram"]) == pytest.approx(float(truth["trH2"]), rel=1e-12)
    # layer-pair blocks ‖R_kk'‖², ‖H_kk'‖² (the cross-layer ones included)
    layers_ = range(1, len(linears) + 1)
    for name, matrix in (("R2blk", R), ("H2blk", H)):
        blocks = torch.tensor([[float((matrix[layer == k][:, layer == m] ** 2).sum()) for m in layers_]
                               for k in layers_])
        assert torch.allclose(got["generic"][name], blocks, rtol=0, atol=1e-12 * float(blocks.sum()))


def test_deep_spectrum_from_the_sample_kernel():
    """H = U C Uᵀ (§12.2): H's nonzero eigenvalues are those of C·K, K = UᵀU (N·r × N·r)."""
    torch.manual_seed(7)
    x, target = torch.randn(3, 3), torch.randint(0, 3, (3,))
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3),
                              torch.nn.Tanh(), torch.nn.Linear(3, 3))
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    H, _, _, _ = explicit(net, x, target, "ce", "mean")
    got = deep_reference.deep_traces(x, target, [m.weight.detach() for m in linears],
                                     [m.bias.detach() for m in linears], "tanh", "ce", "mean",
                                     check_generic=True)
    eigenvalues = torch.linalg.eigvalsh(H)
    top = float(eigenvalues.abs().max())
    assert float(got["generic"]["eigH"][0]) == pytest.approx(float(eigenvalues[-1]), abs=1e-11 * top)
    assert float(got["generic"]["eigH"][-1]) == pytest.approx(float(eigenvalues[0]), abs=1e-11 * top)
