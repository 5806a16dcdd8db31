"""`cloister serve --join URL` (and `cloister keyholder --join URL`): obtain the fleet's
seed from an attested keyholder before serving (the protocol in `enclave.key_release`,
the keyholder in `gateway.keyholder`).

    1. the keyholder's own report, over a fresh nonce, verified against the reference
       values (its workload digest must be one of them) -> its signing key
    2. a single-use challenge
    3. evidence of this process over the challenge, binding an ephemeral X25519 key
    4. the seed, sealed to that key and signed by the attested keyholder key
Several keyholders may be named: the first that releases wins. A replica that obtains
no seed does not serve (`JoinRefused`).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import time
from collections.abc import Sequence

import httpx
from cryptography.hazmat.primitives.asymmetric import x25519

from attestation import evidence
from attestation.errors import VerificationError
from attestation.types import ProviderError
from attestation.verify import Policy, TrustRoots, verify_evidence
from enclave import key_release
from gateway.attestation_routes import Attested

EVIDENCE_SECONDS = 300


class JoinRefused(Exception):
    pass


async def obtain_seed(urls: Sequence[str], attested: Attested, *, roots: TrustRoots,
                      policy: Policy, transport: httpx.AsyncBaseTransport | None = None
                      ) -> bytes:
    problems = []
    for url in urls:
        try:
            return await _from(url.rstrip("/"), attested, roots, policy, transport)
        except (httpx.HTTPError, VerificationError, key_release.ReleaseRefused,
                ProviderError, JoinRefused, ValueError, KeyError) as exc:
            problems.append(f"{url}: {exc}")
    raise JoinRefused("no keyholder released the fleet seed: " + "; ".join(problems))


async def _from(url: str, attested: Attested, roots: TrustRoots, policy: Policy,
                transport: httpx.AsyncBaseTransport | None) -> bytes:
    async with httpx.AsyncClient(base_url=url, timeout=60, transport=transport) as http:
        nonce = os.urandom(32)
        report = await http.get("/v1/attestation/report", params={"nonce": nonce.hex()})
        if report.status_code != 200:
            raise JoinRefused(f"the keyholder gave no report (HTTP {report.status_code})")
        claims = verify_evidence(report.content, expected_nonce=nonce, roots=roots,
                                 policy=policy, now=dt.datetime.now(dt.UTC))
        keyholder = claims.keys[key_release.SIGNING_KEY]
        challenge = bytes.fromhex((await http.post("/v1/keyholder/challenge")).json()
                                  ["challenge"])
        recipient = x25519.X25519PrivateKey.generate()
        now = int(time.time())
        document = await asyncio.to_thread(
            evidence.collect, attested.cpu, attested.gpu,
            keys={key_release.RECIPIENT_KEY: recipient.public_key().public_bytes_raw()},
            workload=attested.workload, nonce=challenge, expires_at=now + EVIDENCE_SECONDS,
            now=now, init_data=attested.init_data, collateral=attested.collateral)
        released = await http.post("/v1/keyholder/release",
                                   content=_release_body(challenge, document.to_json()),
                                   headers={"content-type": "application/json"})
        if released.status_code != 200:
            error = released.json().get("error", {})
            raise JoinRefused(f"HTTP {released.status_code} {error.get('code', '')}: "
                              f"{error.get('message', '')}")
        body = released.json()
        return key_release.open_sealed(base64.b64decode(body["sealed_seed"]),
                                       base64.b64decode(body["signature"]), challenge,
                                       recipient, keyholder)


def _release_body(challenge: bytes, document: bytes) -> bytes:
    return b'{"challenge": "' + challenge.hex().encode() + b'", "evidence": ' + document + b"}"
