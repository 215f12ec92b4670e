"""Comments of the keys inside a config scope's dict blocks, for ``print_config`` and the docs tables.

Sacred documents only top-level config keys: ``ConfigScope`` reads the comment of each assigned
name, and ``print_config`` looks every entry's comment up by dotted path (``"sgld_config.epsilon"``),
so the keys of a block such as ::

    sgld_config = dict(
        epsilon=1e-5,  # step size ε
        gamma=10.0,  # localisation strength γ
    )

print bare. :func:`config_keys` reads those comments from the scope function's source and
:func:`with_nested_docs` adds them to the scope's docs, the "equivalent" of Sacred ingredients
that issue 17 §3 allows. docs/gen_config_keys.py reads the same comments for the config-key
pages (docs/generated/config_*.md, linked from docs/index.md).

Rules, one for the printed config and the generated tables alike:

- Blocks are ``dict(key=value, ...)`` calls without positional arguments and dict literals whose keys are
  all strings, assigned to a name at the scope's top level; they nest to any depth (``a.b.c``).
- A key's comment is the one at the end of the line where the key's name is written, which for a
  value that spans several lines is its first line (as Sacred reads top-level keys). Keys written on
  one line share its comment: ``x = dict(a=None, b=None)  # lists`` documents ``x``, ``x.a`` and ``x.b``.
- Linter pragmas (``# noqa``, ``# pylint:``, ``# type:``, ``# noinspection``) are no documentation.

Imports nothing from the project and nothing from Sacred: :func:`with_nested_docs` only needs the
``_func`` and ``_var_docs`` attributes of the ``ConfigScope`` that ``ex.config`` returns.
"""
from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
from dataclasses import dataclass

PRAGMAS = ("noqa", "pylint:", "type:", "noinspection")


@dataclass(frozen=True)
class ConfigKey:
    """One key of a config scope: its dotted path, 1-based line in :func:`function_source`, and comment."""

    path: str
    line: int
    comment: str  # "" when the key's line has none


def function_source(func) -> str:
    """The dedented source of ``func``, decorators included (the line numbers of :class:`ConfigKey`)."""
    return textwrap.dedent(inspect.getsource(func))


def line_comments(source: str) -> dict[int, str]:
    """Comment text (without ``#`` and surrounding blanks) by 1-based line number of ``source``."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _block_items(value: ast.AST) -> list[tuple[str, ast.AST, int]]:
    """(key, value node, line of the key) of a dict block, or [] when ``value`` is no block."""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict" \
            and not value.args:
        return [(kw.arg, kw.value, kw.lineno) for kw in value.keywords if kw.arg is not None]  # skips **base
    if isinstance(value, ast.Dict) and all(isinstance(k, ast.Constant) and isinstance(k.value, str)
                                           for k in value.keys):  # a **base entry has the key None
        return [(k.value, v, k.lineno) for k, v in zip(value.keys, value.values)]
    return []


def keys_in_source(source: str) -> list[ConfigKey]:
    """Every key the function defined in ``source`` assigns, top-level and nested, in source order.

    Args:
        source: the source of one function definition (the config scope), dedented.

    Returns:
        One :class:`ConfigKey` per assigned top-level name (``a = b = ...`` gives two) and per key of
        its dict blocks, parents before their children. Assignments inside ``if`` or ``for`` bodies
        are not read.
    """
    comments = line_comments(source)
    tree = ast.parse(source)
    funcs = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if len(funcs) != 1:
        raise ValueError(f"expected the source of one function definition; got {len(funcs)} in {source[:80]!r}")
    keys: list[ConfigKey] = []

    def add(path: str, line: int, value: ast.AST):
        text = comments.get(line, "")
        keys.append(ConfigKey(path, line, "" if text.startswith(PRAGMAS) else text))
        for name, sub, sub_line in _block_items(value):
            add(f"{path}.{name}", sub_line, sub)

    for stmt in funcs[0].body:
        if isinstance(stmt, ast.Assign):
            names = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            names = [stmt.target.id]
        else:
            continue
        for name in names:
            add(name, stmt.lineno, stmt.value)
    return keys


def config_keys(func) -> list[ConfigKey]:
    """:func:`keys_in_source` of a config scope function ``func`` (the undecorated function)."""
    return keys_in_source(function_source(func))


def nested_comments(func) -> dict[str, str]:
    """{dotted path: comment} of every key inside a dict block of ``func`` that has a comment."""
    return {k.path: k.comment for k in config_keys(func) if "." in k.path and k.comment}


def with_nested_docs(scope):
    """Add the comments of ``scope``'s nested keys to the docs ``print_config`` shows; returns ``scope``.

    Use it above ``@ex.config``: the config values do not change, and the comments Sacred found
    itself (the top-level keys, ``seed``) are kept.

    Raises:
        TypeError: ``scope`` is not a Sacred ``ConfigScope`` (for instance the decorator sits below
            ``@ex.config`` and receives the bare function).
    """
    func, docs = getattr(scope, "_func", None), getattr(scope, "_var_docs", None)
    if func is None or not isinstance(docs, dict):
        raise TypeError("with_nested_docs takes the ConfigScope that @ex.config returns (put it above "
                        f"@ex.config); got {type(scope).__name__} {getattr(scope, '__name__', scope)!r}")
    for path, text in nested_comments(func).items():
        docs.setdefault(path, text)
    return scope
