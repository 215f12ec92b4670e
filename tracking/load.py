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
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from tracking._stores import MongoSource, _open

__all__ = ["RUN_COLUMNS", "METRIC_COLUMNS", "TIME_COLUMNS", "STATUSES", "MongoSource", "flatten_dict", "apply_filters",
           "load_runs", "load_metrics", "load_info", "load_artifact"]

RUN_COLUMNS = ["run_id", "experiment", "status", "start_time", "stop_time", "heartbeat", "host", "source"]
METRIC_COLUMNS = ["run_id", "experiment", "name", "step", "value", "timestamp", "source"]
TIME_COLUMNS = ("start_time", "stop_time", "heartbeat")
# Every status Sacred writes (TIMEOUT comes from sacred.utils.TimeoutInterrupt).
STATUSES = ("QUEUED", "RUNNING", "COMPLETED", "FAILED", "INTERRUPTED", "TIMEOUT")


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
