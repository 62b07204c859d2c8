"""Train Linear(2,10) → tanh → Linear(10,1) on two Gaussian classes with and without HSR
regularization; print the loss, the WS bound and the exact λ_max as training goes."""
import torch
from torch import nn

import torch_ws
from torch_ws.reproduce.data import make_dataset


def train(rho: float, steps: int = 1500, seed: int = 0):
    data = make_dataset("gaussians", train_size=200, test_size=0, seed=seed)
    x, y = data.x_train, data.y_train
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 10), nn.Tanh(), nn.Linear(10, 1)).double()
    reg = torch_ws.HSRRegularizer(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    print(f"\n{'HSR, rho = %g' % rho if rho else 'plain gradient descent'}")
    print(f"{'step':>6} {'loss':>9} {'ws_bound':>9} {'lambda_max':>11}")
    for step in range(steps + 1):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
        bound = reg(x, y)
        (loss + rho * bound if rho else loss).backward()
        if step % (steps // 5) == 0:
            params = [p.detach() for p in (model[0].weight, model[0].bias, model[2].weight, model[2].bias)]
            lam = torch.linalg.eigvalsh(torch_ws.explicit_hessian(x, y, *params, "tanh")).max()
            print(f"{step:>6} {loss.item():>9.4f} {bound.item():>9.4f} {lam.item():>11.4f}")
        opt.step()


if __name__ == "__main__":
    train(rho=0.0)
    train(rho=0.2)
