"""Sealed state: what the enclave writes to disk is AES-256-GCM under a data key that
never reaches disk in plaintext.

The data key comes from the SEV-SNP firmware (SNP_GET_DERIVED_KEY on `/dev/sev-guest`:
the same guest measurement on the same chip gets the same key) through HKDF with the
workload digest, so that only the same workload of the same image on the same chip gets
it (any process in the guest can ask the firmware; the image alone does not say which
gateway settings run). A fleet's replicas use the key derived from the fleet's seed
instead, which the keyholder releases only to accepted workloads: that is also how data
moves to a new release (the new release's replicas join the same keyholder). With the
simulated TEE, or `--data-key file:PATH` on a measured encrypted disk, it is a key file
made on first use (0600), as strong as that disk. Each sealed value
is `nonce(12) || AES-256-GCM(data_key, nonce, value, aad=purpose)`: the AAD names what
the value is (for example "conversation-message:<id>"), so a value moved to another row
does not open.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from attestation.sev_guest import DEVICE, GuestRequest, default_ioctl, open_device
from enclave.errors import DecryptError

KEY_SIZE = 32
NONCE_SIZE = 12
SEV_GUEST = DEVICE
SNP_GET_DERIVED_KEY = (3 << 30) | (32 << 16) | (ord("S") << 8) | 0x1
# Mix the measurement and the guest policy into the derived key (GUEST_FIELD_SELECT).
_FIELD_MEASUREMENT = 1 << 3
_FIELD_POLICY = 1 << 0


class DataKey:
    """The key that seals state; its repr never shows it."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"expected a {KEY_SIZE}-byte data key, got {len(key)}")
        self._aead = AESGCM(key)
        # A key of its own for MACs over stored rows (never the sealing key itself).
        self._mac_key = HKDF(hashes.SHA256(), KEY_SIZE, salt=None,
                             info=b"cloister-row-mac-v1").derive(key)

    def __repr__(self) -> str:
        return "DataKey([redacted])"

    def seal(self, value: bytes, *, purpose: str) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, value, purpose.encode())

    def mac(self, data: bytes) -> bytes:
        """HMAC-SHA256 of `data` (a canonical encoding of a stored row)."""
        return hmac.new(self._mac_key, data, hashlib.sha256).digest()

    def open(self, sealed: bytes, *, purpose: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], purpose.encode())
        except Exception:  # noqa: BLE001
            raise DecryptError() from None

    @classmethod
    def from_key_file(cls, path: Path) -> DataKey:
        """The simulated TEE's data key: a 0600 file, made on first use."""
        return cls(kept_secret(path, KEY_SIZE))

    @classmethod
    def from_snp(cls, *, workload: bytes, device: str = SEV_GUEST,
                 ioctl: Callable[[int, int, bytearray], int] | None = None,
                 opener: Callable[[str], int] | None = None) -> DataKey:
        """SNP_GET_DERIVED_KEY (bound to this guest's measurement and policy: the image)
        through HKDF with the `workload` digest: another workload of the same image gets
        another key."""
        firmware = _snp_derived_key(device, ioctl or default_ioctl, opener or open_device)
        return cls(bound_to_workload(firmware, workload))


def kept_secret(path: Path, size: int) -> bytes:
    """`size` random bytes kept in a 0600 file, made on first use; when another process
    makes it at the same moment, theirs."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret = os.urandom(size)
        try:
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
                           "wb") as out:
                out.write(secret)
        except FileExistsError:
            return path.read_bytes()
        return secret


def bound_to_workload(root: bytes, workload: bytes) -> bytes:
    """HKDF-SHA256 of a root key (the firmware's) with the workload digest as its info."""
    if len(workload) != 32:
        raise ValueError("a workload digest is 32 bytes")
    return HKDF(hashes.SHA256(), KEY_SIZE, salt=None,
                info=b"cloister-data-key-v1:" + workload).derive(root)


class _KeyRequest(ctypes.Structure):
    _fields_ = [("root_key_select", ctypes.c_uint32), ("rsvd", ctypes.c_uint32),
                ("guest_field_select", ctypes.c_uint64), ("vmpl", ctypes.c_uint32),
                ("guest_svn", ctypes.c_uint32), ("tcb_version", ctypes.c_uint64)]


def _snp_derived_key(device: str, ioctl: Callable[[int, int, bytearray], int],
                     opener: Callable[[str], int]) -> bytes:
    request = _KeyRequest(root_key_select=0,
                          guest_field_select=_FIELD_MEASUREMENT | _FIELD_POLICY)
    response = ctypes.create_string_buffer(64)  # MSG_KEY_RSP: status u32, rsvd[28], key[32]
    guest = GuestRequest(msg_version=1, req_data=ctypes.addressof(request),
                          resp_data=ctypes.addressof(response))
    fd = opener(device)
    try:
        ioctl(fd, SNP_GET_DERIVED_KEY, bytearray(bytes(guest)))
    finally:
        os.close(fd)
    status = int.from_bytes(response.raw[:4], "little")
    if status != 0:
        raise OSError(f"SNP_GET_DERIVED_KEY failed with status {status}")
    return response.raw[32:64]
