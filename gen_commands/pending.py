"""Print the SLURM array ranges of the lines of a commands file not yet COMPLETED.

    sbatch --array=$(python -m gen_commands.pending cmds.txt)%4 job.slurm cmds.txt

A line counts as finished when its ``run_key`` has a COMPLETED run in the store
named on the line (``-F DIR`` / ``-m host:port:db``) or in ``--store`` /
``--mongo``. Lines without a run key or a store are always pending. FAILED and
INTERRUPTED runs are pending (a rerun of an interrupted one resumes from its
checkpoint), and so are RUNNING runs whose heartbeat is older than
``--stale-after`` minutes (a killed job); a RUNNING run with a fresh heartbeat is
live and its line is left out, so it is not submitted twice. The ranges
(``3,7-9``) go to stdout, nothing when every line is finished; counts go to
stderr. Line numbers are 1-based, as ``$SLURM_ARRAY_TASK_ID`` in job.slurm.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

from gen_commands import store as store_module
from gen_commands.commands import CommandsFileError, format_ranges, read_commands
from gen_commands.store import Store, StoreError, completed_lines

STALE_AFTER_MINUTES = 10.0  # Sacred beats every 10 s: a RUNNING run silent this long is dead


def pending_lines(commands, store: Store | None = None, stale_after: float | None = None) -> tuple[list[int], list]:
    """(sorted line numbers not COMPLETED, commands that could not be checked).

    With ``stale_after`` (seconds), lines whose run key has a RUNNING run with a heartbeat
    newer than that are live, not pending.
    """
    done, unknown = completed_lines(commands, store)
    if stale_after is not None:
        done = done | live_lines(commands, store, stale_after)
    return [c.lineno for c in commands if c.lineno not in done], unknown


def live_lines(commands, override: Store | None, stale_after: float, now: datetime.datetime | None = None) -> set[int]:
    """Line numbers whose run key has a RUNNING run with a heartbeat at most ``stale_after`` s old (UTC)."""
    now = now or datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # Sacred's naive UTC
    since = now - datetime.timedelta(seconds=stale_after)
    by_store: dict[Store, list] = {}
    for cmd in commands:
        st = override or cmd.store
        if cmd.run_key is not None and st is not None:
            by_store.setdefault(st, []).append(cmd)
    live = set()
    for st, cmds in by_store.items():
        keys = _live_file_keys(st.location, since) if st.kind == "file" else _live_mongo_keys(st.location, since)
        live.update(c.lineno for c in cmds if c.run_key in keys)
    return live


def _heartbeat(value) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=None)
        return value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    try:
        return _heartbeat(datetime.datetime.fromisoformat(str(value)))
    except ValueError:
        return None


def _live_file_keys(root: str, since: datetime.datetime) -> set[str]:
    keys = set()
    if not os.path.isdir(root):
        return keys
    for entry in os.scandir(root):
        if not entry.is_dir() or entry.name.startswith("_"):
            continue
        try:
            run = json.loads(open(os.path.join(entry.path, "run.json")).read())
            key = json.loads(open(os.path.join(entry.path, "config.json")).read()).get("run_key")
        except (OSError, ValueError, AttributeError):
            continue
        beat = _heartbeat(run.get("heartbeat")) if isinstance(run, dict) else None
        if run.get("status") == "RUNNING" and key is not None and beat is not None and beat >= since:
            keys.add(str(key))
    return keys


def _live_mongo_keys(value: str, since: datetime.datetime) -> set[str]:
    docs = store_module.mongo_find(value, {"status": "RUNNING", "heartbeat": {"$gte": since}}, {"config.run_key": 1})
    return {str(d["config"]["run_key"]) for d in docs if d.get("config", {}).get("run_key") is not None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gen_commands.pending", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("commands", help="commands file: one shell command per line")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--store", metavar="DIR", help="file store to check instead of each line's -F")
    g.add_argument("--mongo", metavar="HOST:PORT:DB", help="Mongo store to check instead of each line's -m")
    p.add_argument("--stale-after", metavar="MINUTES", type=float, default=STALE_AFTER_MINUTES,
                   help="a RUNNING run whose heartbeat is older counts as pending (default %(default)s)")
    args = p.parse_args(argv)
    try:
        store = Store("file", args.store) if args.store else Store.parse("mongo", args.mongo) if args.mongo else None
        commands = read_commands(args.commands)
        pending, unknown = pending_lines(commands, store)
        live = live_lines(commands, store, 60 * args.stale_after)
    except (CommandsFileError, StoreError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if unknown:
        print(f"note: {len(unknown)} line(s) have no run_key or no observer flag; counted as pending",
              file=sys.stderr)
    if live & set(pending):
        print(f"note: {len(live & set(pending))} line(s) RUNNING with a heartbeat under {args.stale_after:g} min old; "
              f"left out (first: line {min(live & set(pending))})", file=sys.stderr)
        pending = [n for n in pending if n not in live]
    print(f"{len(pending)} of {len(commands)} line(s) not COMPLETED", file=sys.stderr)
    if pending:
        print(format_ranges(pending))
    return 0


if __name__ == "__main__":
    sys.exit(main())
