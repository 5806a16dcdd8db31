"""The receipts a client kept (`enclave.receipts`): one JSON line each in
`receipts.jsonl` in the client's state folder, with the gateway it came from and the
receipt key that gateway's attestation report bound when it was checked, so that
`cloister receipts verify` can check it again offline, later, anywhere.

    {"gateway": URL, "key": hex Ed25519 public key, "receipt": wire form}

Only digests and names are kept, never a prompt or an answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from enclave.receipts import Receipt, ReceiptError

FILE = "receipts.jsonl"


@dataclass(frozen=True)
class KeptReceipt:
    gateway: str
    key: bytes | None
    receipt: Receipt

    def check(self) -> None:
        """The signature again, by the key recorded; `ReceiptError` when it fails."""
        self.receipt.check_signature(self.key)


class ReceiptLog:
    def __init__(self, folder: Path) -> None:
        self.path = folder / FILE
        self._lock = threading.Lock()

    def keeper(self, gateway: str) -> Callable[[Receipt, bytes | None], None]:
        """What a client calls with each receipt it checked, from `gateway`."""
        def keep(receipt: Receipt, key: bytes | None) -> None:
            line = json.dumps({"gateway": gateway, "key": key.hex() if key else None,
                               "receipt": receipt.wire})
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as out:
                    out.write(line + "\n")
        return keep

    def entries(self) -> list[KeptReceipt]:
        """Every receipt kept, oldest first; a line that does not parse is skipped."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        kept = []
        for line in lines:
            try:
                raw = json.loads(line)
                key = bytes.fromhex(raw["key"]) if raw.get("key") else None
                kept.append(KeptReceipt(str(raw["gateway"]), key, Receipt.parse(raw["receipt"])))
            except (ValueError, KeyError, TypeError, ReceiptError):
                continue
        return kept
