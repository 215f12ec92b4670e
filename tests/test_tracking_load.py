"""tracking.load against real Sacred stores: file store, mongomock, and (opt-in) a MongoDB server."""
import io
import json
import os
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest
from sacred.observers import FileStorageObserver, MongoObserver

from tests.conftest import REPO
from tests.runs_factory import DIVERGENT_SGLD, dln_runs, toy_run
from tracking.load import (
    METRIC_COLUMNS,
    RUN_COLUMNS,
    MongoSource,
    load_artifact,
    load_info,
    load_metrics,
    load_runs,
)

# Run 1: plain; run 2: deeper, rank-reduced, trained (fills trained.*); run 3: diverges -> FAILED.
DLN_UPDATES = [
    dict(seed=1),
    dict(seed=2, layer_widths=[3, 3, 2], true_param_config=dict(method="rand_rank"),
         do_training=True, training_config=dict(num_steps=400, batch_size=20, learning_rate=3e-3)),
    dict(seed=3, sgld_config=DIVERGENT_SGLD),
]
TIMES = ["start_time", "stop_time", "heartbeat"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """runs/ with two experiment stores: dln_lambdahat (3 runs) and toy (1 run)."""
    root = tmp_path_factory.mktemp("runs")
    dln_runs(FileStorageObserver(str(root / "dln_lambdahat")), DLN_UPDATES)
    toy_run(FileStorageObserver(str(root / "toy")))
    return root


@pytest.fixture(scope="module")
def mongo_db():
    """The same three expt_dln runs recorded by MongoObserver into mongomock."""
    import gridfs
    import mongomock
    import mongomock.gridfs

    mongomock.gridfs.enable_gridfs_integration()
    db = mongomock.MongoClient()["dlt_test"]
    dln_runs(MongoObserver.create_from(db.runs, gridfs.GridFS(db), metrics_collection=db.metrics), DLN_UPDATES)
    return db


def _same(a, b):
    return pd.isna(b) if b is None else a == b


def test_file_store_rows_match_sacred_json(root):
    store = root / "dln_lambdahat"
    df = load_runs(store)
    assert list(df.columns[: len(RUN_COLUMNS)]) == RUN_COLUMNS
    assert df["run_id"].tolist() == [1, 2, 3]
    assert df["status"].tolist() == ["COMPLETED", "COMPLETED", "FAILED"]
    assert (df["source"] == str(store)).all() and (df["experiment"] == "dln_lambdahat").all()
    for column in TIMES:
        assert str(df[column].dtype).endswith("UTC]"), column
    for _, row in df.iterrows():
        run = json.loads((store / str(row.run_id) / "run.json").read_text())
        config = json.loads((store / str(row.run_id) / "config.json").read_text())
        assert row["start_time"] == pd.Timestamp(run["start_time"], tz="UTC")
        assert row["stop_time"] == pd.Timestamp(run["stop_time"], tz="UTC")
        assert row["host"] == run["host"]["hostname"]
        assert row["seed"] == config["seed"]
        assert row["layer_widths"] == config["layer_widths"]  # a list, not a string
        assert row["sgld_config.epsilon"] == config["sgld_config"]["epsilon"]
        assert row["true_param_config.method"] == config["true_param_config"]["method"]
        for key, value in (run.get("result") or {}).items():
            if key == "trained":
                assert all(_same(row[f"trained.{k}"], v) for k, v in value.items())
            else:
                assert _same(row[key], value), key
    assert df.loc[1, "trained.lambdahat"] > 0 and pd.isna(df.loc[0, "trained.lambdahat"])
    assert pd.isna(df.loc[2, "lambdahat"])  # the failed run has no result


def test_parent_dir_list_of_dirs_and_experiment(root):
    store = root / "dln_lambdahat"
    everything = load_runs(root)
    assert sorted(everything["experiment"]) == ["dln_lambdahat"] * 3 + ["toy"]
    toy = everything[everything["experiment"] == "toy"].iloc[0]
    assert toy["result"] == 42.0 and toy["scale"] == 2.0  # a non-dict result gets its own column
    pd.testing.assert_frame_equal(load_runs(root, experiment="dln_lambdahat"), load_runs(store))
    assert len(load_runs([store, root / "toy"])) == 4
    assert len(load_runs(str(root), experiment=["toy", "nope"])) == 1


def test_status_and_filters(root):
    store = root / "dln_lambdahat"
    assert load_runs(store, status="COMPLETED")["run_id"].tolist() == [1, 2]
    assert load_runs(store, status=["FAILED"])["run_id"].tolist() == [3]
    assert load_runs(store, filters={"layer_widths": [3, 3, 2]})["run_id"].tolist() == [2]
    random_early = load_runs(store, filters={"true_param_config.method": "random", "seed": lambda s: s < 3})
    assert random_early["run_id"].tolist() == [1]
    assert load_runs(store, filters={"sgld_config.epsilon": 1e-5})["run_id"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="filters name unknown columns.*sgld_config.epsilonn"):
        load_runs(store, filters={"sgld_config.epsilonn": 1e-5})
    with pytest.raises(ValueError, match="status must be among"):
        load_runs(store, status="DONE")


def test_bad_sources_raise_naming_the_problem(tmp_path):
    with pytest.raises(ValueError, match="source directory .*does not exist"):
        load_runs(tmp_path / "missing")
    with pytest.raises(ValueError, match="source must be .*got int"):
        load_runs(42)
    with pytest.raises(ValueError, match="source must be"):
        MongoSource.from_spec("not a spec")


def test_empty_store_gives_standard_columns(tmp_path):
    (tmp_path / "_sources").mkdir()
    (tmp_path / "notes").mkdir()
    df = load_runs(tmp_path)
    assert df.empty and list(df.columns) == RUN_COLUMNS
    assert load_runs(tmp_path, filters={"anything": 1}).empty
    metrics = load_metrics(tmp_path)
    assert metrics.empty and list(metrics.columns) == METRIC_COLUMNS


def test_half_written_run_is_skipped_with_a_warning(root, tmp_path):
    shutil.copytree(root / "dln_lambdahat" / "1", tmp_path / "1")
    shutil.copytree(root / "dln_lambdahat" / "1", tmp_path / "2")
    (tmp_path / "2" / "run.json").write_text('{"status": "RUNN')
    with pytest.warns(UserWarning, match="skipping unreadable"):
        df = load_runs(tmp_path)
    assert df["run_id"].tolist() == [1]


def test_metrics_long_form_match_metrics_json(root):
    store = root / "dln_lambdahat"
    saved = json.loads((store / "2" / "metrics.json").read_text())
    m = load_metrics(store, run_ids=[2], names="llc/loss_trace/*")
    assert list(m.columns) == METRIC_COLUMNS
    assert sorted(m["name"].unique()) == ["llc/loss_trace/chain0", "llc/loss_trace/chain1"]
    chain0 = m[m["name"] == "llc/loss_trace/chain0"]
    assert chain0["value"].tolist() == saved["llc/loss_trace/chain0"]["values"]
    assert chain0["step"].tolist() == saved["llc/loss_trace/chain0"]["steps"] == list(range(50))
    assert chain0["timestamp"].iloc[0] == pd.Timestamp(saved["llc/loss_trace/chain0"]["timestamps"][0], tz="UTC")
    exact = load_metrics(root, experiment="dln_lambdahat", names=["train/loss", "llc/lambdahat"])
    assert set(exact["name"]) == {"train/loss", "llc/lambdahat"}
    assert set(exact.loc[exact["name"] == "train/loss", "run_id"]) == {2}  # only run 2 trained
    toy = load_metrics(root, experiment="toy")
    assert toy["value"].tolist() == [0.0, 2.0, 4.0] and (toy["experiment"] == "toy").all()


def test_info_and_artifact(root):
    store = root / "dln_lambdahat"
    info = load_info(store, 1)
    assert info == json.loads((store / "1" / "info.json").read_text())
    assert "true_end_to_end_singular_values" in info
    trace = np.load(io.BytesIO(load_artifact(root, 2, "llc_trace.npz", experiment="dln_lambdahat")))
    assert trace["loss_trace"].shape == (2, 50)
    with pytest.raises(ValueError, match="artifact 'nope.npz' not in run 1; available: \\['llc_trace.npz'\\]"):
        load_artifact(store, 1, "nope.npz")
    with pytest.raises(ValueError, match="run_id 1 is in several stores"):
        load_info(root, 1)  # both dln_lambdahat and toy have a run 1
    with pytest.raises(ValueError, match="run_id 9 not found"):
        load_info(store, 9)


def test_mongo_store_gives_the_same_tables_as_the_file_store(root, mongo_db):
    store = root / "dln_lambdahat"
    from_files, from_mongo = load_runs(store), load_runs(mongo_db)
    assert (from_mongo["source"] == "mongodb:dlt_test").all()
    # Deterministic CPU runs with the same seeds: every config and result entry is identical.
    pd.testing.assert_frame_equal(from_mongo.drop(columns=TIMES + ["source"]),
                                  from_files.drop(columns=TIMES + ["source"]))
    assert from_mongo["stop_time"].notna().all() and str(from_mongo["start_time"].dtype).endswith("UTC]")

    cols = ["run_id", "experiment", "name", "step", "value"]
    pd.testing.assert_frame_equal(load_metrics(mongo_db)[cols], load_metrics(store)[cols])
    info = load_info(mongo_db, 2)
    assert [m["name"] for m in info.pop("metrics")][:2] == ["llc/loss_trace/chain0", "llc/loss_trace/chain1"]
    file_info = load_info(store, 2)
    # where the resumable state lives is per store: beside the file-store run, or under runs/<experiment>/_checkpoints
    assert info.pop("checkpoint_dir").startswith("runs/dln_lambdahat/_checkpoints/")
    assert file_info.pop("checkpoint_dir").endswith("/checkpoints")
    assert info == file_info  # MongoObserver adds only its metric ids
    from_gridfs = np.load(io.BytesIO(load_artifact(mongo_db, 2, "trained_llc_trace.npz")))
    from_disk = np.load(io.BytesIO(load_artifact(store, 2, "trained_llc_trace.npz")))
    np.testing.assert_array_equal(from_gridfs["loss_trace"], from_disk["loss_trace"])
    assert load_runs(mongo_db, status="FAILED", filters={"seed": 3})["run_id"].tolist() == [3]


def test_mongo_specs_and_urls_reach_the_same_database(mongo_db, monkeypatch):
    import mongomock
    import pymongo

    opened = []

    def fake_client(url, **kwargs):  # a client on the same in-memory server
        opened.append(url)
        return mongomock.MongoClient(url, _store=mongo_db.client._store)

    monkeypatch.setattr(pymongo, "MongoClient", fake_client)
    expected = load_runs(mongo_db).drop(columns="source")
    for spec, label in [
        ("localhost:27017:dlt_test", "mongodb://localhost:27017/dlt_test"),
        ("mongodb://user:secret@localhost:27017/dlt_test", "mongodb://localhost:27017/dlt_test"),
        (MongoSource("localhost:27017", "dlt_test"), "mongodb://localhost:27017/dlt_test"),
        (MongoSource(mongo_db.client, "dlt_test"), "mongodb:dlt_test"),
    ]:
        df = load_runs(spec)
        assert (df["source"] == label).all(), spec
        pd.testing.assert_frame_equal(df.drop(columns="source"), expected)
    assert opened == ["localhost:27017", "mongodb://user:secret@localhost:27017/dlt_test", "localhost:27017"]
    assert MongoSource.from_spec("db.example.org:27018:mydb.myruns") == MongoSource(
        "db.example.org:27018", "mydb", "myruns")


MONGO_URL = os.environ.get("SACRED_TEST_MONGO_URL")


@pytest.mark.mongo
@pytest.mark.skipif(not MONGO_URL, reason="set SACRED_TEST_MONGO_URL=host:port to test against a real MongoDB server")
def test_command_line_run_into_a_real_mongodb():
    import pymongo

    db_name = f"dlt_test_{uuid.uuid4().hex[:12]}"
    cmd = [sys.executable, "experiments/expt_dln.py", "-m", f"{MONGO_URL}:{db_name}", "with",
           "layer_widths=[3, 2]", "input_dim=3", "num_training_data=200", "sgld_config.num_steps=50",
           "sgld_config.batch_size=20", "sgld_config.num_chains=2", "device=cpu", "seed=5"]
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        df = load_runs(f"{MONGO_URL}:{db_name}", experiment="dln_lambdahat")
        assert len(df) == 1 and df.loc[0, "status"] == "COMPLETED"
        assert df.loc[0, "layer_widths"] == [3, 2] and np.isfinite(df.loc[0, "lambdahat"])
        traces = load_metrics(f"{MONGO_URL}:{db_name}", names="llc/loss_trace/*")
        assert len(traces) == 2 * 50
    finally:
        with pymongo.MongoClient(MONGO_URL, serverSelectionTimeoutMS=5000) as client:
            client.drop_database(db_name)
