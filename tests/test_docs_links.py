"""Every ``docs/<page>.md#<anchor>`` reference in the repository resolves.

Docstrings, the README and the docs pages themselves cite pages of the docs site. A
reference resolves when the page exists under docs/ and, if it names an anchor, the
page has a heading with that id. Heading ids follow mkdocs' rule, written out here
independently of Python-Markdown: an explicit ``{#id}`` (attr_list) wins; otherwise the
heading's text, NFKD-normalised to ASCII, loses every character that is not a word
character, a space or a hyphen, is lower-cased, and runs of spaces and hyphens become one
hyphen; a repeated id gets ``_1``, ``_2``, ... The mkdocs build (``.ci/docs.sh``, strict)
checks the same links with the real renderer; this test needs no docs toolchain.

Pages under docs/generated/ are written by docs/gen_config_keys.py and git-ignored; a
reference to one resolves when the generator lists that experiment, and may not name an
anchor (those headings are not stable).
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import unicodedata
from pathlib import Path

import pytest
import yaml  # pinned in requirements.txt

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Directories never scanned: VCS data, virtual environments, build output, caches.
EXCLUDED_DIRS = {".git", ".venv", ".docs-build", "node_modules", "__pycache__", ".pytest_cache",
                 "runs", "figures", "data_cache", "logs", "sweeps", "build", ".ipynb_checkpoints",
                 "generated"}
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".yml", ".yaml", ".sh", ".cfg", ".ipynb", ".slurm", ".json"}
TEXT_NAMES = {"Makefile", "Pipfile", "run"}

# docs/<page>.md with an optional #anchor, anywhere in a file (docstrings, comments, links).
REPO_REF = re.compile(r"(?<![\w./-])(?:\./)?docs/((?:[\w-]+/)*[\w-]+\.md)(?:#([\w-]+))?")
# A relative Markdown link inside a docs page: ](page.md#anchor) or ](#anchor).
DOCS_LINK = re.compile(r"\]\(((?:\.\./|[\w-]+/)*[\w-]+\.md)?(?:#([\w-]+))?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
ATTR_ID = re.compile(r"\s*\{:?\s*#([\w-]+)[^}]*\}\s*$")


def slugify(text: str) -> str:
    """mkdocs' (Python-Markdown toc's) default slug of a heading's plain text."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def plain_text(markdown: str) -> str:
    """The text a heading renders to: link targets, code ticks and emphasis markers dropped."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    parts = re.split(r"(`[^`]*`)", text)  # keep code spans verbatim, strip emphasis elsewhere
    return "".join(p[1:-1] if p.startswith("`") else re.sub(r"(\*\*|\*|__)", "", p) for p in parts)


def heading_ids(markdown: str) -> list[str]:
    """Ids of the ATX headings of a page, in order, as mkdocs assigns them."""
    ids, fence = [], None
    for line in markdown.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            marker = stripped[:3]
            fence = None if fence == marker else (fence or marker)
            continue
        if fence or line.startswith((" ", "\t")):
            continue
        m = HEADING.match(line)
        if not m:
            continue
        text = m.group(2)
        explicit = ATTR_ID.search(text)
        if explicit:
            ids.append(explicit.group(1))
            continue
        base = slug = slugify(plain_text(text))
        n = 0
        while slug in ids:
            n += 1
            slug = f"{base}_{n}"
        ids.append(slug)
    return ids


def generated_pages() -> set[str]:
    spec = importlib.util.spec_from_file_location("gen_config_keys", DOCS / "gen_config_keys.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {module.page_name(name) for _, name, _ in module.EXPERIMENTS} | {"generated/index.md"}


def _candidate_files() -> list[Path]:
    """The repository's own files: in a git checkout, what git tracks plus untracked files it does not ignore
    (so CI's cached service venvs, npm trees and run stores under ignored folders are never read); elsewhere
    every file below the root."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
        return sorted(ROOT / name for name in listed if name)
    except (OSError, subprocess.CalledProcessError):
        return sorted(ROOT.rglob("*"))


def text_files() -> list[Path]:
    out = []
    for path in _candidate_files():
        rel = path.relative_to(ROOT)
        if any(part in EXCLUDED_DIRS or part.startswith(".venv") for part in rel.parts[:-1]):
            continue
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES):
            out.append(path)
    return out


def collect_references() -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """(where, page relative to docs/, anchor or None) for every reference; unreadable files."""
    refs, unreadable = [], []
    for path in text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            unreadable.append(str(path.relative_to(ROOT)))
            continue
        rel = path.relative_to(ROOT)
        for lineno, line in enumerate(text.splitlines(), 1):
            where = f"{rel}:{lineno}"
            for m in REPO_REF.finditer(line):
                refs.append((where, m.group(1), m.group(2)))
            if rel.parts[0] == "docs" and path.suffix == ".md":
                for m in DOCS_LINK.finditer(line):
                    page, anchor = m.group(1), m.group(2)
                    if page is None and anchor is None:
                        continue
                    target = (path.parent / page).resolve() if page else path.resolve()
                    try:
                        page_rel = target.relative_to(DOCS.resolve()).as_posix()
                    except ValueError:
                        refs.append((where, f"(outside docs/) {page}", anchor))
                        continue
                    refs.append((where, page_rel, anchor))
    return refs, unreadable


def resolve(page: str, anchor: str | None, generated: set[str], cache: dict) -> str | None:
    """None when the reference resolves, else the reason it does not."""
    if page.startswith("generated/"):
        if page not in generated:
            return f"docs/{page} is not written by docs/gen_config_keys.py"
        return f"docs/{page} is generated; its headings are not stable anchors" if anchor else None
    path = DOCS / page
    if not path.is_file():
        return f"docs/{page} does not exist"
    if anchor is None:
        return None
    if page not in cache:
        cache[page] = heading_ids(path.read_text(encoding="utf-8"))
    if anchor not in cache[page]:
        return f"docs/{page} has no heading with id {anchor!r}"
    return None


def test_slug_rule_matches_hand_computed_ids():
    # Each expected id worked out by hand from the rule in the module docstring.
    assert slugify("Two commands") == "two-commands"
    assert slugify("CGD and other differences from the original") == "cgd-and-other-differences-from-the-original"
    assert slugify("λ̂ for any model, from a notebook") == "for-any-model-from-a-notebook"  # λ̂ has no ASCII form
    assert slugify("1. Generate the commands") == "1-generate-the-commands"
    assert slugify("The crossover batch size B*") == "the-crossover-batch-size-b"
    assert slugify("Rescaling invariance: expt_rescaling_invariance.py") == \
        "rescaling-invariance-expt_rescaling_invariancepy"
    assert slugify("Mixed -- hyphens   and  spaces") == "mixed-hyphens-and-spaces"
    assert plain_text("The **bold** `a_b*` [link](x.md)") == "The bold a_b* link"


def test_reference_pattern():
    found = [m.groups() for m in REPO_REF.finditer(
        "see docs/notes/llc.md#sgld-estimator, [a](./docs/index.md) and docs/llc.md; "
        "not other/docs/x.md#y nor docs/<page>.md#<anchor>")]
    assert found == [("notes/llc.md", "sgld-estimator"), ("index.md", None), ("llc.md", None)]


def test_heading_ids_explicit_duplicates_and_fences():
    page = "\n".join([
        "# Title",
        "## Setup {#custom-id}",
        "## Notes",
        "```",
        "# not a heading",
        "```",
        "## Notes",
        "## Notes",
        "### `expt_dln.py` and **more**",
    ])
    assert heading_ids(page) == ["title", "custom-id", "notes", "notes_1", "notes_2", "expt_dlnpy-and-more"]


def test_broken_references_are_reported():
    generated = generated_pages()
    assert resolve("no_such_page.md", None, generated, {}) is not None
    assert resolve("index.md", "no-such-anchor", generated, {}) is not None
    assert resolve("generated/config_no_such_experiment.md", None, generated, {}) is not None
    assert resolve("generated/config_chaos.md", "named-configs", generated, {}) is not None
    assert resolve("index.md", "two-commands", generated, {}) is None


def test_every_docs_reference_resolves():
    refs, unreadable = collect_references()
    assert not unreadable, f"text files that are not UTF-8 (cannot be checked): {unreadable}"
    # The docs pages link to each other, so an empty list means the scan is broken.
    assert len(refs) > 50, f"only {len(refs)} references found; the scan is broken"
    generated, cache = generated_pages(), {}
    broken = [f"{where}: docs/{page}{'#' + anchor if anchor else ''}: {reason}"
              for where, page, anchor in refs
              if (reason := resolve(page, anchor, generated, cache)) is not None]
    assert not broken, "unresolved docs references:\n" + "\n".join(broken)


# Modules shown on an API page as prose instead of a ::: directive, with the reason.
API_NOT_RENDERED = {"tracking.demo": "its usage block would render as reference links"}


@pytest.mark.parametrize("package", ["core", "llc", "dynamics", "models", "data", "tracking", "gen_commands"])
def test_api_page_lists_every_module(package):
    # mkdocstrings fails the build on a module that no longer exists and silently omits
    # a new one; the page must name exactly the package's public modules.
    text = (DOCS / "api" / f"{package}.md").read_text(encoding="utf-8")
    rendered = set(re.findall(rf"^::: ({package}\.\w+)\s*$", text, flags=re.M))
    modules = {f"{package}.{p.stem}" for p in (ROOT / package).glob("*.py") if not p.stem.startswith("_")}
    prose = {m for m in API_NOT_RENDERED if m.startswith(package + ".")}
    assert rendered | prose == modules, (
        f"docs/api/{package}.md: missing {sorted(modules - rendered - prose)}, "
        f"stale {sorted((rendered | prose) - modules)}")
    assert not rendered & prose
    for module in prose:
        assert f"## {module}" in text, f"docs/api/{package}.md must say why {module} is not rendered"


def nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for v in node.values() for p in nav_pages(v)]
    return [p for v in node for p in nav_pages(v)]


def test_every_experiment_has_a_config_page_in_the_nav():
    spec = importlib.util.spec_from_file_location("gen_config_keys", DOCS / "gen_config_keys.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    scripts = {p.stem for p in (ROOT / "experiments").glob("expt_*.py")}
    assert {script for script, _, _ in gen.EXPERIMENTS} == scripts
    nav = set(nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]))
    assert generated_pages() <= nav, sorted(generated_pages() - nav)
    written = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "generated" not in p.parts}
    assert written <= nav, f"pages missing from mkdocs.yml's nav: {sorted(written - nav)}"
    for script, _, study in gen.EXPERIMENTS:
        assert (DOCS / study).is_file(), f"{script}: study page docs/{study} does not exist"
