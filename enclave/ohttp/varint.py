"""QUIC variable-length integers (RFC 9000 section 16), as used by RFC 9292 and chunked
OHTTP. Hand-written: no maintained Python library exposes them on their own, and they
are twelve lines."""

from __future__ import annotations

MAX_VARINT = (1 << 62) - 1


def encode_varint(value: int) -> bytes:
    if value < 0x40:
        return value.to_bytes(1, "big")
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    if value <= MAX_VARINT:
        return (value | 0xC000000000000000).to_bytes(8, "big")
    raise ValueError("varint out of range")


def decode_varint(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int] | None:
    """(value, new offset), or None when `data` ends inside the integer."""
    if offset >= len(data):
        return None
    first = data[offset]
    size = 1 << (first >> 6)
    if offset + size > len(data):
        return None
    value = first & 0x3F
    for byte in data[offset + 1 : offset + size]:
        value = (value << 8) | byte
    return value, offset + size
