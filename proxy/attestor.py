"""Verify the gateway before anything is sent to it.

Fetches `GET /v1/attestation/report` with a fresh nonce, verifies the document
(hardware signatures, pinned roots, binding, freshness, policy) and checks that the OHTTP
key configuration the client is about to use is one the hardware vouches for. The
client calls it before its first request and again whenever it refetches keys
(rotation), so a key that no report covers is never used.
"""

from __future__ import annotations

import datetime as dt

import httpx

from attestation.errors import VerificationError
from attestation.verify import Policy, TrustRoots, VerifiedEvidence, new_nonce, verify_evidence
from enclave.ohttp import KeyConfig, decode_key_configs
from proxy.ohttp_client import GatewayError

REPORT_PATH = "/v1/attestation/report"


class GatewayNotAttested(GatewayError):
    code = "gateway_not_attested"


async def fetch_and_verify(http: httpx.AsyncClient, *, roots: TrustRoots, policy: Policy,
                           nonce: bytes | None = None) -> VerifiedEvidence:
    nonce = nonce or new_nonce()
    try:
        r = await http.get(REPORT_PATH, params={"nonce": nonce.hex()})
    except httpx.TransportError as exc:
        raise GatewayNotAttested("cannot fetch the attestation report") from exc
    if r.status_code != 200:
        raise GatewayNotAttested(f"the gateway gave no attestation report (HTTP {r.status_code})",
                                 status=r.status_code)
    try:
        return verify_evidence(r.content, expected_nonce=nonce, roots=roots, policy=policy,
                               now=dt.datetime.now(dt.UTC))
    except VerificationError as exc:
        raise GatewayNotAttested(f"attestation failed: {exc}") from exc


class Attestor:
    """The `verify_keys` hook of `OHTTPClient`."""

    def __init__(self, gateway_url: str, *, roots: TrustRoots, policy: Policy,
                 transport: httpx.AsyncBaseTransport | None = None, key_name: str = "ohttp"
                 ) -> None:
        self._key_name = key_name
        self._http = httpx.AsyncClient(base_url=gateway_url.rstrip("/"), transport=transport,
                                       timeout=60)
        self._roots, self._policy = roots, policy
        self.last: VerifiedEvidence | None = None

    async def __call__(self, configs: list[KeyConfig]) -> None:
        claims = await fetch_and_verify(self._http, roots=self._roots, policy=self._policy)
        attested = decode_key_configs(claims.keys.get(self._key_name, b""))
        if configs[0] not in attested:
            raise GatewayNotAttested("the gateway's key configuration is not the attested one")
        self.last = claims

    async def aclose(self) -> None:
        await self._http.aclose()


class AtomaNodeAttestor(Attestor):
    """The `verify_node` hook of `AtomaClient`: both node keys must be the attested ones."""

    async def __call__(self, node_dh_public_key: bytes,  # type: ignore[override]
                       signing_public_key: bytes) -> None:
        claims = await fetch_and_verify(self._http, roots=self._roots, policy=self._policy)
        if (claims.keys.get("atoma-node-x25519") != node_dh_public_key
                or claims.keys.get("atoma-signing-ed25519") != signing_public_key):
            raise GatewayNotAttested("the node's keys are not the attested ones")
        self.last = claims
