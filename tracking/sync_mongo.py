"""Upload runs that failed over to disk (``tracking.mongo_observer``) to their MongoDB server.

    python -m tracking.sync_mongo DIR TARGET [--dry-run]

``DIR`` is a failure root (``runs/_mongo_failed``), one experiment's folder under it, or
one run folder; ``TARGET`` is the ``-m`` spec (``host:port:db``) or a ``mongodb://`` URL
(a user without a password takes it from ``$DLT_MONGO_PASSWORD``). Only runs whose
``mongo.json`` names the same server, database and collection are uploaded.

Each run becomes the document MongoObserver would have written (config, info, result,
status, times, captured output, sources and artifacts in GridFS, one ``metrics``
document per series), with its ``run_uid``. The upload is idempotent:

* a run whose ``run_uid`` is on the server with the same final status is skipped;
* a stale document of the run (RUNNING, left when the server went away) is completed
  in place, keeping its ``_id`` and the artifacts it already had;
* metric series are upserted by (run_id, name) with the full series.

An uploaded folder is kept, with ``synced`` (server ``_id`` and time) added to its
``mongo.json``, so ``tracking.load`` and ``gen_commands.pending`` stop counting it twice.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import mimetypes
import os
import sys
from pathlib import Path

from tracking.mongo import SIDECAR, UID_FIELD, MongoTarget, MongoUnreachable, connect, failed_over_runs, parse_target

FINAL_STATUSES = ("COMPLETED", "FAILED", "INTERRUPTED", "TIMEOUT")
MONGO_FORMAT = "MongoObserver-0.7.0"  # what Sacred 0.8's MongoObserver writes in "format"


def _json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _time(value):
    """FileStorageObserver's ISO strings -> naive UTC datetimes, as MongoObserver stores them."""
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def run_document(run_dir: Path, record: dict) -> dict:
    """The run document (without ``_id``, sources and artifacts ids) from a failed-over folder."""
    run = _json(run_dir / "run.json")
    if not isinstance(run, dict):
        raise ValueError(f"{run_dir}: unreadable run.json")
    doc = {key: value for key, value in run.items() if key not in ("artifacts",)}
    for key in ("start_time", "stop_time", "heartbeat"):
        if key in doc:
            doc[key] = _time(doc[key])
    doc.update(format=MONGO_FORMAT, config=_json(run_dir / "config.json", {}), info=_json(run_dir / "info.json", {}),
               captured_out=(run_dir / "cout.txt").read_text() if (run_dir / "cout.txt").is_file() else "",
               artifacts=[], **{UID_FIELD: record[UID_FIELD]})
    doc.setdefault("resources", [])
    return doc


def _next_id(runs) -> int:
    import pymongo

    last = list(runs.find({}, {"_id": 1}).sort("_id", pymongo.DESCENDING).limit(1))
    return last[0]["_id"] + 1 if last and isinstance(last[0]["_id"], int) else 1


def _sources(db, fs, run_dir: Path, experiment: dict, existing: dict | None) -> list:
    """``[[name, GridFS id]]``: the ids of the stale document, else uploaded from ``_sources/``."""
    if existing and existing.get("experiment", {}).get("sources"):
        return existing["experiment"]["sources"]
    base_dir = experiment.get("base_dir", "")
    out = []
    for name, stored in experiment.get("sources", []):
        path = run_dir.parent / stored
        if not path.is_file():
            continue
        data = path.read_bytes()
        filename = os.path.join(base_dir, name)
        md5 = hashlib.md5(data).hexdigest()
        found = db["fs.files"].find_one({"filename": filename, "metadata.md5": md5}, {"_id": 1})
        out.append([name, found["_id"] if found else fs.put(data, filename=filename, metadata={"md5": md5})])
    return out


def upload_run(db, target: MongoTarget, run_dir: Path, record: dict) -> tuple[object, bool]:
    """Write one failed-over run to ``db``; returns (its ``_id``, whether anything was written)."""
    import gridfs
    import pymongo.errors

    runs, metrics = db[target.collection], db[record.get("metrics_collection", "metrics")]
    fs = gridfs.GridFS(db)
    doc = run_document(run_dir, record)
    existing = runs.find_one({UID_FIELD: record[UID_FIELD]})
    if existing is not None and existing.get("status") == doc.get("status") and doc.get("status") in FINAL_STATUSES:
        return existing["_id"], False
    if existing is not None:
        run_id = existing["_id"]
    elif record.get("run_id") is not None and runs.find_one({"_id": record["run_id"]}, {"_id": 1}) is None:
        run_id = record["run_id"]
    else:
        run_id = None
    doc["experiment"] = dict(doc.get("experiment", {}), sources=_sources(db, fs, run_dir, doc.get("experiment", {}),
                                                                        existing))
    had = {a["name"]: a["file_id"] for a in (existing or {}).get("artifacts", []) if a.get("file_id") is not None}
    while True:  # claim an _id as MongoObserver.insert does
        if run_id is None:
            run_id = _next_id(runs)
        try:
            if existing is None:
                runs.insert_one(dict(doc, _id=run_id, status="RUNNING"))
            break
        except pymongo.errors.DuplicateKeyError:
            run_id = None
    artifacts = []
    for name in _json(run_dir / "run.json", {}).get("artifacts", []):
        if name in had:
            artifacts.append({"name": name, "file_id": had[name]})
            continue
        with open(run_dir / name, "rb") as fh:
            file_id = fs.put(fh, filename=f"artifact://{target.collection}/{run_id}/{name}",
                             content_type=mimetypes.guess_type(name)[0])
        artifacts.append({"name": name, "file_id": file_id})
    metric_ids = []
    for name, series in (_json(run_dir / "metrics.json", {}) or {}).items():
        values = {"steps": series.get("steps", []), "values": series.get("values", []),
                  "timestamps": [_time(t) for t in series.get("timestamps", [])]}
        metrics.update_one({"run_id": run_id, "name": name}, {"$set": values}, upsert=True)
        metric_id = metrics.find_one({"run_id": run_id, "name": name}, {"_id": 1})["_id"]
        metric_ids.append({"name": name, "id": str(metric_id)})
    doc["artifacts"] = artifacts
    doc["info"] = dict(doc["info"], metrics=metric_ids) if metric_ids else doc["info"]
    runs.update_one({"_id": run_id}, {"$set": doc})  # the final status last: a crash here leaves it re-syncable
    return run_id, True


def _mark_synced(run_dir: Path, record: dict, run_id) -> None:
    record = dict(record, synced={"run_id": run_id, "time": datetime.datetime.utcnow().isoformat()})
    tmp = run_dir / f"{SIDECAR}.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    os.replace(tmp, run_dir / SIDECAR)


def sync(root, target: MongoTarget | str, db=None, dry_run: bool = False) -> list[tuple[Path, object, bool]]:
    """Upload every run under ``root`` aimed at ``target``; returns (folder, server _id, written).

    ``db`` (a pymongo or mongomock Database) replaces connecting to ``target``.
    """
    target = parse_target(target) if isinstance(target, str) else target
    found = list(failed_over_runs(root, target))
    if dry_run or not found:
        return [(run_dir, None, False) for run_dir, _ in found]
    client = None
    if db is None:
        client = connect(target)
        db = client[target.db_name]
    try:
        done = []
        for run_dir, record in found:
            if UID_FIELD not in record:
                print(f"skipping {run_dir}: {SIDECAR} has no {UID_FIELD}", file=sys.stderr)
                continue
            run_id, written = upload_run(db, target, run_dir, record)
            _mark_synced(run_dir, record, run_id)
            done.append((run_dir, run_id, written))
        return done
    finally:
        if client is not None:
            client.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tracking.sync_mongo", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="failure root (runs/_mongo_failed), an experiment folder under it, or a run folder")
    p.add_argument("target", help="host:port:db (Sacred's -m) or mongodb://[user[:password]@]host:port/db")
    p.add_argument("--dry-run", action="store_true", help="list the runs that would be uploaded")
    args = p.parse_args(argv)
    try:
        target = parse_target(args.target)
    except ValueError as err:
        p.error(str(err))
    if not Path(args.dir).is_dir():
        p.error(f"{args.dir!r} is not a directory")
    try:
        done = sync(args.dir, target, dry_run=args.dry_run)
    except MongoUnreachable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for run_dir, run_id, written in done:
        what = "would upload" if args.dry_run else "uploaded as" if written else "already on the server as"
        print(f"{run_dir}: {what}{'' if args.dry_run else f' _id {run_id}'}")
    print(f"{sum(w for *_, w in done)} of {len(done)} runs written to {target.public}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
