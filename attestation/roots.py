"""Pinned trust roots, by SHA-256 of the certificate's DER encoding.

Production roots are the vendors' published roots. A root is trusted only if its
fingerprint is in the set the caller passes; the simulated test roots are never in the
production sets and must be named explicitly.
"""

from __future__ import annotations

# AMD SEV-SNP ARKs (RSA-4096, self-signed), as published by AMD's KDS.
AMD_ARK_MILAN = "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"
AMD_ARK_GENOA = "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1"
# Intel SGX Root CA (ECDSA P-256), root of every DCAP PCK chain.
INTEL_SGX_ROOT_CA = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
# NVIDIA Device Identity CA (ECDSA P-384), root of every H100 device chain.
NVIDIA_DEVICE_IDENTITY_CA = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"

PRODUCTION_AMD_ARKS = frozenset({AMD_ARK_MILAN, AMD_ARK_GENOA})
PRODUCTION_INTEL_ROOTS = frozenset({INTEL_SGX_ROOT_CA})
PRODUCTION_NVIDIA_ROOTS = frozenset({NVIDIA_DEVICE_IDENTITY_CA})
