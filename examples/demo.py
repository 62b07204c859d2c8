"""Train a small MLP on two Gaussian classes, then print the closed-form Wolkowicz-Styan bound
beside the exact largest Hessian eigenvalue from an explicit Hessian."""
import time

import torch

import torch_ws
from torch_ws import reference


def main():
    torch.manual_seed(0)
    n, hidden = 200, 10
    x = torch.cat([torch.randn(n // 2, 2) * 2**0.5 - 1, torch.randn(n // 2, 2) * 2**0.5 + 1]).double()
    y = torch.cat([torch.zeros(n // 2), torch.ones(n // 2)]).double()
    model = torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2000):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
        loss.backward()
        opt.step()
    params = (model[0].weight, model[0].bias, model[2].weight, model[2].bias)
    with torch.no_grad():
        start = time.perf_counter()
        bounds = torch_ws.ws_bounds(x, y, params[0], params[1], params[2], params[3], "tanh")
        closed_form_s = time.perf_counter() - start
        start = time.perf_counter()
        eig = torch.linalg.eigvalsh(reference.explicit_hessian(x, y, *params, "tanh"))
        explicit_s = time.perf_counter() - start
    print(f"trained 2-{hidden}-1 tanh MLP on {n} points: loss {loss.item():.4f}, n = {bounds.num_params} parameters")
    print(f"  WS upper bound on lambda_max : {bounds.lambda_max_upper.item():.6f}  ({closed_form_s * 1e3:.2f} ms, closed form)")
    print(f"  exact lambda_max             : {eig.max().item():.6f}  ({explicit_s * 1e3:.2f} ms, explicit Hessian)")
    print(f"  WS lower bound on lambda_max : {bounds.lambda_max_lower.item():.6f}")
    print(f"  bound / exact                : {(bounds.lambda_max_upper / eig.max()).item():.4f}")


if __name__ == "__main__":
    main()
