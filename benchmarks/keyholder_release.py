"""Keyholder release latency with simulated evidence (issue 32, item 4: p99 under 50 ms).

    .venv/bin/python benchmarks/keyholder_release.py [--releases 200]

One in-process keyholder (`gateway.keyholder`, its audit log in SQLite on disk, as
`cloister keyholder` keeps it) and one replica that joins it `--releases` times over
Starlette's ASGI transport (no network). Timed: the `POST /v1/keyholder/release` request
alone, from the replica's side (the keyholder's whole work: challenge check, evidence
verification against the signed statements, sealing the seed, the audit entry), wall
clock; the replica's own evidence making is not in it. Written to
benchmarks/results/keyholder_release-<UTC>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def run(releases: int) -> list[float]:
    import dataclasses

    import httpx
    from cryptography.hazmat.primitives.asymmetric import x25519

    from attestation.simulated import SimulatedPki
    from attestation.statement import generate_key, key_id, sign_statement
    from attestation.verify import TrustRoots
    from attestation.workload import workload_digest
    from enclave import key_release
    from gateway.config import KeyholderConfig
    from gateway.fleet_trust import FleetTrust
    from gateway.keyholder import Keyholder
    from gateway.keyholder_audit import open_audit
    from gateway.workload import build_manifest
    from testkit.attested import accepting, simulated, workload

    folder = Path(tempfile.mkdtemp(prefix="keyholder-bench-"))
    pki = SimulatedPki.load_or_create(folder / "pki")
    release_key = generate_key()
    anchors = {"release_key_ids": [key_id(release_key.public_key())],
               "min_statement_version": 0}
    keyholder_manifest = build_manifest([], {
        **KeyholderConfig.of(attestation="simulated").workload_settings(), **anchors})
    replica = workload(**anchors)
    values = dataclasses.replace(accepting(), workloads=frozenset(
        workload_digest(m).hex() for m in (keyholder_manifest, replica)))
    trust = FleetTrust(TrustRoots().with_simulated(pki.roots_pem()),
                       {key_id(release_key.public_key()): release_key.public_key()},
                       (sign_statement(values, release_key),))
    seed = os.urandom(32)
    keyholder = Keyholder(seed, simulated(pki, keyholder_manifest), trust=trust,
                          audit=open_audit(None, folder, seed, trust.statements))
    prove = simulated(pki, replica).prove
    timings = []
    app = keyholder.app()
    for index in range(releases):
        # each release from its own address, as replicas are (the per-address rate limit)
        address = (f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}", 40000)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=address),
                                     base_url="http://keyholder") as http:
            challenge = bytes.fromhex(
                (await http.post("/v1/keyholder/challenge")).json()["challenge"])
            recipient = x25519.X25519PrivateKey.generate()
            document = await prove(challenge, {
                key_release.RECIPIENT_KEY: recipient.public_key().public_bytes_raw()})
            body = (b'{"challenge": "' + challenge.hex().encode() + b'", "evidence": '
                    + document + b"}")
            started = time.perf_counter()
            answer = await http.post("/v1/keyholder/release", content=body,
                                     headers={"content-type": "application/json"})
            timings.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, answer.text
            base64.b64decode(answer.json()["sealed_seed"])
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=200)
    args = parser.parse_args()
    timings = asyncio.run(run(args.releases))
    ordered = sorted(timings)
    summary = {"releases": len(ordered), "p50_ms": round(statistics.median(ordered), 2),
               "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 2),
               "max_ms": round(ordered[-1], 2), "goal_p99_ms": 50}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "benchmarks" / "results" / f"keyholder_release-{stamp}.json"
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(),
                                           "platform": platform.platform()},
                               **summary}, indent=2) + "\n")
    print(json.dumps(summary))
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
