"""Lyapunov exponents of (S)GD by tangent propagation and QR re-orthonormalisation.

The SGD step w_{t+1} = w_t − lr ∇L_{B_t}(w_t) has the tangent map J_t = I − lr H_t
(H_t the minibatch Hessian at w_t). Heavy-ball momentum in PyTorch's form,
v_{t+1} = μ v_t + ∇L, w_{t+1} = w_t − lr v_{t+1}, has the tangent state (δw, δv) and

    δv' = μ δv + H_t δw,     δw' = δw − lr δv'.

The exponents χ_i = lim (1/t) log σ_i(J_t ⋯ J_1) (natural log, per step) come from
Benettin's method: propagate an orthonormal K-frame Q, re-orthonormalise Q ← qr(Q)
every ``qr_every`` steps and accumulate log|diag R| (docs/notes/chaos.md#lyapunov; the original's
eigh(YᵀY) of the raw product overflows). χ_i = (Σ log|R_ii|) / t.

For a quadratic loss with fixed H = U diag(λ) Uᵀ and no momentum, χ_i = log|1 − lr λ_i|.
Directions are locally chaotic where |1 − lr λ| > 1, i.e. λ < 0 or λ > 2/lr
(with momentum: λ < 0 or lr λ > 2(1 + μ), where the heavy-ball companion matrix
[[1 − lr λ, −lr μ], [λ, μ]] has spectral radius > 1).

With ``track_initial`` the product of the R factors is also kept in graded form,
R_tot = diag(e^c) U (rows of U scaled to max 1), and :func:`initial_vectors` returns
the directions at time 0 that grow at each rate (Gram–Schmidt of U's rows in order of
decreasing c): the right singular vectors of the tangent product, exactly in the
limit of well-separated exponents. Perturbing w_0 along them is the distance
experiment's max_chaos / max_convergence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

from core import checks

TangentMap = Callable[[Tensor], Tensor]  # (D, K) -> (D, K)
# Below this spread of log row scales (e^25 ~ 7e10) the SVD of the graded product keeps even its
# smallest singular values to ~1e-5 relative; above it the graded Gram–Schmidt is used, which is
# exact in the limit of separated exponents.
SVD_LOG_RANGE = 25.0


@dataclass(frozen=True)
class LyapunovState:
    """Benettin tangent frame.

    Attributes:
        q: (D, K) tangent frame; orthonormal right after a re-orthonormalisation.
        log_r: (K,) accumulated log|R_ii|.
        steps: tangent maps applied.
        pending: maps applied since the last re-orthonormalisation.
        q0: (D, K) initial frame (None: the first K unit vectors).
        scale_log: (K,) graded log row scales c of R_tot (None unless tracking initial vectors).
        r_unit: (K, K) graded R_tot with rows of max-abs 1 (None unless tracking).
    """

    q: Tensor
    log_r: Tensor
    steps: int = 0
    pending: int = 0
    q0: Tensor | None = None
    scale_log: Tensor | None = None
    r_unit: Tensor | None = None


def init_lyapunov(
    dim: int, k: int | None = None, gen: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu", track_initial: bool = False,
) -> LyapunovState:
    """A K-frame in R^D: the identity's first columns if K = D, else a random orthonormal frame from ``gen``.

    Raises:
        ValueError: K not in [1, D], or a random frame without a generator.
    """
    k = dim if k is None else k
    checks.integer("k", k, lo=1, hi=dim, why=f"the tangent dimension is D = {dim}")
    if k == dim:
        q, q0 = torch.eye(dim, dtype=dtype, device=device), None
    else:
        if gen is None:
            raise ValueError("a generator is needed for a random frame (k < dim)")
        g = torch.randn(dim, k, generator=gen, dtype=dtype, device=gen.device).to(device)
        q, _ = torch.linalg.qr(g)
        q0 = q.clone()
    zeros = torch.zeros(k, dtype=torch.float64, device=device)
    if track_initial:
        return LyapunovState(q, zeros, q0=q0, scale_log=zeros.clone(),
                             r_unit=torch.eye(k, dtype=torch.float64, device=device))
    return LyapunovState(q, zeros, q0=q0)


def sgd_tangent_map(hmat: TangentMap, lr: float, momentum: float = 0.0, num_params: int | None = None) -> TangentMap:
    """The tangent map of one SGD step given Y -> H Y.

    Without momentum Y (P, K) -> Y − lr H Y. With momentum μ > 0, Y stacks (δw; δv),
    shape (2P, K), and maps to (δw − lr δv'; δv') with δv' = μ δv + H δw.
    """
    if momentum == 0:
        return lambda y: y - lr * hmat(y)
    if num_params is None:
        raise ValueError("num_params is needed with momentum (the tangent state is (δw, δv))")
    p = num_params

    def step(y: Tensor) -> Tensor:
        dv = momentum * y[p:] + hmat(y[:p])
        return torch.cat([y[:p] - lr * dv, dv])

    return step


def renormalise(state: LyapunovState) -> LyapunovState:
    """Q R = qr(frame): keep Q, accumulate log|diag R| (and the graded R product)."""
    q, r = torch.linalg.qr(state.q)
    diag = torch.diagonal(r).abs().double()
    if not bool(torch.isfinite(r).all()) or bool((diag == 0).any()):
        raise FloatingPointError(
            f"tangent frame became singular or non-finite at step {state.steps}; "
            "re-orthonormalise more often (qr_every)"
        )
    out = replace(state, q=q, log_r=state.log_r + diag.log(), pending=0)
    if state.r_unit is not None:
        c, u = _graded_update(state.scale_log, state.r_unit, r.double())
        out = replace(out, scale_log=c, r_unit=u)
    return out


def _graded_update(c: Tensor, u: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """R · diag(e^c) U = diag(e^c') U' with rows of U' of max-abs 1, without forming e^c."""
    k = c.numel()
    upper = torch.ones(k, k, dtype=torch.bool, device=c.device).triu()
    # m_i = max_{j >= i} c_j: row i only mixes rows j >= i, whose scales e^{c_j - m_i} <= 1.
    m = torch.flip(torch.cummax(torch.flip(c, [0]), 0).values, [0])
    scale = torch.where(upper, torch.exp((c[None, :] - m[:, None]).clamp(max=0.0)), torch.zeros((), dtype=c.dtype))
    rows = (r * scale) @ u
    norm = rows.abs().amax(dim=1).clamp_min(1e-300)
    return m + norm.log(), rows / norm[:, None]


def propagate(state: LyapunovState, tangent_map: TangentMap, qr_every: int = 1) -> LyapunovState:
    """Apply one tangent map to the frame; re-orthonormalise every ``qr_every`` steps.

    Raises:
        FloatingPointError: the frame became non-finite (names the step).
    """
    q = tangent_map(state.q)
    if not bool(torch.isfinite(q).all()):
        raise FloatingPointError(f"tangent frame overflowed at step {state.steps + 1}; lower qr_every")
    state = replace(state, q=q, steps=state.steps + 1, pending=state.pending + 1)
    return renormalise(state) if state.pending >= qr_every else state


def exponents(state: LyapunovState) -> Tensor:
    """Current estimates χ_i = (Σ log|R_ii|) / t, (K,), in frame order (not sorted); zeros before any step."""
    if state.steps == 0:
        return torch.zeros_like(state.log_r)
    log_r = state.log_r
    if state.pending:
        r = torch.linalg.qr(state.q).R
        log_r = log_r + torch.diagonal(r).abs().double().log()
    return log_r / state.steps


def initial_vectors(state: LyapunovState) -> tuple[Tensor, Tensor]:
    """Directions at time 0 ordered by growth, and their finite-time rates.

    While the log scales of R_tot spread by less than SVD_LOG_RANGE these are the
    exact right singular vectors and (1/t) log σ_i of the tangent product; beyond,
    the graded Gram–Schmidt directions and rates c_i / t.

    Returns:
        (rates (K,) descending, vectors (D, K) orthonormal): vectors[:, 0] is the
        fastest-growing initial perturbation.

    Raises:
        ValueError: the state was made without ``track_initial`` or no step was taken.
    """
    if state.r_unit is None:
        raise ValueError("initial vectors need init_lyapunov(..., track_initial=True)")
    if state.steps == 0:
        raise ValueError("no tangent step taken yet")
    if state.pending:
        state = renormalise(state)
    c, u = state.scale_log, state.r_unit
    if float(c.max() - c.min()) < SVD_LOG_RANGE:
        # Moderate spread: R_tot = diag(e^c) U is representable relative to its largest row, so its SVD is exact.
        _, sv, vh = torch.linalg.svd(torch.exp(c - c.max())[:, None] * u)
        rates, v = (sv.log() + c.max()) / state.steps, vh.T
    else:
        order = torch.argsort(c, descending=True)
        v, _ = torch.linalg.qr(u[order].T)  # Gram–Schmidt of the rows, fastest first
        rates = c[order] / state.steps
    if state.q0 is None:
        q0 = torch.eye(state.q.shape[0], v.shape[0], dtype=v.dtype, device=v.device)
    else:
        q0 = state.q0.double()
    return rates, q0 @ v


def expanding_subspace(state: LyapunovState, threshold: float = 0.0) -> Tensor:
    """Initial directions whose finite-time rate exceeds ``threshold``: (D, n_pos), fastest first.

    These are the right singular vectors of the tangent product M_t = J_t ⋯ J_1 with
    (1/t) log σ_i > threshold, i.e. the eigenvectors of M_tᵀ M_t with eigenvalue
    σ_i² > 1 at threshold 0: the subspace the original compares over time
    (chaotic_neurips22, ``FFNSkeleton.log_subspace_metric``, eigh of YᵀY). It lives at
    time 0, not at time t like the Benettin frame ``state.q``, whose columns span
    M_t Q_0 and are not sorted by rate.

    Raises:
        ValueError: the state was made without ``track_initial`` or no step was taken.
    """
    rates, vectors = initial_vectors(state)
    return vectors[:, rates > threshold]


def local_chaos_counts(eigenvalues: Tensor, lr: float, momentum: float = 0.0,
                       zero_threshold: float = 0.0) -> dict[str, int]:
    """Directions where one step expands: λ < −zero_threshold, or lr λ > 2(1 + μ).

    Returns:
        {'num_neg': #λ<0, 'num_large': #λ > 2(1+μ)/lr, 'num_chaotic': their sum}.
    """
    neg = int((eigenvalues < -zero_threshold).sum())
    large = int((eigenvalues > 2 * (1 + momentum) / lr).sum())
    return {"num_neg": neg, "num_large": large, "num_chaotic": neg + large}


def quadratic_exponents(eigenvalues: Tensor, lr: float, momentum: float = 0.0) -> Tensor:
    """Closed form for a fixed quadratic: log|1 − lr λ| (μ = 0), else log of the companion roots' moduli.

    With momentum each λ gives the two roots of z² − (1 − lr λ + μ) z + μ = 0, so the
    result has 2P entries, sorted descending.
    """
    lam = eigenvalues.double()
    if momentum == 0:
        return torch.sort(torch.log(torch.abs(1 - lr * lam)), descending=True).values
    b = 1 - lr * lam + momentum
    disc = (b * b - 4 * momentum).to(torch.complex128)
    roots = torch.cat([(b + disc.sqrt()) / 2, (b - disc.sqrt()) / 2])
    return torch.sort(torch.log(roots.abs()), descending=True).values


def max_steps_between_qr(growth_per_step: float, dtype: torch.dtype = torch.float64) -> int:
    """Largest qr_every keeping growth_per_step^qr_every a factor 1e6 below the dtype's max."""
    if growth_per_step <= 1:
        return 10**9
    return max(1, int((math.log(torch.finfo(dtype).max) - math.log(1e6)) / math.log(growth_per_step)))
