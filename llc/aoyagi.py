"""Exact learning coefficient of a deep linear network (Aoyagi, 2024).

For a DLN x -> W_L ... W_1 x with layer sizes H = [H_0, ..., H_L] (H_0 the input
size, H_L the output size) whose true parameter has end-to-end rank r, put
M_i = H_i - r.  Sort the M_i ascending and let Sigma be the shortest prefix of
that order, of size l + 1 >= 2, such that

    (1) max_Sigma M <  min_notSigma M
    (2) sum_Sigma M >= l * max_Sigma M
    (3) sum_Sigma M <  l * min_notSigma M

((1) and (3) are vacuous when Sigma holds every index).  With S = sum_Sigma M,
M' = ceil(S / l) and a = S - (M' - 1) l,

    lambda = (-r^2 + r (H_0 + H_L)) / 2 + a (l - a) / (4 l)
             - l (l - 1) / 4 * (S / l)^2 + 1/2 sum_{i<j in Sigma} M_i M_j
    m      = a (l - a) + 1.

Everything is exact rational arithmetic (``fractions.Fraction``), so the
results are exact and the float returned is the nearest double.
"""
from __future__ import annotations

from fractions import Fraction
from itertools import combinations
from typing import Sequence


def _check_sizes(input_dim: int, layer_widths: Sequence[int], rank: int) -> list[int]:
    sizes = [input_dim, *layer_widths]
    if len(layer_widths) < 1:
        raise ValueError("layer_widths must hold at least one layer (the output)")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"layer sizes must be positive integers; got {sizes}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= min(sizes):
        raise ValueError(f"rank must be an integer in [0, {min(sizes)}]; got {rank}")
    return sizes


def _find_sigma(m_sorted: list[int]) -> list[int]:
    """Shortest prefix (size >= 2) of the ascending M_i satisfying (1)-(3)."""
    for size in range(2, len(m_sorted) + 1):
        sigma, rest = m_sorted[:size], m_sorted[size:]
        ell = size - 1
        s = sum(sigma)
        if rest and not max(sigma) < min(rest):
            continue
        if not s >= ell * max(sigma):
            continue
        if rest and not s < ell * min(rest):
            continue
        return sigma
    raise AssertionError(f"no admissible Sigma for M = {m_sorted}")  # Aoyagi: one always exists


def dln_learning_coefficient_exact(
    input_dim: int, layer_widths: Sequence[int], rank: int
) -> tuple[Fraction, int]:
    """Exact (lambda, multiplicity) as a Fraction and an int; see module docstring."""
    sizes = _check_sizes(input_dim, layer_widths, rank)
    r = rank
    sigma = _find_sigma(sorted(h - r for h in sizes))
    ell = len(sigma) - 1
    s = sum(sigma)
    m_prime = -(-s // ell)  # ceil(S / l) on integers
    a = s - (m_prime - 1) * ell
    lam = (
        Fraction(-r * r + r * (sizes[0] + sizes[-1]), 2)
        + Fraction(a * (ell - a), 4 * ell)
        - Fraction(ell * (ell - 1), 4) * Fraction(s, ell) ** 2
        + Fraction(sum(mi * mj for mi, mj in combinations(sigma, 2)), 2)
    )
    return lam, a * (ell - a) + 1


def dln_learning_coefficient(
    input_dim: int, layer_widths: Sequence[int], rank: int
) -> tuple[float, int]:
    """Aoyagi's learning coefficient and its multiplicity for a bias-free DLN.

    Args:
        input_dim: H_0, the input size.
        layer_widths: [H_1, ..., H_L]; the last entry is the output size.
        rank: r, the rank of the true end-to-end matrix W_L ... W_1.

    Returns:
        (lambda, multiplicity). A full-rank single layer gives d_in * d_out / 2.

    Raises:
        ValueError: non-positive sizes, or a rank outside [0, min(H)].
    """
    lam, mult = dln_learning_coefficient_exact(input_dim, layer_widths, rank)
    return float(lam), mult
