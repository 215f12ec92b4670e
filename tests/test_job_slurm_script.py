"""job.slurm run by bash with the variables sbatch would set: line selection, logs and early errors.

The real-cluster round trip is tests/test_slurm.py (slow); this checks the script's own logic in
a second, with no SLURM installed.
"""
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def job(tmp_path, *args, task="2"):
    env = {"PATH": "/usr/bin:/bin", "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_NAME": "t",
           "SLURM_ARRAY_JOB_ID": "7", "DLT_VENV": "none"}
    if task is not None:
        env["SLURM_ARRAY_TASK_ID"] = task
    out = subprocess.run(["bash", str(REPO / "job.slurm"), *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=30)
    logs = sorted((tmp_path / "logs").glob("*.log"))
    return out.returncode, {p.name: p.read_text() for p in logs}


def test_runs_the_task_line_and_logs_it(tmp_path):
    (tmp_path / "cmds.txt").write_text("echo first\necho second; exit 3\n")
    code, logs = job(tmp_path, "cmds.txt")
    assert code == 3 and list(logs) == ["t_7_2.log"]
    text = logs["t_7_2.log"]
    assert "== echo second; exit 3" in text and "second" in text and "first" not in text
    assert "line 2 exited with status 3" in text


@pytest.mark.parametrize("args, task, message", [
    ((), "1", "usage: sbatch --array=1-N job.slurm COMMANDS.txt"),
    (("cmds.txt",), None, "SLURM_ARRAY_TASK_ID is not set"),
    (("missing.txt",), "1", "commands file"),
    (("cmds.txt",), "5", "line 5 is outside"),
])
def test_early_errors_reach_the_per_task_log(tmp_path, args, task, message):
    (tmp_path / "cmds.txt").write_text("echo only\n")
    code, logs = job(tmp_path, *args, task=task)
    assert code in (1, 2)
    (text,) = logs.values()  # sbatch sends stdout/stderr to /dev/null: the log is all the user gets
    assert message in text


# --------------------------------------------------------- signals and requeue (no SLURM: a stub scontrol)

CHILD = r'''
import pathlib, signal, sys, time
here = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    (here / "got").write_text(signal.Signals(signum).name)
    sys.exit(3)  # as an interrupted run: a non-zero status
for sig in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(sig, stop)
(here / "ready").write_text("")
time.sleep(60)
(here / "got").write_text("nothing")
'''


def signalled_job(tmp_path, sig, env_extra=None, child_written=False):
    """Run job.slurm on a line that waits for a signal; send ``sig`` to the script once the line runs."""
    import os
    import sys
    import time

    if not child_written:
        (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "cmds.txt").write_text(f"{sys.executable} {tmp_path / 'child.py'} {tmp_path}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.calls"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_NAME": "t",
           "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "42", "DLT_VENV": "none",
           **(env_extra or {})}
    proc = subprocess.Popen(["bash", str(REPO / "job.slurm"), "cmds.txt"], cwd=tmp_path, env=env)
    for _ in range(300):  # wait (up to 30 s) until the line is running: not a timing assertion
        if (tmp_path / "ready").exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    os.kill(proc.pid, sig)
    code = proc.wait(timeout=60)
    calls = (tmp_path / "scontrol.calls").read_text() if (tmp_path / "scontrol.calls").exists() else ""
    return code, (tmp_path / "got").read_text(), calls, (tmp_path / "logs" / "t_7_1.log").read_text()


def test_usr1_reaches_the_run_and_the_task_requeues_itself(tmp_path):
    import signal

    code, got, calls, log = signalled_job(tmp_path, signal.SIGUSR1)
    assert got == "SIGUSR1" and code == 3  # the run's own status, after it handled the signal
    assert calls == "requeue 42\n"
    assert "received SIGUSR1" in log and "line 1 exited with status 3" in log and "requeueing job 42" in log


def test_term_reaches_the_run_but_is_not_requeued_so_scancel_still_cancels(tmp_path):
    import signal

    code, got, calls, log = signalled_job(tmp_path, signal.SIGTERM)
    assert got == "SIGTERM" and code == 3 and calls == ""


@pytest.mark.parametrize("env, message", [({"DLT_REQUEUE": "0"}, None),
                                          ({"SLURM_RESTART_COUNT": "20"}, "restarted 20 times already")])
def test_requeue_can_be_turned_off_and_is_capped(tmp_path, env, message):
    import signal

    code, got, calls, log = signalled_job(tmp_path, signal.SIGUSR1, env)
    assert got == "SIGUSR1" and calls == ""
    if message:
        assert message in log


def test_script_asks_for_the_warning_signal_and_requeueing():
    text = (REPO / "job.slurm").read_text()
    assert "#SBATCH --signal=B:USR1@" in text and "#SBATCH --requeue" in text


def test_a_line_without_a_usr1_handler_runs_on_through_the_warning(tmp_path):
    """The line inherits USR1 ignored: a program that does not checkpoint is not killed by the time-limit warning."""
    import signal

    (tmp_path / "child.py").write_text(
        "import pathlib, sys, time\nhere = pathlib.Path(sys.argv[1])\n(here / 'ready').write_text('')\n"
        "time.sleep(2)\n(here / 'got').write_text('finished')\n")
    code, got, calls, log = signalled_job(tmp_path, signal.SIGUSR1, child_written=True)
    assert got == "finished" and code == 0 and calls == ""  # it completed: nothing to requeue
