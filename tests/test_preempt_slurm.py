"""A real SLURM array task cut at its time limit: signalled, checkpointed, requeued, resumed, same result.

Uses tests/test_slurm.py's single-node cluster fixture (slow; skipped without the binaries or root,
failing when $CI is set). About 4-7 minutes, most of it SLURM's hold on a requeued task.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gen_commands import sweep
from gen_commands.commands import config_overrides
from gen_commands.store import Store
from tests.test_slurm import REPO, _find, _squeue, _wait_for, slurm_cluster  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_task_at_its_time_limit_checkpoints_requeues_and_resumes_to_the_same_result(slurm_cluster, tmp_path):  # noqa: F811 (the fixture imported above)
    """One array task outlasts --time=1: USR1 before the limit, checkpoint, requeue, resume, same result.

    The run is tiny but sleeps 0.25 s at each of its 240 step boundaries (DLT_PREEMPT_TEST_SLOW), so it needs
    over 60 s on any machine. With --time=2 and --signal=B:USR1@60, SLURM (which checks limits every 30 s)
    sends USR1 30-60 s after the start, so the first task is always cut, and has 60 s to save.
    """
    overrides = {"device": "cpu", "width": 3, "num_training_data": 200, "logging_period": 80,
                 "training_config.num_steps": 240, "training_config.batch_size": 20,
                 "training_config.learning_rate": 1e-3, "sgld_config.num_steps": 10, "sgld_config.batch_size": 20,
                 "sgld_config.num_chains": 2, "seed": 5}
    store = tmp_path / "store"
    line = sweep.format_command("experiments/expt_dln_saddle_dynamics.py", "dln_saddle_dynamics", overrides,
                                sweep.observer_flag(file_storage=str(store)))
    key = config_overrides(line)["run_key"]
    cmds = tmp_path / "cmds.txt"
    cmds.write_text(line + "\n")
    env = {**slurm_cluster["env"], "DLT_LOG_DIR": str(tmp_path / "logs"), "DLT_PREEMPT_TEST_SLOW": "0.25",
           "DLT_VENV": os.environ.get("DLT_VENV", str(Path(sys.executable).parents[1]))}
    submit = subprocess.run(
        [_find("sbatch"), "--parsable", "--array=1", "--cpus-per-task=1", "--mem=2G", "--time=2",
         "--signal=B:USR1@60", str(REPO / "job.slurm"), str(cmds)],
        cwd=REPO, env=env, capture_output=True, text=True)
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip().split(";")[0]

    # Meanwhile, the same line uninterrupted, in-process, into another store.
    from sacred.observers import FileStorageObserver

    from tests.conftest import load_experiment

    expt = load_experiment("expt_dln_saddle_dynamics")
    expt.ex.observers[:] = [FileStorageObserver(str(tmp_path / "full"))]
    nested = {}
    for k, v in {**overrides, "run_key": key}.items():
        head, _, tail = k.partition(".")
        if tail:
            nested.setdefault(head, {})[tail] = v
        else:
            nested[k] = v
    full = expt.ex.run(config_updates=nested)
    expt.ex.observers[:] = []

    def done():
        return Store("file", str(store)).completed([key]) == {key} and not _squeue(job_id, env)

    task_log = tmp_path / "logs" / f"dlt-sweep_{job_id}_1.log"
    # SLURM holds a requeued task about 2 min; a loaded machine may need a second requeue (7 min measured).
    _wait_for(done, 900, f"job {job_id} to complete after its requeue(s)", [task_log, *slurm_cluster["logs"]])
    log = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert "received SIGUSR1" in log and "requeueing job" in log and "requeue failed" not in log, log[-3000:]
    assert "(restart 1)" in log  # the same array task, started again by SLURM
    statuses = Store("file", str(store)).statuses([key])[key]
    assert "INTERRUPTED" in statuses and "COMPLETED" in statuses, (statuses, log[-3000:])
    (final,) = [json.loads((d / "run.json").read_text()) for d in store.iterdir()
                if (d / "run.json").exists() and json.loads((d / "run.json").read_text())["status"] == "COMPLETED"]
    assert final["result"] == full.result
    assert not (store / "_checkpoints").exists()
