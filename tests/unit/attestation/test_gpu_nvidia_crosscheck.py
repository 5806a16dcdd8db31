"""Cloister's GPU verifier against NVIDIA's own (`nv-local-gpu-verifier`, run unchanged in
its own environment by `tests/nvidia_gpu_verdict.py`) on the real H100 evidence of
`test-vectors/gpu/`: both accept it, and both refuse each mutation (a flipped bit in the
request nonce, a measurement, the opaque data, the signature; a byte changed in a
certificate of the chain; the chain cut short). Both check the chain and the report's
signature; the nonce a client asked for, the firmware IDs and RIMs are checked elsewhere
(NVIDIA's against its online services, Cloister's against release values)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest

from attestation.errors import VerificationError
from attestation.gpu import verify_gpu_report
from attestation.roots import PRODUCTION_NVIDIA_ROOTS

pytestmark = pytest.mark.slow  # outside processes or a browser: `-m "not slow"` skips it

ROOT = Path(__file__).resolve().parents[3]
NVIDIA_PYTHON = ROOT / ".venv-nvidia" / "bin" / "python"
VECTORS = ROOT / "test-vectors" / "gpu"


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def _cases() -> dict[str, tuple[bytes, bytes]]:
    raw = bytes.fromhex((VECTORS / "h100-report.hex").read_text().strip())
    chain = (VECTORS / "h100-cert-chain.pem").read_bytes()
    blocks = chain.split(b"-----END CERTIFICATE-----")
    second = blocks[1]  # a byte inside the second certificate's base64
    at = second.index(b"\n", second.index(b"BEGIN")) + 200
    altered = second[:at] + (b"A" if second[at:at + 1] != b"A" else b"B") + second[at + 1:]
    return {
        "as published": (raw, chain),
        "request nonce": (_flip(raw, 10), chain),
        "measurement": (_flip(raw, 37 + 8 + 40), chain),
        "opaque data": (_flip(raw, len(raw) - 200), chain),
        "signature": (_flip(raw, len(raw) - 50), chain),
        "certificate byte": (raw, b"-----END CERTIFICATE-----".join(
            [blocks[0], altered, *blocks[2:]])),
        "chain cut short": (raw, b"-----END CERTIFICATE-----".join(blocks[1:])),
    }


def _ours(raw: bytes, chain: bytes, nonce: bytes) -> bool:
    try:
        verify_gpu_report(raw, chain, expected_nonce=nonce, trusted_roots=PRODUCTION_NVIDIA_ROOTS,
                          now=dt.datetime.now(dt.UTC))
    except VerificationError:
        return False
    return True


def test_cloister_and_nvidia_agree_on_the_real_report_and_every_mutation(tmp_path) -> None:
    cases = _cases()
    nvidia = subprocess.run(
        [str(NVIDIA_PYTHON), str(ROOT / "tests" / "nvidia_gpu_verdict.py")],
        input=json.dumps([{"report_hex": r.hex(), "chain_pem": c.decode()}
                          for r, c in cases.values()]),
        capture_output=True, text=True, timeout=120, cwd=tmp_path)  # its verifier.log
    assert nvidia.returncode == 0, nvidia.stderr[-2000:]
    theirs = dict(zip(cases, json.loads(nvidia.stdout.strip().splitlines()[-1]), strict=True))
    # the nonce Cloister expects is the one the client sent: the published report's
    nonce = cases["as published"][0][4:36]
    ours = {name: _ours(raw, chain, nonce) for name, (raw, chain) in cases.items()}
    assert ours == theirs
    assert [name for name, accepted in ours.items() if accepted] == ["as published"]
