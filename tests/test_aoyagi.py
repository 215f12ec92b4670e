"""Aoyagi's DLN learning coefficient against closed forms and hand computations."""
import itertools
from fractions import Fraction

import pytest

from llc.aoyagi import dln_learning_coefficient, dln_learning_coefficient_exact


def aoyagi_watanabe_two_layer(n, h, m, r):
    """Reduced-rank regression x(N) -> H -> M (Aoyagi & Watanabe 2005), an independent closed form."""
    if n + r <= m + h and m + r <= n + h and h + r <= n + m:
        s = 2 * (h + r) * (n + m) - (n - m) ** 2 - (h + r) ** 2
        if (n + m + h + r) % 2 == 0:
            return Fraction(s, 8), 1
        return Fraction(s + 1, 8), 2
    if n + h < m + r:
        return Fraction(h * n - h * r + m * r, 2), 1
    if m + h < n + r:
        return Fraction(h * m - h * r + n * r, 2), 1
    return Fraction(n * m, 2), 1


@pytest.mark.parametrize("d_in,d_out", [(1, 1), (3, 5), (10, 10), (7, 2)])
def test_single_full_rank_layer_is_regular(d_in, d_out):
    lam, mult = dln_learning_coefficient(d_in, [d_out], min(d_in, d_out))
    assert lam == d_in * d_out / 2 and mult == 1


def test_three_square_layers_full_rank_is_50():
    assert dln_learning_coefficient(10, [10, 10], 10) == (50.0, 1)


def test_full_rank_square_depth_does_not_change_lambda():
    for depth in range(1, 6):
        assert dln_learning_coefficient(6, [6] * depth, 6) == (18.0, 1)


def test_reduced_rank_by_hand():
    # H = [10, 10, 10], r = 5: M = [5, 5, 5], Sigma = all, l = 2, S = 15, M' = 8, a = 1:
    # 37.5 + 1/8 - 28.125 + 37.5 = 47, m = 2.
    assert dln_learning_coefficient_exact(10, [10, 10], 5) == (Fraction(47), 2)
    # H = [5, 3, 5, 4], r = 2: M sorted [1, 2, 3, 3], Sigma = all, l = 3, S = 9, M' = 3, a = 3:
    # 7 + 0 - 13.5 + 14.5 = 8, m = 1.
    assert dln_learning_coefficient_exact(5, [3, 5, 4], 2) == (Fraction(8), 1)
    # Rank 0: only the sigma-terms survive; H = [2, 10, 3] -> N M / 2 = 3.
    assert dln_learning_coefficient_exact(2, [10, 3], 0) == (Fraction(3), 1)


def test_two_layer_agrees_with_aoyagi_watanabe_everywhere():
    for n, h, m in itertools.product(range(1, 8), repeat=3):
        for r in range(0, min(n, h, m) + 1):
            assert dln_learning_coefficient_exact(n, [h, m], r) == aoyagi_watanabe_two_layer(n, h, m, r), (n, h, m, r)


def test_lambda_bounded_by_half_dimension():
    for sizes in [(3, 4, 5, 2), (8, 2, 8, 8, 3), (4, 4, 4, 4, 4, 4)]:
        d = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
        for r in range(min(sizes) + 1):
            lam, mult = dln_learning_coefficient(sizes[0], list(sizes[1:]), r)
            assert 0 <= lam <= d / 2 and mult >= 1


@pytest.mark.parametrize("args", [(0, [3], 0), (3, [], 0), (3, [2, -1], 0), (3, [4, 2], 3), (3, [4], -1)])
def test_bad_input(args):
    with pytest.raises(ValueError):
        dln_learning_coefficient(*args)
