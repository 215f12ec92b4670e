"""Write one Markdown table of config keys per experiment into docs/generated/.

Keys, defaults and comments come from the experiments' own Sacred config scopes, so
the docs cannot drift from the code: defaults are what Sacred computes (the scopes are
run, as ``print_config`` runs them), and comments are read from the scope's source,
including those inside ``dict(...)`` entries that ``print_config`` does not show.

Run from the repository root with the project's Python (it imports torch and sacred):

    python docs/gen_config_keys.py            # writes docs/generated/config_<name>.md

The output is git-ignored and rebuilt by .ci/docs.sh before every docs build.
"""
from __future__ import annotations

import ast
import inspect
import io
import json
import textwrap
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "generated"

# (script in experiments/, Sacred experiment name, docs page of the study). The page
# names are generated/config_<name>.md; tests/test_docs_links.py reads this list.
EXPERIMENTS = [
    ("expt_dln", "dln_lambdahat", "llc.md"),
    ("expt_llc_curve", "llc_curve", "llc.md"),
    ("expt_dln_saddle_dynamics", "dln_saddle_dynamics", "llc.md"),
    ("expt_rescaling_invariance", "rescaling_invariance", "llc.md"),
    ("expt_mala_vs_sgld", "mala_vs_sgld", "llc.md"),
    ("expt_sgd_regimes", "sgd_regimes", "sgd_regimes.md"),
    ("expt_chaos", "chaos", "chaos.md"),
    ("expt_abc_params", "abc_params", "width_parameterizations.md"),
    ("expt_basis_decomposition", "basis_decomposition", "basis_decomposition.md"),
]
SACRED_COMMANDS = {"print_config", "print_dependencies", "save_config", "print_named_configs", "main"}


def page_name(sacred_name: str) -> str:
    return f"generated/config_{sacred_name}.md"


def line_comments(source: str) -> dict[int, str]:
    """Comment text by 1-based line number of ``source``."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def scope_rows(func) -> list[tuple[str, str | None, str]]:
    """(kind, dotted key or None, comment) in source order for one config function.

    kind is "section" for a ``# --- title ---`` line, else "key". Nested keys come from
    ``dict(k=v, ...)`` calls and ``{"k": v}`` literals assigned at the top level.
    """
    source = textwrap.dedent(inspect.getsource(func))
    comments = line_comments(source)
    body = ast.parse(source).body[0].body
    rows, seen_lines = [], set()

    def comment_at(line: int) -> str:
        seen_lines.add(line)
        return comments.get(line, "")

    def nested(prefix: str, value: ast.AST):
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "dict" and not value.args:
            items = [(kw.arg, kw.value, kw.lineno) for kw in value.keywords if kw.arg]
        elif isinstance(value, ast.Dict) and all(isinstance(k, ast.Constant) for k in value.keys):
            items = [(k.value, v, k.lineno) for k, v in zip(value.keys, value.values)]
        else:
            return
        for name, sub, line in items:
            key = f"{prefix}.{name}"
            rows.append(("key", key, comment_at(line)))
            nested(key, sub)

    for stmt in body:
        # section headers written as standalone comments before this statement
        for line in sorted(comments):
            if line < stmt.lineno and line not in seen_lines:
                seen_lines.add(line)
                text = comments[line]
                if text.startswith("---"):
                    rows.append(("section", None, text.strip("- ").strip()))
        targets = []
        if isinstance(stmt, ast.Assign):
            targets = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            targets = [stmt.target.id]
        for name in targets:
            rows.append(("key", name, comment_at(stmt.lineno)))
            nested(name, stmt.value)
    return rows


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out[key] = v
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
    return out


def fmt(value) -> str:
    if isinstance(value, dict):
        return "(dict)"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except TypeError:
        text = repr(value)
    if isinstance(value, str):
        text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"`{text}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def defaults(ex) -> dict:
    """The config Sacred computes with no overrides, as print_config shows it."""
    cfg: dict = {}
    for scope in ex.configurations:
        summary = scope(preset=cfg)
        cfg.update(summary)
    return cfg


def assigned_keys(func) -> list[str]:
    """Dotted keys a named config sets, innermost dict entries only."""
    keys = [key for kind, key, _ in scope_rows(func) if kind == "key"]
    return [k for k in keys if not any(o.startswith(k + ".") for o in keys)]


def render(script: str, sacred_name: str, study_page: str, module) -> str:
    ex = module.ex
    cfg = flatten(defaults(ex))
    rows = []
    for scope in ex.configurations:
        func = getattr(scope, "_func", None)
        if func is not None:
            rows += scope_rows(func)
    documented = {key for kind, key, _ in rows if kind == "key"}
    lines = [
        f"# Config keys: `{sacred_name}`",
        "",
        f"Generated by `docs/gen_config_keys.py` from the config scope of "
        f"`experiments/{script}.py`; do not edit. Defaults are those Sacred computes "
        f"(`python experiments/{script}.py print_config`); comments are the scope's own. "
        f"Back to the study: [{study_page[:-3]}](../{study_page}).",
        "",
        "| key | default | comment |",
        "|---|---|---|",
    ]
    for kind, key, text in rows:
        if kind == "section":
            lines.append(f"| **{cell(text)}** | | |")
        elif key in cfg:
            lines.append(f"| `{key}` | {cell(fmt(cfg[key]))} | {cell(text)} |")
    extra = [k for k in cfg if k not in documented and k != "seed"]
    for key in extra:
        lines.append(f"| `{key}` | {cell(fmt(cfg[key]))} | added to every experiment by "
                     "`tracking.sacred_utils.configure_experiment`: the sweep line's run key, "
                     "None for runs started by hand |")
    lines += ["", "`seed` is Sacred's run seed; without `with seed=N` Sacred draws one and records it.", ""]
    if ex.named_configs:
        lines += ["## Named configs", "", "| name | what | keys it sets |", "|---|---|---|"]
        for name, scope in ex.named_configs.items():
            func = getattr(scope, "_func", None)
            doc = (inspect.getdoc(func) or "").split("\n\n")[0] if func else ""
            if func and not doc:  # no docstring: the scope's own comments say what it is
                notes = line_comments(textwrap.dedent(inspect.getsource(func))).values()
                doc = "; ".join(c for c in notes if c and not c.startswith(("noqa", "---")))
            keys = ", ".join(f"`{k}`" for k in assigned_keys(func)) if func else "(a dict)"
            lines.append(f"| `{name}` | {cell(doc)} | {cell(keys)} |")
        lines.append("")
    commands = [c for c in ex.commands if c not in SACRED_COMMANDS]
    if commands:
        lines += ["## Commands", "", "| command | what |", "|---|---|"]
        for name in commands:
            doc = (inspect.getdoc(ex.commands[name]) or "").split("\n\n")[0]
            lines.append(f"| `{name}` | {cell(doc)} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    import importlib

    OUT.mkdir(parents=True, exist_ok=True)
    index = ["# Config keys of every experiment", "",
             "Generated by `docs/gen_config_keys.py`; one page per Sacred experiment.", ""]
    for script, sacred_name, study_page in EXPERIMENTS:
        module = importlib.import_module(f"experiments.{script}")
        if module.ex.path != sacred_name:
            raise SystemExit(f"{script}: Sacred name is {module.ex.path!r}, EXPERIMENTS says {sacred_name!r}")
        text = render(script, sacred_name, study_page, module)
        (OUT / f"config_{sacred_name}.md").write_text(text, encoding="utf-8")
        index.append(f"- [`{sacred_name}`](config_{sacred_name}.md) (`experiments/{script}.py`)")
    (OUT / "index.md").write_text("\n".join(index) + "\n", encoding="utf-8")
    print(f"wrote {len(EXPERIMENTS)} config pages to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
