"""Read a commands file: one shell command per line, with its observer and run key.

Line numbers are 1-based, as in ``sed -n Np`` and ``$SLURM_ARRAY_TASK_ID``. Blank
lines and lines starting with ``#`` are not commands (and keep the numbering).
From each command this module reads, without running anything:

* the observer Sacred will record to: ``-F DIR`` / ``--file_storage=DIR`` or
  ``-m ARG`` / ``--mongo_db=ARG`` (before ``with``);
* the run key: the ``run_key=...`` override after ``with``, converted the way
  Sacred converts command-line values (``ast.literal_eval``, else the raw text).

A line that the shell could not split (an unclosed quote), or an observer flag
with no value, is malformed: :func:`read_commands` raises
:class:`CommandsFileError` naming the file and line.
"""
from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from gen_commands.store import Store

RUN_KEY_PREFIX = "run_key="
_FILE_FLAGS = ("-F", "--file_storage")
_MONGO_FLAGS = ("-m", "--mongo_db")


class CommandsFileError(ValueError):
    """A commands file that is missing, unreadable or has a malformed line."""


@dataclass(frozen=True)
class Command:
    """One command line of a commands file.

    Attributes:
        lineno: 1-based line number in the file.
        text: the line as written (without the newline), run with ``bash -c``.
        store: the observer named on the line, or None.
        run_key: the ``run_key`` override, or None.
    """

    lineno: int
    text: str
    store: Store | None
    run_key: str | None


def sacred_value(text: str):
    """Sacred's conversion of a command-line value: a Python literal, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def config_overrides(text: str) -> dict:
    """The ``key=value`` overrides after ``with`` on a command line, as Sacred converts them."""
    argv = shlex.split(text)
    if "with" not in argv:
        return {}
    pairs = (a.split("=", 1) for a in argv[argv.index("with") + 1:] if "=" in a)
    return {k: sacred_value(v) for k, v in pairs}


def parse_command(text: str, lineno: int = 0, source: str = "<line>") -> Command:
    """Split ``text`` like the shell and find its observer and run key.

    Raises:
        CommandsFileError: unbalanced quotes, an observer flag without a value, or
            an empty ``run_key=``.
    """
    where = f"{source}:{lineno}"
    try:
        argv = shlex.split(text, comments=False)
    except ValueError as err:
        raise CommandsFileError(f"{where}: malformed line ({err}): {text!r}") from None
    if not argv:
        raise CommandsFileError(f"{where}: empty command")
    store, key, after_with = None, None, False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "with":
            after_with = True
        elif after_with:
            if arg.startswith(RUN_KEY_PREFIX):
                raw = arg[len(RUN_KEY_PREFIX):]
                if raw == "":
                    raise CommandsFileError(f"{where}: empty run_key= in {text!r}")
                key = str(sacred_value(raw))
        else:
            for flags, kind in ((_FILE_FLAGS, "file"), (_MONGO_FLAGS, "mongo")):
                value = None
                if arg in flags:
                    if i + 1 >= len(argv) or argv[i + 1] == "with":
                        raise CommandsFileError(f"{where}: {arg} needs a value: {text!r}")
                    value = argv[i + 1]
                    i += 1
                elif arg.startswith(flags[1] + "="):
                    value = arg.split("=", 1)[1]
                if value is not None:
                    try:
                        store = Store.parse(kind, value)
                    except ValueError as err:
                        raise CommandsFileError(f"{where}: {err}") from None
        i += 1
    return Command(lineno=lineno, text=text, store=store, run_key=key)


def read_commands(path: str | Path) -> list[Command]:
    """Every command of ``path`` (blank and ``#`` lines skipped), in file order.

    Raises:
        CommandsFileError: the file is missing or unreadable, or a line is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise CommandsFileError(f"commands file {str(path)!r} not found" if not path.exists()
                                else f"{str(path)!r} is not a file")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CommandsFileError(f"cannot read commands file {str(path)!r}: {err}") from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if text and not text.startswith("#"):
            out.append(parse_command(text, lineno, str(path)))
    return out


def format_ranges(numbers) -> str:
    """Sorted, merged ranges in SLURM's ``--array`` syntax: ``[3, 7, 8, 9]`` -> ``"3,7-9"``."""
    nums = sorted(set(numbers))
    parts, i = [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(parts)


def parse_ranges(text: str) -> list[int]:
    """Inverse of :func:`format_ranges`: ``"3,7-9"`` -> ``[3, 7, 8, 9]``; ValueError if malformed."""
    out: list[int] = []
    for part in filter(None, text.replace(" ", "").split(",")):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"line ranges look like 3,7-9; got {text!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"range {part!r} runs backwards")
        out.extend(range(lo, hi + 1))
    return sorted(set(out))
