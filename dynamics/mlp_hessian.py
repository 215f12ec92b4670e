"""The exact Hessian of an MLP by its layer structure (piecewise-linear activations).

For z_0 = W_0 a_0 + b_0, a_{l+1} = φ(z_l), z_{l+1} = W_{l+1} a_{l+1} + b_{l+1}, output
z_{L-1}, and a mean loss L_B = (1/N) Σ_n ℓ(z^n, y_n), the Hessian splits as

    H = (1/N) Σ_n J_nᵀ Λ_n J_n  +  (1/N) Σ_n Σ_o g_{n,o} ∇²_θ z^n_o          (Gauss–Newton + residual)

with J_n = ∂z^n/∂θ, g_n = ∂ℓ/∂z^n and Λ_n = ∂²ℓ/∂z² (cross-entropy: diag(p) − ppᵀ;
MSE (1/O)Σ(z − y)²: (2/O)·I). For ReLU or linear φ (φ'' = 0) z is linear in each
layer's own parameters, so the residual has only cross-layer blocks. With
B_l = ∂z/∂z_l, δ_l = ∂ℓ/∂z_l and D^{m,l} = ∂a_m/∂z_l (m > l), per sample:

    GN[W_l(i,j), W_m(p,q)] = (B_lᵀ Λ B_m)[i,p] · a_l[j] · a_m[q]         (biases: a -> 1)
    R [W_m(i,j), W_l(p,q)] = δ_m[i] · D^{m,l}[j,p] · a_l[q]   for l < m  (b_l: a_l -> 1; b_m rows: 0)

Λ_n = S_n S_nᵀ with S_nᵀ = diag(√p) − √p pᵀ (cross-entropy), so the GN term is
(1/N) MᵀM for the whitened Jacobian M_n = S_nᵀ J_n, (N·O, P), and each GN block is a
sum of N Kronecker products, computed as one matmul with inner dimension N.

At batch N the loss depends on W_0 only through its action on the span of the N inputs,
so :func:`mlp_hessian_eigh` finds the exact eigendecomposition from a Hessian of
P' = P − d_1 (d_0 − N) parameters (390 instead of 5,350 for 256-20-10 at batch 8)
without forming the P x P matrix.

The flat parameter order is PyTorch's for ``nn.Sequential`` of ``nn.Linear``:
W_0 (row-major, out x in), b_0, W_1, b_1, ...
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from dynamics.symeig import SymEig, add_to_all_entries, dense_eigh

MLP_ACTIVATIONS = ("relu", "linear")  # φ'' = 0: the structured formulas are exact
STRUCTURED_LOSSES = ("cross_entropy", "mse")


def mlp_params_from_flat(w: Tensor, sizes: Sequence[int], bias: bool = True) -> tuple[list[Tensor], list]:
    """Views (W_l, b_l) into a flat vector for layer sizes [d_0, d_1, ..., d_L].

    Raises:
        ValueError: w.numel() does not match the sizes.
    """
    need = sum(o * i + (o if bias else 0) for i, o in zip(sizes[:-1], sizes[1:]))
    if w.ndim != 1 or w.numel() != need:
        raise ValueError(f"w must be a flat vector of {need} parameters for sizes {list(sizes)}; "
                         f"got shape {tuple(w.shape)}")
    weights, biases, at = [], [], 0
    for i, o in zip(sizes[:-1], sizes[1:]):
        weights.append(w[at:at + o * i].view(o, i))
        at += o * i
        if bias:
            biases.append(w[at:at + o])
            at += o
        else:
            biases.append(None)
    return weights, biases


def mlp_hessian_eigh_nbytes(sizes: Sequence[int], batch_size: int, bias: bool = True, itemsize: int = 8) -> int:
    """Working memory of :func:`mlp_hessian_eigh`: three P' x P' matrices, P' = P − d_1 (d_0 − min(N, d_0))."""
    p = sum(o * i + (o if bias else 0) for i, o in zip(sizes[:-1], sizes[1:]))
    p_red = p - sizes[1] * (sizes[0] - min(batch_size, sizes[0]))
    return 3 * p_red * p_red * itemsize


class _Pass:
    """Forward and backward quantities of one batch (per sample; nothing divided by N)."""

    def __init__(self, weights, biases, x, y, activation, loss):
        if activation not in MLP_ACTIVATIONS:
            raise ValueError(f"activation must be one of {MLP_ACTIVATIONS} for the structured Hessian; "
                             f"got {activation!r}")
        if loss not in STRUCTURED_LOSSES:
            raise ValueError(f"loss must be one of {STRUCTURED_LOSSES}; got {loss!r}")
        n_layers = len(weights)
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != weights[0].shape[1]:
            raise ValueError(f"x must have {weights[0].shape[1]} features per sample; got {x.shape[1]}")
        self.n, self.weights, self.biases = x.shape[0], list(weights), list(biases)
        self.a = [x]  # inputs to each layer, (N, d_l)
        self.dphi = []  # φ'(z_l) of hidden layers, (N, d_{l+1})
        z = x
        for l, (w, b) in enumerate(zip(weights, biases)):
            z = self.a[l] @ w.T + (b if b is not None else 0)
            if l < n_layers - 1:
                d = (z > 0).to(z.dtype) if activation == "relu" else torch.ones_like(z)
                self.dphi.append(d)
                self.a.append(z * d)
        out = z  # (N, O)
        o = out.shape[1]
        if loss == "cross_entropy":
            p = torch.softmax(out, dim=1)
            g = p - torch.nn.functional.one_hot(y.long(), o).to(p.dtype)
            sqp = p.sqrt()
            s_t = torch.diag_embed(sqp) - sqp[:, :, None] * p[:, None, :]  # S_nᵀ, (N, O, O)
        else:
            y = y.reshape(out.shape).to(out.dtype)
            g = 2.0 * (out - y) / o
            s_t = math.sqrt(2.0 / o) * torch.eye(o, dtype=out.dtype, device=out.device).expand(self.n, o, o)
        # Whitened output Jacobians B̃_l = S_nᵀ ∂z/∂z_l, (N, O, d_l), and δ_l, (N, d_l).
        self.bt = [None] * n_layers
        self.delta = [None] * n_layers
        self.bt[-1], self.delta[-1] = s_t, g
        for l in range(n_layers - 2, -1, -1):
            self.bt[l] = (self.bt[l + 1] @ weights[l + 1]) * self.dphi[l][:, None, :]
            self.delta[l] = (self.delta[l + 1] @ weights[l + 1]) * self.dphi[l]
        # Parameter groups in flat order: (layer, is_bias, size, offset).
        self.groups, at = [], 0
        for l, (w, b) in enumerate(zip(weights, biases)):
            self.groups.append((l, False, w.numel(), at))
            at += w.numel()
            if b is not None:
                self.groups.append((l, True, b.numel(), at))
                at += b.numel()
        self.num_params = at

    def side(self, group) -> Tensor:
        """Per-sample vector multiplying the output index: a_l for W_l, 1 for b_l. (N, e)."""
        l, is_bias, _, _ = group
        return self.a[l].new_ones(self.n, 1) if is_bias else self.a[l]

    def jacobian(self, group) -> Tensor:
        """Whitened Jacobian columns M of one group, (N·O, size)."""
        l = group[0]
        e = self.side(group)
        m = self.bt[l][:, :, :, None] * e[:, None, None, :]  # (N, O, d_l, e)
        return m.reshape(self.n * m.shape[1], -1)

    def d_act(self, m: int, l: int) -> Tensor:
        """D^{m,l} = ∂a_m/∂z_l for l < m, (N, width of a_m, width of z_l)."""
        d = torch.diag_embed(self.dphi[l])  # ∂a_{l+1}/∂z_l
        for k in range(l + 1, m):
            d = self.dphi[k][:, :, None] * (self.weights[k] @ d)
        return d

    def gn_block(self, ga, gb, out: Tensor | None = None) -> Tensor:
        """(1/N) Σ_n K_n ⊗ (e^a_n e^bᵀ_n), K_n = B̃_aᵀ B̃_b: one batched matmul with inner dimension N.

        Written straight into ``out`` (a (size_a, size_b) view, rows may be strided) when given.
        """
        k = self.bt[ga[0]].transpose(1, 2) @ self.bt[gb[0]] / self.n  # (N, d_a, d_b)
        ea, eb = self.side(ga), self.side(gb)
        rows, d_b = k.shape[1] * ea.shape[1], k.shape[2]
        u = (k[:, :, None, :] * ea[:, None, :, None]).reshape(self.n, rows, d_b).permute(1, 2, 0)  # (rows, d_b, N)
        if out is None:
            out = ea.new_empty(rows, d_b * eb.shape[1])
        torch.bmm(u, eb.expand(rows, *eb.shape), out=out.unflatten(1, (d_b, eb.shape[1])))
        return out

    def r_block(self, g_row, g_col) -> Tensor | None:
        """Residual block R[W_m, G_l] for l < m (None when it vanishes)."""
        m, row_bias = g_row[0], g_row[1]
        l = g_col[0]
        if row_bias or m <= l:
            return None
        d = self.d_act(m, l)  # (N, d_in of layer m, d_l)
        v = (self.delta[m][:, :, None, None] * d[:, None, :, :]).reshape(self.n, -1)
        eb = self.side(g_col)
        return (v.T @ eb).reshape(self.delta[m].shape[1] * d.shape[1], d.shape[2] * eb.shape[1]) / self.n

    def block(self, ga, gb, out: Tensor | None = None) -> Tensor:
        """H[G_a, G_b] (GN + residual), into ``out`` when given."""
        h = self.gn_block(ga, gb, out)
        r = self.r_block(ga, gb)
        if r is not None:
            h += r
        r = self.r_block(gb, ga)
        if r is not None:
            h += r.T
        return h


def mlp_hessian(
    weights: Sequence[Tensor], biases: Sequence[Tensor | None], x: Tensor, y: Tensor,
    activation: str = "relu", loss: str = "cross_entropy", out: Tensor | None = None,
) -> Tensor:
    """The exact dense Hessian (P, P) of the mean loss of an MLP on a batch.

    Args:
        weights: W_l, (d_{l+1}, d_l).
        biases: b_l (d_{l+1},), or None for a layer without bias.
        x: (N, d_0) inputs (flattened if more dims).
        y: (N,) class labels (cross_entropy) or (N, O) targets (mse).
        activation: 'relu' or 'linear'.
        loss: 'cross_entropy' (mean over the batch) or 'mse' (mean over batch and outputs, no 1/2).
        out: optional (P, P) buffer to fill; reusing one across steps saves page-faulting
            a fresh 100+ MB matrix every call.

    Returns:
        H in the flat order W_0, b_0, W_1, b_1, ... and the dtype of the inputs.
    """
    ps = _Pass(weights, biases, x, y, activation, loss)
    shape = (ps.num_params, ps.num_params)
    if out is None:
        out = x.new_empty(shape)
    elif out.shape != shape or out.dtype != x.dtype:
        raise ValueError(f"out must be a {shape} {x.dtype} tensor; got {tuple(out.shape)} {out.dtype}")
    for i, ga in enumerate(ps.groups):
        for gb in ps.groups[i:]:
            blk = ps.block(ga, gb, out[ga[3]:ga[3] + ga[2], gb[3]:gb[3] + gb[2]])
            if gb is not ga:
                out[gb[3]:gb[3] + gb[2], ga[3]:ga[3] + ga[2]] = blk.T
    return out


def mlp_hessian_eigh(
    weights: Sequence[Tensor], biases: Sequence[Tensor | None], x: Tensor, y: Tensor,
    activation: str = "relu", loss: str = "cross_entropy", eps_eigh: float = 0.0, eps_eigh_mode: str = "identity",
):
    """Exact eigendecomposition of the MLP Hessian, computed in the span of the batch's inputs.

    The loss depends on W_0 only through W_0 x_n, so with Q (d_0, k) an orthonormal basis
    of span{x_n} (k <= N) it is the loss of the same network with first layer W_0' = W_0 Q
    on inputs x̂_n = Qᵀ x_n. Its Hessian H' (P' = P − d_1 (d_0 − k) parameters; 390 for
    256-20-10 at batch 8) is the compression of H to the parameters that matter, and
    every direction outside them has eigenvalue exactly 0. H' is assembled by
    :func:`mlp_hessian`, decomposed densely, and its eigenvectors are mapped back
    (W_0 part v -> v Qᵀ).

    The arguments are those of :func:`mlp_hessian`; ``eps_eigh`` and ``eps_eigh_mode`` act as ``mode`` in
    ``dynamics.symeig.dense_eigh`` (``all_entries`` shifts the full P x P Hessian by eps·11ᵀ, via
    ``add_to_all_entries``).

    Returns:
        ``dynamics.symeig.SymEig`` with P' <= P (P' + 1 under ``all_entries``) orthonormal columns; the
        other eigenvalues are 0.
    """
    if eps_eigh_mode == "all_entries":
        return add_to_all_entries(mlp_hessian_eigh(weights, biases, x, y, activation, loss), eps_eigh)
    x = x.reshape(x.shape[0], -1)
    q = input_span(x)  # (d_0, k)
    d1, d0 = weights[0].shape
    k = q.shape[1]
    if k == d0:  # the inputs span every feature: nothing to reduce
        return dense_eigh(mlp_hessian(weights, biases, x, y, activation, loss), eps_eigh, eps_eigh_mode)
    reduced = dense_eigh(mlp_hessian([weights[0] @ q, *weights[1:]], biases, x @ q, y, activation, loss), eps_eigh,
                         eps_eigh_mode)
    v = reduced.eigenvectors  # (P', r)
    head = v[:d1 * k].T.reshape(-1, d1, k) @ q.T  # W_0 part back in the full input space, (r, d1, d0)
    full = torch.cat([head.reshape(v.shape[1], -1).T, v[d1 * k:]])  # (P, r)
    return SymEig(reduced.eigenvalues, full, full.shape[0])


def input_span(x: Tensor, rtol: float | None = None) -> Tensor:
    """Orthonormal basis (d_0, k) of the span of the rows of x (N, d_0), by SVD; rank rtol = max(N, d_0)·eps."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    if rtol is None:
        rtol = max(x.shape) * torch.finfo(x.dtype).eps
    keep = s > rtol * s.max().clamp_min(torch.finfo(x.dtype).tiny)
    return vh[keep].T
