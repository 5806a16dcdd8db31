"""What a client keeps of the gateways' transparency logs (`enclave.tlog.view`), in its
state folder (`logs.json`): per log, the latest checkpoint it verified (the note as
signed, so it can be checked again offline) and the log key that signed it; per
gateway, which log it keeps; per witness, the size it last cosigned. A later checkpoint
must extend the kept one: a fork or a rollback is refused, across restarts of the client.

    {"logs": {origin: {"note": text, "key": hex}}, "gateways": {url: origin},
     "witnesses": {vkey: {origin: size}}}
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enclave.tlog.note import Checkpoint
from enclave.tlog.view import LogRefused, LogView, Verified, open_signed

FILE = "logs.json"


class KeptLogs:
    def __init__(self, folder: Path | None) -> None:
        """`folder` None: kept in memory only (a client that keeps no state)."""
        self.path = folder / FILE if folder is not None else None
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {"logs": {}, "gateways": {}, "witnesses": {}}
        if self.path is not None:
            try:
                loaded = json.loads(self.path.read_text())
                if isinstance(loaded, dict):
                    self._data.update({k: loaded.get(k, {}) for k in self._data})
            except (FileNotFoundError, ValueError):
                pass

    def _view(self) -> LogView:
        known = {}
        for origin, item in self._data["logs"].items():
            try:
                known[origin] = Checkpoint.parse(item["note"].encode().split(b"\n\n")[0]
                                                 + b"\n")
            except Exception:  # noqa: BLE001 - a damaged entry is no checkpoint
                continue
        return LogView(known)

    def since(self, gateway: str) -> int:
        """The size a consistency proof for `gateway`'s log must start from (as far as
        this client knows which log that is: `size_of` once the bundle names it)."""
        with self._lock:
            origin = self._data["gateways"].get(gateway)
            return self._view().since(origin) if origin else 0

    def size_of(self, origin: str) -> int:
        """The size of the checkpoint kept of `origin` (0: none), from whichever gateway
        URL it was seen through (one gateway has several listeners)."""
        with self._lock:
            return self._view().since(origin)

    def accept(self, gateway: str, verified: Verified, key: bytes,
               consistency: Sequence[bytes]) -> Checkpoint:
        """`verified` as `gateway`'s log's latest, if it extends the kept one (and the
        gateway keeps the log it kept before); `LogRefused` otherwise."""
        with self._lock:
            origin = verified.checkpoint.origin
            before = self._data["gateways"].get(gateway)
            if before is not None and before != origin:
                raise LogRefused("log_replaced", f"the gateway kept log {before}, now "
                                 f"shows {origin}")
            checkpoint = self._view().accept(verified, consistency)
            self._data["logs"][origin] = {"note": verified.note.decode(), "key": key.hex()}
            self._data["gateways"][gateway] = origin
            self._save()
            return checkpoint

    def checkpoint(self, origin: str) -> Verified | None:
        """The kept checkpoint of `origin`, checked again by its kept key."""
        with self._lock:
            item = self._data["logs"].get(origin)
        if item is None:
            return None
        return open_signed(item["note"].encode(), bytes.fromhex(item["key"]))

    def origin_of(self, gateway: str) -> str | None:
        with self._lock:
            origin = self._data["gateways"].get(gateway)
        return str(origin) if origin is not None else None

    def witnessed(self, witness: str, origin: str) -> int:
        with self._lock:
            return int(self._data["witnesses"].get(witness, {}).get(origin, 0))

    def record_witnessed(self, witness: str, origin: str, size: int) -> None:
        with self._lock:
            self._data["witnesses"].setdefault(witness, {})[origin] = size
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a file of its own per write: clients in one process (and processes) share the path
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False,
                                         prefix=self.path.name, suffix=".new") as temporary:
            temporary.write(json.dumps(self._data))
        os.replace(temporary.name, self.path)
