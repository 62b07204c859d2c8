"""docs/math.md §12 in plain PyTorch: exact tr H, tr(H²) (and tr G, tr R, tr G², tr GR, tr R²) of
the loss Hessian of a deep MLP  x -> Linear -> phi -> ... -> Linear  without forming any n × n
matrix; the executable check of the derivation (tests/test_deep_derivation.py compares it with
torch.func.hessian of the real nn.Sequential). Test-only: never imported by the torch_ws package,
whose C++ op (csrc/ops/deep/) evaluates the same Gram forms on its own. Runs under torch's
default dtype (the tests set float64) and forms every (N, N, ·, ·) pair array at once: small
problems only.

Notation (docs/math.md §12.1):
  layers l = 1..L+1 (L hidden), a_l = W_l z_{l-1} + b_l, z_l = phi(a_l), f = a_{L+1}.
  at[l-1] = ã_{l-1} = [z_{l-1}; 1]  (or z_{l-1} without biases)
  F[l][k] = ∂a_l/∂a_k (k <= l),  B_l = F[L+1][l]
  e_i = c ∇_f ℓ,  S_i = c ∇²_f ℓ,  p_{i,l} = B_{i,l}ᵀ e_i,  r_{i,l} = φ''(a_{i,l}) ⊙ (W_{l+1}ᵀ p_{i,l+1})
  κ_k(i,j) = ã_{i,k-1}·ã_{j,k-1}
  Γ^{ij}_{lm} = Σ_{k<=min(l,m)} κ_k(i,j) F_{i,l,k} F_{j,m,k}ᵀ      (H_l x H_m), o := L+1
All per-pair quantities are (N, N, ., .) tensors.
"""
import math

import torch
import torch.nn.functional as Fn


# ----------------------------------------------------------------------------- helpers
def act_derivs(name, a):
    """phi(a), phi'(a), phi''(a)."""
    if name == "tanh":
        t = torch.tanh(a)
        return t, 1 - t * t, -2 * t * (1 - t * t)
    if name == "softplus":
        s = torch.sigmoid(a)
        return Fn.softplus(a), s, s * (1 - s)
    if name == "gelu":  # exact (erf) GELU
        Phi = 0.5 * (1 + torch.erf(a / math.sqrt(2)))
        phi = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
        return a * Phi, Phi + a * phi, phi * (2 - a * a)
    if name == "sigmoid":
        s = torch.sigmoid(a)
        return s, s * (1 - s), s * (1 - s) * (1 - 2 * s)
    raise ValueError(name)


def loss_derivs(f, target, loss, reduction):
    """e_i = c ∇_f ℓ (N,C), S_i = c ∇²_f ℓ (N,C,C).
    ce: softmax cross-entropy (target = class indices), bce: BCE-with-logits (C = 1,
    target in [0,1]), mse: ℓ = Σ_c (f_c - t_c)² (target (N,C))."""
    N, C = f.shape
    c = 1.0 / N if reduction == "mean" else 1.0
    if loss == "ce":
        p = torch.softmax(f, -1)
        e = c * (p - Fn.one_hot(target, C).to(f.dtype))
        S = c * (torch.diag_embed(p) - p[:, :, None] * p[:, None, :])
    elif loss == "bce":
        assert C == 1
        s = torch.sigmoid(f)
        e = c * (s - target.reshape(N, 1))
        S = c * (s * (1 - s))[:, :, None]
    elif loss == "mse":
        e = 2 * c * (f - target)
        S = 2 * c * torch.eye(C).expand(N, C, C)
    else:
        raise ValueError(loss)
    return e, S


# ----------------------------------------------------------------------------- main routine
def deep_traces(x, target, weights, biases, activation="tanh", loss="ce", reduction="mean",
                check_generic=False):
    """weights: [W_1..W_{L+1}], W_l of shape (H_l, H_{l-1}); biases: list or None.
    Returns dict with trH, trH2, trG, trG2, trR, trGR, trR2 (all exact, no n x n matrix)."""
    L = len(weights) - 1
    o = L + 1
    N = x.shape[0]
    W = [None] + list(weights)                      # W[l], l = 1..L+1
    b = [None] + (list(biases) if biases is not None else [None] * (L + 1))
    use_bias = biases is not None

    # ---- forward: ã_{l-1}, a_l, z_l, φ'(a_l), φ''(a_l)
    z, at, a, d1, d2 = [x], [None], [None], [None], [None]   # at[l] = ã_{l-1}
    for l in range(1, L + 2):
        zl1 = z[l - 1]
        at.append(torch.cat([zl1, torch.ones(N, 1)], 1) if use_bias else zl1)
        al = zl1 @ W[l].T + (b[l] if use_bias else 0.0)
        a.append(al)
        if l <= L:
            zz, p1, p2 = act_derivs(activation, al)
            z.append(zz); d1.append(p1); d2.append(p2)
    f = a[o]
    e, S = loss_derivs(f, target, loss, reduction)
    kap = [None] + [at[l] @ at[l].T for l in range(1, L + 2)]   # κ_l (N,N)

    # ---- per-sample Jacobians F[l][k] = ∂a_l/∂a_k  (N, H_l, H_k)
    F = [[None] * (L + 2) for _ in range(L + 2)]
    for k in range(1, L + 2):
        F[k][k] = torch.eye(W[k].shape[0]).expand(N, -1, -1)
        for l in range(k + 1, L + 2):
            F[l][k] = torch.einsum("ab,nbc->nac", W[l], d1[l - 1][:, :, None] * F[l - 1][k])
    # ---- first/second order backward vectors
    p = [None] * (L + 2)
    for l in range(1, L + 2):
        p[l] = torch.einsum("nc,nch->nh", e, F[o][l])           # p_l = B_lᵀ e
    r = [None] * (L + 1)
    for l in range(1, L + 1):
        r[l] = d2[l] * (p[l + 1] @ W[l + 1])                    # r_l = φ''_l ⊙ W_{l+1}ᵀ p_{l+1}

    # ---- pair kernels Γ^{ij}_{lm} (N,N,H_l,H_m), l,m = 1..L+1
    #   Γ_11 = κ_1 I,  Γ_ll = W_l D'_{i,l-1} Γ_{l-1,l-1} D'_{j,l-1} W_lᵀ + κ_l I,
    #   Γ_lm = Γ_{l,m-1} D'_{j,m-1} W_mᵀ (m > l),   Γ_ml = W_m D'_{i,m-1} Γ_{m-1,l} (m > l)
    Gam = [[None] * (L + 2) for _ in range(L + 2)]
    for l in range(1, L + 2):
        I = torch.eye(W[l].shape[0])
        Gam[l][l] = kap[l][:, :, None, None] * I
        if l > 1:
            X = d1[l - 1][:, None, :, None] * Gam[l - 1][l - 1] * d1[l - 1][None, :, None, :]
            Gam[l][l] = Gam[l][l] + torch.einsum("ab,ijbc,dc->ijad", W[l], X, W[l])
        for m in range(l + 1, L + 2):
            Gam[l][m] = torch.einsum("ijab,cb->ijac", Gam[l][m - 1] * d1[m - 1][None, :, None, :], W[m])
            Gam[m][l] = torch.einsum("ab,ijbc->ijac", W[m], d1[m - 1][:, None, :, None] * Gam[m - 1][l])
    if check_generic:  # direct definition Γ_lm = Σ_{k<=min(l,m)} κ_k F_{i,l,k} F_{j,m,k}ᵀ
        for l in range(1, L + 2):
            for m in range(1, L + 2):
                D = sum(torch.einsum("ij,iab,jcb->ijac", kap[k], F[l][k], F[m][k]) for k in range(1, min(l, m) + 1))
                assert torch.allclose(D, Gam[l][m], rtol=1e-12, atol=1e-12)
    diagN = lambda T: torch.diagonal(T, dim1=0, dim2=1).movedim(-1, 0)   # (N,N,..)->(N,..) i=j

    # ---- traces
    trG = torch.einsum("iab,iba->", S, diagN(Gam[o][o]))
    trR = sum((r[l] * torch.diagonal(diagN(Gam[l][l]), dim1=-2, dim2=-1)).sum() for l in range(1, L + 1))
    trG2 = torch.einsum("iab,ijbc,jcd,ijad->", S, Gam[o][o], S, Gam[o][o])

    # tr(GR) = Σ_ij [ Σ_{m=1}^{L} tr(S_i Γ_{om} diag(r_{j,m}) Γ_{om}ᵀ)
    #                + 2 Σ_{m=2}^{L+1} (B_{i,m} p_{j,m})ᵀ S_i Γ_{o,m-1} (φ'_{j,m-1} ⊙ z_{i,m-1}) ]
    trGR = 0.0
    for m in range(1, L + 1):
        trGR = trGR + torch.einsum("iab,ijbx,jx,ijax->", S, Gam[o][m], r[m], Gam[o][m])
    T1 = trGR
    for m in range(2, L + 2):
        Bp = torch.einsum("iah,jh->ija", F[o][m], p[m])
        v = d1[m - 1][None, :, :] * z[m - 1][:, None, :]           # (i,j,x) = φ'_{j,m-1,x} z_{i,m-1,x}
        trGR = trGR + 2 * torch.einsum("ija,iab,ijbx,ijx->", Bp, S, Gam[o][m - 1], v)
    T2 = trGR - T1

    # tr(R²) = Q1 + Q2 + Q3
    Q1 = sum(torch.einsum("ix,ijxy,jy->", r[l], Gam[l][m] ** 2, r[m])
             for l in range(1, L + 1) for m in range(1, L + 1))
    Q2 = 0.0
    for l in range(1, L + 1):
        for m in range(2, l + 1):
            u = r[l][:, None, :] * torch.einsum("ixh,jh->ijx", F[l][m], p[m])     # r_{i,l} ⊙ F_{i,l,m} p_{j,m}
            v = d1[m - 1][None, :, :] * z[m - 1][:, None, :]                      # φ'_{j,m-1} ⊙ z_{i,m-1}
            Q2 = Q2 + 4 * torch.einsum("ijx,ijxy,ijy->", u, Gam[l][m - 1], v)
    Q3 = 0.0
    for l in range(2, L + 2):
        dg = torch.diagonal(Gam[l - 1][l - 1], dim1=-2, dim2=-1)                    # (N,N,H_{l-1})
        Q3 = Q3 + 2 * torch.einsum("ih,jh,ix,jx,ijx->", p[l], p[l], d1[l - 1], d1[l - 1], dg)
    trR2 = Q1 + Q2 + Q3
    # Q1 again in the Gram form of §12.4: Σ_{k,k'} Σ_ij κ_k κ_k' ⟨N^i_{kk'}, N^j_{kk'}⟩ with
    # N^i_{kk'} = Σ_{l ≥ max(k,k')} F_{i,l,k}ᵀ diag(r_{i,l}) F_{i,l,k'} (no pair kernel Γ)
    def n_matrix(k, k2):  # N^i_{kk'} (N, H_k, H_k')
        return sum(torch.einsum("nxa,nx,nxc->nac", F[l][k], r[l], F[l][k2]) for l in range(max(k, k2), L + 1))

    Q1_gram = 0.0
    for k in range(1, L + 1):
        for k2 in range(1, L + 1):
            Nk = n_matrix(k, k2)
            Q1_gram = Q1_gram + torch.einsum("ij,ij,iac,jac->", kap[k], kap[k2], Nk, Nk)
    # Q2 and tr(GR)'s first part the same way (§12.3): Q2 = 4 Σ_{k<m≤L} Σ_ij κ_k (N^iᵀ_{mk} p_{j,m})·
    # ((φ'_{j,m-1} ∘ F_{j,m-1,k})ᵀ z_{i,m-1}); T1 = Σ_{m≤L} Σ_{k,k'≤m} Σ_ij κ_k κ_k' ⟨B_ikᵀS_iB_ik', N^j_{kk'}⟩
    # restricted to l = m, i.e. with N^j built from layer m alone.
    Q2_gram = 0.0
    for m in range(2, L + 1):
        for k in range(1, m):
            left = torch.einsum("iab,ja->ijb", n_matrix(m, k), p[m])
            right = torch.einsum("jy,jyb,iy->ijb", d1[m - 1], F[m - 1][k], z[m - 1])
            Q2_gram = Q2_gram + 4 * torch.einsum("ij,ijb,ijb->", kap[k], left, right)
    # T2 = 2 Σ_{2≤m≤o} Σ_{k<m} Σ_ij κ_k ((B_imᵀS_iB_ik)ᵀ p_{j,m})·(F_{j,m-1,k}ᵀ(φ'_{j,m-1} ∘ z_{i,m-1}));
    # Q3 = 2 Σ_{2≤l≤o} Σ_{k<l} Σ_ij κ_k (p_{i,l}·p_{j,l}) ⟨D'_{i,l-1}F_{i,l-1,k}, D'_{j,l-1}F_{j,l-1,k}⟩
    T2_gram, Q3_gram = 0.0, 0.0
    for m in range(2, L + 2):
        for k in range(1, m):
            BSB = torch.einsum("ica,icd,idb->iab", F[o][m], S, F[o][k])
            left = torch.einsum("iab,ja->ijb", BSB, p[m])
            right = torch.einsum("jy,jyb,iy->ijb", d1[m - 1], F[m - 1][k], z[m - 1])
            T2_gram = T2_gram + 2 * torch.einsum("ij,ijb,ijb->", kap[k], left, right)
            scaled = d1[m - 1][:, :, None] * F[m - 1][k]
            Q3_gram = Q3_gram + 2 * torch.einsum("ij,ih,jh,iab,jab->", kap[k], p[m], p[m], scaled, scaled)
    T1_gram = 0.0
    for m in range(1, L + 1):
        for k in range(1, m + 1):
            for k2 in range(1, m + 1):
                BSB = torch.einsum("ica,icd,idb->iab", F[o][k], S, F[o][k2])
                P = torch.einsum("nxa,nx,nxc->nac", F[m][k], r[m], F[m][k2])
                T1_gram = T1_gram + torch.einsum("ij,ij,iab,jab->", kap[k], kap[k2], BSB, P)

    out = dict(trG=trG, trR=trR, trH=trG + trR, trG2=trG2, trGR=trGR, trR2=trR2,
               trH2=trG2 + 2 * trGR + trR2, Q1=Q1, Q1_gram=Q1_gram,
               Q2=Q2, Q2_gram=Q2_gram, Q3=Q3, Q3_gram=Q3_gram,
               T1=T1, T1_gram=T1_gram, T2=T2, T2_gram=T2_gram,
               trH2_gram=trG2 + 2 * (T1_gram + T2_gram) + Q1_gram + Q2_gram + Q3_gram)
    if check_generic:
        out["generic"] = _generic_block_traces(L, N, W, z, kap, d1, S, p, r, F, Gam)
    return out


def _generic_block_traces(L, N, W, z, kap, d1, S, p, r, F, Gam):
    """Same traces through the unified factorisation H = Σ_i U_i C_i U_iᵀ:
    tr(H) = Σ_i tr(C_i K_ii), tr(H²) = Σ_ij tr(C_i K_ij C_j K_ijᵀ) with K_ij = U_iᵀ U_j (block-wise,
    blocks built from Γ, p, z, F).  Independent bookkeeping used as a cross-check."""
    o = L + 1
    dims = {("a", l): W[l].shape[0] for l in range(1, L + 2)}
    dims.update({("w", l): W[l].shape[1] for l in range(2, L + 2)})

    def K(g1, g2, k=None):  # (N,N,d1,d2) block U_{i,g1}ᵀ P_k U_j,g2 (P_k: layer-k params; None: all)
        (t1, l), (t2, m) = g1, g2
        Z = lambda: torch.zeros(N, N, dims[g1], dims[g2])
        if k is not None:
            if t1 == "a" and t2 == "a":
                if k > min(l, m):
                    return Z()
                return torch.einsum("ij,iab,jcb->ijac", kap[k], F[l][k], F[m][k])
            if (t1 == "w" and l != k) or (t2 == "w" and m != k):
                return Z()
        if t1 == "a" and t2 == "a":
            return Gam[l][m]
        if t1 == "w" and t2 == "w":
            if l != m:
                return torch.zeros(N, N, dims[g1], dims[g2])
            return (p[l] @ p[l].T)[:, :, None, None] * torch.eye(dims[g1])
        if t1 == "w" and t2 == "a":          # [l<=m] z_{j,l-1} (F_{j,m,l} p_{i,l})ᵀ
            if l > m:
                return torch.zeros(N, N, dims[g1], dims[g2])
            Fp = torch.einsum("jyh,ih->ijy", F[m][l], p[l])
            return z[l - 1][None, :, :, None] * Fp[:, :, None, :]
        # a_l, w_m : [m<=l] (F_{i,l,m} p_{j,m}) z_{i,m-1}ᵀ
        if m > l:
            return torch.zeros(N, N, dims[g1], dims[g2])
        Fp = torch.einsum("ixh,jh->ijx", F[l][m], p[m])
        return Fp[:, :, :, None] * z[m - 1][:, None, None, :]

    # C-blocks: (g1, g2, kind, tensor)  kind 'dense' (N,d,d) or 'diag' (N,d)
    blocksG = [(("a", o), ("a", o), "dense", S)]
    blocksR = [(("a", l), ("a", l), "diag", r[l]) for l in range(1, L + 1)]
    for l in range(2, L + 2):
        blocksR.append((("w", l), ("a", l - 1), "diag", d1[l - 1]))
        blocksR.append((("a", l - 1), ("w", l), "diag", d1[l - 1]))

    def pair(bi, bj, k1=None, k2=None):  # Σ_ij tr(C_i[α,β] K[β,γ] C_j[γ,δ] K[α,δ]ᵀ)
        (al, be, ki, Ci), (ga, de, kj, Cj) = bi, bj
        K1, K2 = K(be, ga, k1), K(al, de, k2)
        X = Ci[:, None, :, None] * K1 if ki == "diag" else torch.einsum("iab,ijbc->ijac", Ci, K1)
        X = X * Cj[None, :, None, :] if kj == "diag" else torch.einsum("ijac,jcd->ijad", X, Cj)
        return (X * K2).sum()

    def tr1(blocks):
        t = 0.0
        for (al, be, kind, C) in blocks:
            Kii = torch.diagonal(K(be, al), dim1=0, dim2=1).movedim(-1, 0)
            t = t + (torch.einsum("ix,ixx->", C, Kii) if kind == "diag" else torch.einsum("iab,iba->", C, Kii))
        return t

    tt = lambda A, B, k1=None, k2=None: sum(pair(x, y, k1, k2) for x in A for y in B)
    blocksH = blocksG + blocksR
    # layer-pair Frobenius norms ‖R_{kk'}‖², ‖H_{kk'}‖² (k,k' = 1..L+1, layer k = (W_k, b_k))
    R2blk = torch.stack([torch.stack([tt(blocksR, blocksR, k1, k2) for k2 in range(1, L + 2)])
                         for k1 in range(1, L + 2)])
    H2blk = torch.stack([torch.stack([tt(blocksH, blocksH, k1, k2) for k2 in range(1, L + 2)])
                         for k1 in range(1, L + 2)])
    # dense kernel form: H = U C Uᵀ with U = [U_1 .. U_N] (n x N r), so the nonzero spectrum of H
    # equals that of C K, K = Uᵀ U (N r x N r), r = C + 2 Σ_l H_l.  (Only for checking/small N r.)
    groups = list(dims)
    off, tot = {}, 0
    for g in groups:
        off[g] = tot; tot += dims[g]
    Kd = torch.zeros(N, tot, N, tot)
    Cd = torch.zeros(N, tot, tot)
    for g1 in groups:
        for g2 in groups:
            Kd[:, off[g1]:off[g1] + dims[g1], :, off[g2]:off[g2] + dims[g2]] = K(g1, g2).permute(0, 2, 1, 3)
    for (g1, g2, kind, C) in blocksH:
        Cd[:, off[g1]:off[g1] + dims[g1], off[g2]:off[g2] + dims[g2]] = torch.diag_embed(C) if kind == "diag" else C
    Kd = Kd.reshape(N * tot, N * tot)
    Cd = torch.block_diag(*Cd)
    eigH = torch.linalg.eigvals(Cd @ Kd).real.sort(descending=True).values
    return dict(trG=tr1(blocksG), trR=tr1(blocksR), trG2=tt(blocksG, blocksG),
                trGR=tt(blocksG, blocksR), trR2=tt(blocksR, blocksR), R2blk=R2blk, H2blk=H2blk,
                eigH=eigH)
