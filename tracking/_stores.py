"""The run stores behind ``tracking.load``: FileStorageObserver directories and MongoObserver databases.

``_open(source)`` turns a source (a directory above stores, a MongoDB URL or Sacred's ``-m``
spec, a :class:`MongoSource`, a pymongo ``Database``, or a list of these) into stores; each
store yields ``(run_id, entry, config)`` per run, ``(run_id, experiment, name, series)`` per
metric, and reads one run's info and artifacts. The formats are described in ``tracking.load``;
``tracking.load_failed`` adds the runs a MongoObserver failed over to disk.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

# Sacred's `-m` spec host:port[:db[.collection]]; not a bare db name, which looks like a directory.
_MONGO_SPEC = re.compile(r"[0-9A-Za-z.-]+:\d{1,5}(:.+)?")


@dataclass(frozen=True)
class MongoSource:
    """Runs recorded by Sacred's MongoObserver.

    Attributes:
        client: a ``pymongo.MongoClient`` (or mongomock's), or a URL: ``'host:port'`` or
            ``'mongodb://[user:password@]host:port[/db]'``.
        db_name: the database; None -> the URL's database, else Sacred's default 'sacred'.
        runs_collection: Sacred's ``collection`` (``<prefix>_runs`` with a collection_prefix).
        metrics_collection: ``metrics``, or ``<prefix>_metrics``.
    """

    client: Any
    db_name: str | None = None
    runs_collection: str = "runs"
    metrics_collection: str = "metrics"

    @classmethod
    def from_spec(cls, spec: str) -> "MongoSource":
        """Parse a MongoDB URL or Sacred's ``-m`` spec ``host:port[:db[.collection]]``."""
        if spec.startswith(("mongodb://", "mongodb+srv://")):
            return cls(spec)
        if not _MONGO_SPEC.fullmatch(spec):
            raise ValueError(f"source must be 'mongodb://host:port/[db]' or 'host:port[:db]'; got {spec!r}")
        from sacred.observers.mongo import parse_mongo_db_arg

        kwargs = parse_mongo_db_arg(spec)
        return cls(kwargs["url"], kwargs.get("db_name"), kwargs.get("collection", "runs"))


def _restore(flat):
    with warnings.catch_warnings():  # sacred imports pkg_resources, deprecated by setuptools
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        from sacred.serializer import restore
    return restore(flat)


def _read_json(path: Path):
    """The JSON in ``path``; None if it is missing or half-written (a run in progress)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        warnings.warn(f"skipping unreadable {path}: {err}")


class _FileStore:
    """One FileStorageObserver directory: numbered run folders."""

    def __init__(self, path: Path):
        self.path = path
        self.label = str(path)

    def _run_ids(self) -> list[int]:
        ids = (int(d.name) for d in self.path.iterdir() if d.name.isdigit() and (d / "run.json").is_file())
        return sorted(ids)

    def runs(self, experiments, statuses, run_ids=None) -> Iterator[tuple[int, dict, dict]]:
        for run_id in self._run_ids():
            if run_ids is not None and run_id not in run_ids:
                continue
            entry = _read_json(self.path / str(run_id) / "run.json")
            if entry is None or not _wanted(entry, experiments, statuses):
                continue
            config = _read_json(self.path / str(run_id) / "config.json") or {}
            entry["result"] = _restore(entry.get("result"))
            yield run_id, entry, _restore(config)

    def metrics(self, experiments, run_ids, names) -> Iterator[tuple[int, str, str, dict]]:
        for run_id, entry, _ in self.runs(experiments, None, run_ids):
            saved = _read_json(self.path / str(run_id) / "metrics.json") or {}
            for name in _matching(saved, names):
                yield run_id, entry["experiment"]["name"], name, saved[name]

    def info(self, run_id) -> dict:
        return _restore(_read_json(self.path / str(run_id) / "info.json") or {})

    def artifact(self, run_id, name: str, entry: dict) -> bytes:
        return (self.path / str(run_id) / name).read_bytes()


class _MongoStore:
    """A database written by MongoObserver."""

    def __init__(self, db, source: MongoSource, label: str):
        self.db, self.label = db, label
        self.runs_coll, self.metrics_coll = db[source.runs_collection], db[source.metrics_collection]
        self.exclude_uids: list[str] = []  # runs read from their failed-over copy instead

    def runs(self, experiments, statuses, run_ids=None) -> Iterator[tuple[Any, dict, dict]]:
        query = {}
        if experiments is not None:
            query["experiment.name"] = {"$in": list(experiments)}
        if statuses is not None:
            query["status"] = {"$in": list(statuses)}
        if run_ids is not None:
            query["_id"] = {"$in": list(run_ids)}
        if self.exclude_uids:
            query["run_uid"] = {"$nin": self.exclude_uids}
        for doc in self.runs_coll.find(query, {"captured_out": 0, "info": 0}).sort("_id", 1):
            doc["result"] = _restore(doc.get("result"))
            yield doc["_id"], doc, _restore(doc.get("config") or {})

    def metrics(self, experiments, run_ids, names) -> Iterator[tuple[Any, str, str, dict]]:
        experiment_of = {run_id: entry["experiment"]["name"]
                         for run_id, entry, _ in self.runs(experiments, None, run_ids)}
        # Names first (small documents), then the values of the matching ones only.
        heads = list(self.metrics_coll.find({"run_id": {"$in": list(experiment_of)}}, {"name": 1, "run_id": 1}))
        wanted = [h["_id"] for h in heads if _matching([h["name"]], names)]
        docs = self.metrics_coll.find({"_id": {"$in": wanted}})
        for doc in sorted(docs, key=lambda d: (d["run_id"], d["name"])):
            yield doc["run_id"], experiment_of[doc["run_id"]], doc["name"], doc

    def info(self, run_id) -> dict:
        doc = self.runs_coll.find_one({"_id": run_id}, {"info": 1})
        return _restore(doc.get("info") or {})

    def artifact(self, run_id, name: str, entry: dict) -> bytes:
        import gridfs

        file_id = next(a["file_id"] for a in entry["artifacts"] if a["name"] == name)
        return gridfs.GridFS(self.db).get(file_id).read()


def _wanted(entry: dict, experiments, statuses) -> bool:
    return (experiments is None or entry.get("experiment", {}).get("name") in experiments) and (
        statuses is None or entry.get("status") in statuses
    )


def _matching(available: Iterable[str], names) -> list[str]:
    """Names in ``available`` equal to, or matching the glob of, one of ``names`` (None: all)."""
    if names is None:
        return list(available)
    return [a for a in available if any(a == n or fnmatch.fnmatchcase(a, n) for n in names)]


def _file_stores(root: Path, max_depth: int = 4) -> list[Path]:
    """Every directory at or below ``root`` that holds numbered run folders."""
    stores = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if any(d.isdigit() and (here / d / "run.json").is_file() for d in dirnames):
            stores.append(here)
        depth = len(here.relative_to(root).parts)
        # Run folders, Sacred's _sources/_resources and hidden folders hold no stores.
        dirnames[:] = [] if depth >= max_depth else sorted(
            d for d in dirnames if not (d.isdigit() or d.startswith(("_", ".")))
        )
    return sorted(stores)


def _mongo_label(url: str | None, db_name: str) -> str:
    if url is None:
        return f"mongodb:{db_name}"
    hosts = re.sub(r"^mongodb(\+srv)?://", "", url).split("/")[0].split("@")[-1]  # no credentials
    return f"mongodb://{hosts}/{db_name}"


def _mongo_store(source: MongoSource, stack: contextlib.ExitStack, failed_over=True) -> list:
    """Connect to ``source`` (a client opened here is closed with ``stack``); plus its failed-over runs.

    ``failed_over``: True reads ``tracking.mongo.default_failure_root()``, a path reads
    that failure root, False none (see ``tracking.load_failed``).
    """
    if not isinstance(source.client, str):
        db = source.client[source.db_name or "sacred"]
        return [_MongoStore(db, source, _mongo_label(None, db.name))]
    import pymongo

    client = stack.enter_context(pymongo.MongoClient(source.client, serverSelectionTimeoutMS=5000))
    db = client[source.db_name] if source.db_name else client.get_default_database("sacred")
    stores = [_MongoStore(db, source, _mongo_label(source.client, db.name))]
    if failed_over is not False:
        from tracking.load_failed import FailedOverStore, target_of
        from tracking.mongo import default_failure_root

        target = target_of(source.client, db.name, source.runs_collection)
        extra = target and FailedOverStore(default_failure_root() if failed_over is True else failed_over, target)
        if extra:  # the failed-over copy replaces the stale (RUNNING) document of the same run
            stores[0].exclude_uids, stores = extra.uids, stores + [extra]
    return stores


@contextlib.contextmanager
def _open(source, failed_over=True) -> Iterator[list]:
    """The stores named by ``source``, a single source or a list of them."""
    with contextlib.ExitStack() as stack:
        stores = []
        for item in source if isinstance(source, (list, tuple)) else [source]:
            if isinstance(item, str) and not os.path.exists(item) and (
                item.startswith(("mongodb://", "mongodb+srv://")) or _MONGO_SPEC.fullmatch(item)
            ):
                item = MongoSource.from_spec(item)
            if isinstance(item, MongoSource):
                stores += _mongo_store(item, stack, failed_over)
            elif callable(getattr(item, "list_collection_names", None)):  # a pymongo/mongomock Database
                stores.append(_MongoStore(item, MongoSource(item.client, item.name), _mongo_label(None, item.name)))
            elif isinstance(item, (str, os.PathLike)):
                path = Path(item)
                if not path.is_dir():
                    problem = "is not a directory" if path.exists() else f"does not exist (cwd: {os.getcwd()})"
                    raise ValueError(f"source directory {str(path)!r} {problem}")
                stores += [_FileStore(p) for p in _file_stores(path)]
            else:
                raise ValueError(
                    "source must be a run directory, a MongoDB URL or 'host:port:db' string, a MongoSource, "
                    f"a pymongo Database or a list of these; got {type(item).__name__}"
                )
        yield stores
