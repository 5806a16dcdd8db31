"""NVIDIA Hopper (H100, H200) as a Cloister GPU architecture: SPDM 1.1 measurement
reports signed by the device's key, to the pinned NVIDIA Device Identity CA
(`attestation.gpu`), none of its certificates revoked by NVIDIA's OCSP responder
(`attestation.ocsp`, the responses carried as collateral)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from attestation import gpu
from attestation.platform import GpuClaims
from attestation.roots import PRODUCTION_NVIDIA_ROOTS


class Hopper:
    name = "hopper"
    vendor = "nvidia"
    production_roots = PRODUCTION_NVIDIA_ROOTS

    def recognises(self, report: bytes) -> bool:
        return report[:2] == bytes([gpu.SPDM_1_1, gpu.GET_MEASUREMENTS])

    def verify(self, report: bytes, chain_pem: bytes, *, expected_nonce: bytes,
               roots: frozenset[str], now: dt.datetime, ocsp: Sequence[bytes],
               check_revocation: bool = True) -> GpuClaims:
        verified = gpu.verify_gpu_report(report, chain_pem, expected_nonce=expected_nonce,
                                         trusted_roots=roots, now=now)
        if check_revocation:
            from attestation import ocsp as revocation
            from attestation.x509chain import load_pem_chain

            revocation.check_chain(load_pem_chain(chain_pem), ocsp, now=now)
        return GpuClaims(verified.driver_version, verified.vbios_version, verified.mode,
                         {i: v.hex() for i, v in verified.measurements.items()})


HOPPER = Hopper()
