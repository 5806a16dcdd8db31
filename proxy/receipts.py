"""The receipts a client kept (`enclave.receipts`): one JSON line each in
`receipts.jsonl` in the client's state folder, with the gateway it came from and the
receipt key that gateway's attestation report bound when it was checked, so that
`cloister receipts verify` can check it again offline, later, anywhere.

    {"gateway": URL, "key": hex Ed25519 public key, "receipt": wire form}

Once the gateway's transparency log holds a receipt, `cloister receipts prove` keeps its
inclusion proof beside it (`receipt-proofs.jsonl`), with the signed checkpoint it leads
to and the attested log key that signed it, so that the receipt's place in the log is
checked offline too:

    {"leaf": hex RFC 9162 leaf hash, "index": n, "proof": [base64], "checkpoint": note,
     "key": hex Ed25519 log key}

Only digests and names are kept, never a prompt or an answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from enclave.receipts import Receipt, ReceiptError
from enclave.tlog.entries import receipt_leaf
from enclave.tlog.note import Checkpoint
from enclave.tlog.view import check_inclusion, decode_hashes, open_signed

FILE = "receipts.jsonl"
PROOFS = "receipt-proofs.jsonl"


@dataclass(frozen=True)
class KeptProof:
    index: int
    proof: list[bytes]
    checkpoint: bytes  # the signed note
    key: bytes

    def check(self, receipt: Receipt) -> Checkpoint:
        """The receipt is in the log at `index` of the checkpoint, signed by `key`;
        `enclave.tlog.view.LogRefused` otherwise."""
        verified = open_signed(self.checkpoint, self.key)
        check_inclusion(verified.checkpoint, receipt_leaf(receipt.wire), self.index,
                        self.proof)
        return verified.checkpoint


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
        self.proofs_path = folder / PROOFS
        self._lock = threading.Lock()

    def keep_proof(self, receipt: Receipt, index: int, proof: list[bytes], checkpoint: bytes,
                   key: bytes) -> None:
        import base64

        line = json.dumps({"leaf": receipt_leaf(receipt.wire).hex(), "index": index,
                           "proof": [base64.b64encode(h).decode() for h in proof],
                           "checkpoint": checkpoint.decode(), "key": key.hex()})
        with self._lock, self.proofs_path.open("a") as out:
            out.write(line + "\n")

    def proofs(self) -> dict[str, KeptProof]:
        """The latest proof kept per receipt (by leaf hash, hex)."""
        try:
            lines = self.proofs_path.read_text().splitlines()
        except FileNotFoundError:
            return {}
        kept = {}
        for line in lines:
            try:
                raw = json.loads(line)
                kept[str(raw["leaf"])] = KeptProof(
                    int(raw["index"]), decode_hashes(raw["proof"]),
                    str(raw["checkpoint"]).encode(), bytes.fromhex(raw["key"]))
            except Exception:  # noqa: BLE001 - a damaged line is no proof
                continue
        return kept

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
