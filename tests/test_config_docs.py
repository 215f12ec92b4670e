"""core.config_docs: comments of nested config keys, for print_config and the docs tables.

The parser is checked on small sources with known answers; then every experiment's
``print_config`` (run through Sacred, output captured) must show, for every leaf key inside a
dict block of its default config, a non-empty comment that is written on that key's own line
of the experiment's source. The leaf list comes from the config itself, so a new key without a
comment, or a scope without ``@with_nested_docs``, fails here.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import textwrap
from pathlib import Path

import pytest
from sacred import Experiment

from core.config_docs import ConfigKey, config_keys, keys_in_source, nested_comments, with_nested_docs

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("expt_*.py"))
DOC = re.compile("\x1b\\[2m# (.*?)\x1b\\[0m")  # print_config's doc colour (sacred.commands.COLOR_DOC ... ENDC)
ANSI = re.compile("\x1b\\[[0-9;]*m")
ENTRY = re.compile(r"^( *)(\w+)(?: = |:)")


def keys(source: str) -> dict[str, str]:
    return {k.path: k.comment for k in keys_in_source(textwrap.dedent(source))}


def test_nested_dict_calls_give_dotted_paths_at_any_depth():
    got = keys('''
        def cfg():
            lr = 0.1  # top
            a = dict(  # block a
                b=dict(
                    c=1,  # leaf c
                    d=dict(e="x"),  # d and e share this line
                ),
                f=2,  # leaf f
            )
    ''')
    assert got == {"lr": "top", "a": "block a", "a.b": "", "a.b.c": "leaf c", "a.b.d": "d and e share this line",
                   "a.b.d.e": "d and e share this line", "a.f": "leaf f"}


def test_dict_literal_and_source_order():
    got = keys_in_source(textwrap.dedent('''
        def cfg():
            opt = {
                "name": "sgd",  # sgd | adam
                "inner": {"lr": 0.1},  # nested literal
            }
    '''))
    assert got == [ConfigKey("opt", 3, ""), ConfigKey("opt.name", 4, "sgd | adam"),
                   ConfigKey("opt.inner", 5, "nested literal"), ConfigKey("opt.inner.lr", 5, "nested literal")]


def test_multi_line_value_takes_the_comment_of_its_first_line():
    got = keys('''
        def cfg():
            grid = dict(
                eps=[1e-7,  # ε grid
                     1e-6],  # not read: the key's name is on the line above
                gammas=[1.0,
                        2.0],  # not read either
            )
    ''')
    assert got == {"grid": "", "grid.eps": "ε grid", "grid.gammas": ""}


def test_keys_without_comment_pragmas_and_non_blocks():
    got = keys('''
        def cfg():
            base = dict(a=1)
            x = dict(
                plain=1,
                quiet=2,  # noqa: E501
            )
            derived = dict(base, extra=1)  # positional argument: not a block
            spread = {**base, "k": 2}  # a ** entry: not a block
            kw = dict(**base, k=3)  # keyword entries beside ** are keys
            p = q = dict(r=1)  # both names
            if True:
                hidden = dict(h=1)  # inside if: not read
    ''')
    assert got == {"base": "", "base.a": "", "x": "", "x.plain": "", "x.quiet": "",
                   "derived": "positional argument: not a block", "spread": "a ** entry: not a block",
                   "kw": "keyword entries beside ** are keys", "kw.k": "keyword entries beside ** are keys",
                   "p": "both names", "p.r": "both names", "q": "both names", "q.r": "both names"}


def test_source_must_hold_one_function():
    with pytest.raises(ValueError, match="one function definition; got 0"):
        keys_in_source("x = dict(a=1)  # no function\n")


PLAIN_CFG = """
def cfg():
    lr = 0.1  # learning rate
    block = dict(
        eps=1e-5,  # step size ε
        inner=dict(depth=2),  # nesting depth
        bare=3,
    )
"""
SECTIONED = """
def cfg():
    # --- first ---
    a = dict(  # top a
        b=1,  # leaf b
    )
    # a plain comment, no section
    # --- second ---
    c = 2
"""


def scope_function(tmp_path: Path, source: str):
    """The function ``cfg`` of ``source``, loaded from a file so that inspect (and Sacred) can read its source."""
    path = tmp_path / "scope_case.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("scope_case", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cfg


def test_with_nested_docs_adds_nested_docs_and_keeps_values_and_sacred_docs(tmp_path):
    cfg = scope_function(tmp_path, PLAIN_CFG)
    plain, documented = Experiment("plain"), Experiment("documented")
    plain.config(cfg)
    scope = with_nested_docs(documented.config(cfg))
    assert scope is documented.configurations[0]
    assert nested_comments(cfg) == {"block.eps": "step size ε", "block.inner": "nesting depth",
                                           "block.inner.depth": "nesting depth"}
    assert scope._var_docs == {"seed": "the random seed for this experiment", "lr": "learning rate",
                               **nested_comments(cfg)}
    options = {"--loglevel": "ERROR"}
    a = plain.run("print_config", config_updates={"seed": 1}, options=options).config
    b = documented.run("print_config", config_updates={"seed": 1}, options=options).config
    assert a == b == {"seed": 1, "lr": 0.1, "block": {"eps": 1e-5, "inner": {"depth": 2}, "bare": 3}}


def test_with_nested_docs_below_ex_config_is_an_error(tmp_path):
    with pytest.raises(TypeError, match="above @ex.config.*function 'cfg'"):
        with_nested_docs(scope_function(tmp_path, PLAIN_CFG))


def printed_docs(output: str) -> dict[str, str]:
    """{dotted path: comment} of the entries in print_config's output."""
    docs, stack = {}, []
    for raw in output.splitlines():
        doc = DOC.search(raw)
        match = ENTRY.match(ANSI.sub("", raw))
        if match:  # an entry's line; a long value's continuation lines are not
            depth = (len(match.group(1)) - 2) // 2
            stack[depth:] = [match.group(2)]
            path = ".".join(stack)
        if doc and stack:  # a multi-line value carries its comment on its last line
            docs[path] = doc.group(1)
    return docs


def leaves(cfg: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in cfg.items():
        out += leaves(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [f"{prefix}{key}"]
    return out


@pytest.mark.parametrize("script", EXPERIMENTS)
def test_print_config_shows_the_comment_of_every_nested_key(script, capsys):
    ex = importlib.import_module(f"experiments.{script}").ex
    capsys.readouterr()
    cfg = ex.run("print_config", options={"--loglevel": "ERROR"}).config
    shown = printed_docs(capsys.readouterr().out)
    assert shown.get("seed") == "the random seed for this experiment"  # Sacred's own docs are kept
    nested = [path for path in leaves(cfg) if "." in path]
    source = (ROOT / "experiments" / f"{script}.py").read_text(encoding="utf-8").splitlines()
    missing = [path for path in nested if not shown.get(path)]
    assert not missing, f"{script}: print_config shows no comment for {missing}; write one on the key's line"
    for path in nested:
        name, text = path.rpartition(".")[2], shown[path]
        on_key_line = [line for line in source if re.search(rf"(\b{name}\s*=|[\"']{name}[\"']\s*:)", line)
                       and "#" in line and line.rstrip().endswith(text)]
        assert on_key_line, f"{script}: {path}'s comment {text!r} is not on a line of the source that sets {name}"


def test_the_docs_generator_reads_the_same_comments_and_sections(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_config_keys", ROOT / "docs" / "gen_config_keys.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.scope_rows(scope_function(tmp_path, SECTIONED)) == [
        ("section", None, "first"), ("key", "a", "top a"), ("key", "a.b", "leaf b"),
        ("section", None, "second"), ("key", "c", ""),
    ]
    for script in EXPERIMENTS:  # one source of truth: the tables' comments are the printed ones
        for scope in importlib.import_module(f"experiments.{script}").ex.configurations:
            func = getattr(scope, "_func", None)
            if func is not None:
                rows = [(key, text) for kind, key, text in gen.scope_rows(func) if kind == "key"]
                assert rows == [(k.path, k.comment) for k in config_keys(func)]

