"""How ρ interacts with the optimizer: HSR (BCE + ρ·λ_sup) on scikit-learn's breast_cancer data
(30 features, standardized), a 30-16-1 tanh MLP trained with mini-batches of 64, with SGD, SGD with
momentum 0.9 and Adam, at ρ = 0, 0.1 and 1, three seeds each. Prints, per setting, the final
training loss, the bound on the full training set, its exact λ_max, test accuracy, and how many
runs diverged (a non-finite loss).

    python examples/choose_rho.py
"""
import math
import statistics

import torch
from torch import nn

import torch_ws
from torch_ws import reference
from torch_ws.reproduce.data import make_dataset

OPTIMIZERS = {
    "SGD lr=0.1": lambda p: torch.optim.SGD(p, lr=0.1),
    "SGD+momentum 0.9 lr=0.1": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "Adam lr=1e-2": lambda p: torch.optim.Adam(p, lr=1e-2),
}


def train(make_opt, rho, seed, epochs=40, batch=64):
    data = make_dataset("breast_cancer", train_size=300, test_size=0, seed=0)
    x, y = data.x_train, data.y_train
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(30, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    reg = torch_ws.HSRRegularizer(model)
    opt = make_opt(model.parameters())
    bce = nn.functional.binary_cross_entropy_with_logits
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(batch):
            opt.zero_grad()
            loss = bce(model(x[idx]).squeeze(-1), y[idx])
            (loss + rho * reg(x[idx], y[idx]) if rho else loss).backward()
            opt.step()
    with torch.no_grad():
        loss = float(bce(model(x).squeeze(-1), y))
        if not math.isfinite(loss):
            return None
        bound = float(reg(x, y))
        params = [p.detach() for p in (model[0].weight, model[0].bias, model[2].weight, model[2].bias)]
        lam = float(torch.linalg.eigvalsh(reference.explicit_hessian(x, y, *params, "tanh")).max())
        acc = float(((model(data.x_test).squeeze(-1) > 0).double() == data.y_test).double().mean())
    return loss, bound, lam, acc


def main():
    print("| optimizer | ρ | diverged | train loss | bound (full set) | exact λ_max | test accuracy |")
    print("|---|---|---|---|---|---|---|")
    for name, make_opt in OPTIMIZERS.items():
        for rho in (0.0, 0.1, 1.0):
            runs = [train(make_opt, rho, seed) for seed in range(3)]
            ok = [r for r in runs if r is not None]
            med = [statistics.median(r[k] for r in ok) if ok else float("nan") for k in range(4)]
            print(f"| {name} | {rho:g} | {len(runs) - len(ok)}/3 | {med[0]:.4f} | {med[1]:.3f} | "
                  f"{med[2]:.3f} | {med[3]:.3f} |")


if __name__ == "__main__":
    main()
