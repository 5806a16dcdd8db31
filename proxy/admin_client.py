"""`cloister admin`: the operator's client of the admin API (`gateway.admin`).

Before anything is sent: the gateway's attestation is verified against the operator's
reference values, the report must pin this admin key (the workload manifest's
`admin_key_sha256`), and the TLS certificate the gateway presents must be the one the
report binds; the connection then trusts exactly that certificate. Every request is
signed with the admin key (`enclave.admin_signature`), so a new API key's secret, which
the answer carries once, travels only inside TLS that ends in the attested enclave.
"""

from __future__ import annotations

import json
import ssl
import time
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ed25519

from enclave import admin_signature
from proxy.attestor import Attestor
from proxy.errors import GatewayNotAttested
from proxy.pinning import attested_certificate, is_https, pinned_context
from proxy.trust import StatementLog, Trust


class AdminError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


async def attested_tls(gateway_url: str, *, trust: Trust, key: ed25519.Ed25519PrivateKey,
                       statements: StatementLog | None = None) -> ssl.SSLContext:
    """An SSL context that trusts only the certificate the verified report binds, once
    the report pins this admin key; `GatewayNotAttested` otherwise."""
    if not is_https(gateway_url):
        raise GatewayNotAttested("the admin API is on the attested TLS listener (https://)")
    attestor = Attestor(gateway_url, trust=trust, statements=statements, tls_verify=False)
    try:
        await attestor.verify(lambda claims: True)
    finally:
        await attestor.aclose()
    claims = attestor.last
    assert claims is not None
    pinned = claims.workload.settings.get("admin_key_sha256")
    if pinned != admin_signature.key_id(key.public_key()):
        raise GatewayNotAttested("the gateway's workload does not pin this admin key")
    pem = await attested_certificate(gateway_url, claims.keys.get("tls-spki-sha256"))
    return pinned_context(pem)


class AdminClient:
    def __init__(self, gateway_url: str, key: ed25519.Ed25519PrivateKey,
                 tls: ssl.SSLContext | bool) -> None:
        self._key = key
        self._http = httpx.AsyncClient(base_url=gateway_url.rstrip("/"), verify=tls,
                                       timeout=60)

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None,
                   params: dict[str, str] | None = None) -> Any:
        content = json.dumps(body).encode() if body is not None else b""
        request = self._http.build_request(method, path, content=content, params=params,
                                           headers={"content-type": "application/json"})
        target = request.url.raw_path.decode()
        request.headers.update(admin_signature.sign(self._key, method, target, content,
                                                    int(time.time())))
        r = await self._http.send(request)
        try:
            payload = r.json()
        except ValueError:
            payload = {}
        if r.status_code != 200:
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            raise AdminError(r.status_code, str(error.get("code", "error")),
                             str(error.get("message", r.text[:200])))
        return payload

    async def aclose(self) -> None:
        await self._http.aclose()
