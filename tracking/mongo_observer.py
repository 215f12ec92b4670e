"""The project's MongoObserver: it survives an outage and loses nothing when the server is gone.

Sacred's own MongoObserver keeps a run only in memory: when the server goes away
mid-run it drops heartbeats, metrics and artifacts, and at the end it pickles the run
document (without metrics or artifacts) into ``failure_dir``, if one is set.
Sacred's QueuedMongoObserver absorbs outages, but its ``join`` waits for the server
forever (a run never ends while it is down) and its failure pickle ignores
``failure_dir``. :class:`FailSafeMongoObserver` instead:

* writes as MongoObserver does while the server answers (same documents, so
  Omniboard and ``tracking.load`` read them unchanged), plus ``run_uid``, a random id
  that makes ``tracking.sync_mongo`` idempotent;
* mirrors what it writes: metrics in memory, artifacts copied (hard-linked where
  possible) into a spool folder under ``failure_dir``;
* when a write fails, stops writing and retries every ``retry_s`` seconds from the
  heartbeat; when the server answers again it rewrites the whole run (document,
  every metric series in full, missing artifacts), so a short outage leaves no gap;
* at the end, keeps trying for ``final_grace_s`` seconds; if the server is still
  gone, writes the complete run to ``failure_dir/<n>/`` in FileStorageObserver's
  layout (run.json with status and result, config.json, info.json, metrics.json,
  cout.txt, artifacts, ``_sources/``) plus ``mongo.json`` (target without
  credentials, the run's ``_id`` and ``run_uid``), and prints the sync command.
"""
from __future__ import annotations

import copy
import datetime
import os
import shutil
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

from sacred.observers import FileStorageObserver
from sacred.observers.mongo import MongoObserver, force_bson_encodeable
from sacred.serializer import flatten
from sacred.utils import ObserverError

from tracking.mongo import SIDECAR, UID_FIELD, MongoTarget, redact

FINAL_GRACE_ENV = "DLT_MONGO_FINAL_GRACE_S"
DEFAULT_FINAL_GRACE_S = 15.0
DEFAULT_RETRY_S = 10.0


def _outage_errors():
    import pymongo.errors

    return pymongo.errors.PyMongoError


def _is_invalid_document(err) -> bool:
    import pymongo.errors

    return isinstance(err, pymongo.errors.InvalidDocument)


class FailSafeMongoObserver(MongoObserver):
    """MongoObserver that fails over to ``failure_dir``; see the module docstring.

    Args:
        target: where to write (``tracking.mongo.parse_target``).
        failure_dir: Sacred's ``failure_dir``: where a run lost by the server is written.
        client: a pymongo client for ``target`` (default: ``target.client()``).
        final_grace_s: how long the end of a run waits for a lost server
            (default ``$DLT_MONGO_FINAL_GRACE_S`` or 15 s).
        retry_s: seconds between reconnection attempts during the run.
    """

    def __init__(self, target: MongoTarget, failure_dir, client=None, final_grace_s: float | None = None,
                 retry_s: float = DEFAULT_RETRY_S):
        kwargs = dict(client=client or target.client(), db_name=target.db_name, failure_dir=str(failure_dir))
        if target.collection != "runs":
            kwargs["collection"] = target.collection  # Sacred's db.collection form
        if target.overwrite is not None:
            kwargs["overwrite"] = target.overwrite
        if target.priority is not None:
            kwargs["priority"] = target.priority
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            super().__init__(**kwargs)
        self._setup(target, final_grace_s, retry_s)

    @classmethod
    def from_collections(cls, runs, fs, metrics, target: MongoTarget, failure_dir, final_grace_s=None,
                         retry_s=DEFAULT_RETRY_S):
        """An observer on given collections (e.g. mongomock's), as ``MongoObserver.create_from``."""
        self = cls.create_from(runs, fs, metrics_collection=metrics, failure_dir=str(failure_dir))
        self._setup(target, final_grace_s, retry_s)
        return self

    def _setup(self, target, final_grace_s, retry_s):
        self.target = target
        if final_grace_s is None:
            final_grace_s = float(os.environ.get(FINAL_GRACE_ENV, DEFAULT_FINAL_GRACE_S))
        self.final_grace_s, self.retry_s = final_grace_s, retry_s
        self.uid = uuid.uuid4().hex
        self.offline, self.last_error, self.failed_over_dir = False, None, None
        self._lock = threading.RLock()
        self._last_attempt = 0.0
        self._mirror: dict[str, dict[str, list]] = {}  # metric name -> steps, values, timestamps
        self._artifacts: list[dict] = []  # name, path (spool copy), metadata, content_type, file_id
        self._spool = Path(self.failure_dir) / ".spool" / self.uid
        self._started, self._sources_saved, self._info, self._extra_metric_ids = None, False, {}, []

    def __repr__(self):
        return f"FailSafeMongoObserver({self.target.public})"

    # ------------------------------------------------------------------ helpers

    def _go_offline(self, err):
        if not self.offline:
            print(f"Warning: lost MongoDB at {self.target.address} ({redact(str(err))[:200]}); the run goes on, "
                  f"kept locally, and is written there when the server answers again", file=sys.stderr)
        self.offline, self.last_error, self._last_attempt = True, err, time.monotonic()

    def _write(self, op) -> bool:
        """Run ``op`` against the server unless offline (then maybe resync); False if it failed."""
        if self.offline:
            if time.monotonic() - self._last_attempt < self.retry_s:
                return False
            return self._resync()
        try:
            op()
            return True
        except _outage_errors() as err:
            if _is_invalid_document(err):
                raise ObserverError(f"Run contained an unserializable entry (most likely in the info): {err}") from err
            self._go_offline(err)
            return False

    def _entry_info(self):
        info = flatten(self._info)
        if self._extra_metric_ids:
            info = dict(info, metrics=list(info.get("metrics", [])) + self._extra_metric_ids)
        return info

    # ------------------------------------------------------------------ events

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        with self._lock:
            ex_info = copy.deepcopy(ex_info)  # a FileStorageObserver rewrites ex_info['sources'] in place
            self._started = dict(ex_info=ex_info, command=command, host_info=host_info, start_time=start_time,
                                 config=config, meta_info=meta_info)
            if self.overwrite is None:
                self.run_entry = {"_id": _id}
            else:
                if self.run_entry is not None:
                    raise RuntimeError("Cannot overwrite more than once!")
                self.run_entry = self.overwrite
            self.run_entry.update({
                "experiment": dict(ex_info), "format": self.VERSION, "command": command, "host": dict(host_info),
                "start_time": start_time, "config": flatten(config), "meta": meta_info, "status": "RUNNING",
                "resources": [], "artifacts": [], "captured_out": "", "info": {}, "heartbeat": None,
                UID_FIELD: self.uid,
            })

            def start():
                self.run_entry["experiment"]["sources"] = self.save_sources(ex_info)
                self._sources_saved = True
                self.insert()

            self._write(start)
            return self.run_entry["_id"]

    def heartbeat_event(self, info, captured_out, beat_time, result):
        with self._lock:
            self._info = info
            self.run_entry["info"] = self._entry_info()
            self.run_entry["captured_out"] = captured_out
            self.run_entry["heartbeat"] = beat_time
            self.run_entry["result"] = flatten(result)
            self.save()

    def save(self):
        with self._lock:
            self._write(lambda: self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry}))

    def log_metrics(self, metrics_by_name, info):
        with self._lock:
            self._info = info
            for name, series in metrics_by_name.items():
                kept = self._mirror.setdefault(name, {"steps": [], "values": [], "timestamps": []})
                for key in kept:
                    kept[key] += list(series[key])
            self._write(lambda: MongoObserver.log_metrics(self, metrics_by_name, info))

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        with self._lock:
            spool = self._spool / str(len(self._artifacts))
            spool.mkdir(parents=True, exist_ok=True)
            copy_path = spool / name.replace(os.sep, "_")
            try:
                os.link(filename, copy_path)
            except OSError:
                shutil.copyfile(filename, copy_path)
            if content_type is None:
                content_type = self._try_to_detect_content_type(filename)
            artifact = dict(name=name, path=str(copy_path), metadata=metadata, content_type=content_type, file_id=None)
            self._artifacts.append(artifact)
            if self._write(lambda: self._upload(artifact)):
                self.run_entry["artifacts"] = [{"name": a["name"], "file_id": a["file_id"]}
                                               for a in self._artifacts if a["file_id"] is not None]
                self.save()

    def resource_event(self, filename):
        """As MongoObserver: the run records the file's name and md5 (the content is not uploaded)."""
        from sacred.dependencies import get_digest

        with self._lock:
            resource = (filename, get_digest(filename))
            if resource not in self.run_entry["resources"]:
                self.run_entry["resources"].append(resource)
                self.save()

    def _upload(self, artifact):
        db_filename = f"artifact://{self.runs.name}/{self.run_entry['_id']}/{artifact['name']}"
        with open(artifact["path"], "rb") as fh:
            artifact["file_id"] = self.fs.put(fh, filename=db_filename, metadata=artifact["metadata"],
                                              content_type=artifact["content_type"])

    # ------------------------------------------------------------------ resync and the end

    def _resync(self) -> bool:
        """Write the whole run (document, sources, artifacts, full metric series); True if it worked."""
        import pymongo.errors

        self._last_attempt = time.monotonic()
        entry = self.run_entry
        try:
            if not self._sources_saved:
                entry["experiment"]["sources"] = self.save_sources(self._started["ex_info"])
                self._sources_saved = True
            for artifact in self._artifacts:
                if artifact["file_id"] is None:
                    self._upload(artifact)
            entry["artifacts"] = [{"name": a["name"], "file_id": a["file_id"]} for a in self._artifacts]
            if entry.get("_id") is None:
                self.insert()
            else:
                try:
                    self.runs.update_one({"_id": entry["_id"], UID_FIELD: self.uid}, {"$set": entry}, upsert=True)
                except pymongo.errors.DuplicateKeyError:  # a restarted, emptied server gave our _id away
                    entry["_id"] = None
                    self.insert()
            info = entry.get("info")
            known = {m["name"] for m in info.get("metrics", [])} if isinstance(info, dict) else set()
            for name, series in self._mirror.items():
                result = self.metrics.update_one({"run_id": entry["_id"], "name": name}, {"$set": series}, upsert=True)
                if result.upserted_id is not None and name not in known:
                    self._extra_metric_ids.append({"name": name, "id": str(result.upserted_id)})
            entry["info"] = self._entry_info()
            self.runs.update_one({"_id": entry["_id"]}, {"$set": {"info": entry["info"]}})
        except pymongo.errors.PyMongoError as err:
            if _is_invalid_document(err):
                raise
            self.offline, self.last_error = True, err
            return False
        if self.offline:
            print(f"MongoDB at {self.target.address} answers again: run {entry['_id']} rewritten in full",
                  file=sys.stderr)
        self.offline = False
        return True

    def final_save(self, attempts):
        """Save the finished run; after ``final_grace_s`` of failures, write it to ``failure_dir``."""
        deadline = time.monotonic() + self.final_grace_s
        while True:
            with self._lock:
                if not self.offline:
                    try:
                        self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry}, upsert=True)
                        self._drop_spool()
                        return
                    except _outage_errors() as err:
                        if not _is_invalid_document(err):
                            self._go_offline(err)
                            continue
                        self.run_entry = force_bson_encodeable(self.run_entry)
                        print("Warning: some entries of the run were not BSON-serializable and were converted "
                              "to strings (most likely in the info or the result)", file=sys.stderr)
                        continue
                if self._resync():
                    self._drop_spool()
                    return
            if time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        with self._lock:
            self.failed_over_dir = self._write_failed_over()
        print(f"Warning: MongoDB at {self.target.address} is unreachable ({redact(str(self.last_error))[:200]}). "
              f"The complete run is in {self.failed_over_dir}; upload it later with: "
              f"python -m tracking.sync_mongo {self.failure_dir} {self.target.spec}", file=sys.stderr)

    def _drop_spool(self):
        shutil.rmtree(self._spool, ignore_errors=True)
        for parent in (self._spool.parent, self._spool.parent.parent):
            try:
                parent.rmdir()  # only when empty: other runs may share the folder
            except OSError:
                pass

    def _write_failed_over(self) -> Path:
        """Replay the run into a FileStorageObserver under ``failure_dir``; returns its folder."""
        s, entry = self._started, self.run_entry
        store = FileStorageObserver(self.failure_dir)
        store.started_event(copy.deepcopy(s["ex_info"]), s["command"], s["host_info"], s["start_time"],
                            s["config"], s["meta_info"], None)
        store.log_metrics(self._mirror, self._info)
        store.heartbeat_event(self._info, entry.get("captured_out", ""), entry.get("heartbeat") or s["start_time"],
                              entry.get("result"))
        for resource, _ in entry.get("resources", []):
            if os.path.isfile(resource):
                store.resource_event(resource)
        for artifact in self._artifacts:
            store.artifact_event(artifact["name"], artifact["path"])
        status, stop = entry.get("status"), entry.get("stop_time") or datetime.datetime.utcnow()
        if status == "COMPLETED":
            store.completed_event(stop, entry.get("result"))
        elif status == "FAILED":
            store.failed_event(stop, entry.get("fail_trace"))
        else:
            store.interrupted_event(stop, status or "INTERRUPTED")
        store.save_json({
            "target": self.target.public, "hosts": list(self.target.hosts), "db_name": self.target.db_name,
            "runs_collection": self.runs.name, "metrics_collection": getattr(self.metrics, "name", "metrics"),
            "run_id": entry.get("_id"), UID_FIELD: self.uid, "reason": redact(str(self.last_error))[:500],
            "written": datetime.datetime.utcnow().isoformat(),
        }, SIDECAR)
        self._drop_spool()
        return Path(store.dir)
