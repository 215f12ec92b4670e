"""Preemption: signals stop a run at a step boundary, checkpoint it, and a rerun resumes it.

One mechanism for every experiment (docs/runs.md#preemption):

* ``add_checkpoint_config(ex)`` adds the config keys ``checkpoint_every``,
  ``checkpoint_dir``, ``keep_checkpoints`` and ``resume_from``.
* ``with checkpointing(_run, _config) as ck:`` wraps the body of ``main``. While it is
  open, SIGTERM, SIGUSR1 and SIGINT are caught. Inside ``with ck.deferring():`` (the
  training loop) a signal only sets a flag: the next ``ck.boundary(step, capture)``
  writes a checkpoint of ``capture()`` and raises :class:`Preempted`, which Sacred
  records as INTERRUPTED (``info['interrupted']`` names the signal, step and file).
  Outside it, a signal raises Preempted at once (nothing to save there). A second
  SIGINT always raises KeyboardInterrupt at once.
* ``ck.boundary`` also saves every ``checkpoint_every`` (seconds, or steps with
  ``'<n>steps'``). The experiment's ``capture()`` returns its own state (model,
  optimizer, generators, loop counters, records); the session adds the global RNGs,
  every metric logged so far, ``_run.info`` and the artifacts added so far.
* On entry, an unfinished checkpoint of the same run (same ``run_key``, or
  ``resume_from=<run dir>``) is loaded: its config must match (the differing keys are
  named), metrics, info and artifacts are replayed into this run, and ``ck.state`` is
  the experiment's saved state (None on a fresh start). The global RNGs are restored
  when the deferred section is entered, where the loop resumes.
* On normal exit the checkpoint files are deleted unless ``keep_checkpoints=True``.

The resumed run is a new store entry; ``info['resumed_from']`` names the interrupted
run (its id and directory) and the checkpoint.

Test hooks: the environment variable ``DLT_PREEMPT_TEST_SIGNAL=<step>[:<SIGNAME>]``
makes the process send itself the signal (default SIGTERM) at that boundary, once;
``DLT_PREEMPT_TEST_SLOW=<seconds>`` sleeps that long at every boundary, so that a
tiny run outlasts a real SLURM time limit on any machine (tests/test_preempt_slurm.py).
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from sacred.observers import FileStorageObserver
from sacred.utils import SacredInterrupt

from core import checks
from tracking.checkpoint import (
    CheckpointError,
    capture_global_rngs,
    checkpoint_files,
    config_differences,
    config_json,
    newest_readable,
    restore_global_rngs,
    write_checkpoint,
)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
TEST_ENV = "DLT_PREEMPT_TEST_SIGNAL"
SLOW_ENV = "DLT_PREEMPT_TEST_SLOW"
# Keys that may change between the interrupted run and its resumption.
RESUME_FREE_KEYS = ("checkpoint_every", "checkpoint_dir", "keep_checkpoints", "resume_from", "verbose")
_SESSION_INFO = ("interrupted", "resumed_from", "checkpoint_dir", "checkpoint_warnings")
_EVERY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|min|m|h|steps?)\s*$")
_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def _checkpoint_cfg():
    checkpoint_every = "10min"  # seconds (a number), '<x>s' | '<x>min' | '<x>h', or '<n>steps' (step boundaries)
    checkpoint_dir = None  # None -> beside the run: <store>/_checkpoints/<run_key> (or <run dir>/checkpoints)
    keep_checkpoints = False  # True: keep the checkpoint files after the run completes
    resume_from = None  # a run directory (or checkpoint directory) to resume; runs with a run_key resume by themselves


def add_checkpoint_config(ex):
    """Add the checkpoint keys (with their comments, for print_config) to ``ex``; returns ``ex``."""
    ex.config(_checkpoint_cfg)
    return ex


class Preempted(SacredInterrupt):
    """Raised at a step boundary after a stop signal; Sacred records the run as INTERRUPTED."""

    STATUS = "INTERRUPTED"


def parse_every(value) -> tuple[str, float]:
    """``checkpoint_every`` -> ('seconds', s) or ('steps', n); ValueError naming the key and the allowed forms."""
    allowed = "a number of seconds > 0, '<x>s', '<x>min', '<x>h' or '<n>steps' (n >= 1)"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > 0 and value != float("inf"):
            return "seconds", float(value)
    elif isinstance(value, str) and (m := _EVERY.match(value)):
        amount, unit = float(m.group(1)), m.group(2)
        if unit.startswith("step"):
            if amount >= 1 and amount == int(amount):
                return "steps", int(amount)
        elif amount > 0:
            return "seconds", amount * _UNITS[unit]
    raise checks.CheckError("checkpoint_every", allowed, value)


def validate_checkpoint_config(config: dict) -> tuple[str, float]:
    """Check the four checkpoint keys before any compute; returns parse_every's result."""
    every = parse_every(config["checkpoint_every"])
    checks.boolean("keep_checkpoints", config["keep_checkpoints"])
    checks.path("checkpoint_dir", config["checkpoint_dir"], none_ok=True)
    src = checks.path("resume_from", config["resume_from"], none_ok=True)
    if src is not None and not os.path.isdir(src):
        raise ValueError(f"resume_from must be an existing run or checkpoint directory; {src!r} is not a directory")
    return every


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()  # numpy arrays / scalars, tensors
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__}")


def _plain(value):
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 else value


def comparable_config(config: dict) -> dict:
    """The config without the keys that may change on resume, as plain JSON types."""
    return json.loads(config_json({k: v for k, v in config.items() if k not in RESUME_FREE_KEYS}))


def source_dir(resume_from: str) -> Path:
    """The checkpoint directory of ``resume_from``: a run directory's, or the directory itself."""
    p = Path(resume_from)
    if (p / "run.json").is_file():
        try:
            recorded = json.loads((p / "info.json").read_text()).get("checkpoint_dir")
        except (OSError, ValueError, AttributeError):
            recorded = None
        for cand in ([Path(recorded)] if recorded else []) + [p / "checkpoints"]:
            if checkpoint_files(cand):
                return cand
        raise CheckpointError(f"resume_from={resume_from!r}: that run has no checkpoint "
                              f"(looked in {recorded or p / 'checkpoints'}); it completed, or kept none")
    if not checkpoint_files(p):
        raise CheckpointError(f"resume_from={resume_from!r}: no ckpt-*.pt checkpoint files there")
    return p


class Session:
    """The checkpoint/resume state of one run; see the module docstring. Build with :func:`checkpointing`."""

    def __init__(self, run, config: dict):
        self.run, self.config = run, config
        self.every_kind, self.every = validate_checkpoint_config(config)
        self.keep = config["keep_checkpoints"]
        self.dir = self._own_dir()
        self.state: dict | None = None
        self.resumed_step: int | None = None
        self._metrics: list[list] = []
        self._artifacts: dict[str, bytes] = {}
        self._pending: int | None = None  # signal number waiting for a boundary
        self._deferring = False
        self._rngs: dict | None = None
        self._last_save = time.monotonic()
        self._lock_fh = None
        self._old_handlers: dict = {}
        self._sources: list[Path] = []
        self._test = self._parse_test_hook()
        self._slow = float(os.environ.get(SLOW_ENV) or 0)

    # --- where checkpoints live ---
    def _own_dir(self) -> Path:
        key, name = self.config.get("run_key"), self.run.experiment_info["name"]
        files = [o for o in self.run.observers if isinstance(o, FileStorageObserver) and getattr(o, "dir", None)]
        if self.config["checkpoint_dir"]:
            stamp = f"adhoc-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S}-{os.getpid()}"
            return Path(self.config["checkpoint_dir"]) / name / (str(key) if key is not None else stamp)
        if files:
            obs = files[0]
            return Path(obs.basedir) / "_checkpoints" / str(key) if key is not None else Path(obs.dir) / "checkpoints"
        root = Path(os.environ.get("DLT_RUNS_DIR", "runs")) / name / "_checkpoints"
        return root / (str(key) if key is not None else f"adhoc-{self.run._id or os.getpid()}-{int(time.time())}")

    def _lock(self) -> None:
        """Hold an exclusive lock on the checkpoint directory, so two processes never share one run's files."""
        if self._lock_fh is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.dir / ".lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise CheckpointError(f"another process is running this run "
                                  f"(its checkpoint directory {self.dir} is locked)") from None
        except OSError:
            pass  # file systems without flock: go on unlocked
        self._lock_fh = fh

    # --- resume ---
    def _load(self) -> None:
        src = source_dir(self.config["resume_from"]) if self.config["resume_from"] else self.dir
        if src == self.dir and not checkpoint_files(src):
            return  # fresh start
        if src == self.dir:
            self._lock()
        payload, path, warnings = newest_readable(src)
        if payload is None:
            raise CheckpointError(f"no checkpoint in {src}")
        saved, now = json.loads(payload["config"]), comparable_config(self.config)
        diff = config_differences(saved, now)
        if diff:
            raise CheckpointError(f"checkpoint {path} belongs to a different config: " + "; ".join(diff)
                                  + ". Rerun with the checkpoint's config, "
                                  "or use another checkpoint_dir / resume_from.")
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        self._sources.append(src)
        self.state, self.resumed_step = payload["state"], int(payload["step"])
        self._rngs = payload["rngs"]
        info = json.loads(payload["info"])
        for key in _SESSION_INFO:
            info.pop(key, None)
        self.run.info.update(info)
        self.run.info["resumed_from"] = {"run_id": payload["run_id"], "run_dir": payload["run_dir"],
                                         "checkpoint": str(path), "step": self.resumed_step}
        if warnings:
            self.run.info["checkpoint_warnings"] = warnings
        for name, value, step in json.loads(payload["metrics"]):  # recorded again: a second resume keeps them
            self._record_scalar(name, value, step)
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in payload["artifacts"].items():
                p = Path(tmp) / name
                p.write_bytes(data.numpy().tobytes())
                self._record_artifact(str(p), name)

    # --- bookkeeping of what has been logged ---
    def _record_scalar(self, name, value, step=None):
        value, step = _plain(value), _plain(step)
        self._metrics.append([name, value, step])
        return self._log_scalar(name, value, step)

    def _record_artifact(self, filename, name=None, *args, **kwargs):
        name = name or os.path.basename(filename)
        self._artifacts[name] = Path(filename).read_bytes()
        return self._add_artifact(filename, name, *args, **kwargs)

    # --- signals ---
    def _handler(self, signum, frame):
        if signum == signal.SIGINT and self._pending == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        name = signal.Signals(signum).name
        if not self._deferring:
            self.run.info["interrupted"] = {"signal": name, "step": None, "checkpoint": None, "time": _now()}
            raise Preempted(f"{name} outside the checkpointed loop; no new checkpoint")
        if self._pending is None:
            print(f"{name} received: stopping at the next step boundary", file=sys.stderr, flush=True)
        self._pending = self._pending or signum

    @contextlib.contextmanager
    def deferring(self):
        """Signals inside wait for the next :meth:`boundary`; entering restores a resumed run's global RNGs."""
        if self._rngs is not None:
            restore_global_rngs(self._rngs)
            self._rngs = None
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False

    # --- boundaries ---
    @staticmethod
    def _parse_test_hook():
        value = os.environ.get(TEST_ENV)
        if not value:
            return None
        step, _, name = value.partition(":")
        return int(step), getattr(signal, name or "SIGTERM")

    def boundary(self, step: int, capture: Callable[[], dict], force: bool = False) -> None:
        """A step boundary: save if a signal is pending (then raise Preempted), a save is due, or ``force``."""
        if self._slow > 0:
            time.sleep(self._slow)  # test hook; a signal meanwhile runs the handler, then the sleep goes on
        if self._test is not None and self._test[0] == step:
            sig = self._test[1]
            self._test = None
            os.kill(os.getpid(), sig)
        if self._pending is not None:
            name = signal.Signals(self._pending).name
            path = self.save(step, capture)
            self.run.info["interrupted"] = {"signal": name, "step": step, "checkpoint": str(path), "time": _now()}
            raise Preempted(f"{name}: stopped at step {step}, checkpoint {path}")
        if self.every_kind == "steps":
            due = step % int(self.every) == 0
        else:
            due = time.monotonic() - self._last_save >= self.every
        if due or force:
            self.save(step, capture)

    def save(self, step: int, capture: Callable[[], dict]) -> Path:
        """Write a checkpoint of ``capture()`` plus the session's bookkeeping at ``step``."""
        self._lock()
        info = {k: v for k, v in self.run.info.items() if k not in _SESSION_INFO}
        payload = {
            "step": int(step), "experiment": self.run.experiment_info["name"], "run_key": self.config.get("run_key"),
            "run_id": self.run._id, "run_dir": str(self._run_dir()) if self._run_dir() else None,
            "config": config_json(comparable_config(self.config)),
            "metrics": json.dumps(self._metrics), "info": json.dumps(info, default=_json_default),
            "artifacts": {k: _bytes_tensor(v) for k, v in self._artifacts.items()},
            "rngs": capture_global_rngs(), "state": capture(), "time": _now(),
        }
        path = write_checkpoint(self.dir, step, payload)
        self._last_save = time.monotonic()
        return path

    def _run_dir(self):
        files = [o for o in self.run.observers if isinstance(o, FileStorageObserver) and getattr(o, "dir", None)]
        return files[0].dir if files else None

    # --- open / close ---
    def __enter__(self):
        self._log_scalar, self._add_artifact = self.run.log_scalar, self.run.add_artifact
        self.run.log_scalar, self.run.add_artifact = self._record_scalar, self._record_artifact
        try:
            self._load()
        except BaseException:
            self._restore_run()
            raise
        try:
            for sig in SIGNALS:
                self._old_handlers[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread: signals keep their handlers
            self._old_handlers.clear()
        self.run.info["checkpoint_dir"] = str(self.dir)  # after the handlers: its presence says they are in place
        return self

    def _restore_run(self):
        self.run.log_scalar, self.run.add_artifact = self._log_scalar, self._add_artifact

    def __exit__(self, exc_type, exc, tb):
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._restore_run()
        if exc_type is None and not self.keep:
            self.delete()
        if self._lock_fh is not None:
            self._lock_fh.close()
        return False

    def delete(self) -> None:
        """Remove this run's checkpoint files (and those it resumed from)."""
        for d in {self.dir, *self._sources}:
            for p in checkpoint_files(d):
                p.unlink(missing_ok=True)
            for p in list(d.glob(".ckpt-*.tmp")) + [d / ".lock"] if d.is_dir() else []:
                p.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                d.rmdir()  # only if now empty
                if d.parent.name == "_checkpoints":
                    d.parent.rmdir()


def _bytes_tensor(data: bytes):
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def checkpointing(run, config: dict) -> Session:
    """The checkpoint session of ``run`` (a context manager); validates the checkpoint keys first."""
    return Session(run, config)


__all__ = ["CheckpointError", "Preempted", "Session", "add_checkpoint_config", "checkpointing", "parse_every"]
