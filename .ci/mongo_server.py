"""A MongoDB wire-protocol server for the tests: mongoeco's proxy on 127.0.0.1.

Runs under the interpreter of .ci/mongoeco-venv (Python >= 3.13, built by
.ci/mongo-venv.sh), never under the project's venv:

    .ci/mongoeco-venv/bin/python .ci/mongo_server.py --port-file PORTFILE [--port N]
        [--db-path FILE.sqlite] [--user NAME:PASSWORD]

Binds 127.0.0.1 only. With --db-path the data lives in a SQLite file, so a server
killed and restarted on the same file finds what was written before (the outage
test relies on this); without it the data are in memory. --user turns on SCRAM
authentication for that user (authSource admin; clients must ask for
authMechanism=SCRAM-SHA-256: mongoeco 4.11.0's SCRAM-SHA-1 rejects correct passwords). When it listens, the chosen
port is written to PORTFILE (atomically) and to stdout. SIGTERM/SIGINT stop it.
"""
import argparse
import asyncio
import os
import signal
import sys


async def serve(args) -> None:
    from mongoeco.api import AsyncMongoClient
    from mongoeco.engines.sqlite import SQLiteEngine
    from mongoeco.wire import AsyncMongoEcoProxyServer, WireAuthUser

    users = ()
    if args.user:
        name, _, password = args.user.partition(":")
        users = (WireAuthUser(username=name, password=password, roles=({"role": "root", "db": "admin"},)),)
    kwargs = dict(host="127.0.0.1", port=args.port, auth_users=users)
    if args.db_path:
        kwargs["client"] = AsyncMongoClient(SQLiteEngine(args.db_path))
    server = AsyncMongoEcoProxyServer(**kwargs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        if args.db_path:  # a client passed in is not connected by the proxy
            await kwargs["client"]._engine.connect()
        port = server.address.port
        if args.port_file:
            tmp = f"{args.port_file}.tmp"
            with open(tmp, "w") as fh:
                fh.write(f"{port}\n")
            os.replace(tmp, args.port_file)
        print(f"mongo_server: listening on 127.0.0.1:{port}", flush=True)
        await stop.wait()
    if args.db_path:
        await kwargs["client"]._engine.disconnect()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--port-file", help="write the port here once listening")
    p.add_argument("--db-path", help="SQLite file for the data (default: in memory)")
    p.add_argument("--user", help="NAME:PASSWORD of the one user (turns on authentication)")
    asyncio.run(serve(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
