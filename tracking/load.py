"""Sacred runs as pandas tables: one row per run, one row per metric point.

Reads what Sacred 0.8's observers write, from either store:

* FileStorageObserver: ``<store>/<run id>/`` holds ``run.json`` (status, times, host,
  result, artifact names), ``config.json``, ``metrics.json`` (``{name: {steps, values,
  timestamps}}``), ``info.json`` and the artifacts themselves; ``_sources/`` and
  ``_resources/`` sit next to the run folders. A source directory may be one store
  (``runs/dln_lambdahat``) or any folder above stores (``runs/``).
* MongoObserver: the ``runs`` collection holds one document per run (``_id`` is the run
  id; config, result and info inside; artifacts as GridFS file ids), the ``metrics``
  collection one document per (run_id, name) with steps, values and timestamps.

Config, result and info go through Sacred's own ``restore`` (the inverse of what the
observers wrote). Sacred stamps times with ``utcnow``: they come back as UTC Timestamps.
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
from typing import Any, Callable, Iterable, Iterator, Mapping

import pandas as pd

RUN_COLUMNS = ["run_id", "experiment", "status", "start_time", "stop_time", "heartbeat", "host", "source"]
METRIC_COLUMNS = ["run_id", "experiment", "name", "step", "value", "timestamp", "source"]
TIME_COLUMNS = ("start_time", "stop_time", "heartbeat")
# Every status Sacred writes (TIMEOUT comes from sacred.utils.TimeoutInterrupt).
STATUSES = ("QUEUED", "RUNNING", "COMPLETED", "FAILED", "INTERRUPTED", "TIMEOUT")
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


# ----------------------------------------------------------------------------- stores

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


# ----------------------------------------------------------------------------- public API

def _names(arg: str | Iterable[str] | None, key: str, allowed=None) -> set[str] | None:
    if arg is None:
        return None
    values = {arg} if isinstance(arg, str) else set(arg)
    if allowed is not None and values - set(allowed):
        raise ValueError(f"{key} must be among {allowed}; got {sorted(values - set(allowed))}")
    return values


def flatten_dict(d: Mapping, prefix: str = "") -> dict:
    """``{'a': {'b': 1}, 'c': [1, 2]}`` -> ``{'a.b': 1, 'c': [1, 2]}``; lists stay lists."""
    flat = {}
    for key, value in d.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _row(run_id, entry: dict, config: dict, label: str) -> tuple[dict, list[str], list[str]]:
    """One run's row, with its config and result column names (both sorted: stores differ in key order)."""
    row = {
        "run_id": run_id,
        "experiment": entry.get("experiment", {}).get("name"),
        "status": entry.get("status"),
        **{c: entry.get(c) for c in TIME_COLUMNS},
        "host": (entry.get("host") or {}).get("hostname"),
        "source": label,
    }
    config_cols = sorted(flatten_dict(config))
    row.update(flatten_dict(config))
    result, result_cols = entry.get("result"), []
    if isinstance(result, Mapping):
        for key, value in sorted(flatten_dict(result).items()):
            column = f"result.{key}" if key in row else key  # a config key keeps the bare name
            row[column] = value
            result_cols.append(column)
    elif result is not None:
        row["result"] = result
        result_cols.append("result")
    return row, config_cols, result_cols


def _matches(value, wanted) -> bool:
    if callable(wanted):
        return bool(wanted(value))
    sequences = isinstance(value, (list, tuple)), isinstance(wanted, (list, tuple))
    return list(value) == list(wanted) if all(sequences) else not any(sequences) and value == wanted


def apply_filters(df: pd.DataFrame, filters: Mapping[str, Any | Callable[[Any], bool]]) -> pd.DataFrame:
    """Rows of ``df`` where each column equals its value (lists compare as lists) or passes its callable.

    Raises:
        ValueError: a filter names a column that ``df`` lacks (unless ``df`` is empty).
    """
    if df.empty:
        return df
    missing = sorted(set(filters) - set(df.columns))
    if missing:
        raise ValueError(f"filters name unknown columns {missing}; available: {sorted(df.columns)}")
    keep = pd.Series(True, index=df.index)
    for column, wanted in filters.items():
        keep &= df[column].map(lambda v, w=wanted: _matches(v, w)).astype(bool)
    return df[keep].reset_index(drop=True)


def load_runs(source, experiment=None, filters=None, status=None, failed_over=True) -> pd.DataFrame:
    """One row per Sacred run, config and result flattened into dotted columns.

    Args:
        source: a file-store directory (one store or a folder above stores), a MongoDB URL
            or Sacred spec ``'host:port:db'``, a ``MongoSource``, a pymongo ``Database``,
            or a list of these.
        experiment: experiment name(s) to keep, e.g. ``'dln_lambdahat'``; None keeps all.
        filters: ``{dotted column: value or predicate}``, e.g.
            ``{'sgld_config.epsilon': 1e-5, 'layer_widths': [10, 10], 'seed': lambda s: s < 5}``.
        status: status(es) to keep, among ``STATUSES``; None keeps all.
        failed_over: for a Mongo source given by URL or spec, also the runs that failed
            over to disk when its server was lost and are not yet synced (run_id
            ``'<experiment>/<n>'``): True looks in ``./runs/_mongo_failed`` (or
            ``$DLT_MONGO_FAILURE_DIR``), a path looks there, False leaves them out.

    Returns:
        DataFrame with ``RUN_COLUMNS`` (times as UTC Timestamps, ``source`` the store
        directory or database), then config columns (``sgld_config.epsilon``; lists stay
        lists), then result columns (``lambdahat``, ``trained.lambdahat``; a result key that
        clashes with a config key becomes ``result.<key>``; a non-dict result goes in
        ``result``). Rows are ordered by source, then run id.

    Raises:
        ValueError: unknown source type, missing directory, unknown status or filter column.
    """
    experiments = _names(experiment, "experiment")
    statuses = _names(status, "status", STATUSES)
    with _open(source, failed_over) as stores:
        rows = [_row(run_id, entry, config, store.label)
                for store in stores for run_id, entry, config in store.runs(experiments, statuses)]
    config_cols = sorted({c for _, cols, _ in rows for c in cols})
    result_cols = sorted({c for _, _, cols in rows for c in cols} - set(config_cols))
    df = pd.DataFrame([row for row, _, _ in rows], columns=RUN_COLUMNS + config_cols + result_cols)
    for column in TIME_COLUMNS:
        df[column] = pd.to_datetime(df[column], utc=True, format="ISO8601")
    return apply_filters(df, filters or {})


def load_metrics(source, experiment=None, run_ids=None, names=None, failed_over=True) -> pd.DataFrame:
    """Logged metrics in long form, one row per (run, name, step).

    Args:
        source: as for ``load_runs``.
        experiment: experiment name(s) to keep; None keeps all.
        run_ids: run ids to keep (ints for file stores and default Mongo ids); None keeps all.
        names: metric names or glob patterns, e.g. ``['train/loss', 'llc/loss_trace/*']``.
        failed_over: as for ``load_runs``.

    Returns:
        DataFrame with ``METRIC_COLUMNS``: step int, value float, timestamp UTC.
    """
    experiments = _names(experiment, "experiment")
    names = _names(names, "names")
    wanted_ids = None if run_ids is None else set(run_ids)
    parts = []
    with _open(source, failed_over) as stores:
        for store in stores:
            for run_id, exp, name, series in store.metrics(experiments, wanted_ids, names):
                n = len(series["steps"])
                parts.append(pd.DataFrame({
                    "run_id": [run_id] * n, "experiment": exp, "name": name,
                    "step": pd.Series(series["steps"], dtype="int64"),
                    "value": pd.Series(series["values"], dtype="float64"),
                    "timestamp": pd.to_datetime(pd.Series(series["timestamps"], dtype=object), utc=True,
                                                format="ISO8601"),
                    "source": store.label,
                }))
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=float if c == "value" else object) for c in METRIC_COLUMNS})
    return pd.concat(parts, ignore_index=True)[METRIC_COLUMNS]


@contextlib.contextmanager
def _one_run(source, run_id, experiment):
    """The (store, entry) of the single run ``run_id`` in ``source``."""
    with _open(source) as stores:
        found = [(store, entry) for store in stores
                 for _, entry, _ in store.runs(_names(experiment, "experiment"), None, {run_id})]
        if not found:
            raise ValueError(f"run_id {run_id!r} not found in {[s.label for s in stores]}")
        if len(found) > 1:
            raise ValueError(f"run_id {run_id!r} is in several stores {[s.label for s, _ in found]}; "
                             "pass experiment= or a single store")
        yield found[0]


def load_info(source, run_id, experiment=None) -> dict:
    """The ``info`` dict of one run (``_run.info``; MongoObserver adds ``metrics``, its metric ids).

    Args:
        source: as for ``load_runs``; it must hold exactly one run ``run_id`` of ``experiment``.
        run_id: the run's id.
        experiment: experiment name, to pick one store out of several.
    """
    with _one_run(source, run_id, experiment) as (store, _):
        return store.info(run_id)


def load_artifact(source, run_id, name: str, experiment=None) -> bytes:
    """The bytes of one artifact, e.g. ``np.load(io.BytesIO(load_artifact(src, 3, 'llc_trace.npz')))``.

    Args:
        source: as for ``load_info``. Reading from mongomock needs
            ``mongomock.gridfs.enable_gridfs_integration()`` first.
        run_id: the run's id.
        name: the artifact's file name, as given to ``add_artifact``.
        experiment: experiment name, to pick one store out of several.

    Raises:
        ValueError: the run or the artifact does not exist.
    """
    with _one_run(source, run_id, experiment) as (store, entry):
        available = [a if isinstance(a, str) else a["name"] for a in entry.get("artifacts", [])]
        if name not in available:
            raise ValueError(f"artifact {name!r} not in run {run_id!r}; available: {available}")
        return store.artifact(run_id, name, entry)
