"""`cloister serve --join URL` (and `cloister keyholder --join URL`): obtain the fleet's
seed from an attested keyholder before serving (the protocol in `enclave.key_release`,
the keyholder in `gateway.keyholder`). The joining process is a client of the keyholder
like any other: the one attested client (`proxy.attestor.Attestor`) checks it.

    1. the keyholder's own report, over a fresh nonce, verified against the joining
       member's trust (its workload digest must be in the reference values) -> its
       signing key
    2. a single-use challenge
    3. evidence of this process over the challenge, binding an ephemeral X25519 key
       (`prove`, lent by the composition root: the server side's providers)
    4. the seed, sealed to that key and signed by the attested keyholder key
Several keyholders may be named: the first that releases wins. A replica that obtains
no seed does not serve (`JoinRefused`).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence

import httpx
from cryptography.hazmat.primitives.asymmetric import x25519

from attestation.errors import VerificationError
from attestation.types import ProviderError
from attestation.verify import VerifiedEvidence
from enclave import key_release
from proxy.attestor import Attestor
from proxy.errors import ProxyError
from proxy.trust import Trust

# (nonce, keys) -> an evidence document of this process over `nonce` binding `keys`
Prove = Callable[[bytes, dict[str, bytes]], Awaitable[bytes]]
# the keyholder's verified claims -> None, or `VerificationError` (its trust anchors differ)
Accept = Callable[[VerifiedEvidence], None]


class JoinRefused(Exception):
    pass


async def obtain_seed(urls: Sequence[str], prove: Prove, *, trust: Trust, accept: Accept,
                      transport: httpx.AsyncBaseTransport | None = None) -> bytes:
    """The seed from the first of `urls` whose keyholder verifies under `trust` and that
    `accept` (the member's own check of the keyholder's claims) does not refuse."""
    problems = []
    for url in urls:
        try:
            return await _from(url.rstrip("/"), prove, trust, accept, transport)
        except (httpx.HTTPError, ProxyError, key_release.ReleaseRefused, ProviderError,
                VerificationError, JoinRefused, ValueError, KeyError) as exc:
            problems.append(f"{url}: {exc}")
    raise JoinRefused("no keyholder released the fleet seed: " + "; ".join(problems))


def _signs_releases(claims: VerifiedEvidence) -> bool:
    return key_release.SIGNING_KEY in claims.keys


async def _from(url: str, prove: Prove, trust: Trust, accept: Accept,
                transport: httpx.AsyncBaseTransport | None) -> bytes:
    attestor = Attestor(url, trust=trust, transport=transport)
    try:
        await attestor.verify(_signs_releases)
        assert attestor.last is not None
        accept(attestor.last)
        keyholder = attestor.last.keys[key_release.SIGNING_KEY]
    finally:
        await attestor.aclose()
    async with httpx.AsyncClient(base_url=url, timeout=60, transport=transport) as http:
        challenge = bytes.fromhex((await http.post("/v1/keyholder/challenge")).json()
                                  ["challenge"])
        recipient = x25519.X25519PrivateKey.generate()
        document = await prove(challenge, {
            key_release.RECIPIENT_KEY: recipient.public_key().public_bytes_raw()})
        released = await http.post("/v1/keyholder/release",
                                   content=_release_body(challenge, document),
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
