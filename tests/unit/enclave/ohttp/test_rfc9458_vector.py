"""RFC 9458 Appendix A, reproduced byte for byte, on both sides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave.errors import DecryptError, UnknownKeyError
from enclave.keys import HpkeKeyPair, KeyRing
from enclave.ohttp import ClientRequest, KeyConfig, decapsulate_request
from enclave.ohttp.protocol import Aead, Kdf, SymmetricSuite

VECTOR = Path(__file__).resolve().parents[4] / "test-vectors/ohttp/rfc9458-appendix-a.json"
SUITE = SymmetricSuite(Kdf.HKDF_SHA256, Aead.AES_128_GCM)


@pytest.fixture(scope="module")
def v() -> dict[str, bytes]:
    raw = json.loads(VECTOR.read_text())
    return {k: bytes.fromhex(val) for k, val in raw.items()
            if all(c in "0123456789abcdef" for c in val)}


@pytest.fixture
def keyring(v) -> KeyRing:
    key = HpkeKeyPair.generate(1, now=0.0, private_bytes=v["gateway_private_key_skR"])
    return KeyRing(initial_key=key, clock=lambda: 0.0)


def test_key_config_encodes_as_in_the_rfc(v) -> None:
    config = KeyConfig.decode(v["key_config"])
    assert config.key_id == 1
    assert config.public_key == v["gateway_public_key"]
    assert config.suites == (SUITE, SymmetricSuite(Kdf.HKDF_SHA256, Aead.CHACHA20_POLY1305))
    assert config.encode() == v["key_config"]


def test_gateway_public_key_derives_from_private(keyring, v) -> None:
    assert keyring.current().public_key == v["gateway_public_key"]


def test_client_encapsulates_the_request_byte_for_byte(v) -> None:
    request = ClientRequest(KeyConfig.decode(v["key_config"]), v["bhttp_request"], suite=SUITE,
                            ephemeral_private_key=v["ephemeral_private_key_skE"])
    assert request.data == v["encapsulated_request"]


def test_gateway_decapsulates_and_seals_the_response_byte_for_byte(keyring, v) -> None:
    request, sealer = decapsulate_request(keyring, v["encapsulated_request"])
    assert request == v["bhttp_request"]
    sealed = sealer.seal(v["bhttp_response"], response_nonce=v["response_nonce"])
    assert sealed == v["encapsulated_response"]


def test_client_opens_the_rfc_response(v) -> None:
    request = ClientRequest(KeyConfig.decode(v["key_config"]), v["bhttp_request"], suite=SUITE,
                            ephemeral_private_key=v["ephemeral_private_key_skE"])
    assert request.open_response(v["encapsulated_response"]) == v["bhttp_response"]


@pytest.mark.parametrize(("change", "error"), [
    (lambda b: b[:-1], DecryptError),                      # truncated
    (lambda b: b + b"\x00", DecryptError),                 # extended by a byte
    (lambda b: b[:20], DecryptError),                      # cut inside enc
    (lambda b: b"\x02" + b[1:], UnknownKeyError),          # another key id
    (lambda b: b[:5] + b"\x00\x09" + b[7:], UnknownKeyError),  # an AEAD not offered
], ids=["truncated", "extended", "cut-in-enc", "wrong-key-id", "unknown-aead"])
def test_the_altered_published_request_is_refused_at_its_stage(keyring, v, change,
                                                               error) -> None:
    with pytest.raises(error):
        decapsulate_request(keyring, change(v["encapsulated_request"]))


@pytest.mark.parametrize("change", [lambda b: b[:-1], lambda b: b + b"\x00",
                                    lambda b: b[:16]], ids=["truncated", "extended", "nonce-only"])
def test_the_altered_published_response_is_refused(v, change) -> None:
    request = ClientRequest(KeyConfig.decode(v["key_config"]), v["bhttp_request"], suite=SUITE,
                            ephemeral_private_key=v["ephemeral_private_key_skE"])
    with pytest.raises(DecryptError):
        request.open_response(change(v["encapsulated_response"]))
