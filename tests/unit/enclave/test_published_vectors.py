"""Cloister's codecs against vectors their specifications' authors and other
implementations published (`test-vectors/`, copied byte for byte from the shared set; its
README names each file's source, commit and licence): Binary HTTP (RFC 9292), chunked
OHTTP (draft-ietf-ohai-chunked-ohttp-08 Appendix A), HPKE for every suite the OHTTP key
configuration offers (RFC 9180 Appendix A), and Tinfoil EHBP's key derivation and
response decryption. RFC 9458 Appendix A: `tests/unit/ohttp/test_rfc9458_vector.py`;
SNP and TDX evidence: `tests/unit/attestation/`. One wrong byte fails."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave.ohttp.bhttp import (
    BinaryHttpError,
    Request,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from enclave.ohttp.bhttp import Response as BinaryResponse

VECTORS = Path(__file__).resolve().parents[3] / "test-vectors"


def _load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


def test_every_vector_file_is_the_published_one() -> None:
    """`SHA256SUMS` was written when the files were copied from the shared set."""
    listed = {}
    for line in (VECTORS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.removeprefix("./")] = digest
    on_disk = {str(p.relative_to(VECTORS)) for p in VECTORS.rglob("*") if p.is_file()}
    assert on_disk - {"README.md", "SHA256SUMS"} == set(listed)
    for name, digest in listed.items():
        assert hashlib.sha256((VECTORS / name).read_bytes()).hexdigest() == digest, name


# --- Binary HTTP (RFC 9292) ---------------------------------------------------------------

BHTTP = _load("bhttp/rfc9292-examples.json")


def _fields(pairs: list[list[str]]) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for name, value in pairs)


def _decoded(vector: dict[str, Any], data: bytes) -> Request | BinaryResponse:
    return (decode_request if vector["kind"] == "request" else decode_response)(data)


def _expected(vector: dict[str, Any]) -> dict[str, Any]:
    d = vector["decoded"]
    out = {"headers": _fields(d["header_fields"]), "trailers": _fields(d["trailer_fields"]),
           "content": bytes.fromhex(d["content_hex"])}
    if vector["kind"] == "request":
        out.update(method=d["method"], scheme=d["scheme"], authority=d["authority"],
                   path=d["path"])
    else:
        out.update(status=d["status"], informational=tuple(
            (i["status"], _fields(i["header_fields"])) for i in d["informational"]))
    return out


@pytest.mark.parametrize("vector", BHTTP["vectors"],
                         ids=[f"{v['kind']}-{v['mode']}-{v['length']}" for v in BHTTP["vectors"]])
def test_binary_http_messages_decode_to_the_published_fields(vector) -> None:
    data = bytes.fromhex(vector["hex"])
    message = _decoded(vector, data)
    for name, value in _expected(vector).items():
        assert getattr(message, name) == value, name
    cut = vector.get("removable_trailing_bytes") or 0
    if cut:  # trailing parts a decoder must take as absent, and not one byte more
        assert _decoded(vector, data[:-cut]) == message
        with pytest.raises(BinaryHttpError):
            _decoded(vector, data[:-cut - 1])
    if vector["mode"] == "known-length" and not vector["padding_bytes"]:
        encode = encode_request if vector["kind"] == "request" else encode_response
        encoded = encode(message)  # type: ignore[arg-type]
        # the published bytes, or their form with the empty trailing sections left out
        # (RFC 9292 section 3.8: RFC 9458's examples are printed that way)
        assert encoded[:len(data)] == data and not encoded[len(data):].strip(b"\x00")


@pytest.mark.parametrize("vector", BHTTP["invalid"], ids=[v["name"] for v in BHTTP["invalid"]])
def test_malformed_binary_http_is_refused(vector) -> None:
    with pytest.raises(BinaryHttpError):
        decode_request(bytes.fromhex(vector["hex"]))


# --- chunked OHTTP (draft-ietf-ohai-chunked-ohttp-08 Appendix A) --------------------------

CHUNKED = {k: v for k, v in _load(
    "chunked-ohttp/draft-ietf-ohai-chunked-ohttp-08-appendix-a.json").items()}


def _hex(name: str) -> bytes:
    return bytes.fromhex(CHUNKED[name])


def _chunked_keyring():
    from enclave.keys import HpkeKeyPair, KeyRing

    key = HpkeKeyPair.generate(1, now=0.0, private_bytes=_hex("gateway_private_key_skR"))
    return KeyRing(initial_key=key, clock=lambda: 0.0)


def test_chunked_ohttp_request_is_sealed_byte_for_byte() -> None:
    from enclave.ohttp import KeyConfig
    from enclave.ohttp.chunked import ChunkedRequestSealer

    sealer = ChunkedRequestSealer(KeyConfig.decode(_hex("key_config")),
                                  ephemeral_private_key=_hex("ephemeral_private_key_skE"))
    sealed = sealer.header
    for chunk in CHUNKED["request_chunks"]:
        plaintext = bytes.fromhex(chunk["plaintext"])
        sealed += sealer.seal_final(plaintext) if chunk["final"] else sealer.seal_chunk(
            plaintext)
    assert sealed == _hex("encapsulated_request")


def test_chunked_ohttp_gateway_opens_the_request_and_seals_the_response_byte_for_byte(
        ) -> None:
    from enclave.ohttp.chunked import ChunkedRequestOpener

    opener = ChunkedRequestOpener(_chunked_keyring())
    parts = opener.push(_hex("encapsulated_request"))
    parts.append(opener.finish())
    assert b"".join(parts) == _hex("bhttp_request")
    sealer = opener.response_sealer(response_nonce=_hex("response_nonce"))
    sealed = sealer.start()
    for chunk in CHUNKED["response_chunks"]:
        plaintext = bytes.fromhex(chunk["plaintext"])
        sealed += sealer.seal_final(plaintext) if chunk["final"] else sealer.seal_chunk(
            plaintext)
    assert sealed == _hex("encapsulated_response")


def test_chunked_ohttp_client_opens_the_published_response() -> None:
    from enclave.ohttp import KeyConfig
    from enclave.ohttp.chunked import ChunkedRequestSealer

    sealer = ChunkedRequestSealer(KeyConfig.decode(_hex("key_config")),
                                  ephemeral_private_key=_hex("ephemeral_private_key_skE"))
    for chunk in CHUNKED["request_chunks"]:  # the context's sequence as the example's
        plaintext = bytes.fromhex(chunk["plaintext"])
        sealer.seal_final(plaintext) if chunk["final"] else sealer.seal_chunk(plaintext)
    opener = sealer.response_opener()
    opened = opener.push(_hex("encapsulated_response"))
    opened.append(opener.finish())
    assert b"".join(opened) == _hex("bhttp_response")


# --- HPKE (RFC 9180 Appendix A): every suite the OHTTP key configuration offers -----------

HPKE = [v for v in _load("hpke-pq/rfc9180-x25519-hkdf-sha256-vectors.json") if v["mode"] == 0]


@pytest.mark.parametrize("vector", HPKE, ids=[f"aead-{v['aead_id']}" for v in HPKE])
def test_hpke_base_mode_for_each_offered_suite(vector) -> None:
    """Cloister's suites (`enclave.ohttp.suites.hpke_suite`) open every published
    ciphertext, export every published value and, from the published ephemeral key, make
    the published `enc` and ciphertexts."""
    from enclave.ohttp.protocol import Aead, Kdf, SymmetricSuite
    from enclave.ohttp.suites import hpke_suite

    h = bytes.fromhex
    suite = hpke_suite(SymmetricSuite(Kdf(vector["kdf_id"]), Aead(vector["aead_id"])))
    recipient = suite.create_recipient_context(
        h(vector["enc"]), suite.kem.deserialize_private_key(h(vector["skRm"])),
        info=h(vector["info"]))
    sender_enc, sender = suite.create_sender_context(
        suite.kem.deserialize_public_key(h(vector["pkRm"])), info=h(vector["info"]),
        eks=suite.kem.derive_key_pair(h(vector["ikmE"])))
    assert sender_enc == h(vector["enc"])
    for encryption in vector["encryptions"]:
        ct, aad, pt = h(encryption["ct"]), h(encryption["aad"]), h(encryption["pt"])
        assert sender.seal(pt, aad) == ct
        assert recipient.open(ct, aad) == pt
    for export in vector["exports"]:
        assert recipient.export(h(export["exporter_context"]), export["L"]) == h(
            export["exported_value"])


def test_the_vectors_cover_every_aead_cloister_offers() -> None:
    from enclave.ohttp.protocol import Aead

    assert {v["aead_id"] for v in HPKE} == {int(a) for a in Aead}


# --- Tinfoil EHBP ---------------------------------------------------------------------------

class _Exported:
    """A stand-in for an HPKE context whose export the vector gives (`exportedSecret`):
    the derivation after it is what is tested."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def export(self, label: bytes, size: int) -> bytes:
        assert (label, size) == (b"ehbp response", len(self._secret))
        return self._secret


def test_ehbp_response_keys_derive_as_published() -> None:
    from enclave.ehbp.frames import FrameSealer

    v = {k: bytes.fromhex(val) for k, val in _load("ehbp/derive.json").items()}
    sealer = FrameSealer(_Exported(v["exportedSecret"]), v["requestEnc"],
                         nonce=v["responseNonce"])
    frame = sealer.seal(b"any text")
    expected = AESGCM(v["derivedKey"]).encrypt(v["derivedNonceBase"], b"any text", b"")
    assert frame == len(expected).to_bytes(4, "big") + expected


def test_ehbp_response_is_sealed_and_opened_as_published() -> None:
    from enclave.ehbp.frames import FrameOpener, FrameSealer

    raw = _load("ehbp/response-decryption.json")
    v = {k: bytes.fromhex(val) for k, val in raw.items()}
    plaintext = v["plaintext"]
    assert plaintext == b"hello from test vector"
    sealer = FrameSealer(_Exported(v["exportedSecret"]), v["requestEnc"],
                         nonce=v["responseNonce"])
    assert sealer.seal(plaintext) == v["encryptedResponse"]
    opener = FrameOpener(_Exported(v["exportedSecret"]), v["requestEnc"],
                         v["responseNonce"].hex())
    assert opener.push(v["encryptedResponse"]) == [plaintext]


def test_ehbp_session_recovery_token_has_the_published_shape() -> None:
    token = _load("ehbp/session-recovery-token.json")
    assert set(token) == {"exportedSecret", "requestEnc"}
    assert all(value == value.lower() and bytes.fromhex(value) for value in token.values())


# --- the post-quantum hybrid (Continuum's secret exchange) --------------------------------

def test_continuum_s_hybrid_kem_is_x_wing_as_published() -> None:
    """Continuum's ML-KEM-768 + X25519 key (`enclave.continuum.pq`, `cryptography`'s
    HPKE) against the HPKE-PQ draft's X-Wing vector (0x647a): the published seed expands
    to the published public key, and the published `enc` decapsulates, under Cloister's
    key, to the published shared secret (a message sealed from that secret, in the suite
    Cloister uses, AES-128-GCM, opens). The draft's vector is ChaCha20-Poly1305; the key
    schedule from its shared secret reproduces its key and nonce (the check on this
    test's own schedule)."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from enclave.continuum.pq import HybridKey
    from tests.rfc9458_client import key_schedule

    vector = next(v for v in _load("hpke-pq/draft-ietf-hpke-pq-04-test-vectors.json")
                  if (v["kem_id"], v["kdf_id"]) == (0x647A, 1))
    h = bytes.fromhex
    expanded = hashlib.shake_256(h(vector["skRm"])).digest(96)
    key = HybridKey(mlkem_seed=expanded[:64], x25519_private=expanded[64:])
    assert key.public_bytes == h(vector["pkRm"])
    shared, info = h(vector["shared_secret"]), h(vector["info"])
    assert key_schedule(0x647A, 1, vector["aead_id"], shared, info, nk=32) == (
        h(vector["key"]), h(vector["base_nonce"]))
    first = vector["encryptions"][0]
    assert ChaCha20Poly1305(h(vector["key"])).decrypt(
        h(vector["base_nonce"]), h(first["ct"]), h(first["aad"])) == h(first["pt"])
    aes_key, aes_nonce = key_schedule(0x647A, 1, 1, shared, info, nk=16)
    sealed = AESGCM(aes_key).encrypt(aes_nonce, b"an inference secret", b"")
    assert key.open(h(vector["enc"]) + sealed, info) == b"an inference secret"
