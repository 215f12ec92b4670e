"""Which run keys a Sacred store holds, and with which status; no torch, no Sacred import.

Two stores are read directly, in the layout Sacred writes:

* FileStorageObserver (``-F DIR``): ``DIR/<id>/run.json`` has ``"status"``
  (QUEUED, RUNNING, COMPLETED, FAILED, INTERRUPTED, TIMEOUT) and
  ``DIR/<id>/config.json`` has ``"run_key"``.
* MongoObserver (``-m [host:port:]db[.collection]`` or ``-m mongodb://[user@]host/db``,
  parsed by ``tracking.mongo``): documents of ``db.runs`` (or ``db.<collection>``) with
  ``"status"`` and ``"config.run_key"``, plus the runs that failed over to
  ``./runs/_mongo_failed`` (``$DLT_MONGO_FAILURE_DIR``) aimed at that database and not
  yet uploaded by ``tracking.sync_mongo``: they are finished, so they are not rerun.
  An unreachable server fails within ``$DLT_MONGO_TIMEOUT_S`` (5) s; messages never
  show a password.

A run key is COMPLETED when at least one run with that key finished with
status COMPLETED.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable

from tracking.mongo import MongoUnreachable, connect, default_failure_root, failed_over_runs, parse_target, redact

COMPLETED = "COMPLETED"


class StoreError(RuntimeError):
    """A store that cannot be read (unreachable Mongo server, unreadable directory)."""


@dataclass(frozen=True)
class Store:
    """A Sacred observer's store: ``kind`` is "file" (location DIR) or "mongo" (the -m argument)."""

    kind: str
    location: str

    @classmethod
    def parse(cls, kind: str, value: str) -> "Store":
        """Validate ``value`` for ``kind``; ValueError names the expected form."""
        if kind == "file":
            if not value:
                raise ValueError("-F needs a directory")
            return cls("file", value)
        if kind == "mongo":
            try:
                parse_target(value)
            except ValueError:
                raise ValueError("-m expects [host:port:]db_name[.collection] (Sacred's syntax) or "
                                 f"mongodb://[user@]host[:port]/db; got {redact(value)!r}") from None
            return cls("mongo", value)
        raise ValueError(f"store kind must be 'file' or 'mongo'; got {kind!r}")

    def describe(self) -> str:
        return f"-F {self.location}" if self.kind == "file" else f"-m {redact(self.location)}"

    def statuses(self, keys: Iterable[str] | None = None) -> dict[str, set[str]]:
        """run_key -> the set of statuses of the runs recorded with it (restricted to ``keys``)."""
        wanted = None if keys is None else set(keys)
        if self.kind == "file":
            return _file_statuses(self.location, wanted)
        return _mongo_statuses(self.location, wanted)

    def completed(self, keys: Iterable[str] | None = None) -> set[str]:
        """The run keys (among ``keys``) with at least one COMPLETED run."""
        return {k for k, s in self.statuses(keys).items() if COMPLETED in s}


def _read_json(path: str):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None  # a run directory being written, or not Sacred's


def _file_statuses(root: str, wanted: set[str] | None) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    if not os.path.isdir(root):
        return out  # nothing recorded yet
    try:
        entries = list(os.scandir(root))
    except OSError as err:
        raise StoreError(f"cannot list file store {root!r}: {err}") from None
    for entry in entries:
        if not entry.is_dir() or entry.name.startswith("_"):
            continue  # _sources/, _resources/
        run = _read_json(os.path.join(entry.path, "run.json"))
        config = _read_json(os.path.join(entry.path, "config.json"))
        if not isinstance(run, dict) or not isinstance(config, dict) or config.get("run_key") is None:
            continue
        key = str(config["run_key"])
        if wanted is None or key in wanted:
            out.setdefault(key, set()).add(str(run.get("status")))
    return out


def mongo_client(target):
    """A connected pymongo client for a ``tracking.mongo.MongoTarget`` (tests replace this function)."""
    return connect(target)


def _failed_over_statuses(target, wanted: set[str] | None, out: dict[str, set[str]]) -> None:
    for run_dir, _ in failed_over_runs(default_failure_root(), target, synced=False):
        run, config = _read_json(os.path.join(run_dir, "run.json")), _read_json(os.path.join(run_dir, "config.json"))
        if isinstance(run, dict) and isinstance(config, dict) and config.get("run_key") is not None:
            key = str(config["run_key"])
            if wanted is None or key in wanted:
                out.setdefault(key, set()).add(str(run.get("status")))


def mongo_find(value: str, query: dict, projection: dict) -> list[dict]:
    """The documents of the Mongo store ``value`` that match ``query``. Raises StoreError naming the store
    (never its password) when the server is unreachable or answers with an error."""
    target = parse_target(value)
    try:
        client = mongo_client(target)
        try:
            return list(client[target.db_name][target.collection].find(query, projection))
        finally:
            client.close()
    except MongoUnreachable as err:
        raise StoreError(f"cannot read Mongo store {redact(value)!r}: {err}") from None
    except Exception as err:  # pymongo's errors (lost server, auth) all end here
        if err.__class__.__module__.split(".")[0] not in ("pymongo", "mongomock"):
            raise
        raise StoreError(f"cannot read Mongo store {redact(value)!r} ({target.public}): {redact(str(err))}") from None


def _mongo_statuses(value: str, wanted: set[str] | None) -> dict[str, set[str]]:
    query = {"config.run_key": {"$in": sorted(wanted)} if wanted is not None else {"$ne": None}}
    out: dict[str, set[str]] = {}
    for doc in mongo_find(value, query, {"config.run_key": 1, "status": 1}):
        key = str(doc.get("config", {}).get("run_key"))
        out.setdefault(key, set()).add(str(doc.get("status")))
    _failed_over_statuses(parse_target(value), wanted, out)
    return out


def completed_lines(commands, override: Store | None = None) -> tuple[set[int], list]:
    """Line numbers of ``commands`` whose run key is COMPLETED in their store.

    Each command is checked in the store named on its line, or in ``override`` if
    given. Returns (completed line numbers, commands that could not be checked:
    no run key, or no store). Stores are each read once.
    """
    by_store: dict[Store, list] = {}
    unknown = []
    for cmd in commands:
        store = override or cmd.store
        if cmd.run_key is None or store is None:
            unknown.append(cmd)
        else:
            by_store.setdefault(store, []).append(cmd)
    done: set[int] = set()
    for store, cmds in by_store.items():
        finished = store.completed(c.run_key for c in cmds)
        done.update(c.lineno for c in cmds if c.run_key in finished)
    return done, unknown
