"""Every experiment command in README.md and the docs pages names keys and named configs its experiment has.

Each ``python experiments/expt_*.py [command] [flags] with ...`` line of the code blocks of
README.md and docs/**/*.md (backslash continuations joined; the generated config pages
excluded) is parsed as Sacred parses it and given to ``print_config``, which fails on an
unknown key (ConfigAddedError) or named config. This checks the documentation against the
code; it runs nothing.
"""
import re
import shlex

import pytest
from sacred.arg_parser import get_config_updates

from tests.conftest import REPO, load_experiment

PLACEHOLDER = re.compile(r"<[a-z_]+>|\bPATH\b|\bN\b|\.\.\.")  # elided or to be filled in
PAGES = [REPO / "README.md"] + sorted(p for p in (REPO / "docs").rglob("*.md") if "generated" not in p.parts)


def page_commands(path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("python experiments/expt_") and " with " in f"{line} ":
                commands.append(line)
    return commands


COMMANDS = sorted({c for page in PAGES for c in page_commands(page)})


def test_the_readme_has_a_command_for_every_experiment():
    scripts = {shlex.split(c)[1] for c in page_commands(REPO / "README.md")}
    assert {f"experiments/{p.name}" for p in (REPO / "experiments").glob("expt_*.py")} <= scripts


def test_the_scan_finds_the_docs_commands():
    # The study pages hold most of the commands; a scan that finds few is broken.
    assert len(COMMANDS) > 40, len(COMMANDS)


@pytest.mark.parametrize("command", [c for c in COMMANDS if not PLACEHOLDER.search(c)])
def test_documented_command_has_only_real_keys(command):
    tokens = shlex.split(command)
    script = tokens[1]
    expt = load_experiment(script.removeprefix("experiments/").removesuffix(".py"))
    updates, named = get_config_updates(tokens[tokens.index("with") + 1:])
    # print_config resolves the config and named configs and runs no compute
    expt.ex.run("print_config", config_updates=updates, named_configs=named, options={"--loglevel": "ERROR"})
