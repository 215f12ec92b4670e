"""Shared helpers for sweep generators: grids, sampling, run keys, command lines.

A generator (``gen_commands/expt_<name>.py``) turns options into a list of
override dicts, one per run, and writes one Sacred command per line::

    python experiments/expt_dln.py -F runs/dln_lambdahat with input_dim=7 \\
        layer_widths='[5, 6, 4]' seed=3 run_key=9f2c...

* ``--grid key=[...]`` values are Python literals or simple list comprehensions
  such as ``[2**i for i in range(-3, 1)]``, evaluated by a small whitelist
  evaluator (never ``eval``); :func:`cartesian` crosses them in the order given.
* Random draws come from one ``numpy.random.Generator`` seeded by ``--seed``, so
  the same call writes the same file.
* The run key is ``sha256(experiment name + "\\n" + canonical JSON of the
  overrides)``; experiments store it as the config entry ``run_key``, which is
  how ``gen_commands.run`` and ``gen_commands.pending`` recognise finished runs.
* Values are written so that the shell and then Sacred's command-line parser
  (``ast.literal_eval``, falling back to the raw string) give back exactly the
  Python value: lists are quoted (``layer_widths='[5, 6, 4]'``), strings that
  would parse as something else are quoted twice (``name='"True"'``).

This module imports no torch (generators must start fast).
"""
from __future__ import annotations

import ast
import hashlib
import itertools
import json
import math
import operator
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from core import checks

# A Sacred config path: identifiers joined by dots (sgld_config.epsilon).
KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Strings safe to write bare on a shell line (if Sacred would not parse them as a literal).
_BARE_STRING_RE = re.compile(r"^[A-Za-z0-9_./:@+-]+$")
RUN_KEY = "run_key"

# --- safe evaluation of grid values --------------------------------------------

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARYOPS = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_CMPOPS = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_FUNCS = {"range": range, "int": int, "float": float, "round": round, "abs": abs, "min": min, "max": max}
MAX_GRID_VALUES = 100_000  # refuse comprehensions that would build more values than this
_MAX_EXPONENT = 1024


class _SafeEval(ast.NodeVisitor):
    """Evaluate literals, arithmetic and list comprehensions over range/lists; nothing else."""

    def __init__(self, names: Mapping[str, Any] | None = None):
        self.names = dict(names or {})

    def generic_visit(self, node):
        raise ValueError(f"unsupported syntax {type(node).__name__!r}")

    def visit_Constant(self, node):
        return node.value

    def visit_Name(self, node):
        if node.id in self.names:
            return self.names[node.id]
        if node.id in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[node.id]
        raise ValueError(f"unknown name {node.id!r} (quote strings: '{node.id}')")

    def visit_List(self, node):
        return [self.visit(e) for e in node.elts]

    def visit_Tuple(self, node):
        return tuple(self.visit(e) for e in node.elts)

    def visit_UnaryOp(self, node):
        if type(node.op) not in _UNARYOPS:
            raise ValueError(f"unsupported operator {type(node.op).__name__!r}")
        return _UNARYOPS[type(node.op)](self.visit(node.operand))

    def visit_BinOp(self, node):
        if type(node.op) not in _BINOPS:
            raise ValueError(f"unsupported operator {type(node.op).__name__!r}")
        left, right = self.visit(node.left), self.visit(node.right)
        if isinstance(node.op, ast.Pow) and (not isinstance(right, (int, float)) or abs(right) > _MAX_EXPONENT):
            raise ValueError(f"exponent {right!r} too large (|exponent| <= {_MAX_EXPONENT})")
        return _BINOPS[type(node.op)](left, right)

    def visit_Compare(self, node):
        left = self.visit(node.left)
        for op, comp in zip(node.ops, node.comparators):
            if type(op) not in _CMPOPS:
                raise ValueError(f"unsupported comparison {type(op).__name__!r}")
            right = self.visit(comp)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True

    def visit_Call(self, node):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
            raise ValueError(f"only calls to {sorted(_FUNCS)} are allowed")
        args = [self.visit(a) for a in node.args]
        if node.func.id == "range" and len(range(*args)) > MAX_GRID_VALUES:
            raise ValueError(f"range{tuple(args)} has more than {MAX_GRID_VALUES} values")
        return _FUNCS[node.func.id](*args)

    def visit_ListComp(self, node):
        out: list = []
        self._comprehend(node.generators, node.elt, out)
        return out

    def _comprehend(self, generators, elt, out):
        if not generators:
            out.append(self.visit(elt))
            if len(out) > MAX_GRID_VALUES:
                raise ValueError(f"comprehension builds more than {MAX_GRID_VALUES} values")
            return
        gen = generators[0]
        if not isinstance(gen.target, ast.Name) or gen.is_async:
            raise ValueError("comprehension targets must be plain names")
        for value in self.visit(gen.iter):
            self.names[gen.target.id] = value
            if all(self.visit(cond) for cond in gen.ifs):
                self._comprehend(generators[1:], elt, out)
        self.names.pop(gen.target.id, None)


def parse_value(text: str) -> Any:
    """A Python literal, or arithmetic / list comprehensions over ``range`` and lists.

    ``"[1, 2]"``, ``"1e-5"``, ``"'sgd'"`` and ``"[2**i for i in range(-3, 1)]"`` are
    accepted; names other than comprehension variables, attribute access and calls
    other than range/int/float/round/abs/min/max raise ValueError.
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"cannot parse {text!r}: {err.msg}") from None
    try:
        return _SafeEval().visit(tree.body)
    except (TypeError, ZeroDivisionError, OverflowError) as err:
        raise ValueError(f"cannot evaluate {text!r}: {err}") from None


def parse_grid(specs: Iterable[str]) -> dict[str, list]:
    """``["a=[1, 2]", "b.c=[2**i for i in range(2)]"]`` -> ``{"a": [1, 2], "b.c": [1, 2]}``.

    The value must evaluate to a list or tuple (the values of that axis); a key may
    appear once. Raises ValueError naming the offending spec.
    """
    grid: dict[str, list] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        key = key.strip()
        if not sep or not KEY_RE.match(key):
            raise ValueError(f"--grid expects key=[v1, v2, ...] with a dotted config key; got {spec!r}")
        if key in grid:
            raise ValueError(f"--grid key {key!r} given twice")
        try:
            values = parse_value(value)
        except ValueError as err:
            raise ValueError(f"--grid {key}: {err}") from None
        if not isinstance(values, (list, tuple)) or len(values) == 0:
            raise checks.CheckError(f"--grid {key}", "a non-empty list of values", value)
        grid[key] = [canonical(v) for v in values]
    return grid


def cartesian(grid: Mapping[str, Sequence]) -> list[dict]:
    """Every combination of the grid's values, last key varying fastest; ``{}`` -> ``[{}]``."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


# --- random sampling -----------------------------------------------------------

def make_rng(seed: int) -> np.random.Generator:
    """The generator's only source of randomness (numpy PCG64 seeded by ``--seed``)."""
    return np.random.default_rng(seed)


def sample_int(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Uniform integer in the closed range [lo, hi]."""
    return int(rng.integers(lo, hi, endpoint=True))


def sample_ints(rng: np.random.Generator, lo: int, hi: int, size: int) -> list[int]:
    """``size`` independent uniform integers in [lo, hi]."""
    return [int(v) for v in rng.integers(lo, hi, size=size, endpoint=True)]


def sample_log_uniform(rng: np.random.Generator, lo: float, hi: float, digits: int = 3) -> float:
    """Log-uniform float in [lo, hi], rounded to ``digits`` significant digits."""
    value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return float(f"{value:.{digits - 1}e}")


def sample_seed(rng: np.random.Generator) -> int:
    """A run seed in [0, 2**31 - 1) (Sacred's seeds are 32-bit)."""
    return int(rng.integers(0, 2**31 - 1))


def check_range(option: str, lo: float, hi: float, minimum: float | None = None) -> None:
    """ValueError unless ``minimum <= lo <= hi``, naming the option."""
    if lo > hi:
        raise ValueError(f"{option} expects LO <= HI; got {lo} > {hi}")
    if minimum is not None and lo < minimum:
        raise ValueError(f"{option} values must be >= {minimum}; got {lo}")


# --- run keys and command lines ------------------------------------------------

def canonical(value: Any) -> Any:
    """Numpy scalars/arrays and tuples -> plain Python (ints, floats, lists)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return canonical(value.tolist())
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    return value


def run_key(experiment: str, overrides: Mapping[str, Any]) -> str:
    """sha256 hex of the experiment name and the canonical JSON of ``overrides``.

    ``overrides`` is the flat dict of dotted keys written on the command line; a
    ``run_key`` entry in it is ignored, so the key can be recomputed from a run's
    own overrides. Key order does not matter; 1 and 1.0 differ.
    """
    body = {k: canonical(v) for k, v in overrides.items() if k != RUN_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(f"{experiment}\n{text}".encode()).hexdigest()


def format_value(value: Any) -> str:
    """Shell text that Sacred parses back to ``value`` (after the shell strips quotes)."""
    value = canonical(value)
    if value is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write non-finite float {value!r} on a command line")
        return repr(value)
    if isinstance(value, str):
        if _BARE_STRING_RE.match(value) and not _parses_as_literal(value):
            return value
        return shlex.quote(json.dumps(value))
    if isinstance(value, (list, dict)):
        text = repr(value)
        if ast.literal_eval(text) != value:
            raise ValueError(f"value {value!r} does not survive a round trip through repr")
        return shlex.quote(text)
    raise ValueError(f"cannot write a {type(value).__name__} on a command line: {value!r}")


def _parses_as_literal(text: str) -> bool:
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True


def observer_flag(file_storage: str | None = None, mongo: str | None = None) -> str:
    """``-F DIR`` or ``-m host:port:db`` / ``-m mongodb://user@host/db`` (exactly one of the two).

    A password in a Mongo URL is left out (commands files are shared and logged): the
    runs read it from ``$DLT_MONGO_PASSWORD`` (``tracking.mongo``).
    """
    from tracking.mongo import PASSWORD_ENV, without_password

    if (file_storage is None) == (mongo is None):
        raise ValueError("give exactly one of file_storage (-F DIR) and mongo (-m host:port:db)")
    if mongo is not None:
        safe = without_password(mongo)
        if safe != mongo:
            print(f"note: the Mongo password is not written into the commands; set ${PASSWORD_ENV} "
                  "where the runs execute", file=sys.stderr)
        return f"-m {shlex.quote(safe)}"
    return f"-F {shlex.quote(str(file_storage))}"


def format_command(script: str, experiment: str, overrides: Mapping[str, Any], observer: str,
                   python: str = "python") -> str:
    """One command line: ``python SCRIPT OBSERVER with k=v ... run_key=<hash>``.

    Keys keep the order of ``overrides``; ``run_key`` is computed and appended.
    """
    for key in overrides:
        if not KEY_RE.match(key):
            raise checks.CheckError("config keys", "dotted identifiers", key)
    key = run_key(experiment, overrides)
    parts = [f"{k}={format_value(v)}" for k, v in overrides.items() if k != RUN_KEY]
    parts.append(f"{RUN_KEY}={format_value(key)}")
    return " ".join([python, shlex.quote(script), observer, "with", *parts])


def generator_main(parser, generate, argv: Sequence[str] | None = None, after=None) -> int:
    """The command line shared by every generator: parse ``argv``, ``generate(args)`` the lines, write them
    to ``args.out`` (refused if it exists, unless ``--force``); a ValueError or FileExistsError becomes the
    parser's usage error (exit 2). ``after(args, path)``, if given, runs once the file is written and
    returns the exit code (expt_sgd_regimes's ``--run``)."""
    args = parser.parse_args(argv)
    try:
        lines = generate(args)
        path = write_lines(args.out, lines, force=args.force)
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    print(f"wrote {len(lines)} commands to {path}", file=sys.stderr)
    return after(args, path) if after is not None else 0


def write_lines(path: str | os.PathLike, lines: Sequence[str], force: bool = False) -> Path:
    """Write ``lines`` to ``path`` (parents created); FileExistsError unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)
    return path
