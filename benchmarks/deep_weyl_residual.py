"""How loose a Weyl bound for deep MLPs would be if its residual part came from per-sample norms.

λ_max(H) ≤ λ_max(G) + λ_max(R) (docs/math.md §9) needs a certified bound on λ_max(R),
R = Σ_i R_i, R_i = Σ_c e_ic ∇²f_ic. The only bound found whose cost is linear in N is the triangle
inequality over samples, λ_max(R) ≤ Σ_i ‖R_i‖_F (per-sample terms of the Gram forms of §12.3, i = j);
everything sharper (‖R‖_F, λ_max(R)) pairs samples, O(N²), as the exact tr(H²) does. This script
measures that bound with explicit Hessians (torch.func, float64) along full-batch gradient descent
on a [16, 16] tanh network with the cross-entropy (N = 300, D = 8, C = 3, step 0.5), and prints
each ratio to λ_max(H). Result (docs/math.md §12.6): 3–19×, worse than ‖H‖_F (about 2.5×), so
the deep interval has no Weyl candidate.

    python benchmarks/deep_weyl_residual.py      (about 1 minute on 2 cores)
"""
import torch
from torch.func import functional_call, hessian, jacrev, vmap


def main():
    torch.manual_seed(0)
    D, N, C, lr = 8, 300, 3, 0.5
    x = torch.randn(N, D, dtype=torch.float64)
    y = torch.randint(0, C, (N,))
    net = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                              torch.nn.Tanh(), torch.nn.Linear(16, C)).double()
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]

    def unflat(theta):
        return {n: c.view(s) for n, c, s in zip(names, torch.split(theta, sizes), shapes)}

    def loss(theta):
        return torch.nn.functional.cross_entropy(functional_call(net, unflat(theta), (x,)), y)

    def logits(theta, xi):
        return functional_call(net, unflat(theta), (xi[None],)).squeeze(0)

    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).requires_grad_()
    print("| step | loss | λ_max(H) | λ_max(G) | λ_max(R) | ‖R‖_F | Σ‖R_i‖_F | "
          "(λ_max(G) + Σ‖R_i‖_F)/λ_max(H) | (λ_max(G) + ‖R‖_F)/λ_max(H) | ‖H‖_F/λ_max(H) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for step in range(2001):
        if step % 400 == 0:
            t = theta.detach()
            H = hessian(loss)(t)
            J = vmap(jacrev(logits), in_dims=(None, 0))(t, x)                 # (N, C, n)
            p = torch.softmax(functional_call(net, unflat(t), (x,)), 1)
            S = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / N     # c∇²ℓ, c = 1/N
            e = (p - torch.nn.functional.one_hot(y, C)) / N                    # c∇ℓ
            G = torch.einsum("icn,icd,idm->nm", J, S, J)
            R = H - G
            per_sample = torch.einsum("ic,icnm->inm", e,
                                      vmap(hessian(logits), in_dims=(None, 0))(t, x))
            triangle = torch.linalg.matrix_norm(per_sample, "fro").sum()
            top = [float(torch.linalg.eigvalsh(A)[-1]) for A in (H, G, R)]
            print(f"| {step} | {float(loss(t)):.4f} | {top[0]:.4g} | {top[1]:.4g} | {top[2]:.3g} | "
                  f"{float(R.norm()):.3g} | {float(triangle):.3g} | "
                  f"{(top[1] + float(triangle)) / top[0]:.2f} | "
                  f"{(top[1] + float(R.norm())) / top[0]:.2f} | {float(H.norm()) / top[0]:.2f} |")
        value = loss(theta)
        (gradient,) = torch.autograd.grad(value, theta)
        with torch.no_grad():
            theta -= lr * gradient


if __name__ == "__main__":
    main()
