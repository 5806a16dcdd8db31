from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from cryptography import x509

VECTORS = Path(__file__).resolve().parents[3] / "test-vectors"


@pytest.fixture(scope="session")
def vectors() -> Path:
    assert VECTORS.is_dir(), f"test vectors missing at {VECTORS}"
    return VECTORS


@pytest.fixture(scope="session")
def snp(vectors):
    with warnings.catch_warnings():  # the VCEK's serial number is 0: cryptography warns
        warnings.simplefilter("ignore")
        vcek = x509.load_der_x509_certificate((vectors / "snp/milan-vcek.der").read_bytes())
    ask, ark = x509.load_pem_x509_certificates((vectors / "snp/milan-ask-ark.pem").read_bytes())
    return (vectors / "snp/milan-report.bin").read_bytes(), vcek, ask, ark


def flip_bit(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)
