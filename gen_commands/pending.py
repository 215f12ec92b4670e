"""Print the SLURM array ranges of the lines of a commands file not yet COMPLETED.

    sbatch --array=$(python -m gen_commands.pending cmds.txt)%4 job.slurm cmds.txt

A line counts as finished when its ``run_key`` has a COMPLETED run in the store
named on the line (``-F DIR`` / ``-m host:port:db``) or in ``--store`` /
``--mongo``. Lines without a run key or a store are always pending. The ranges
(``3,7-9``) go to stdout, nothing when every line is finished; counts go to
stderr. Line numbers are 1-based, as ``$SLURM_ARRAY_TASK_ID`` in job.slurm.
"""
from __future__ import annotations

import argparse
import sys

from gen_commands.commands import CommandsFileError, format_ranges, read_commands
from gen_commands.store import Store, StoreError, completed_lines


def pending_lines(commands, store: Store | None = None) -> tuple[list[int], list]:
    """(sorted line numbers not COMPLETED, commands that could not be checked)."""
    done, unknown = completed_lines(commands, store)
    return [c.lineno for c in commands if c.lineno not in done], unknown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gen_commands.pending", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("commands", help="commands file: one shell command per line")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--store", metavar="DIR", help="file store to check instead of each line's -F")
    g.add_argument("--mongo", metavar="HOST:PORT:DB", help="Mongo store to check instead of each line's -m")
    args = p.parse_args(argv)
    try:
        store = Store("file", args.store) if args.store else Store.parse("mongo", args.mongo) if args.mongo else None
        commands = read_commands(args.commands)
        pending, unknown = pending_lines(commands, store)
    except (CommandsFileError, StoreError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if unknown:
        print(f"note: {len(unknown)} line(s) have no run_key or no observer flag; counted as pending",
              file=sys.stderr)
    print(f"{len(pending)} of {len(commands)} line(s) not COMPLETED", file=sys.stderr)
    if pending:
        print(format_ranges(pending))
    return 0


if __name__ == "__main__":
    sys.exit(main())
