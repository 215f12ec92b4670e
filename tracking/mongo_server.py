"""A local MongoDB wire-protocol server (mongoeco) in a subprocess, for tests and CI.

mongoeco needs Python >= 3.13, so it runs from its own venv (``.ci/mongo-venv.sh``
builds ``.ci/mongoeco-venv``; ``$DLT_MONGOECO_PYTHON`` names another interpreter)
and ``.ci/mongo_server.py`` serves it on 127.0.0.1. :func:`start` returns once the
server listens; the outage test kills and restarts one on the same SQLite file.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON_ENV = "DLT_MONGOECO_PYTHON"
SCRIPT = REPO / ".ci" / "mongo_server.py"


def mongoeco_python() -> str | None:
    """The interpreter that has mongoeco: ``$DLT_MONGOECO_PYTHON`` or ``.ci/mongoeco-venv``; None if absent."""
    explicit = os.environ.get(PYTHON_ENV)
    candidate = Path(explicit) if explicit else REPO / ".ci" / "mongoeco-venv" / "bin" / "python"
    return str(candidate) if candidate.is_file() and SCRIPT.is_file() else None


@dataclass
class LocalServer:
    """A running server: ``address`` is ``127.0.0.1:port``."""

    process: subprocess.Popen
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL, as an outage would (no clean shutdown)."""
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def start(port: int = 0, db_path: str | os.PathLike | None = None, user: str | None = None,
          timeout: float = 30.0) -> LocalServer:
    """Start ``.ci/mongo_server.py`` and wait until it listens (RuntimeError after ``timeout`` s)."""
    python = mongoeco_python()
    if python is None:
        raise RuntimeError(f"no mongoeco interpreter: run .ci/mongo-venv.sh or set ${PYTHON_ENV}")
    port_file = Path(tempfile.mkdtemp(prefix="mongoeco-")) / "port"
    cmd = [python, str(SCRIPT), "--port-file", str(port_file), "--port", str(port)]
    if db_path is not None:
        cmd += ["--db-path", str(db_path)]
    if user is not None:
        cmd += ["--user", user]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not port_file.is_file():
        if proc.poll() is not None:
            raise RuntimeError(f"mongo_server exited with {proc.returncode}: {proc.stderr.read()[-1000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"mongo_server did not listen within {timeout:g} s")
        time.sleep(0.1)
    return LocalServer(proc, int(port_file.read_text()))


if __name__ == "__main__":  # quick manual check: python -m tracking.mongo_server
    server = start()
    print(server.address, flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()
    sys.exit(0)
