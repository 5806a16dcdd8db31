"""HPKE suites and the symmetric primitives OHTTP derives from them (RFC 9458 section 4.4).

pyhpke provides the HPKE contexts (with Export); `cryptography` provides the AEADs used
directly for responses, so that sealing a streamed chunk is one AEAD call on a key
object made once per response.
"""

from __future__ import annotations

import functools

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from pyhpke import AEADId, CipherSuite, KDFId, KEMId

from enclave.ohttp.protocol import Aead, Kdf, SymmetricSuite

_AEAD_IDS = {Aead.AES_128_GCM: AEADId.AES128_GCM, Aead.AES_256_GCM: AEADId.AES256_GCM,
             Aead.CHACHA20_POLY1305: AEADId.CHACHA20_POLY1305}


@functools.cache
def hpke_suite(suite: SymmetricSuite) -> CipherSuite:
    if suite.kdf is not Kdf.HKDF_SHA256:
        raise ValueError(f"unsupported KDF {suite.kdf!r}")
    return CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256,
                           _AEAD_IDS[suite.aead])


def aead_cipher(aead: Aead, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if aead is Aead.CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    return AESGCM(key)


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869 section 2.2)."""
    return HKDF.extract(hashes.SHA256(), salt, ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-256 (RFC 5869 section 2.3)."""
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


def response_keys(suite: SymmetricSuite, secret: bytes, enc: bytes, response_nonce: bytes
                  ) -> tuple[bytes, bytes]:
    """RFC 9458 section 4.4: (aead_key, aead_nonce) from the exported secret.

        salt = concat(enc, response_nonce)
        prk = Extract(salt, secret)
        aead_key = Expand(prk, "key", Nk)
        aead_nonce = Expand(prk, "nonce", Nn)
    """
    prk = hkdf_extract(enc + response_nonce, secret)
    return (hkdf_expand(prk, b"key", suite.aead.key_size),
            hkdf_expand(prk, b"nonce", suite.aead.nonce_size))


def response_nonce_size(suite: SymmetricSuite) -> int:
    """max(Nn, Nk): the length of the response nonce and of the exported secret."""
    return max(suite.aead.nonce_size, suite.aead.key_size)
