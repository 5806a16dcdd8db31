"""Fuzz targets: every parser and opener a stranger's bytes reach, sans-IO, each a
function of one byte string that may refuse the input only with the errors the gateway
maps to a stable code. Anything else is a finding. Shared by `benchmarks/fuzz.py`
(coverage-guided, atheris, at length) and `tests/unit/enclave/test_fuzz.py` (briefly, in
`make test`).

Each target comes with valid seeds made by the real client side, so that mutations reach
past the first length check into the crypto and the inner parsers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from attestation.errors import VerificationError
from attestation.evidence import EvidenceDocument
from enclave import continuum, ehbp, sse
from enclave.atoma import AtomaClient, AtomaServer, NodeSigner
from enclave.continuum import ContinuumClient, ContinuumServer
from enclave.continuum.fields import SecretStore
from enclave.dialect import InnerRequest, OuterRequest
from enclave.errors import RequestRefused
from enclave.keys import KeyRing
from enclave.ohttp import KeyConfig, bhttp
from enclave.ohttp.dialect import OhttpClient, OhttpServer
from enclave.ohttp.keyconfig import KeyConfigError

# What a target may raise: a refusal with a stable code (and, for the evidence parsers,
# a verification error with a stable reason). Anything else is unexpected.
EXPECTED: tuple[type[BaseException], ...] = (RequestRefused, KeyConfigError,
                                             VerificationError)
CHAT = json.dumps({"model": "m", "max_tokens": 4, "stream": True,
                   "messages": [{"role": "user", "content": "hello"}]}).encode()


@dataclass
class Target:
    name: str
    run: Callable[[bytes], object]
    seeds: list[bytes] = field(default_factory=list)


def _ring() -> KeyRing:
    return KeyRing()


def ohttp_targets() -> list[Target]:
    ring = _ring()
    server = OhttpServer(ring)
    client = OhttpClient(ring.current().key_config())
    inner = InnerRequest("POST", "/v1/chat/completions", CHAT)
    single = client.seal(inner, stream=False)[0]
    chunked = client.seal(inner, stream=True)[0]

    def opener(headers: tuple[tuple[str, str], ...]) -> Callable[[bytes], object]:
        return lambda data: server.open(OuterRequest("POST", "/", headers, data))

    return [Target("ohttp", opener(single.headers), [single.body]),
            Target("ohttp-chunked", opener(chunked.headers), [chunked.body]),
            Target("bhttp", bhttp.decode_request, [bhttp.encode_request(bhttp.Request(
                "POST", "https", "gw", "/v1/chat/completions",
                (("content-type", "application/json"),), CHAT))]),
            Target("key-config", KeyConfig.decode, [ring.current().key_config().encode()])]


def ehbp_targets() -> list[Target]:
    ring = _ring()
    server = ehbp.EhbpServer(ring)
    outer = ehbp.EhbpClient(ehbp.key_config(ring.current())).seal(
        InnerRequest("POST", "/v1/chat/completions", CHAT), stream=True)[0]
    enc = bytes.fromhex(dict(outer.headers)[ehbp.ENCAPSULATED_KEY_HEADER.lower()])

    def open_(data: bytes) -> object:  # the first 32 bytes are the encapsulated key
        return server.open(OuterRequest("POST", "/v1/chat/completions", (
            (ehbp.ENCAPSULATED_KEY_HEADER.lower(), data[:32].hex()),), data[32:]))

    def frames(data: bytes) -> object:
        splitter = ehbp.FrameSplitter()
        splitter.push(data)
        splitter.finish()
        return None

    return [Target("ehbp", open_, [enc + outer.body]),
            Target("ehbp-frames", frames, [outer.body])]


def atoma_targets() -> list[Target]:
    ring, signer = _ring(), NodeSigner()
    server = AtomaServer(ring, signer)
    client = AtomaClient(ring.current().public_key, signer.public_key)
    outer = client.seal(InnerRequest("POST", "/v1/chat/completions", CHAT), stream=True)[0]
    return [Target("atoma", lambda data: server.open(OuterRequest(
        "POST", "/v1/confidential/chat/completions", (), data)), [outer.body])]


def continuum_targets() -> list[Target]:
    ring = _ring()
    server = ContinuumServer(ring, SecretStore())
    secret = os.urandom(continuum.SECRET_SIZE)
    registration = json.dumps(continuum.seal_secret(ring.current().key_config(), secret))
    answer = json.loads(server.register_secret(OuterRequest(
        "POST", continuum.SECRETS_PATH, (), registration.encode())).body)
    client = ContinuumClient(answer["secret_id"], secret)
    outer = client.seal(InnerRequest("POST", "/v1/chat/completions", CHAT), stream=True)[0]
    return [
        Target("continuum", lambda data: server.open(OuterRequest(
            "POST", "/v1/chat/completions", (), data)), [outer.body]),
        Target("continuum-secret", lambda data: server.register_secret(OuterRequest(
            "POST", continuum.SECRETS_PATH, (), data)), [registration.encode()]),
    ]


def sse_targets() -> list[Target]:
    def events(data: bytes) -> object:
        return sse.EventReader().push(data)
    return [Target("sse", events, [b'data: {"a": 1}\n\ndata: [DONE]\n\n'])]


def evidence_targets() -> list[Target]:
    from attestation.gpu import GpuReport
    from attestation.snp import SnpReport
    from attestation.tdx import TdxQuote

    seeds = _vector_seeds()
    return [Target("evidence-document", EvidenceDocument.from_json, seeds.get("json", [])),
            Target("snp-report", SnpReport.parse, seeds.get("snp", [])),
            Target("tdx-quote", TdxQuote.parse, seeds.get("tdx", [])),
            Target("gpu-report", GpuReport.parse, seeds.get("gpu", []))]


VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"


def _vector_seeds() -> dict[str, list[bytes]]:
    """Real SNP, TDX and H100 evidence from the shared vectors (none where absent)."""
    def read(name: str) -> list[bytes]:
        path = VECTORS / name
        if not path.exists():
            return []
        raw = path.read_bytes()
        return [bytes.fromhex(raw.decode().strip())] if name.endswith(".hex") else [raw]

    snp, gpu = read("snp/milan-report.bin"), read("gpu/h100-report.hex")
    document = EvidenceDocument(
        platform="sev-snp", nonce=b"\x01" * 32, generated_at=0, expires_at=1,
        keys={"ohttp": b"k"}, workload={"format": 2}, workload_digest=b"\x02" * 32,
        report=(snp or [b""])[0], aux=b"", gpus=tuple((g, b"") for g in gpu))
    return {"snp": snp, "gpu": gpu, "tdx": read("tdx/quote-v4-spr.bin")
            + read("tdx/quote-v5.bin"), "json": [document.to_json()]}


def all_targets() -> list[Target]:
    return [*ohttp_targets(), *ehbp_targets(), *atoma_targets(), *continuum_targets(),
            *sse_targets(), *evidence_targets()]
