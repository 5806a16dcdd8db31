"""The simulated TEE: each registered platform played on a machine without confidential
hardware (laptops, CI), byte-exact in the real formats and signed by a PKI made on this
machine, so the real verifiers run on it and no production root vouches for it.

    pki        the test PKI (AMD ARK/ASK/VCEK, NVIDIA device chain) and SNP and GPU reports
    intel      the Intel half: TDX quotes and DCAP collateral
    twins      one simulated twin per CPU platform, and the simulated providers
    release    a release key and signed statement for the default workload
"""

from attestation.simulated.pki import (
    PKI_FILE,
    SIMULATED_DRIVER_VERSION,
    SIMULATED_GUEST_POLICY,
    SIMULATED_TCB,
    SIMULATED_VBIOS_VERSION,
    SimulatedPki,
    gpu_measurement,
    gpu_report,
    simulated_measurement,
    snp_report,
)

__all__ = ["PKI_FILE", "SIMULATED_DRIVER_VERSION", "SIMULATED_GUEST_POLICY", "SIMULATED_TCB",
           "SIMULATED_VBIOS_VERSION", "SimulatedPki", "gpu_measurement", "gpu_report",
           "simulated_measurement", "snp_report"]
