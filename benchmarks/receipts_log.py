"""What receipts, the transparency log and one-request verification cost (issue 30).

    .venv/bin/python benchmarks/receipts_log.py [--answers 5000] [--entries 50000]
                                                [--bundles 30]

Three measurements, in CPU time of this process (time.process_time: the machine's other
load does not count), written to benchmarks/results/receipts_log-<UTC>.json:

  signing     the CPU a receipt adds to one answer: the digest of the answer (1 KiB, as a
              short chat answer), the Ed25519 signature over the JCS form, the wire form,
              and the log append on the request path. Goal: under 50 us.
  log         receipts appended, numbered, hashed into the tree, stored in SQLite (a file,
              as `cloister serve` keeps it) and a checkpoint signed, per CPU second of
              one process. Goal: at least 5,000 receipts/s.
  bundle      a cold client verifying one `GET /v1/attestation/bundle` (report and its
              collateral, statement, checkpoint, inclusion and consistency proofs) with no
              state: CPU per verification. Goal: under 150 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attestation.simulated import SimulatedPki  # noqa: E402
from attestation.statement import generate_key, key_id, sign_statement  # noqa: E402
from attestation.verify import TrustRoots, new_nonce  # noqa: E402
from enclave.logs import configure_logging  # noqa: E402
from enclave.receipts import ReceiptIssuer, ReceiptSigner, digest  # noqa: E402
from enclave.tlog.entries import receipt_entry  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import ServeConfig  # noqa: E402
from gateway.tlog import LogStore, TransparencyLog  # noqa: E402
from proxy.bundle import verify_bundle  # noqa: E402
from proxy.logview import KeptLogs  # noqa: E402
from proxy.trust import Trust  # noqa: E402
from testkit.attested import accepting, simulated  # noqa: E402
from testkit.doubles import DeterministicTestEngine  # noqa: E402

ANSWER = b"x" * 1024


def signing(answers: int) -> dict[str, float]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    log = TransparencyLog(LogStore("sqlite://"), Ed25519PrivateKey.generate())
    issuer = ReceiptIssuer(ReceiptSigner(), workload="ab" * 32, model_digests={"m": "cd" * 32},
                           epoch=lambda: 7, clock=time.time,
                           logged=lambda wire: log.append(receipt_entry(wire)))
    sealed = [os.urandom(512) for _ in range(answers)]
    start = time.process_time()
    for request in sealed:
        pending = issuer.pending(request)
        pending.model = "m"
        pending(digest(ANSWER))
    spent = time.process_time() - start
    return {"answers": answers, "us_per_answer": round(spent / answers * 1e6, 1),
            "goal_us": 50}


def appending(entries: int, folder: Path) -> dict[str, float]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    log = TransparencyLog(LogStore(f"sqlite:///{folder / 'log.db'}"),
                          Ed25519PrivateKey.generate())
    wires = [f"receipt-{i:08d}-{'x' * 300}" for i in range(entries)]
    start = time.process_time()
    for wire in wires:
        log.append(receipt_entry(wire))
    log.turn()  # queue, number, store, hash into the tree, sign
    spent = time.process_time() - start
    assert log.checkpoint_size() == entries
    return {"entries": entries, "receipts_per_cpu_second": round(entries / spent),
            "goal_per_second": 5000}


async def bundles(count: int, folder: Path) -> dict[str, float]:
    import httpx

    pki = SimulatedPki.load_or_create(folder / "pki")
    key = generate_key()
    statement = sign_statement(accepting(), key)
    attested = dataclasses.replace(simulated(pki), statements=(statement,))
    app = create_app(ServeConfig.of(), DeterministicTestEngine().running, attestation=attested)
    trust = Trust(TrustRoots().with_simulated(pki.roots_pem()),
                  {key_id(key.public_key()): key.public_key()})
    times = []
    async with app.router.lifespan_context(app):
        while app.log.checkpoint_size() < 1:
            await app.log.turned.wait()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw") as http:
            for _ in range(count):
                nonce = new_nonce()
                r = await http.get("/v1/attestation/bundle", params={"nonce": nonce.hex()})
                assert r.status_code == 200, r.text
                start = time.process_time()
                verify_bundle(r.content, gateway="http://gw", nonce=nonce, challenge=False,
                              trust=trust, statements=None, logs=KeptLogs(None),
                              now=dt.datetime.now(dt.UTC))
                times.append(time.process_time() - start)
                await asyncio.sleep(5.1)  # the gateway's fresh-report rate per client
                if len(times) >= count:
                    break
    return {"bundles": len(times), "bundle_bytes": len(r.content),
            "ms_cpu_median": round(statistics.median(times) * 1000, 1),
            "ms_cpu_max": round(max(times) * 1000, 1), "goal_ms": 150}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=5000)
    parser.add_argument("--entries", type=int, default=50000)
    parser.add_argument("--bundles", type=int, default=3)
    args = parser.parse_args()
    configure_logging("warning")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result = {"signing": signing(args.answers),
                  "log": appending(args.entries, folder),
                  "bundle": asyncio.run(bundles(args.bundles, folder)),
                  "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                  "cpu": os.cpu_count()}
    out = ROOT / "benchmarks" / "results" / (
        f"receipts_log-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
