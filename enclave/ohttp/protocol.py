"""Oblivious HTTP constants. MUST NOT diverge from the specifications they cite.

RFC 9458 (Oblivious HTTP), RFC 9292 (Binary HTTP), RFC 9180 (HPKE),
draft-ietf-ohai-chunked-ohttp-08 (chunked messages).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# RFC 9180 section 7: identifiers.
KEM_X25519_HKDF_SHA256 = 0x0020
NENC_X25519 = 32  # RFC 9180 section 7.1: Nenc and Npk of DHKEM(X25519, HKDF-SHA256)


class Kdf(enum.IntEnum):
    HKDF_SHA256 = 0x0001


class Aead(enum.IntEnum):
    AES_128_GCM = 0x0001
    AES_256_GCM = 0x0002
    CHACHA20_POLY1305 = 0x0003

    @property
    def key_size(self) -> int:  # Nk
        return 16 if self is Aead.AES_128_GCM else 32

    @property
    def nonce_size(self) -> int:  # Nn
        return 12

    @property
    def tag_size(self) -> int:  # Nt
        return 16


@dataclass(frozen=True)
class SymmetricSuite:
    kdf: Kdf
    aead: Aead


# What the gateway offers, preferred first (DESIGN section 4).
OFFERED_SUITES = (
    SymmetricSuite(Kdf.HKDF_SHA256, Aead.AES_128_GCM),
    SymmetricSuite(Kdf.HKDF_SHA256, Aead.AES_256_GCM),
    SymmetricSuite(Kdf.HKDF_SHA256, Aead.CHACHA20_POLY1305),
)

# RFC 9458 section 4.3 and 4.4: HPKE info and export labels.
REQUEST_LABEL = b"message/bhttp request"
RESPONSE_LABEL = b"message/bhttp response"
# draft-ietf-ohai-chunked-ohttp-08 sections 6.1 and 6.2.
CHUNKED_REQUEST_LABEL = b"message/bhttp chunked request"
CHUNKED_RESPONSE_LABEL = b"message/bhttp chunked response"
FINAL_CHUNK_AAD = b"final"

# RFC 9458 section 9 and draft-ietf-ohai-chunked-ohttp-08 section 9: media types.
KEYS_MEDIA_TYPE = "application/ohttp-keys"
REQUEST_MEDIA_TYPE = "message/ohttp-req"
RESPONSE_MEDIA_TYPE = "message/ohttp-res"
CHUNKED_REQUEST_MEDIA_TYPE = "message/ohttp-chunked-req"
CHUNKED_RESPONSE_MEDIA_TYPE = "message/ohttp-chunked-res"
# RFC 9458 section 5.3: problem type for a key configuration the gateway does not accept.
# RFC 9458 section 5.3 and section 6.5.2: the registered problem types.
KEY_CONFIG_PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#ohttp-key"
DATE_PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#date"
# draft-ietf-ohai-chunked-ohttp section 3: the largest chunk plaintext a sender makes.
MAX_CHUNK_PLAINTEXT = 16384

# The request header: key_id(1) kem_id(2) kdf_id(2) aead_id(2).
REQUEST_HEADER_SIZE = 7

# Bounds on what an opener buffers (h11's DEFAULT_MAX_INCOMPLETE_EVENT_SIZE habit).
# One chunk carries at most one SSE event or one request body piece: 1 MiB is ample.
MAX_CHUNK_SIZE = 1 << 20
