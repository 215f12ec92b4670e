"""Which directions CGD prunes: the prune sets, the choice of k of them, and the original's rules.

Given the minibatch Hessian's eigenvalues λ (or, with ``prune_global``, stored Lyapunov
exponents χ), the pruned set is (docs/chaos.md#cgd-and-other-differences-from-the-original):

- ``neg``: λ < 0; ``pos``: λ > 0; ``chaotic``: the locally expanding λ < 0 or λ > band;
- of those, ``k`` (None: all) by ``top_abs`` (largest |λ|) or ``rand`` (uniformly at random).

:class:`CgdRules` holds the six choices where this code and the original
(chaotic_neurips22, ``optim/cgd.py: calc_update``; the tangent map in
``models/skeletons.py: training_step``) differ; ``CgdRules.original()``
restores all of them:

============  ======================================  ==========================================
key           default (fix)                           original
============  ======================================  ==========================================
zeros         keep: |λ| ≤ thr is never pruned          pool: zeros join neg (λ ≤ 0) and pos (λ ≥ 0)
rand_draws    distinct: k distinct directions          replacement: k draws, duplicates collapse
rank          abs: top_abs ranks chaotic by |λ|        growth: by (1 − lr λ)²
band          momentum: λ > 2(1 + μ)/lr                plain: λ > 2/lr, μ ignored
global_rule   exponent_sign: χ > 0 (chaotic, pos),     hessian: the rules above on the stored
              χ < 0 (neg)                              σ² = e^{2tχ} (eigenvalues of YᵀY)
tangent       derivative: H ↦ (I − γ V_pV_pᵀ) H,       projected: P_kept H P_kept,
              the Jacobian of the CGD step             P_kept = I − V_pV_pᵀ, γ ignored
============  ======================================  ==========================================

``tangent`` is the Hessian factor of the Lyapunov tangent map I − lr·(·) under CGD
(:func:`cgd_tangent_hessian`). For per-step Hessian eigenvectors at γ = 1 both agree,
since V_p commutes with H; with ``prune_global`` (fixed Lyapunov vectors) or γ < 1 they differ.

A structured (range-only) Hessian has ``implicit_zeros`` = P − r eigenvalues that are exactly
0 with no stored vectors. Under ``zeros=pool`` they are pool members ranked after every
explicit one; the selection returns how many of them are pruned (``Pruned.null``), and
:func:`null_basis` draws that many orthonormal directions of the null space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from dynamics.cgd import PRUNE_SETS, OptimConfig
from dynamics.hessian import SymEig

ZERO_RULES = ("keep", "pool")
DRAW_RULES = ("distinct", "replacement")
RANK_RULES = ("abs", "growth")
BAND_RULES = ("momentum", "plain")
GLOBAL_RULES = ("exponent_sign", "hessian")
TANGENT_RULES = ("derivative", "projected")


@dataclass(frozen=True)
class CgdRules:
    """The CGD choices that differ from the original (defaults: the fixes).

    Attributes:
        zeros: 'keep' (zero eigenvalues never pruned) | 'pool' (original: in the neg and pos sets).
        rand_draws: 'distinct' (k distinct directions) | 'replacement' (original: k draws with replacement).
        rank: 'abs' (top_abs by |λ|) | 'growth' (original: by (1 − lr λ)², which differs on chaotic).
        band: 'momentum' (chaotic above 2(1 + μ)/lr) | 'plain' (original: above 2/lr).
        global_rule: 'exponent_sign' (prune_global by the sign of χ) | 'hessian' (original: the
            Hessian rules on the stored σ² = e^{2tχ}).
        tangent: 'derivative' (the CGD step's Jacobian) | 'projected' (original: P_kept H P_kept).
    """

    zeros: str = "keep"
    rand_draws: str = "distinct"
    rank: str = "abs"
    band: str = "momentum"
    global_rule: str = "exponent_sign"
    tangent: str = "derivative"

    def __post_init__(self):
        for key, allowed in (("zeros", ZERO_RULES), ("rand_draws", DRAW_RULES), ("rank", RANK_RULES),
                             ("band", BAND_RULES), ("global_rule", GLOBAL_RULES), ("tangent", TANGENT_RULES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}; got {getattr(self, key)!r}")

    @classmethod
    def original(cls) -> "CgdRules":
        return cls(zeros="pool", rand_draws="replacement", rank="growth", band="plain", global_rule="hessian",
                   tangent="projected")


DEFAULT_RULES = CgdRules()


class Pruned(NamedTuple):
    """The pruned directions: indices of explicit eigenvectors, and how many null-space directions."""

    idx: Tensor  # (m,) long, into the explicit eigenvalues
    null: int  # implicit zero-eigenvalue directions pruned (0 unless zeros='pool')


def chaotic_band(lr: float, momentum: float = 0.0, rules: CgdRules = DEFAULT_RULES) -> float:
    """λ above which a direction expands: 2(1 + μ)/lr, or 2/lr under the original's band."""
    return 2 * (1 + momentum) / lr if rules.band == "momentum" else 2 / lr


def prune_candidates(values: Tensor, prune_set: str, lr: float, momentum: float = 0.0,
                     zero_threshold: float = 0.0, lyapunov: bool = False, rules: CgdRules = DEFAULT_RULES) -> Tensor:
    """Boolean mask of the directions in ``prune_set`` given eigenvalues λ (or exponents χ if ``lyapunov``).

    |λ| ≤ zero_threshold counts as 0: kept, or under ``zeros=pool`` in both neg and pos
    (the original's λ ≤ 0 / λ ≥ 0). A zero is never chaotic: (1 − lr·0)² = 1.
    """
    if prune_set not in PRUNE_SETS:
        raise ValueError(f"prune_set must be one of {PRUNE_SETS}; got {prune_set!r}")
    if lyapunov:
        return values < 0 if prune_set == "neg" else values > 0
    zero = values.abs() <= zero_threshold
    pooled = zero if rules.zeros == "pool" else torch.zeros_like(zero)
    if prune_set == "pos":
        return (values > zero_threshold) | pooled
    if prune_set == "neg":
        return (values < -zero_threshold) | pooled
    return (values < -zero_threshold) | (values > chaotic_band(lr, momentum, rules))


def _rank_scores(values: Tensor, prune_set: str, lr: float, rules: CgdRules) -> Tensor:
    """Larger is pruned first by top_abs: |λ|, or the original's (1 − lr λ)² on chaotic.

    On neg and pos the original's topk by value is the |λ| order.
    """
    if prune_set == "chaotic" and rules.rank == "growth":
        return (1 - lr * values) ** 2
    return values.abs()


def _choose(pool: Tensor, scores: Tensor, null: int, config: OptimConfig, rules: CgdRules,
            gen: torch.Generator) -> Pruned:
    """k of the pool (explicit indices ``pool`` (n,) with ``scores`` (n,), then ``null`` implicit zeros)."""
    n, k = pool.numel(), config.k
    total = n + null
    if k is None or (k >= total and not (config.prune_k == "rand" and rules.rand_draws == "replacement")):
        return Pruned(pool, null)
    if config.prune_k == "top_abs":  # implicit zeros score 0: after every explicit member
        order = torch.argsort(scores, descending=True, stable=True)
        return Pruned(pool[order[:k]], max(0, k - n))
    if rules.rand_draws == "distinct":
        picks = torch.randperm(total, generator=gen, device=gen.device)[:k]
    else:  # the original: min(k, |pool|) draws with replacement (torch.randint); repeats prune once
        picks = torch.unique(torch.randint(0, total, (min(k, total),), generator=gen, device=gen.device))
    picks = picks.to(pool.device)
    return Pruned(pool[picks[picks < n]], int((picks >= n).sum()))


def select_pruned(values: Tensor, config: OptimConfig, gen: torch.Generator, zero_threshold: float = 0.0,
                  rules: CgdRules = DEFAULT_RULES, implicit_zeros: int = 0) -> Pruned:
    """The pruned Hessian directions of one step.

    Args:
        values: (r,) explicit eigenvalues.
        config: prune_set, k, prune_k, lr, momentum.
        gen: generator for prune_k='rand'.
        zero_threshold: |λ| at or below which an eigenvalue counts as 0.
        rules: the original's choices or the fixes.
        implicit_zeros: eigenvalues exactly 0 with no explicit vector (P − r).
    """
    mask = prune_candidates(values, config.prune_set, config.lr, config.momentum, zero_threshold, rules=rules)
    pool = torch.nonzero(mask).flatten()
    null = implicit_zeros if rules.zeros == "pool" and config.prune_set != "chaotic" else 0
    return _choose(pool, _rank_scores(values, config.prune_set, config.lr, rules)[pool], null, config, rules, gen)


def select_global(exponents: Tensor, config: OptimConfig, gen: torch.Generator, rules: CgdRules = DEFAULT_RULES,
                  steps: float | None = None) -> Tensor:
    """Indices of the stored Lyapunov directions that ``prune_global`` prunes.

    ``exponent_sign``: χ > 0 for chaotic and pos, χ < 0 for neg, top_abs by |χ|.
    ``hessian`` (the original): the Hessian rules applied to the value the original stored,
    σ² = e^{2tχ} (t = ``steps``; t = 1 for its 1/t-rooted ``save_lyapunov_at`` file), in log form so
    that nothing overflows. σ² > 0, so neg prunes nothing and pos everything, except that σ² ≤
    P·eps·max σ² counts as 0 (kept, or in both sets under ``zeros=pool``); chaotic is σ² > band.

    Args:
        exponents: (K,) χ, natural log per step.
        steps: t of the stored spectrum (needed for global_rule='hessian').
    """
    if rules.global_rule == "exponent_sign":
        mask = prune_candidates(exponents, config.prune_set, config.lr, lyapunov=True)
        pool = torch.nonzero(mask).flatten()
        return _choose(pool, exponents[pool].abs(), 0, config, rules, gen).idx
    if steps is None or not steps > 0:
        raise ValueError(f"global_rule='hessian' needs the number of steps of the stored spectrum; got {steps!r}")
    log_s2 = 2 * steps * exponents.double()  # log σ²
    zero = log_s2 <= log_s2.max() + math.log(exponents.numel() * torch.finfo(torch.float64).eps)
    pooled = zero if rules.zeros == "pool" else torch.zeros_like(zero)
    if config.prune_set == "pos":
        mask, scores = ~zero | pooled, log_s2
    elif config.prune_set == "neg":
        mask, scores = pooled, -log_s2  # topk(w, largest=False): the smallest σ² first
    else:  # (1 − lr σ²)² > 1 with σ² > 0, i.e. σ² > band; both ranks order by σ²
        mask, scores = ~zero & (log_s2 > math.log(chaotic_band(config.lr, config.momentum, rules))), log_s2
    pool = torch.nonzero(mask).flatten()
    return _choose(pool, scores[pool], 0, config, rules, gen).idx


def null_basis(range_vectors: Tensor, m: int, gen: torch.Generator) -> Tensor:
    """m orthonormal directions spanning a uniformly random subspace of the complement of span(U).

    Args:
        range_vectors: (P, r) orthonormal U (the Hessian's range).
        m: number of directions, ≤ P − r.

    Returns:
        (P, m), orthogonal to U.
    """
    u = range_vectors
    z = torch.randn(u.shape[0], m, generator=gen, dtype=u.dtype, device=gen.device).to(u.device)
    for _ in range(2):  # twice: one projection leaves O(eps·‖z‖) along U
        z = z - u @ (u.T @ z)
    return torch.linalg.qr(z).Q


def global_directions(stored: dict, num_params: int, device=None) -> tuple[Tensor, Tensor, float | None]:
    """``global_dirs`` for :func:`pruned_directions` from stored eigenthings (``dynamics.perturb.load_eigenthings``).

    Returns the exponents (K,) and the weight part (P, K) of the vectors in float64, and the
    steps t the stored values were taken over: 1.0 for a 1/t-rooted ``save_lyapunov_at`` file,
    None when the file does not record it.
    """
    steps = (1.0 if bool(stored.get("rooted", False)) else float(stored["steps"])) if "steps" in stored else None
    return stored["exponents"].double().to(device), stored["vectors"][:num_params].double().to(device), steps


def pruned_directions(eig: SymEig, global_dirs: tuple | None, config: OptimConfig, rules: CgdRules,
                      gen: torch.Generator, zero_threshold: float) -> tuple[Tensor, Tensor | None]:
    """One step's pruned directions V_p (P, m), and U when the whole null space of H = UΛUᵀ is pruned too.

    Args:
        eig: the minibatch Hessian (range-only for the structured MLP).
        global_dirs: (exponents (K,), vectors (P, K), steps) for prune_global, else None.
        zero_threshold: |λ| at or below which an eigenvalue counts as 0.

    Null-space directions never change the tangent map: (I − V_pV_pᵀ) H y = H y for V_p ⊥ span U.
    """
    if global_dirs is not None:
        values, vectors, steps = global_dirs
        idx = select_global(values, config, gen, rules, steps)
        return (torch.linalg.qr(vectors[:, idx]).Q if idx.numel() else vectors[:, :0]), None
    null_dim = eig.dim - eig.rank_bound
    sel = select_pruned(eig.eigenvalues, config, gen, zero_threshold, rules, implicit_zeros=null_dim)
    vecs = eig.eigenvectors[:, sel.idx]
    if sel.null == 0:
        return vecs, None
    if sel.null == null_dim:
        return vecs, eig.eigenvectors
    return torch.cat([vecs, null_basis(eig.eigenvectors, sel.null, gen)], dim=1), None


def cgd_tangent_hessian(hmat, pruned: Tensor, gamma: float = 1.0, rules: CgdRules = DEFAULT_RULES):
    """Y -> the Hessian factor of CGD's tangent map Y -> Y − lr·(that), V_p (P, m) held fixed.

    ``derivative``: (I − γ V_pV_pᵀ) H Y, the Jacobian of w − lr((1 − γ) g + γ(I − V_pV_pᵀ) g).
    ``projected`` (the original's ``Pg H Pg``): P H P Y with P = I − V_pV_pᵀ, γ ignored.
    Null-space pruning (``null_of``) changes neither: H vanishes there.

    Args:
        hmat: Y (P, K) -> H Y.
        pruned: (P, m) orthonormal pruned directions.
    """
    def kept(y: Tensor) -> Tensor:
        return y - pruned @ (pruned.T @ y)

    if rules.tangent == "projected":
        return lambda y: kept(hmat(kept(y)))
    return lambda y: (lambda hy: hy - gamma * (pruned @ (pruned.T @ hy)))(hmat(y))
