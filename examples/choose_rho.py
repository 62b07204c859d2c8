"""How ρ interacts with the optimizer and the data's scale: HSR (BCE + ρ·λ_sup of each mini-batch)
on scikit-learn's breast_cancer data (300 balanced training samples, the other 269 for testing), a
30-16-1 tanh MLP trained for 40 epochs with mini-batches of 64, three seeds per setting.

1. Standardized features, SGD (lr 0.1), SGD with momentum 0.9 (lr 0.1) and Adam (lr 0.01), at
   ρ = 0, 0.1 and 1.
2. The raw features (what `load_breast_cancer()` returns, values up to ~4,000), SGD with momentum:
   the bound grows with the fourth power of the inputs' scale, and HSR can lower it by saturating
   the hidden units, which flattens the loss by wrecking it.

Prints, per setting, how many runs failed (a non-finite training loss, or one above log 2, what
predicting 1/2 everywhere gives), then medians of the final training loss, the bound on the whole
training set, its exact λ_max (eigvalsh of the explicit 513×513 Hessian) and the test accuracy.

    python examples/choose_rho.py     # about 15 s on 2 cores
"""
import math
import statistics

import torch
from torch import nn

import torch_ws
from torch_ws.reproduce.data import make_dataset

OPTIMIZERS = {
    "SGD lr=0.1": lambda p: torch.optim.SGD(p, lr=0.1),
    "SGD+momentum 0.9 lr=0.1": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "Adam lr=0.01": lambda p: torch.optim.Adam(p, lr=1e-2),
}
RHOS = (0.0, 0.1, 1.0)
SEEDS = range(3)


def train(data, make_opt, rho, seed, epochs=40, batch=64):
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
        bound = float(reg(x, y))
        params = [p.detach() for p in (model[0].weight, model[0].bias, model[2].weight, model[2].bias)]
        lam = float(torch.linalg.eigvalsh(torch_ws.explicit_hessian(x, y, *params, "tanh")).max())
        acc = float(((model(data.x_test).squeeze(-1) > 0).double() == data.y_test).double().mean())
    return {"failed": not math.isfinite(loss) or loss > math.log(2), "loss": loss, "bound": bound,
            "lambda_max": lam, "accuracy": acc}


def table(title, data, optimizers):
    print(f"\n{title}\n")
    print("| optimizer | ρ | failed | train loss | bound (training set) | exact λ_max | test accuracy |")
    print("|---|---|---|---|---|---|---|")
    for name, make_opt in optimizers.items():
        for rho in RHOS:
            runs = [train(data, make_opt, rho, seed) for seed in SEEDS]
            med = {k: statistics.median(r[k] for r in runs) for k in ("loss", "bound", "lambda_max", "accuracy")}
            failed = sum(r["failed"] for r in runs)
            print(f"| {name} | {rho:g} | {failed}/{len(runs)} | {med['loss']:.3g} | {med['bound']:.3g} | "
                  f"{med['lambda_max']:.3g} | {med['accuracy']:.3f} |", flush=True)


def main():
    table("Standardized features", make_dataset("breast_cancer", train_size=300, test_size=0, seed=0),
          OPTIMIZERS)
    table("Raw features (not standardized)", make_dataset("breast_cancer", train_size=300, test_size=0, seed=0,
                                                          standardize=False),
          {k: v for k, v in OPTIMIZERS.items() if "momentum" in k})


if __name__ == "__main__":
    main()
