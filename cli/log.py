"""`cloister log export DIR`: the gateway's transparency log (`gateway.tlog`) as static
C2SP tlog-tiles (`checkpoint`, `tile/...`) for any HTTP server, read from its database
(the state folder's SQLite file, or `--database`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    log = sub.add_parser("log", help="the gateway's transparency log: export it as static "
                                     "tiles")
    action = log.add_subparsers(dest="action", required=True)
    export = action.add_parser("export", help="write the latest checkpoint and its tiles "
                                              "into DIR")
    export.add_argument("folder", type=Path, metavar="DIR")
    export.add_argument("--state-dir", type=Path, default=None,
                        help="the gateway's state folder (its transparency-log.db)")
    export.add_argument("--database", default=None,
                        help="the gateway's SQLAlchemy URL instead (a fleet's PostgreSQL)")


def run(args: argparse.Namespace) -> int:
    from enclave.tlog.merkle import ProofError
    from gateway.config import Store
    from gateway.tlog import LogStore, export_stored

    folder = Store(state_dir=args.state_dir).folder()
    url = args.database or f"sqlite:///{folder / 'transparency-log.db'}"
    if args.database is None and not (folder / "transparency-log.db").exists():
        print(f"cloister log: no log in {folder} (pass the gateway's --state-dir or "
              "--database)", file=sys.stderr)
        return 2
    store = LogStore(url)
    try:
        size = export_stored(store, args.folder)
    except ProofError as exc:
        print(f"cloister log: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"{store.origin}: {size} entries in {args.folder}")
    return 0
