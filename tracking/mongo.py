"""MongoDB targets: parsing, credential hiding, a fast reachability check, failed-over runs.

Imports only the standard library at module level (``gen_commands`` uses it without
Sacred or torch); pymongo is imported when a connection is made.

* A target is Sacred's ``-m`` spec ``[host:port:]db[.collection][!priority]`` or a
  URL ``mongodb://[user[:password]@]host[:port][,host...][/db[.collection]][?options]``.
  A URL that names a user but no password takes it from ``$DLT_MONGO_PASSWORD``, so
  commands files can carry ``mongodb://user@host/db`` and no secret.
* :attr:`MongoTarget.public` (``host:port/db``) is what the project writes anywhere:
  run records, messages, failure folders. :func:`redact` removes credentials from
  any text that may hold a URL.
* :func:`connect` fails within ``$DLT_MONGO_TIMEOUT_S`` (default 5) seconds with a
  :class:`MongoUnreachable` that names host:port and suggests ``-F``.
* A run whose server was lost is written by ``tracking.mongo_observer`` to
  ``<failure root>/<experiment>/<n>/`` in FileStorageObserver's layout plus a
  ``mongo.json`` naming its target; :func:`failed_over_runs` finds them.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote

from core import checks

DEFAULT_PORT = 27017
DEFAULT_DB = "sacred"
TIMEOUT_ENV, PASSWORD_ENV, FAILURE_DIR_ENV = "DLT_MONGO_TIMEOUT_S", "DLT_MONGO_PASSWORD", "DLT_MONGO_FAILURE_DIR"
DEFAULT_TIMEOUT_S = 5.0
SIDECAR = "mongo.json"  # in a failed-over run folder: its target and identity
UID_FIELD = "run_uid"  # in every run document the project writes: a random hex id, for idempotent syncs

_NAME = r"[_A-Za-z][0-9A-Za-z#%&'()+\-;=@\[\]^_{}]{0,63}"  # Sacred's db / collection names
_HOST = r"[0-9A-Za-z](?:[0-9A-Za-z.\-]*[0-9A-Za-z])?"
_SPEC_RE = re.compile(
    rf"^(?:(?P<host>{_HOST}):(?P<port>\d{{1,5}}):)?(?P<db>{_NAME})"
    rf"(?:\.(?P<collection>{_NAME})(?::(?P<overwrite>\d{{1,12}}))?)?(?:!(?P<priority>-?\d+))?$"
)
_HOST_ONLY_RE = re.compile(rf"^(?P<host>{_HOST}):(?P<port>\d{{1,5}})$")
_URL_CREDENTIALS_RE = re.compile(r"(mongodb(?:\+srv)?://)[^@/\s'\"]*@")
_URL_PASSWORD_RE = re.compile(r"(mongodb(?:\+srv)?://)([^@/:\s'\"]*):[^@/\s'\"]*@")


class MongoUnreachable(ConnectionError):
    """The MongoDB server cannot be reached (or refuses the credentials) within the timeout."""


def redact(text: str) -> str:
    """``text`` with the ``user:password@`` part of every MongoDB URL removed."""
    return _URL_CREDENTIALS_RE.sub(r"\1", text)


def without_password(text: str) -> str:
    """``text`` with the password of every MongoDB URL removed (the user stays).

    What commands files carry: the run takes the password from ``$DLT_MONGO_PASSWORD``.
    """
    return _URL_PASSWORD_RE.sub(r"\1\2@", text)


def timeout_s() -> float:
    """The server-selection timeout: ``$DLT_MONGO_TIMEOUT_S`` or 5 s."""
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = raw  # unparseable: the check rejects the string and the message quotes it
    return checks.number(TIMEOUT_ENV, value, lo=0, strict=True, finite=False, why="seconds")


@dataclass(frozen=True)
class MongoTarget:
    """Where a MongoObserver writes: server, database and runs collection.

    Attributes:
        url: what pymongo connects with; may hold credentials, so it is never printed.
        hosts: ``('host:port', ...)``, lower-case host names.
        db_name: the database (Sacred's default ``sacred``).
        collection: the runs collection (Sacred's ``collection``; metrics go to ``metrics``).
        overwrite, priority: Sacred's ``db.collection:ID`` and ``!priority``.
        has_credentials: the URL carries a user.
        user, options: the user name and the URL's ``?query`` (no password), for :attr:`spec`.
    """

    url: str = field(repr=False)
    hosts: tuple[str, ...]
    db_name: str = DEFAULT_DB
    collection: str = "runs"
    overwrite: int | None = None
    priority: int | None = None
    has_credentials: bool = False
    user: str = field(default="", repr=False)
    options: str = ""

    @property
    def address(self) -> str:
        """``host:port[,host:port]`` (no credentials)."""
        return ",".join(self.hosts)

    @property
    def public(self) -> str:
        """``host:port/db`` or ``host:port/db.collection``: safe to write anywhere."""
        suffix = "" if self.collection == "runs" else f".{self.collection}"
        return f"{self.address}/{self.db_name}{suffix}"

    @property
    def spec(self) -> str:
        """A password-free argument for ``-m`` / ``sync_mongo`` naming the same database.

        With a user it is ``mongodb://user@host/db?options``: the password then comes
        from ``$DLT_MONGO_PASSWORD``.
        """
        suffix = "" if self.collection == "runs" else f".{self.collection}"
        if len(self.hosts) == 1 and not self.has_credentials and not self.options and ":" in self.hosts[0]:
            return f"{self.hosts[0]}:{self.db_name}{suffix}"
        user = f"{quote(self.user, safe='')}@" if self.user else ""
        return f"mongodb://{user}{self.address}/{self.db_name}{suffix}" + (f"?{self.options}" if self.options else "")

    def same_database(self, record: dict) -> bool:
        """True when a ``mongo.json`` record names this server, database and collection."""
        return (sorted(record.get("hosts", [])) == sorted(self.hosts) and record.get("db_name") == self.db_name
                and record.get("runs_collection") == self.collection)

    def client(self, timeout: float | None = None):
        """A ``pymongo.MongoClient`` that gives up after ``timeout`` (default :func:`timeout_s`) seconds."""
        import pymongo

        ms = int(1000 * (timeout_s() if timeout is None else timeout))
        return pymongo.MongoClient(self.url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms,
                                   socketTimeoutMS=max(30_000, ms))


def _host_port(host: str, srv: bool) -> str:
    host = host.lower()
    if srv or re.search(r":\d+$", host) or host.startswith("["):
        return host
    return f"{host}:{DEFAULT_PORT}"


def _parse_url(value: str) -> MongoTarget:
    scheme, rest = value.split("://", 1)
    srv = scheme == "mongodb+srv"
    authority, _, path_query = rest.partition("/")
    authority, _, bare_query = authority.partition("?")  # mongodb://host?opts
    path, _, query = path_query.partition("?")
    query = query or bare_query
    userinfo, _, hostpart = authority.rpartition("@")
    if not hostpart or any(not h for h in hostpart.split(",")):
        raise ValueError(f"MongoDB URL names no host; expected mongodb://[user:password@]host[:port]/db, "
                         f"got {redact(value)!r}")
    user, _, password = userinfo.partition(":")
    if userinfo and not password:
        password = os.environ.get(PASSWORD_ENV, "")
    db, _, collection = unquote(path).partition(".")
    db, collection = db or DEFAULT_DB, collection or "runs"
    for name, what in ((db, "database"), (collection, "collection")):
        if not re.fullmatch(_NAME, name):
            raise ValueError(f"MongoDB URL has an invalid {what} name {name!r}")
    credentials = ""
    if user:
        password_part = f":{quote(unquote(password), safe='')}" if password else ""
        credentials = quote(unquote(user), safe="") + password_part + "@"
    url = f"{scheme}://{credentials}{hostpart}/{quote(db)}" + (f"?{query}" if query else "")
    hosts = tuple(_host_port(h, srv) for h in hostpart.split(","))
    options = "&".join(o for o in query.split("&") if o and "password" not in o.lower())
    return MongoTarget(url, hosts, db, collection, has_credentials=bool(user), user=unquote(user), options=options)


def parse_target(value: str) -> MongoTarget:
    """A target from Sacred's ``-m`` spec or a ``mongodb://`` URL; ValueError names the forms."""
    if not isinstance(value, str):
        raise ValueError(f"a MongoDB target must be a string; got {type(value).__name__}")
    if value.startswith(("mongodb://", "mongodb+srv://")):
        return _parse_url(value)
    m = _HOST_ONLY_RE.match(value)
    if m:
        return MongoTarget(f"mongodb://{m['host']}:{m['port']}/", (f"{m['host'].lower()}:{m['port']}",))
    m = _SPEC_RE.match(value)
    if not m:
        raise ValueError("a MongoDB target must be host:port[:db[.collection]] (Sacred's -m syntax) or "
                         f"mongodb://[user:password@]host[:port]/db; got {redact(value)!r}")
    host = f"{m['host']}:{m['port']}" if m["host"] else f"localhost:{DEFAULT_PORT}"
    return MongoTarget(f"mongodb://{host}/", (host.lower(),), m["db"], m["collection"] or "runs",
                       overwrite=int(m["overwrite"]) if m["overwrite"] else None,
                       priority=int(m["priority"]) if m["priority"] else None)


def _short_reason(err: Exception) -> str:
    text = str(err).split(" (configured timeouts")[0].split(", Timeout:")[0]
    return redact(text.strip())[:300] or type(err).__name__


def unreachable_message(target: MongoTarget, err: Exception, timeout: float) -> str:
    """A message naming host:port that says what to do (start the server, or use -F and sync)."""
    import pymongo.errors

    if isinstance(err, pymongo.errors.OperationFailure):
        problem = f"MongoDB at {target.address} refused the credentials or the command: {_short_reason(err)}"
    else:
        problem = (f"cannot reach MongoDB at {target.address} (database {target.db_name!r}) within "
                   f"{timeout:g} s: {_short_reason(err)}")
    return (f"{problem}\n  Start the server (or fix the address), or record to files instead with -F DIR "
            f"and upload those runs later with: python -m tracking.sync_mongo DIR {target.spec}")


def connect(target: MongoTarget, timeout: float | None = None):
    """A connected ``pymongo.MongoClient`` for ``target``, checked with a ping.

    Raises:
        MongoUnreachable: no server answered within ``timeout`` seconds, or it refused
            the credentials (the message names host:port, never the password).
    """
    import pymongo.errors

    timeout = timeout_s() if timeout is None else timeout
    client = target.client(timeout)
    try:
        client.admin.command("ping")
        if target.has_credentials:  # authenticate now, not at the first write
            client[target.db_name].list_collection_names()
    except pymongo.errors.PyMongoError as err:
        client.close()
        raise MongoUnreachable(unreachable_message(target, err, timeout)) from None
    return client


# ----------------------------------------------------------------------------- failed-over runs

def default_failure_root() -> Path:
    """``$DLT_MONGO_FAILURE_DIR``, else ``$DLT_RUNS_DIR/_mongo_failed`` (``./runs/_mongo_failed``)."""
    explicit = os.environ.get(FAILURE_DIR_ENV)
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("DLT_RUNS_DIR", "runs")) / "_mongo_failed"


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def failed_over_runs(root: str | os.PathLike | None = None, target: MongoTarget | None = None,
                     synced: bool = True) -> Iterator[tuple[Path, dict]]:
    """(run folder, its ``mongo.json``) of every failed-over run under ``root`` aimed at ``target``.

    ``root`` is a failure root (``runs/_mongo_failed``), one experiment's folder under it,
    or a run folder; None is :func:`default_failure_root`. ``synced=False`` leaves out
    runs that ``tracking.sync_mongo`` has uploaded. Folders are yielded sorted.
    """
    root = Path(default_failure_root() if root is None else root)
    if not root.is_dir():
        return
    candidates = [root] if (root / SIDECAR).is_file() else sorted(
        p.parent for p in list(root.glob(f"*/{SIDECAR}")) + list(root.glob(f"*/*/{SIDECAR}")))
    for run_dir in candidates:
        record = _read(run_dir / SIDECAR)
        if isinstance(record, dict) and (run_dir / "run.json").is_file() and (
                target is None or target.same_database(record)) and (synced or "synced" not in record):
            yield run_dir, record
