"""`cloister witness`: a small reference witness of the C2SP tlog-witness protocol
(`enclave.tlog.witness`) for Cloister's transparency logs, or any C2SP log.

    cloister witness keygen --name NAME --key FILE   make a key; print its verifier key
    cloister witness serve --key FILE --name NAME --log VKEY [--log VKEY ...]
                           [--state FILE] [--host H] [--port P]

It keeps the latest checkpoint it cosigned per log in `--state` (JSON, replaced
atomically before each cosignature leaves), and answers POST /add-checkpoint.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8090


def add_parser(sub: Any) -> None:
    witness = sub.add_parser("witness", help="a C2SP tlog witness: cosign checkpoints of the "
                                             "logs it follows")
    action = witness.add_subparsers(dest="action", required=True)
    keygen = action.add_parser("keygen", help="make a witness key; print its verifier key")
    keygen.add_argument("--name", required=True, help="the witness's name (no spaces, no +)")
    keygen.add_argument("--key", type=Path, required=True, help="where to write the key")
    serve = action.add_parser("serve", help="answer POST /add-checkpoint")
    serve.add_argument("--name", required=True)
    serve.add_argument("--key", type=Path, required=True, help="the key `keygen` wrote")
    serve.add_argument("--log", action="append", default=[], required=True, metavar="VKEY",
                       help="a log to witness: its verifier key (name = the log's origin), "
                            "as a gateway's `cloister attest` prints it; repeatable")
    serve.add_argument("--state", type=Path, default=Path("witness-state.json"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)


def _signer(name: str, path: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from enclave.tlog.note import COSIGNATURE_V1, NoteSigner

    seed = base64.b64decode(path.read_text().strip())
    return NoteSigner(name, Ed25519PrivateKey.from_private_bytes(seed), COSIGNATURE_V1)


def _load_state(path: Path) -> dict[str, Any]:
    from enclave.tlog.witness import Recorded

    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {origin: Recorded(int(item["size"]), base64.b64decode(item["root"]))
            for origin, item in raw.items()}


def _saver(path: Path) -> Any:
    def save(state: dict[str, Any]) -> None:
        text = json.dumps({o: {"size": r.size, "root": base64.b64encode(r.root).decode()}
                           for o, r in state.items()})
        temporary = path.with_name(path.name + ".new")
        with temporary.open("w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(path)
    return save


def app(witness: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from enclave.tlog.witness import PATH, SIZE_MEDIA_TYPE, WitnessError

    async def add_checkpoint(request: Request) -> Response:
        body = await request.body()
        if len(body) > 1 << 16:
            return PlainTextResponse("too large\n", status_code=400)
        try:
            lines = witness.add_checkpoint(body, int(time.time()))
        except WitnessError as exc:
            if exc.status == 409:
                return Response(f"{exc.size}\n", status_code=409, media_type=SIZE_MEDIA_TYPE)
            return PlainTextResponse(exc.reason + "\n", status_code=exc.status)
        return PlainTextResponse(lines)

    return Starlette(routes=[Route(PATH, add_checkpoint, methods=["POST"])])


def run(args: argparse.Namespace) -> int:
    from enclave.tlog.note import COSIGNATURE_V1, NoteError, NoteKey

    if args.action == "keygen":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        args.key.write_text(base64.b64encode(key.private_bytes_raw()).decode() + "\n")
        args.key.chmod(0o600)
        public = key.public_key().public_bytes_raw()
        print(NoteKey(args.name, public, COSIGNATURE_V1).vkey())
        return 0
    import uvicorn

    from enclave.tlog.witness import Witness

    try:
        logs = {key.name: key for key in (NoteKey.parse_vkey(v) for v in args.log)}
    except NoteError as exc:
        print(f"cloister witness: --log: {exc.reason}", file=sys.stderr)
        return 2
    witness = Witness(_signer(args.name, args.key), logs, _load_state(args.state),
                      persist=_saver(args.state))
    print(witness.signer.key.vkey(), flush=True)
    uvicorn.run(app(witness), host=args.host, port=args.port, log_config=None)
    return 0
