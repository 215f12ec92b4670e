"""Failed-over runs (``tracking.mongo_observer``) as a store that ``tracking.load`` reads.

A run whose MongoDB server was lost lies in ``<failure root>/<experiment>/<n>/`` until
``tracking.sync_mongo`` uploads it. ``load_runs('host:port:db')`` adds the runs not yet
uploaded that were aimed at that database, so a table (and a sweep deciding what to
rerun) counts them as the finished runs they are. Their ``run_id`` is
``'<experiment folder>/<n>'`` and their ``source`` is ``failed-over:<root>``; the stale
document the server may hold for the same run (same ``run_uid``, still RUNNING) is left out.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

from tracking.mongo import MongoTarget, failed_over_runs, parse_target


def target_of(url: str, db_name: str, runs_collection: str) -> MongoTarget | None:
    """The MongoTarget of a ``MongoSource`` given by URL or ``host:port`` (None if it does not parse)."""
    try:
        target = parse_target(url)
    except ValueError:
        return None
    return dataclasses.replace(target, db_name=db_name, collection=runs_collection)


class FailedOverStore:
    """The not-yet-synced failed-over runs under ``root`` aimed at ``target``."""

    def __init__(self, root, target: MongoTarget):
        self.root = Path(root)
        self.label = f"failed-over:{self.root}"
        found = list(failed_over_runs(self.root, target, synced=False))
        self.dirs = {f"{d.parent.name}/{d.name}": d for d, _ in found}
        self.uids = [record["run_uid"] for _, record in found if "run_uid" in record]

    def __bool__(self):
        return bool(self.dirs)

    def runs(self, experiments, statuses, run_ids=None) -> Iterator[tuple[str, dict, dict]]:
        from tracking._stores import _read_json, _restore, _wanted

        for run_id, run_dir in self.dirs.items():
            if run_ids is not None and run_id not in run_ids:
                continue
            entry = _read_json(run_dir / "run.json")
            if entry is None or not _wanted(entry, experiments, statuses):
                continue
            entry["result"] = _restore(entry.get("result"))
            yield run_id, entry, _restore(_read_json(run_dir / "config.json") or {})

    def metrics(self, experiments, run_ids, names):
        from tracking._stores import _matching, _read_json

        for run_id, entry, _ in self.runs(experiments, None, run_ids):
            saved = _read_json(self.dirs[run_id] / "metrics.json") or {}
            for name in _matching(saved, names):
                yield run_id, entry["experiment"]["name"], name, saved[name]

    def info(self, run_id) -> dict:
        from tracking._stores import _read_json, _restore

        return _restore(_read_json(self.dirs[run_id] / "info.json") or {})

    def artifact(self, run_id, name: str, entry: dict) -> bytes:
        return (self.dirs[run_id] / name).read_bytes()
