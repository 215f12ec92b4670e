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
