"""Config-value checks shared by the experiments, the tracking helpers and the generators.

Each check takes the config key (as the user writes it, e.g. ``"sgld_config.batch_size"``)
and the value, returns the value (converted where that is safe) and otherwise raises
:class:`CheckError`, a ``ValueError`` whose message names the key, what was expected and
what arrived: ``"num_steps must be an integer >= 1; got 0"``. ``None`` is accepted only
with ``none_ok=True``, and the message then says ``"None or ..."``. Booleans are never
integers or numbers here, although Python's ``bool`` subclasses ``int``: ``True`` for a
step count is a typo, not 1.

:func:`cli_type` turns a check into an ``argparse`` ``type=`` for the generators' flags.
Imports only the standard library, so the generators stay fast to start.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Collection, Mapping


class CheckError(ValueError):
    """A config value failed a check; ``key``, ``expected`` (a noun phrase) and ``value`` say how."""

    def __init__(self, key: str, expected: str, value, why: str = ""):
        # ``why`` (optional) says where the rule comes from: "... >= 1 (the paper's size is 16); got 0"
        super().__init__(f"{key} must be {expected}{f' ({why})' if why else ''}; got {value!r}")
        self.key, self.expected, self.value, self.why = key, expected, value, why


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_bound(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    return f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else ""


def _real_bound(lo, hi, strict: bool, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if strict else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if strict else '>='} {lo}"
    return f" {'<' if hi_open else '<='} {hi}" if hi is not None else ""


def _in_range(v, lo, hi, strict: bool, hi_open: bool = False) -> bool:
    # written so that NaN fails every bound
    return (lo is None or (v > lo if strict else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))


def integer(key: str, value, lo: int | None = 1, hi: int | None = None, *, none_ok: bool = False,
            from_float: bool = False, why: str = "") -> int | None:
    """``value`` as an int in [lo, hi] (either bound None: open).

    ``from_float`` also accepts an integral float (``1e5`` from a command line) and returns it as int.
    ``why`` (here and in the other checks) is a reason the message gives in parentheses.
    """
    if value is None and none_ok:
        return None
    if from_float and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not (_is_int(value) and _in_range(value, lo, hi, strict=False)):
        raise CheckError(key, f"{'None or ' if none_ok else ''}an integer{_int_bound(lo, hi)}", value, why)
    return value


def number(key: str, value, lo: float | None = None, hi: float | None = None, *, strict: bool = False,
           hi_open: bool = False, none_ok: bool = False, finite: bool = True, why: str = "") -> float | None:
    """``value`` as a float with lo <= value <= hi (lo < value with ``strict``, value < hi with ``hi_open``).

    NaN always fails. ``finite=False`` lets ±inf through where the bounds do (e.g.
    ``number(k, inf, lo=0, strict=True)``). A momentum in [0, 1) is ``number(k, m, lo=0, hi=1, hi_open=True)``.
    """
    if value is None and none_ok:
        return None
    ok = _is_real(value) and (math.isfinite(value) or not finite) and _in_range(value, lo, hi, strict, hi_open)
    if not ok:
        # a bounded interval implies finiteness, so the message says "finite" only where it adds something
        kind = "a finite number" if finite and (lo is None or hi is None) else "a number"
        raise CheckError(key, f"{'None or ' if none_ok else ''}{kind}{_real_bound(lo, hi, strict, hi_open)}", value,
                         why)
    return float(value)


def boolean(key: str, value) -> bool:
    """``value`` if it is True or False (not 0/1, not "yes")."""
    if not isinstance(value, bool):
        raise CheckError(key, "True or False", value)
    return value


def one_of(key: str, value, allowed: Collection, *, why: str = ""):
    """``value`` if it is in ``allowed`` (a tuple, set, or the keys of a dict); the message lists them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise CheckError(key, f"one of {allowed}", value, why)
    return value


def _sized(value, min_len: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) >= min_len


def _list_of(min_len: int) -> str:
    return "a list of" if min_len == 0 else "a non-empty list of" if min_len == 1 else f"a list of >= {min_len}"


def int_list(key: str, value, lo: int | None = 1, hi: int | None = None, *, min_len: int = 1,
             from_float: bool = False, why: str = "") -> list[int]:
    """``value`` (a list or tuple of at least ``min_len`` ints, each in [lo, hi]) as a list.

    ``from_float`` also accepts integral floats (``1e4`` step numbers) and returns them as ints.
    """
    if from_float and _sized(value, 0):
        value = [int(v) if isinstance(v, float) and v.is_integer() else v for v in value]
    if not (_sized(value, min_len) and all(_is_int(v) and _in_range(v, lo, hi, strict=False) for v in value)):
        raise CheckError(key, f"{_list_of(min_len)} integers{_int_bound(lo, hi)}", value, why)
    return list(value)


def number_list(key: str, value, lo: float | None = None, hi: float | None = None, *, strict: bool = False,
                min_len: int = 1) -> list[float]:
    """``value`` (a list or tuple of at least ``min_len`` finite numbers within the bounds) as floats."""
    ok = _sized(value, min_len) and all(_is_real(v) and math.isfinite(v) and _in_range(v, lo, hi, strict)
                                        for v in value)
    if not ok:
        raise CheckError(key, f"{_list_of(min_len)} finite numbers{_real_bound(lo, hi, strict)}", value)
    return [float(v) for v in value]


def distinct_names(key: str, value, allowed: Collection) -> list:
    """``value`` (a non-empty list of distinct members of ``allowed``) as a list."""
    allowed = tuple(allowed)
    ok = _sized(value, 1) and all(v in allowed for v in value) and len(set(value)) == len(value)
    if not ok:
        raise CheckError(key, f"a non-empty list of distinct names from {allowed}", value)
    return list(value)


def path(key: str, value, *, none_ok: bool = False) -> str | None:
    """``value`` if it is a non-empty string (existence is the caller's business)."""
    if value is None and none_ok:
        return None
    if not (isinstance(value, str) and value):
        raise CheckError(key, f"{'None or ' if none_ok else ''}a path", value)
    return value


def at_most(key: str, value, what: str, bound) -> None:
    """Raise unless value <= bound, a limit set by another key or by the data: ``what`` names it.

    ``at_most("sgld_config.batch_size", 500, "num_training_data", 100)`` raises
    ``"sgld_config.batch_size must be <= num_training_data (100); got 500"``.
    """
    if not value <= bound:
        raise CheckError(key, f"<= {what} ({bound})", value)


def known_entries(key: str, entries: Mapping, allowed: Collection) -> None:
    """Raise if the dict-valued key ``key`` has entries outside ``allowed``, naming both sets."""
    unknown = set(entries) - set(allowed)
    if unknown:
        raise ValueError(f"{key} has unknown entries {sorted(unknown)}; allowed: {sorted(allowed)}")


def parse_bool(text: str):
    """``"True"`` -> True, ``"False"`` -> False, anything else unchanged: ``cli_type(boolean, parse_bool)``."""
    return {"True": True, "False": False}.get(text, text)


def cli_type(check: Callable, parse: Callable[[str], object] = int, **bounds) -> Callable[[str], object]:
    """An ``argparse`` ``type=`` that parses the flag's text with ``parse`` and applies ``check``.

    ``cli_type(integer, lo=1)`` makes ``-j 0`` fail as ``argument -j/--jobs: must be an integer
    >= 1; got '0'`` (argparse names the flag, so the message leaves the key out).
    """
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = text  # unparseable: the check rejects the string and the message quotes it
        try:
            return check("", value, **bounds)
        except CheckError as err:
            raise argparse.ArgumentTypeError(f"must be {err.expected}; got {text!r}") from None

    convert.__name__ = f"{check.__name__}_flag"
    return convert
