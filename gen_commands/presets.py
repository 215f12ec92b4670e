"""Read an experiment's Sacred named config from its source, so a generator preset need not repeat it.

A preset that is also a named config (``with readme``, ``with paper``) is defined once, in
the experiment; the generator reads its values here. The script is parsed with ``ast``,
not imported, so generators never load torch. Only literal assignments are read
(``width = 500``, ``training_config = dict(num_steps=50000)``, ``layer_sizes = [10, 20, 10]``);
anything else raises ValueError naming the key, since the generator could not write it.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def _module(script: str) -> ast.Module:
    return ast.parse((REPO / script).read_text(encoding="utf-8"))


def _functions(script: str) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in _module(script).body if isinstance(node, ast.FunctionDef) and any(
        isinstance(dec, ast.Attribute) and dec.attr == "named_config" for dec in node.decorator_list)}


def constant(script: str, name: str):
    """The literal value of the module-level assignment ``name = ...`` in ``script`` (the last one)."""
    found = [stmt.value for stmt in _module(script).body if isinstance(stmt, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets)]
    if not found:
        raise KeyError(f"{script} assigns no module-level {name!r}")
    return _literal(found[-1], f"{script}:{name}")


def _literal(node: ast.AST, where: str):
    """A literal, or ``dict(k=literal, ...)`` as a dict."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value, f"{where}.{kw.arg}") for kw in node.keywords}
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"{where} is not a literal: {ast.unparse(node)}") from None


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value


def named_config(script: str, name: str, skip=()) -> dict:
    """``{dotted config key: value}`` set by the named config ``name`` of ``script``, in the order written.

    ``script`` is relative to the repository root (``experiments/expt_llc_curve.py``); nested dicts
    become dotted keys (``training_config.num_steps``). Top-level keys in ``skip`` are neither read nor
    returned (a derived value such as ``seed = 64 if model == "cnn4" else 0``). KeyError if there is
    no such named config.
    """
    functions = _functions(script)
    if name not in functions:
        raise KeyError(f"{script} has no named config {name!r}; it has {sorted(functions)}")
    out: dict = {}
    for stmt in functions[name].body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            key = stmt.targets[0].id
            if key in skip:
                continue
            _flatten(key, _literal(stmt.value, f"{script}:{name}:{key}"), out)
    return out


def as_options(config: dict, axes, wrap=lambda v: [v]) -> dict:
    """A named config's keys as generator option values: ``{axis.dest: [value]}`` for each axis whose key it
    sets. KeyError naming the key if the config sets a key that no axis writes."""
    by_key = {axis.key: axis.dest for axis in axes}
    missing = [k for k in config if k not in by_key]
    if missing:
        raise KeyError(f"no generator option writes {missing}")
    return {by_key[k]: wrap(v) for k, v in config.items()}
