"""Run a commands file locally, at most N lines at a time, skipping finished runs.

    python -m gen_commands.run cmds.txt --jobs 2
    python -m gen_commands.run cmds.txt --jobs 2 --retry-failed

* A line whose ``run_key`` has a COMPLETED run in its store is skipped. The store
  is the one named on the line (``-F DIR`` or ``-m host:port:db``), or the one
  given with ``--store`` / ``--mongo``.
* Each line runs as ``bash -c LINE`` in the current directory, in its own process
  group, with stdout and stderr in ``CMDS.logs/line<N>.out|err``. ``python`` on
  the line resolves to the interpreter running this module (its directory is put
  first on PATH), and OMP/MKL threads are capped at cores / jobs unless set.
* A progress bar shows done / failed / skipped / running. At the end the
  failures (line number, exit code, last stderr lines) are printed and written
  to ``CMDS.failures.json``; the exit status is 1 if any line failed.
  ``--retry-failed`` reruns only the lines recorded there. A line whose run was
  stopped by a signal left a checkpoint under its run_key, so its rerun (with
  ``--retry-failed`` or a plain rerun) resumes from it rather than restarting
  (docs/runs.md#preemption).
* Ctrl-C (or SIGTERM) stops launching, sends SIGINT to every running line's
  process group so Sacred records the run as INTERRUPTED (a checkpointing
  experiment first saves at its next step boundary), then SIGTERM and SIGKILL
  after ``--grace`` seconds; the exit status is 130.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core import checks
from gen_commands.commands import Command, CommandsFileError, read_commands
from gen_commands.store import Store, StoreError, completed_lines
from tracking.mongo import redact  # failures files and messages never show a Mongo password

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
STDERR_TAIL_LINES = 15
POLL_SECONDS = 0.1


def _child_signals(mask) -> None:
    """In a child before exec: default SIGINT/SIGTERM handling and the parent's old signal mask.

    A runner started with SIGINT ignored (``cmd &`` in a script) would pass SIG_IGN on, and
    its lines would then ignore the SIGINT that lets Sacred record them as INTERRUPTED.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@dataclass
class Outcome:
    """How one line ended: status is "done", "failed" or "interrupted"."""

    line: int
    command: str
    status: str
    exit_code: int | None
    seconds: float
    log: str
    stderr_tail: list[str] = field(default_factory=list)


def failures_path(commands_file: str | Path) -> Path:
    """Where the failure record of ``commands_file`` lives: ``CMDS.failures.json``."""
    return Path(str(commands_file) + ".failures.json")


def load_failures(commands_file: str | Path) -> dict[int, dict]:
    """line number -> failure entry from the record; {} if there is none."""
    path = failures_path(commands_file)
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
        return {int(f["line"]): f for f in record["failures"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CommandsFileError(f"cannot read failure record {str(path)!r}: {err}") from None


def save_failures(commands_file: str | Path, failures: list[dict]) -> Path | None:
    """Write the record (sorted by line), or delete it when there are no failures."""
    path = failures_path(commands_file)
    if not failures:
        path.unlink(missing_ok=True)
        return None
    record = {
        "commands_file": str(commands_file),
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
        "failures": sorted(failures, key=lambda f: f["line"]),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return path


def stderr_tail(path: str | Path, lines: int = STDERR_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log file (reads at most the last 16 KiB)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def child_env(jobs: int, threads: int | None) -> dict[str, str]:
    """The environment of every line: this interpreter's bin first on PATH, threads capped."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(var, str(threads))
    return env


class Runner:
    """Runs commands with at most ``jobs`` at once; see the module docstring."""

    def __init__(self, commands: list[Command], jobs: int, log_dir: Path, env: dict, grace: float,
                 total: int, skipped: int, progress: bool | None = None):
        self.queue = collections.deque(commands)
        self.jobs, self.log_dir, self.env, self.grace = jobs, log_dir, env, grace
        self.shell = shutil.which("bash") or "/bin/sh"
        self.running: dict[int, tuple[subprocess.Popen, float, Command]] = {}
        self.outcomes: list[Outcome] = []
        self.counts = collections.Counter(skipped=skipped)
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=skipped, unit="run", file=sys.stderr, dynamic_ncols=True,
                        disable=None if progress is None else not progress, mininterval=0.5)
        self._tqdm = tqdm
        self._update_bar()

    def _update_bar(self, advance: int = 0):
        c = self.counts
        self.bar.set_postfix_str(f"done={c['done']} failed={c['failed']} skipped={c['skipped']} "
                                 f"running={len(self.running)}", refresh=False)
        if advance:
            self.bar.update(advance)
        else:
            self.bar.refresh()

    def _say(self, message: str):
        self._tqdm.write(message, file=sys.stderr)

    def _log_paths(self, cmd: Command) -> tuple[Path, Path]:
        stem = self.log_dir / f"line{cmd.lineno:05d}"
        return stem.with_suffix(".out"), stem.with_suffix(".err")

    def _launch(self, cmd: Command):
        out_path, err_path = self._log_paths(cmd)
        # Hold Ctrl-C until the child is registered, so that no child escapes _stop_all.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen([self.shell, "-c", cmd.text], stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=err, env=self.env, start_new_session=True,
                                        preexec_fn=lambda: _child_signals(blocked))
            self.running[cmd.lineno] = (proc, time.monotonic(), cmd)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _finish(self, lineno: int, status: str | None = None):
        proc, start, cmd = self.running.pop(lineno)
        code = proc.returncode
        status = status or ("done" if code == 0 else "failed")
        _, err_path = self._log_paths(cmd)
        outcome = Outcome(line=lineno, command=redact(cmd.text), status=status, exit_code=code,
                          seconds=round(time.monotonic() - start, 1), log=str(err_path),
                          stderr_tail=stderr_tail(err_path) if status != "done" else [])
        self.outcomes.append(outcome)
        self.counts[status] += 1
        if status == "failed" or self.bar.disable:
            self._say(f"line {lineno}: {status} (exit {code}, {outcome.seconds:.0f} s)")
        self._update_bar(advance=1)

    def run(self) -> bool:
        """Run everything; returns False if interrupted (Ctrl-C or SIGTERM)."""
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            while self.queue or self.running:
                while self.queue and len(self.running) < self.jobs:
                    self._launch(self.queue.popleft())
                    self._update_bar()
                for lineno, (proc, _, _) in list(self.running.items()):
                    if proc.poll() is not None:
                        self._finish(lineno)
                time.sleep(POLL_SECONDS)
            return True
        except KeyboardInterrupt:
            self._say(f"interrupted: stopping {len(self.running)} running line(s), "
                      f"{len(self.queue)} not started")
            self.queue.clear()
            self._stop_all()
            return False
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.bar.close()

    def _stop_all(self):
        """SIGINT each process group, then SIGTERM and SIGKILL after the grace period."""
        for lineno, (proc, _, _) in list(self.running.items()):
            if proc.poll() is not None:
                self._finish(lineno)  # ended on its own before the interrupt
        for sig, wait in ((signal.SIGINT, self.grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            alive = [ln for ln, (p, _, _) in self.running.items() if p.poll() is None]
            for lineno in alive:
                _killpg(self.running[lineno][0], sig)
            deadline = time.monotonic() + wait
            try:
                while alive and time.monotonic() < deadline:
                    time.sleep(POLL_SECONDS)
                    alive = [ln for ln in alive if self.running[ln][0].poll() is None]
            except KeyboardInterrupt:
                self._say("second interrupt: escalating")
            if not alive:
                break
        for lineno, (proc, _, _) in list(self.running.items()):
            proc.wait()
            _killpg(proc, signal.SIGKILL)  # stragglers that left the shell's group alive
            self._finish(lineno, status="interrupted")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _killpg(proc: subprocess.Popen, sig: int):
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_positive_int = checks.cli_type(checks.integer, lo=1)  # argparse type: "-j 0" -> "must be an integer >= 1; got '0'"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gen_commands.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("commands", help="commands file: one shell command per line")
    p.add_argument("-j", "--jobs", type=_positive_int, default=1, help="lines run at once (default 1)")
    store = p.add_mutually_exclusive_group()
    store.add_argument("--store", metavar="DIR",
                       help="check COMPLETED runs in this file store instead of each line's -F")
    store.add_argument("--mongo", metavar="HOST:PORT:DB",
                       help="check COMPLETED runs in this Mongo store instead of each line's -m")
    p.add_argument("--retry-failed", action="store_true", help="run only the lines recorded in CMDS.failures.json")
    p.add_argument("--log-dir", help="per-line stdout/stderr logs (default CMDS.logs/)")
    p.add_argument("--threads-per-job", type=int, help="OMP/MKL threads per line if not set in the environment "
                                                       "(default cores // jobs; 0 leaves them alone)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds between SIGINT and SIGTERM on Ctrl-C (default 30)")
    p.add_argument("--dry-run", action="store_true", help="print which lines would run or be skipped, run nothing")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: on a terminal)")
    return p


def _select(args, commands: list[Command]) -> tuple[list[Command], set[int], list[Command]]:
    """(lines to run, completed line numbers, lines that cannot be checked)."""
    if args.retry_failed:
        recorded = load_failures(args.commands)
        by_line = {c.lineno: c for c in commands}
        for lineno, entry in recorded.items():
            if lineno not in by_line or redact(by_line[lineno].text) != entry.get("command"):
                raise CommandsFileError(f"{args.commands}:{lineno} changed since it failed; "
                                        "rerun without --retry-failed")
        commands = [by_line[n] for n in sorted(recorded)]
    override = Store("file", args.store) if args.store else Store.parse("mongo", args.mongo) if args.mongo else None
    done, unknown = completed_lines(commands, override)
    return [c for c in commands if c.lineno not in done], done, unknown


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        commands = read_commands(args.commands)
        to_run, done, unknown = _select(args, commands)
    except (CommandsFileError, StoreError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.retry_failed and not to_run and not done:
        print(f"no failures recorded in {failures_path(args.commands)}; nothing to retry", file=sys.stderr)
        return 0
    if unknown:
        print(f"note: {len(unknown)} line(s) have no run_key or no observer flag; they always run "
              f"(first: line {unknown[0].lineno})", file=sys.stderr)
    if args.dry_run:
        selected = done | {c.lineno for c in to_run}
        for c in commands:
            if c.lineno in selected:
                print(f"{c.lineno}\t{'skip' if c.lineno in done else 'run'}\t{redact(c.text)}")
        return 0

    log_dir = Path(args.log_dir or str(args.commands) + ".logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    total = len(to_run) + len(done)
    runner = Runner(to_run, args.jobs, log_dir, child_env(args.jobs, args.threads_per_job), args.grace,
                    total=total, skipped=len(done), progress=args.progress)
    started = time.monotonic()
    finished = runner.run()

    # The record keeps earlier failures of lines not attempted now (unless since COMPLETED).
    previous = load_failures(args.commands)
    attempted = {o.line for o in runner.outcomes}
    texts = {c.lineno: c.text for c in commands}
    failures = [f for n, f in previous.items()
                if n not in attempted and n not in done and texts.get(n) == f.get("command")]
    failures += [asdict(o) for o in runner.outcomes if o.status == "failed"]
    record = save_failures(args.commands, failures)

    c = runner.counts
    print(f"{total} line(s): {c['done']} done, {c['failed']} failed, {c['skipped']} skipped"
          + (f", {c['interrupted']} interrupted, {len(to_run) - len(attempted)} not started" if not finished else "")
          + f" ({time.monotonic() - started:.0f} s)")
    for o in sorted((o for o in runner.outcomes if o.status == "failed"), key=lambda o: o.line):
        print(f"FAILED line {o.line} (exit {o.exit_code}, {o.seconds:.0f} s): {o.command}")
        for text in o.stderr_tail:
            print(f"    | {text}")
        print(f"    log: {o.log}")
    if record is not None:
        print(f"failures recorded in {record}; rerun them with: "
              f"python -m gen_commands.run {args.commands} --jobs {args.jobs} --retry-failed")
    if not finished:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if c["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
