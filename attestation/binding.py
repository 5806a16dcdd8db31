"""Binding the gateway's keys, its workload and a fresh nonce into one hardware
signature (DESIGN section 5).

    keys_digest  = SHA-256("cloister-keys-v1" || {LP(name) || LP(value)}* sorted by name)
    gpu_nonce    = SHA-256("cloister-gpu-v1" || nonce || keys_digest)
    gpu_digest   = SHA-256("cloister-gpus-v1" || {LP(report) || LP(chain)}*)
    report_data  = SHA-512("cloister-attest-v2" || LP(keys_digest) || LP(nonce)
                           || LP(gpu_digest) || LP(workload_digest)
                           || u64(generated_at) || u64(expiry))
LP is a 4-byte big-endian length prefix. The GPU reports are collected first, with
`gpu_nonce`, so the CPU report's signature covers keys, nonce, GPUs, the workload (the
SHA-256 of its canonical manifest, `attestation.workload`) and the report's own time
window. Version 1 (no workload, no generation time) is gone: nothing verifies it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

KEYS_TAG = b"cloister-keys-v1"
GPU_NONCE_TAG = b"cloister-gpu-v1"
GPUS_TAG = b"cloister-gpus-v1"
ATTEST_TAG = b"cloister-attest-v2"
NONCE_SIZE = 32
REPORT_DATA_SIZE = 64


def _lp(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


def keys_digest(keys: Mapping[str, bytes]) -> bytes:
    """Digest of every public key the gateway accepts traffic for, by name."""
    body = b"".join(_lp(name.encode()) + _lp(keys[name]) for name in sorted(keys))
    return hashlib.sha256(KEYS_TAG + body).digest()


def gpu_nonce(nonce: bytes, digest_of_keys: bytes) -> bytes:
    return hashlib.sha256(GPU_NONCE_TAG + nonce + digest_of_keys).digest()


def gpu_evidence_digest(gpus: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Over each GPU's (SPDM report, certificate chain PEM), in order."""
    return hashlib.sha256(GPUS_TAG + b"".join(_lp(r) + _lp(c) for r, c in gpus)).digest()


def report_data(*, digest_of_keys: bytes, nonce: bytes, digest_of_gpus: bytes,
                digest_of_workload: bytes, generated_at: int, expiry: int) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"expected a {NONCE_SIZE}-byte nonce, got {len(nonce)}")
    return hashlib.sha512(ATTEST_TAG + _lp(digest_of_keys) + _lp(nonce) + _lp(digest_of_gpus)
                          + _lp(digest_of_workload)
                          + struct.pack("!QQ", generated_at, expiry)).digest()


def spki_sha256(cert: x509.Certificate) -> bytes:
    """What the report binds of a TLS certificate (`tls-spki-sha256`): the SHA-256 of its
    DER SubjectPublicKeyInfo, so a client pins the key it verified."""
    return hashlib.sha256(cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()
