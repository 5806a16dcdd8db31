"""The GHCB certificate table (GHCB specification, "SNP Extended Guest Request"): how
the host hands a guest its VCEK, ASK and ARK, as configfs-tsm's `auxblob` and
SNP_GET_EXT_REPORT's certificate buffer carry them.

    entry = GUID(16, little-endian fields) offset(u32) length(u32); a zero GUID ends the
    list; each certificate (DER) lies at its offset from the table's start.
"""

from __future__ import annotations

import struct
import uuid

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
ENTRY_SIZE = 24


def build_cert_table(entries: dict[uuid.UUID, bytes]) -> bytes:
    header_size = ENTRY_SIZE * (len(entries) + 1)
    header, blob, offset = b"", b"", header_size
    for guid, data in entries.items():
        header += guid.bytes_le + struct.pack("<II", offset, len(data))
        blob += data
        offset += len(data)
    return header + b"\x00" * ENTRY_SIZE + blob


def parse_cert_table(table: bytes) -> dict[uuid.UUID, bytes]:
    out: dict[uuid.UUID, bytes] = {}
    for off in range(0, len(table) - (ENTRY_SIZE - 1), ENTRY_SIZE):
        guid = uuid.UUID(bytes_le=table[off:off + 16])
        start, length = struct.unpack_from("<II", table, off + 16)
        if guid.int == 0:
            return out
        out[guid] = table[start:start + length]
    return out
