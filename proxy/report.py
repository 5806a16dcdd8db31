"""What `cloister attest` shows of a verified gateway: for people (`describe`) and for
machines (`as_json`). Only verified claims: nothing here comes from unverified bytes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from attestation.statement import VerifiedStatement
from attestation.verify import VerifiedEvidence
from enclave.ohttp import decode_key_configs
from enclave.ohttp.keyconfig import KeyConfigError


def _key_ids(claims: VerifiedEvidence) -> list[int]:
    try:
        return [c.key_id for c in decode_key_configs(claims.keys.get("ohttp", b""))]
    except KeyConfigError:
        return []


def _iso(stamp: int) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _statement_json(statement: VerifiedStatement | None, new: bool) -> dict[str, Any] | None:
    if statement is None:
        return None
    until = statement.values.valid_until
    return {"digest": statement.digest, "version": statement.values.version,
            "signer": statement.key_id, "new": new,
            "valid_until": until.strftime("%Y-%m-%dT%H:%M:%SZ") if until else None}


def as_json(claims: VerifiedEvidence, statement: VerifiedStatement | None = None, *,
            new: bool = False) -> dict[str, Any]:
    workload = claims.workload
    return {
        "reference_values": _statement_json(statement, new) or "policy file",
        "verified": True, "platform": claims.platform, "measurement": claims.measurement,
        "tcb": claims.tcb, "tcb_status": claims.tcb_status,
        "advisory_ids": list(claims.advisory_ids), "debug": claims.debug,
        "pinned_at_launch": workload.pinned_at_launch, "workload_digest": workload.digest,
        "models": [{"role": m.role, "name": m.name, "digest": m.digest, "signer": m.signer}
                   for m in workload.models],
        "engine_flags": {m.name: m.flags for m in workload.models},
        "settings": workload.settings,
        "gpus": [{"driver": g.driver_version, "vbios": g.vbios_version, "mode": g.mode}
                 for g in claims.gpus],
        "keys": sorted(claims.keys), "ohttp_key_ids": _key_ids(claims),
        "generated_at": claims.generated_at, "expires_at": claims.expires_at,
    }


def describe(claims: VerifiedEvidence, statement: VerifiedStatement | None = None, *,
             new: bool = False) -> str:
    """A verified gateway, in a layout a person can read."""
    w = claims.workload
    pinned = "yes" if w.pinned_at_launch else "NO (HOST_DATA / MRCONFIGID empty)"
    lines = [
        "VERIFIED",
        f"  platform          {claims.platform}",
        f"  measurement       {claims.measurement}",
        f"  TCB               {claims.tcb}" + ("   DEBUG ENABLED" if claims.debug else ""),
        f"  revocation        {claims.collateral_checked}",
        f"  pinned at launch  {pinned}",
        f"  workload digest   {w.digest}",
        "  models",
    ]
    for m in w.models:
        signer = f", signed by {m.signer}" if m.signer else ", unsigned"
        lines.append(f"    {m.role:<9} {m.name}  {m.digest}{signer}")
        lines.append(f"              engine flags: {' '.join(m.flags) or '(defaults)'}")
    lines.append("  settings")
    for name, value in sorted(w.settings.items()):
        lines.append(f"    {name:<24} {value}")
    gpus = ", ".join(f"driver {g.driver_version} VBIOS {g.vbios_version} mode {g.mode}"
                     for g in claims.gpus)
    lines += [
        f"  GPUs              {gpus or 'none'}",
        f"  keys              {', '.join(sorted(claims.keys))}",
        f"  OHTTP key ids     {', '.join(map(str, _key_ids(claims))) or 'none'}",
        f"  report time       {_iso(claims.generated_at)}",
        f"  keys expire       {_iso(claims.expires_at)}",
    ]
    if statement is None:
        lines.append("  reference values  the local policy file")
    else:
        until = statement.values.valid_until
        lines += [f"  reference values  release statement v{statement.values.version}, "
                  f"sha256:{statement.digest}",
                  f"                    signed by key {statement.key_id}, valid until "
                  f"{until:%Y-%m-%dT%H:%M:%SZ}" if until else "",
                  "  NEW STATEMENT     never accepted on this machine before" if new else ""]
    return "\n".join(line for line in lines if line)
