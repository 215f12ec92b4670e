"""Omniboard end to end: two experiments run with -m, then read through Omniboard's REST API and UI.

Needs Omniboard from npm (``$DLT_OMNIBOARD_BIN``), Debian chromium (``$DLT_CHROMIUM``
or ``chromium`` on PATH) and the mongoeco server (``tracking.mongo_server``);
``.ci/setup-omniboard.sh`` and ``.ci/mongo-venv.sh`` install them and ``.ci/run`` sets
the variables, so CI runs this test. Elsewhere it is skipped, saying what is missing.
"""
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from tests.conftest import REPO
from tracking import mongo_server
from tracking.load import load_metrics, load_runs

OMNIBOARD = os.environ.get("DLT_OMNIBOARD_BIN", str(REPO / ".ci" / "omniboard" / "node_modules" / ".bin" / "omniboard"))
CHROMIUM = os.environ.get("DLT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
_missing = [what for what, ok in [
    ("Omniboard (bash .ci/setup-omniboard.sh, or set DLT_OMNIBOARD_BIN)", os.path.isfile(OMNIBOARD)),
    ("node", shutil.which("node") is not None),
    ("chromium (apt-get install chromium, or set DLT_CHROMIUM)", CHROMIUM is not None),
    ("the mongoeco server (bash .ci/mongo-venv.sh)", mongo_server.mongoeco_python() is not None),
] if not ok]
pytestmark = [pytest.mark.omniboard, pytest.mark.skipif(bool(_missing), reason=f"needs {', '.join(_missing)}")]

DLN = ["experiments/expt_dln.py", "with", "layer_widths=[3, 2]", "input_dim=3", "num_training_data=200",
       "sgld_config.num_steps=30", "sgld_config.batch_size=20", "sgld_config.num_chains=2", "device=cpu", "seed=5"]
SADDLE = ["experiments/expt_dln_saddle_dynamics.py", "with", "device=cpu", "width=3", "num_training_data=200",
          "logging_period=20", "training_config.num_steps=40", "training_config.batch_size=20",
          "sgld_config.num_steps=10", "sgld_config.batch_size=20", "sgld_config.num_chains=2", "seed=7"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, path: str, **params):
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _wait_for(base: str, proc, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"omniboard exited with {proc.returncode}"
        try:
            return _get(base, "/sacred/api/v1/Runs", select="_id")
        except (OSError, ValueError):
            time.sleep(0.5)
    raise AssertionError(f"omniboard did not answer within {timeout:g} s")


def _chromium(url: str, profile, *args) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=15000", *args, url]
    return subprocess.run(cmd, capture_output=True, timeout=180)


def test_omniboard_shows_two_experiments_run_with_m(tmp_path):
    server = mongo_server.start()
    spec = f"{server.address}:omni"
    board = None
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
                   DLT_MONGO_FAILURE_DIR=str(tmp_path / "failed"))
        for args in (DLN, SADDLE):
            cmd = [sys.executable, args[0], "-m", spec, *args[1:]]
            out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr[-2000:]
        port = _free_port()
        board = subprocess.Popen([OMNIBOARD, "-m", spec], env=dict(os.environ, PORT=str(port)),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        _wait_for(base, board)

        # REST: what Omniboard serves is what the project's own reader finds in the database
        runs = {r["_id"]: r for r in _get(base, "/sacred/api/v1/Runs",
                                          select="_id,status,config,result,experiment.name")}
        expected = load_runs(spec, failed_over=False).set_index("run_id")
        assert sorted(runs) == sorted(expected.index) and len(runs) == 2
        names = {r["experiment"]["name"]: r for r in runs.values()}
        assert set(names) == {"dln_lambdahat", "dln_saddle_dynamics"}
        assert all(r["status"] == "COMPLETED" for r in runs.values())
        dln, saddle = names["dln_lambdahat"], names["dln_saddle_dynamics"]
        assert (dln["config"]["layer_widths"], dln["config"]["seed"]) == ([3, 2], 5)
        assert (saddle["config"]["width"], saddle["config"]["training_config"]["num_steps"]) == (3, 40)
        # results: JSON numbers through node are the same doubles (exact equality)
        assert dln["result"]["lambdahat"] == expected.loc[dln["_id"], "lambdahat"]
        assert saddle["result"]["final_t"] == 40 == expected.loc[saddle["_id"], "final_t"]
        for run_id in runs:
            served = _get(base, "/sacred/api/v1/Metrics", query=json.dumps({"run_id": run_id}),
                          select="name,run_id,steps,values")
            mine = load_metrics(spec, run_ids=[run_id], failed_over=False)
            assert served and {m["name"] for m in served} == set(mine["name"])
            for m in served:
                rows = mine[mine["name"] == m["name"]]
                assert m["steps"] == rows["step"].tolist()
                np.testing.assert_array_equal(np.asarray(m["values"], dtype=float), rows["value"].to_numpy())

        # UI: the runs table rendered both runs (DOM after its scripts ran), and the screenshot is not blank
        dom = _chromium(f"{base}/", tmp_path / "profile-dom", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout.decode(errors="replace")
        for name in names:
            assert f'status-text pull-left">{name}<' in html  # the Experiment Name cell of its row
        assert html.count(">COMPLETED<") >= 2
        png = tmp_path / "runs_table.png"
        shot = _chromium(f"{base}/", tmp_path / "profile-png", f"--screenshot={png}")
        assert shot.returncode == 0 and png.is_file(), shot.stderr[-2000:]
        from PIL import Image

        image = np.asarray(Image.open(io.BytesIO(png.read_bytes())).convert("L"), dtype=float)
        assert image.shape == (900, 1400)
        # Rows are 70 px high (Omniboard 2.16.1 sets it) below the column header, which ends at
        # y ≈ 215 in a 1400x900 window. Measured with one run: its band holds 0.9 % dark (text)
        # pixels, the band of a missing row 0.0 %; a blank or unrendered page has none.
        dark = image < 128
        for top in (218, 290):  # the first and the second run's row
            assert dark[top:top + 65].mean() > 0.002, top
    finally:
        if board is not None:
            os.killpg(board.pid, signal.SIGTERM)
            board.wait(timeout=30)
        server.stop()
