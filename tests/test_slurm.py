"""job.slurm on a real single-node SLURM cluster (Debian's slurm-wlm and munge).

The fixture starts a private cluster in a root-owned temp dir: munged with its own
key, socket and seed file, then slurmctld and slurmd on free ports, configured
with the recipe that works on these machines (proctrack/linuxproc, task/none,
select/cons_tres with CR_Core_Memory, NodeName=localhost with the real CPU count
and RealMemory a little under MemTotal; the cgroup plugins do not work here). It
stops the daemons it started by PID.

Slow (about a minute); CI runs it through ``make test``. Without the binaries or
root it is skipped locally and fails when $CI is set; install them with
``.ci/setup-slurm.sh``.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gen_commands import expt_dln as gen
from gen_commands import sweep
from gen_commands.commands import config_overrides
from gen_commands.store import Store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")
START_TIMEOUT_S = 60
JOB_TIMEOUT_S = 600


def _find(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in ("/usr/sbin", "/sbin")
                                       if os.access(f"{d}/{name}", os.X_OK)), None)


def _require_cluster_tools():
    missing = [b for b in BINARIES if _find(b) is None]
    problem = None
    if missing:
        problem = f"SLURM/munge binaries missing: {missing}; install them with .ci/setup-slurm.sh"
    elif os.geteuid() != 0:
        problem = "the single-node SLURM test starts slurmd and munged, which need root"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _wait_for(predicate, timeout: float, what: str, logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}\n{Path(p).read_text()[-3000:]}" for p in logs if Path(p).exists())
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")


SLURM_CONF = """\
ClusterName=dlttest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture
def slurm_cluster(monkeypatch):
    """A running single-node cluster; yields its environment (SLURM_CONF exported)."""
    _require_cluster_tools()
    base = Path(tempfile.mkdtemp(prefix="dlt-slurm-"))  # root-owned, private to this test
    base.chmod(0o755)
    for sub in ("state", "spool"):
        (base / sub).mkdir()
    key_dir, sock_dir = base / "munge", base / "munge-socket"
    key_dir.mkdir(mode=0o700)
    sock_dir.mkdir()
    sock_dir.chmod(0o755)
    key = key_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = sock_dir / "munge.socket.2"
    conf = base / "slurm.conf"
    conf.write_text(SLURM_CONF.format(
        ctld_port=_free_port(), slurmd_port=_free_port(), munge_socket=munge_socket, base=base,
        cpus=os.cpu_count(), mem_mb=_mem_total_mb() - 512,
    ))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    env = dict(os.environ)
    daemons: list[subprocess.Popen] = []

    def start(args, log):
        fh = open(base / log, "wb")
        daemons.append(subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True))
        fh.close()

    logs = [base / "munged.out", base / "slurmctld.out", base / "slurmd.out"]
    try:
        start([_find("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={munge_socket}",
               f"--pid-file={key_dir / 'munged.pid'}", f"--log-file={key_dir / 'munged.log'}",
               f"--seed-file={key_dir / 'munged.seed'}"], "munged.out")
        _wait_for(munge_socket.exists, START_TIMEOUT_S, "munged's socket", logs)
        start([_find("slurmctld"), "-D", "-c", "-i", "-f", str(conf)], "slurmctld.out")
        start([_find("slurmd"), "-D", "-N", "localhost", "-f", str(conf)], "slurmd.out")

        def node_idle():
            r = subprocess.run([_find("sinfo"), "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=env)
            return r.returncode == 0 and r.stdout.strip() == "idle"

        _wait_for(node_idle, START_TIMEOUT_S, "the node to be idle", logs)
        yield {"env": env, "base": base, "logs": logs}
    finally:
        subprocess.run([_find("scancel"), "--user", "root"], env=env, capture_output=True)
        for proc in reversed(daemons):  # slurmd, slurmctld, then munged
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def _squeue(job_id: str, env) -> list[tuple[str, str]]:
    r = subprocess.run([_find("squeue"), "-h", "-r", "-j", job_id, "-o", "%i %t"], capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:  # an unknown (finished and purged) job id
        return []
    return [tuple(x.split()) for x in r.stdout.splitlines() if x.strip()]


def _sbatch(array: str, cmds, env) -> str:
    """Submit job.slurm over the lines of ``cmds`` as the array ``array`` (two tasks at a time); the job id.

    Resources on the command line override job.slurm's #SBATCH lines (sized for real runs)."""
    submit = subprocess.run(
        [_find("sbatch"), "--parsable", f"--array={array}%2", "--cpus-per-task=1", "--mem=2G",
         "--time=15", str(REPO / "job.slurm"), str(cmds)],
        cwd=REPO, env=env, capture_output=True, text=True)
    assert submit.returncode == 0, submit.stderr
    return submit.stdout.strip().split(";")[0]

def test_job_array_runs_every_line_and_pending_names_the_failure(slurm_cluster, tmp_path):
    env = {**slurm_cluster["env"], "DLT_LOG_DIR": str(tmp_path / "logs")}
    store = tmp_path / "store"
    good = tmp_path / "good.txt"
    assert gen.main([str(good), "--num-runs", "4", "--widths", "2", "3", "--layers", "1", "2", "--n", "200",
                     "--steps", "50", "--batch", "20", "--num-chains", "2", "--device", "cpu",
                     "-F", str(store), "--seed", "7"]) == 0
    good_lines = good.read_text().splitlines()
    # Line 3 fails on purpose at run time: an SGLD batch larger than n (ValueError in main).
    bad_overrides = {k: v for k, v in config_overrides(good_lines[0]).items() if k != "run_key"}
    bad_overrides["sgld_config.batch_size"] = 1000
    bad = sweep.format_command(gen.SCRIPT, gen.EXPERIMENT, bad_overrides, sweep.observer_flag(file_storage=str(store)))
    lines = good_lines[:2] + [bad] + good_lines[2:]
    cmds = tmp_path / "cmds.txt"
    cmds.write_text("".join(x + "\n" for x in lines))

    job_id = _sbatch(f"1-{len(lines)}", cmds, env)

    most_running = 0

    def finished():
        nonlocal most_running
        tasks = _squeue(job_id, env)
        most_running = max(most_running, sum(state == "R" for _, state in tasks))
        return not tasks

    _wait_for(finished, JOB_TIMEOUT_S, f"array job {job_id}", slurm_cluster["logs"])
    assert 1 <= most_running <= 2  # the %2 throttle

    task_logs = sorted((tmp_path / "logs").glob(f"*_{job_id}_*.log"))
    assert len(task_logs) == len(lines), task_logs
    text = {int(p.stem.rsplit("_", 1)[1]): p.read_text() for p in task_logs}
    assert "sgld_config.batch_size must be <= num_training_data (200); got 1000" in text[3]
    assert "exited with status 0" in text[1] and "exited with status 1" in text[3]

    statuses = Store("file", str(store)).statuses()
    for lineno, line in enumerate(lines, start=1):
        overrides = config_overrides(line)
        key = overrides["run_key"]
        assert key == sweep.run_key(gen.EXPERIMENT, {k: v for k, v in overrides.items() if k != "run_key"})
        expected = {"FAILED"} if lineno == 3 else {"COMPLETED"}
        assert statuses.get(key) == expected, (lineno, statuses.get(key), text.get(lineno, "")[-2000:])
        if lineno == 3:
            continue
        (run_dir,) = [d for d in store.iterdir() if (d / "config.json").exists()
                      and json.loads((d / "config.json").read_text()).get("run_key") == key]
        config = json.loads((run_dir / "config.json").read_text())
        for k, v in overrides.items():
            node = config
            for part in k.split("."):
                node = node[part]
            assert node == v, (lineno, k)

    pending = subprocess.run([sys.executable, "-m", "gen_commands.pending", str(cmds)], cwd=REPO,
                             capture_output=True, text=True)
    assert pending.returncode == 0, pending.stderr
    assert pending.stdout.strip() == "3"

    # Resubmitting the pending ranges runs only line 3 (which fails again).
    job2 = _sbatch(pending.stdout.strip(), cmds, env)
    _wait_for(lambda: not _squeue(job2, env), JOB_TIMEOUT_S, f"array job {job2}", slurm_cluster["logs"])
    assert [p.name for p in (tmp_path / "logs").glob(f"*_{job2}_*.log")] == [f"dlt-sweep_{job2}_3.log"]
