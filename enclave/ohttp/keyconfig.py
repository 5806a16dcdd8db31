"""Key configurations (RFC 9458 section 3).

    Key Config = key_id(8) kem_id(16) public_key(8*Npk) suites_len(16) {kdf_id(16) aead_id(16)}*
    application/ohttp-keys = { length(16) Key Config }*
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from enclave.ohttp.protocol import (
    KEM_X25519_HKDF_SHA256,
    NENC_X25519,
    Aead,
    Kdf,
    SymmetricSuite,
)


class KeyConfigError(ValueError):
    """A key configuration that cannot be parsed."""


@dataclass(frozen=True)
class KeyConfig:
    key_id: int
    kem_id: int
    public_key: bytes
    suites: tuple[SymmetricSuite, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.key_id <= 255:
            raise KeyConfigError(f"key_id must fit in one byte, got {self.key_id}")
        if self.kem_id == KEM_X25519_HKDF_SHA256 and len(self.public_key) != NENC_X25519:
            raise KeyConfigError(f"expected a {NENC_X25519}-byte X25519 public key, "
                                 f"got {len(self.public_key)}")
        if not self.suites:
            raise KeyConfigError("a key configuration needs at least one suite")

    def encode(self) -> bytes:
        suites = b"".join(struct.pack("!HH", s.kdf, s.aead) for s in self.suites)
        return (struct.pack("!BH", self.key_id, self.kem_id) + self.public_key
                + struct.pack("!H", len(suites)) + suites)

    @classmethod
    def decode(cls, data: bytes) -> KeyConfig:
        if len(data) < 3:
            raise KeyConfigError("truncated key configuration")
        key_id, kem_id = struct.unpack_from("!BH", data)
        if kem_id != KEM_X25519_HKDF_SHA256:
            raise KeyConfigError(f"unsupported KEM 0x{kem_id:04x}")
        end_pk = 3 + NENC_X25519
        if len(data) < end_pk + 2:
            raise KeyConfigError("truncated key configuration")
        (suites_len,) = struct.unpack_from("!H", data, end_pk)
        body = data[end_pk + 2:]
        if suites_len % 4 or len(body) != suites_len:
            raise KeyConfigError("malformed suite list")
        suites = []
        for off in range(0, suites_len, 4):
            kdf, aead = struct.unpack_from("!HH", body, off)
            if kdf in Kdf._value2member_map_ and aead in Aead._value2member_map_:
                suites.append(SymmetricSuite(Kdf(kdf), Aead(aead)))
        return cls(key_id, kem_id, bytes(data[3:end_pk]), tuple(suites))

    def supports(self, suite: SymmetricSuite) -> bool:
        return suite in self.suites


def encode_key_configs(configs: Iterable[KeyConfig]) -> bytes:
    """`application/ohttp-keys`: each configuration with a 2-byte length prefix."""
    out = b""
    for config in configs:
        encoded = config.encode()
        out += struct.pack("!H", len(encoded)) + encoded
    return out


def decode_key_configs(data: bytes) -> list[KeyConfig]:
    """Parse `application/ohttp-keys`; configurations with an unknown KEM are skipped."""
    configs, off = [], 0
    while off < len(data):
        if off + 2 > len(data):
            raise KeyConfigError("truncated key configuration list")
        (size,) = struct.unpack_from("!H", data, off)
        chunk = data[off + 2:off + 2 + size]
        if len(chunk) != size:
            raise KeyConfigError("truncated key configuration list")
        off += 2 + size
        try:
            configs.append(KeyConfig.decode(chunk))
        except KeyConfigError:
            if chunk[1:3] == struct.pack("!H", KEM_X25519_HKDF_SHA256):
                raise
    return configs
