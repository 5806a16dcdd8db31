"""AMD SEV-SNP as a Cloister platform: the report (`attestation.snp`) verified to a
pinned ARK through the GHCB certificate table's VCEK and ASK, AMD's CRL for the chip
family as collateral, HOST_DATA as the launch-time field, and its reference values:

    [platforms.sev-snp]                              # also "simulated-sev-snp"
    measurements = [{vcpus = 4, vcpu_type = "EPYC-v4", measurement = "<96 hex>"}]
    min_tcb = {boot_loader = 4, tee = 0, snp = 22, microcode = 213}  # never below SNP_TCB_FLOOR
    vmpl = 0                                         # the VMPL the report must come from
    forbidden_policy_bits = ["debug", "migrate_ma"]  # the defaults
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from attestation import amd_crl
from attestation.certtable import ARK_GUID, ASK_GUID, VCEK_GUID, parse_cert_table
from attestation.collateral import Collateral
from attestation.errors import BelowPolicyFloor, Reason, VerificationError
from attestation.platform import Hardware, PlatformValues
from attestation.roots import PRODUCTION_AMD_ARKS
from attestation.snp import REPORT_SIZE, SnpReport, TcbVersion, verify_snp_report
from attestation.types import CpuEvidence, CpuProvider, ProviderError
from attestation.x509chain import fingerprint, load_der

# SEV-SNP guest policy bits (AMD SEV-SNP ABI, section 4.3).
POLICY_BITS = {"smt": 16, "migrate_ma": 18, "debug": 19, "single_socket": 20,
               "cxl_allow": 21, "mem_aes_256_xts": 22, "rapl_dis": 23,
               "ciphertext_hiding": 24, "page_swap_disable": 25}
DEFAULT_FORBIDDEN_POLICY_BITS = ("debug", "migrate_ma")
# The floor no reference values can lower: a debuggable guest or one with a migration
# agent can hand its memory to the host, and only VMPL 0 is the guest's own kernel.
FLOOR_POLICY_BITS = DEFAULT_FORBIDDEN_POLICY_BITS
FLOOR_VMPL = 0
# Below this no reference values can go: the TCB of the oldest real SNP report we know
# of (go-sev-guest's Milan sample, `../shared/vectors/snp`). A backstop only; releases
# set their own `min_tcb` (what `cloister measure` saw on the fleet).
SNP_TCB_FLOOR = TcbVersion(boot_loader=2, tee=0, snp=5, microcode=68)
AMD_KDS_URL = "https://kdsintf.amd.com"


def _hexes(values: Any) -> frozenset[str]:
    return frozenset(str(v).lower() for v in values or ())


@dataclass(frozen=True)
class SnpValues:
    measurements: frozenset[str]
    min_tcb: TcbVersion | None = None
    vmpl: int = 0
    forbidden_policy_bits: tuple[str, ...] = DEFAULT_FORBIDDEN_POLICY_BITS
    launch_configs: tuple[dict[str, Any], ...] = ()  # for people: vCPUs and type per value

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> SnpValues:
        entries = tuple(raw.get("measurements", ()))
        measured = [e["measurement"] if isinstance(e, Mapping) else e for e in entries]
        tcb = raw.get("min_tcb")
        bits = tuple(raw.get("forbidden_policy_bits", DEFAULT_FORBIDDEN_POLICY_BITS))
        unknown = [b for b in bits if b not in POLICY_BITS]
        if unknown:
            raise ValueError(f"unknown SNP guest policy bit {unknown[0]!r}")
        allowed = [b for b in FLOOR_POLICY_BITS if b not in bits]
        if allowed:
            raise BelowPolicyFloor(f"SNP values may not allow {allowed[0]!r}")
        vmpl = int(raw.get("vmpl", FLOOR_VMPL))
        if vmpl != FLOOR_VMPL:
            raise BelowPolicyFloor(f"SNP values may not accept VMPL {vmpl}")
        return cls(_hexes(measured), TcbVersion(**tcb) if tcb else None, vmpl, bits,
                   tuple(dict(e) for e in entries if isinstance(e, Mapping)))

    def to_json(self) -> dict[str, Any]:
        entries: list[Any] = list(self.launch_configs) or sorted(self.measurements)
        out: dict[str, Any] = {"measurements": entries, "vmpl": self.vmpl,
                               "forbidden_policy_bits": list(self.forbidden_policy_bits)}
        if self.min_tcb is not None:
            t = self.min_tcb
            out["min_tcb"] = {"boot_loader": t.boot_loader, "tee": t.tee, "snp": t.snp,
                              "microcode": t.microcode}
        return out


def check_snp(report: SnpReport, values: SnpValues, *, any_measurement: bool = False) -> None:
    if report.vmpl != FLOOR_VMPL or report.vmpl != values.vmpl:
        raise VerificationError(Reason.VMPL, f"the report comes from VMPL {report.vmpl}, "
                                f"not {FLOOR_VMPL}")
    for name in dict.fromkeys(FLOOR_POLICY_BITS + values.forbidden_policy_bits):
        if report.policy & (1 << POLICY_BITS[name]):
            reason = Reason.DEBUG if name == "debug" else Reason.GUEST_POLICY
            raise VerificationError(reason, f"the guest policy allows {name}")
    if not any_measurement and report.measurement.hex() not in values.measurements:
        raise VerificationError(Reason.MEASUREMENT, "launch measurement not accepted")
    for minimum, what in ((SNP_TCB_FLOOR, "Cloister's floor"), (values.min_tcb, "the minimum")):
        if minimum is not None and not report.reported_tcb.at_least(minimum):
            raise VerificationError(Reason.TCB_TOO_LOW, f"the reported TCB is below {what}")


def _ark_of(aux: bytes) -> x509.Certificate:
    return load_der(parse_cert_table(aux)[ARK_GUID])


class SevSnp:
    name = "sev-snp"
    choice = "snp"
    vendor = "amd"
    production_roots = PRODUCTION_AMD_ARKS
    launch_field_size = 32
    tsm_provider = "sev_guest"
    collateral_service = AMD_KDS_URL

    def recognises(self, report: bytes, aux: bytes) -> bool:
        return len(report) == REPORT_SIZE and bool(aux)

    def verify(self, report: bytes, aux: bytes, collateral: Collateral, *,
               roots: frozenset[str], now: dt.datetime, check_revocation: bool) -> Hardware:
        table = parse_cert_table(aux)
        try:
            vcek, ask, ark = (load_der(table[VCEK_GUID]), load_der(table[ASK_GUID]),
                              load_der(table[ARK_GUID]))
        except KeyError:
            raise VerificationError(Reason.MALFORMED, "VCEK, ASK or ARK missing") from None
        parsed = verify_snp_report(report, vcek=vcek, ask=ask, ark=ark, trusted_arks=roots,
                                   now=now)
        if check_revocation:
            if collateral.amd_crl is None:
                raise VerificationError(Reason.COLLATERAL_MISSING,
                                        "the evidence carries no AMD CRL")
            amd_crl.check_not_revoked(collateral.amd_crl, ark=ark, ask=ask, vcek=vcek, now=now)
        t = parsed.reported_tcb
        return Hardware(self.name, fingerprint(ark), parsed.report_data, parsed.host_data,
                        parsed.measurement.hex(),
                        f"bl={t.boot_loader} tee={t.tee} snp={t.snp} ucode={t.microcode}",
                        parsed.debug_allowed, parsed,
                        collateral_checked="AMD CRL checked: VCEK and ASK not revoked"
                        if check_revocation else "NOT CHECKED (the policy waived AMD's CRL)",
                        revocation_checked=check_revocation)

    def launch_field(self, report: bytes) -> bytes:
        return SnpReport.parse(report).host_data

    def parse_values(self, raw: Mapping[str, Any]) -> SnpValues:
        return SnpValues.parse(raw)

    def default_values(self) -> SnpValues:
        return SnpValues(frozenset())

    def check(self, hardware: Hardware, values: PlatformValues, *,
              any_measurement: bool = False) -> None:
        if not isinstance(hardware.report, SnpReport) or not isinstance(values, SnpValues):
            raise VerificationError(Reason.PLATFORM_NOT_PINNED, "not an SNP report")
        check_snp(hardware.report, values, any_measurement=any_measurement)

    def fallback_provider(self) -> CpuProvider | None:
        """/dev/sev-guest, for SNP guests on kernels before configfs-tsm."""
        from attestation.sev_guest import SevGuestProvider

        return SevGuestProvider()

    def collateral_key(self, evidence: CpuEvidence) -> str:
        return f"{self.name}-{self._family(evidence)}"

    def fetch_collateral(self, evidence: CpuEvidence, service: str,
                         get: Callable[[str], bytes]) -> Collateral:
        """AMD's KDS: `{service}/vcek/v1/{family}/crl`, the family named by the ARK."""
        crl = get(f"{service.rstrip('/')}/vcek/v1/{self._family(evidence)}/crl")
        x509.load_der_x509_crl(crl)  # ValueError if it is not one
        return Collateral(amd_crl=crl)

    def _family(self, evidence: CpuEvidence) -> str:
        try:
            return amd_crl.family(_ark_of(evidence.aux))
        except (KeyError, ValueError, VerificationError) as exc:
            raise ProviderError("the SNP report came without an ARK to name its family"
                                ) from exc


SNP = SevSnp()
