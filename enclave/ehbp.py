"""EHBP, Tinfoil's encrypted HTTP body protocol: sans-IO, both sides.

Constants MUST NOT diverge from Tinfoil's ehbp `protocol.py` (DESIGN section 4):
    keys     GET /.well-known/hpke-keys as application/ohttp-keys: ONE bare key
             configuration (no length prefix, exactly one suite; Tinfoil's
             `ServerIdentity.unmarshal_public_config`), key_id 0,
             X25519 / HKDF-SHA256 / AES-256-GCM
    request  header Ehbp-Encapsulated-Key: hex(enc); SetupBaseS(pk, info="ehbp request");
             body = {u32 BE length || HPKE-Seal(aad="", chunk)}*
    response header Ehbp-Response-Nonce: hex(32 random bytes);
             secret = Export("ehbp response", 32); prk = Extract(enc || nonce, secret);
             key = Expand(prk, "key", 32); base = Expand(prk, "nonce", 12);
             frame i = u32 BE length || Seal(key, base XOR i, "", chunk)
    stale key  422 application/problem+json, type urn:ietf:params:ehbp:error:key-config
Known weaknesses, kept for compatibility: status and headers travel in the clear, so a
man in the middle can change the status of a sealed answer (the client refuses a
non-200 status unless the sealed body is an error object), and there is no
authenticated end of stream, so a response cut at a frame boundary cannot be told from
a complete one. A response with no frame at all is refused. Our own dialects (OHTTP,
Continuum, Atoma with its sequence numbers) do not share these.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from typing import Any

from enclave import discovery
from enclave.dialect import (
    NO_STORE,
    ClientDialect,
    ControlRoute,
    EngineRoute,
    Headers,
    InnerHead,
    InnerRequest,
    InnerResponse,
    OuterRequest,
    OuterResponse,
    StreamStart,
    plain_refusal,
    refusal,
)
from enclave.engine import MODELS, PROMPT_ROUTES
from enclave.errors import (
    DecryptError,
    MessageTooLargeError,
    RequestRefused,
    UnauthenticatedAnswer,
    UnknownKeyError,
)
from enclave.http_fields import field_value
from enclave.keys import HpkeKeyPair, KeyRing
from enclave.ohttp.keyconfig import KeyConfig, KeyConfigError
from enclave.ohttp.protocol import (
    KEM_X25519_HKDF_SHA256,
    KEYS_MEDIA_TYPE,
    Aead,
    Kdf,
    SymmetricSuite,
)
from enclave.ohttp.suites import aead_cipher, hkdf_expand, hkdf_extract, hpke_suite
from enclave.plugin import ClientSetup, DialectSetup
from enclave.wire_errors import ErrorCode, code_of

KEYS_PATH = "/.well-known/hpke-keys"
ENCAPSULATED_KEY_HEADER = "Ehbp-Encapsulated-Key"
RESPONSE_NONCE_HEADER = "Ehbp-Response-Nonce"
REQUEST_INFO = b"ehbp request"
RESPONSE_EXPORT_LABEL = b"ehbp response"
KEY_CONFIG_PROBLEM_TYPE = "urn:ietf:params:ehbp:error:key-config"
KEY_ID = 0
SUITE = SymmetricSuite(Kdf.HKDF_SHA256, Aead.AES_256_GCM)
RESPONSE_NONCE_SIZE = 32
SECRET_SIZE = 32
ENC_SIZE = 32
# One frame is one SSE event or one request body piece.
MAX_FRAME_SIZE = 1 << 20


def key_config(key: HpkeKeyPair) -> KeyConfig:
    """How EHBP publishes the enclave's current key: key_id 0, one suite."""
    return KeyConfig(KEY_ID, KEM_X25519_HKDF_SHA256, key.public_key, (SUITE,))


def frame(ciphertext: bytes) -> bytes:
    return struct.pack(">I", len(ciphertext)) + ciphertext


class FrameSplitter:
    """`u32 BE length || bytes` frames out of a byte stream, bounded."""

    def __init__(self, max_frame: int = MAX_FRAME_SIZE + 16) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def push(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            (size,) = struct.unpack_from(">I", self._buf)
            if size > self._max:
                raise MessageTooLargeError()
            if len(self._buf) < 4 + size:
                break
            out.append(bytes(self._buf[4:4 + size]))
            del self._buf[:4 + size]
        return out

    def finish(self) -> None:
        if self._buf:
            raise DecryptError()  # a partial frame


# --- responses ----------------------------------------------------------------------------

class _FrameCipher:
    def __init__(self, context: Any, enc: bytes, nonce: bytes) -> None:
        secret = context.export(RESPONSE_EXPORT_LABEL, SECRET_SIZE)
        prk = hkdf_extract(enc + nonce, secret)
        self._aead = aead_cipher(SUITE.aead, hkdf_expand(prk, b"key", 32))
        self._base = int.from_bytes(hkdf_expand(prk, b"nonce", 12), "big")
        self._counter = 0

    def _nonce(self) -> bytes:
        # i occupies the low 8 bytes, big-endian, XORed into the 12-byte base.
        nonce = (self._base ^ self._counter).to_bytes(12, "big")
        self._counter += 1
        return nonce

    def seal(self, plaintext: bytes) -> bytes:
        return frame(self._aead.encrypt(self._nonce(), plaintext, b""))

    def open(self, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(self._nonce(), ciphertext, b"")
        except Exception:  # noqa: BLE001
            raise DecryptError() from None


class FrameSealer:
    """Server side: `nonce_header` goes in Ehbp-Response-Nonce; `seal(chunk)` per chunk."""

    def __init__(self, context: Any, enc: bytes, *, nonce: bytes | None = None) -> None:
        self.nonce = os.urandom(RESPONSE_NONCE_SIZE) if nonce is None else nonce
        self._cipher = _FrameCipher(context, enc, self.nonce)

    @property
    def nonce_header(self) -> str:
        return self.nonce.hex()

    def seal(self, plaintext: bytes) -> bytes:
        return self._cipher.seal(plaintext)


class FrameOpener:
    """Client side: opens response frames as they arrive."""

    def __init__(self, context: Any, enc: bytes, nonce_header: str) -> None:
        try:
            nonce = bytes.fromhex(nonce_header)
        except ValueError:
            raise DecryptError() from None
        if len(nonce) != RESPONSE_NONCE_SIZE:
            raise DecryptError()
        self._cipher = _FrameCipher(context, enc, nonce)
        self._frames = FrameSplitter()

    def push(self, data: bytes) -> list[bytes]:
        return [self._cipher.open(ct) for ct in self._frames.push(data)]

    def finish(self) -> None:
        self._frames.finish()


# --- requests -----------------------------------------------------------------------------

class RequestSealer:
    """Client side: `encapsulated_key_header` goes in Ehbp-Encapsulated-Key."""

    def __init__(self, config: KeyConfig) -> None:
        if not config.supports(SUITE):
            raise UnknownKeyError()
        hpke = hpke_suite(SUITE)
        self._enc, self._context = hpke.create_sender_context(
            hpke.kem.deserialize_public_key(config.public_key), REQUEST_INFO)

    @property
    def encapsulated_key_header(self) -> str:
        return bytes(self._enc).hex()

    def seal(self, plaintext: bytes) -> bytes:
        ciphertext: bytes = self._context.seal(plaintext, b"")
        return frame(ciphertext)

    def response_opener(self, nonce_header: str) -> FrameOpener:
        return FrameOpener(self._context, self._enc, nonce_header)


def open_request(keyring: KeyRing, encapsulated_key: str, body: bytes
                 ) -> tuple[bytes, FrameSealer]:
    """Server side: the plaintext body, and the sealer for its response.

    The request names no key id, so each key the gateway still honours is tried; a body
    that opens under none of them is a stale key configuration (`UnknownKeyError`), the
    answer EHBP clients act on by refetching keys.
    """
    try:
        enc = bytes.fromhex(encapsulated_key)
    except ValueError:
        raise DecryptError() from None
    if len(enc) != ENC_SIZE:
        raise DecryptError()
    frames = FrameSplitter()
    ciphertexts = frames.push(body)
    frames.finish()
    for key in keyring.honoured_keys():
        try:
            context = hpke_suite(SUITE).create_recipient_context(enc, key.private_key,
                                                                 REQUEST_INFO)
            plaintext = b"".join(context.open(ct, b"") for ct in ciphertexts)
        except Exception:  # noqa: BLE001 - try the next key; opaque by design
            continue
        return plaintext, FrameSealer(context, enc)
    raise UnknownKeyError()


# --- the dialect -------------------------------------------------------------------------

NAME = "ehbp"


class EhbpResponder:
    """Seals the answer to one EHBP request: one frame per whole body or streamed chunk."""

    streams = True

    def __init__(self, sealer: FrameSealer) -> None:
        self._sealer = sealer

    def _headers(self, content_type: str) -> Headers:
        return (("content-type", content_type),
                (RESPONSE_NONCE_HEADER.lower(), self._sealer.nonce_header), *NO_STORE)

    def whole(self, status: int, content_type: str, body: bytes) -> OuterResponse:
        return OuterResponse(status, self._headers(content_type), self._sealer.seal(body))

    def error(self, status: int, error: bytes) -> OuterResponse:
        return self.whole(status, "application/json", error)

    def start(self, status: int, content_type: str) -> StreamStart:
        return StreamStart(status, self._headers(content_type))

    def chunk(self, events: bytes) -> bytes:
        return self._sealer.seal(events)

    def end(self) -> bytes:
        return b""


def server(setup: DialectSetup) -> EhbpServer:
    return EhbpServer(setup.keyring)


class EhbpServer:
    """The gateway side: any request that carries `Ehbp-Encapsulated-Key`."""

    name = NAME
    end_authenticated = False  # EHBP's design; see the module docstring

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    def accepts(self, request: OuterRequest) -> bool:
        return request.header(ENCAPSULATED_KEY_HEADER) is not None

    def published_keys(self) -> dict[str, bytes]:
        return {"ehbp": key_config(self._keyring.current()).encode()}

    def engine_routes(self) -> tuple[EngineRoute, ...]:
        return tuple(EngineRoute(*route) for route in (MODELS, *PROMPT_ROUTES))

    def control_routes(self) -> tuple[ControlRoute, ...]:
        return (ControlRoute("GET", KEYS_PATH, lambda call: self.key_configs()),)

    def key_configs(self) -> OuterResponse:
        """`GET /.well-known/hpke-keys`."""
        return OuterResponse(200, (("content-type", KEYS_MEDIA_TYPE),
                                   ("cache-control", "max-age=300")),
                             self.published_keys()["ehbp"])

    def open(self, request: OuterRequest) -> tuple[InnerRequest, EhbpResponder]:
        encapsulated = request.header(ENCAPSULATED_KEY_HEADER) or ""
        plaintext, sealer = open_request(self._keyring, encapsulated, request.body)
        return (InnerRequest(request.method, request.path, plaintext,
                             replay_id=bytes.fromhex(encapsulated)), EhbpResponder(sealer))

    def refuse(self, error: RequestRefused) -> OuterResponse:
        return plain_refusal(error, problem_type=KEY_CONFIG_PROBLEM_TYPE
                             if error.code == ErrorCode.UNKNOWN_KEY else None)


class EhbpOpener:
    """Opens the answer to one EHBP request; a sealed body needs at least one frame."""

    def __init__(self, sealer: RequestSealer) -> None:
        self._sealer = sealer
        self._opener: FrameOpener | None = None
        self._head: InnerHead | None = None
        self._frames = 0

    def begin(self, status: int, headers: Headers) -> bool:
        """A sealed 200 streams; a sealed error is read whole (`whole` checks it)."""
        return status == 200 and self._sealed(status, headers)

    def _sealed(self, status: int, headers: Headers) -> bool:
        nonce = field_value(headers, RESPONSE_NONCE_HEADER)
        if nonce is None:
            return False
        try:
            self._opener = self._sealer.response_opener(nonce)
        except RequestRefused as exc:
            raise UnauthenticatedAnswer("the gateway's answer failed to open") from exc
        self._head = InnerHead(status, field_value(headers, "content-type") or "application/json")
        return True

    def push(self, data: bytes) -> list[InnerHead | bytes]:
        assert self._opener is not None, "begin() first"
        out: list[InnerHead | bytes] = []
        if self._head is not None:
            out.append(self._head)
            self._head = None
        try:
            frames = self._opener.push(data)
        except RequestRefused as exc:
            raise UnauthenticatedAnswer("the gateway's answer failed to open (tampered)"
                                        ) from exc
        self._frames += len(frames)
        return out + list(frames)

    def finish(self) -> list[InnerHead | bytes]:
        out = self.push(b"")
        assert self._opener is not None
        try:
            self._opener.finish()
        except RequestRefused as exc:
            raise UnauthenticatedAnswer("the gateway's answer was cut inside a frame"
                                        ) from exc
        if not self._frames:
            raise UnauthenticatedAnswer("the gateway's answer carries no frame")
        return out

    def whole(self, response: OuterResponse) -> InnerResponse:
        if not self._sealed(response.status, response.headers):
            raise refusal(response)
        events = [*self.push(response.body), *self.finish()]
        head = next(e for e in events if isinstance(e, InnerHead))
        body = b"".join(e for e in events if isinstance(e, bytes))
        if head.status != 200 and code_of(body) is None:
            raise UnauthenticatedAnswer(f"the gateway's answer came with HTTP {head.status} "
                                        "but is not a sealed error")
        return InnerResponse(head.status, head.content_type, body)


class EhbpClient:
    """The client side, for one verified key configuration."""

    name = NAME

    def __init__(self, config: KeyConfig) -> None:
        self.config = config

    def seal(self, request: InnerRequest, *, stream: bool) -> tuple[OuterRequest, EhbpOpener]:
        sealer = RequestSealer(self.config)
        headers = ((ENCAPSULATED_KEY_HEADER.lower(), sealer.encapsulated_key_header),
                   ("content-type", "application/json"))
        body = sealer.seal(request.body) if request.body else b""
        return OuterRequest(request.method, request.path, headers, body), EhbpOpener(sealer)


class EhbpKeys:
    """Client side: one bare key configuration at `KEYS_PATH` (no list, one suite),
    bound as `ehbp`."""

    name = NAME
    sealed_models = True

    def lookups(self) -> tuple[OuterRequest, ...]:
        return (OuterRequest("GET", KEYS_PATH),)

    def candidate(self, index: int, response: OuterResponse) -> EhbpClient:
        try:
            config = KeyConfig.decode(discovery.answered(response))
        except KeyConfigError as exc:
            raise UnauthenticatedAnswer("malformed key configuration") from exc
        return EhbpClient(discovery.first([config], lambda c: c.supports(SUITE)))

    def vouched(self, candidate: Any, bound: Mapping[str, bytes]) -> bool:
        return isinstance(candidate, EhbpClient) and candidate.config.encode() == \
            bound.get("ehbp")

    def ready(self, candidate: Any) -> EhbpClient:
        assert isinstance(candidate, EhbpClient)
        return candidate

    def expired(self, dialect: ClientDialect) -> bool:
        return False


def client(setup: ClientSetup) -> EhbpKeys:
    return EhbpKeys()
