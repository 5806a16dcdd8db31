"""NVIDIA's own verdict on H100 evidence, from its published verifier
(`nv-local-gpu-verifier`, which pins old `cryptography` and `pyOpenSSL` and so runs in a
virtual environment of its own, `.venv-nvidia`, made by `make env`): the certificate
chain to NVIDIA's device root, then the SPDM report's signature by the chain's leaf.
Nothing of Cloister's is imported here. Reads a JSON list of cases on stdin
({"report_hex", "chain_pem"}), prints a JSON list of verdicts (true: NVIDIA accepts).

    .venv-nvidia/bin/python tests/nvidia_gpu_verdict.py < cases.json
"""

import hashlib
import json
import sys

from OpenSSL import crypto
from verifier.attestation import AttestationReport
from verifier.cc_admin_utils import CcAdminUtils
from verifier.config import BaseSettings, HopperSettings

SIGNATURE_LENGTH = 96  # ECDSA P-384, r || s


def verdict(report_hex: str, chain_pem: str) -> bool:
    settings = HopperSettings()
    try:
        pems = [p + "-----END CERTIFICATE-----\n"
                for p in chain_pem.split("-----END CERTIFICATE-----") if "BEGIN" in p]
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, p.strip().encode()) for p in pems]
        chained, _, _ = CcAdminUtils.verify_certificate_chain(
            chain, settings, BaseSettings.Certificate_Chain_Verification_Mode.GPU_ATTESTATION)
        if not chained:
            return False
        report = AttestationReport(bytes.fromhex(report_hex), settings)
        return bool(report.verify_signature(chain[0].to_cryptography(), SIGNATURE_LENGTH,
                                            hashlib.sha384))
    except Exception:  # noqa: BLE001 - any failure of NVIDIA's code is its refusal
        return False


if __name__ == "__main__":
    print(json.dumps([verdict(c["report_hex"], c["chain_pem"]) for c in json.load(sys.stdin)]))
