"""Each dialect's keys, for `proxy.client.GatewayClient`: where they come from and which
claims of the attestation report vouch for them. Everything else is the dialect's own
sans-IO client side in `enclave/`.

    ohttp       GET /.well-known/ohttp-gateway   bound as `ohttp`
    ehbp        GET /.well-known/hpke-keys       bound as `ehbp` (one bare configuration)
    atoma       GET /v1/confidential/node        bound as `atoma-node-x25519` and
                                                 `atoma-signing-ed25519`
    continuum   GET /.well-known/ohttp-gateway   bound as `continuum`; then a secret,
                                                 sealed to that key (POST /v1/secrets)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from attestation.verify import VerifiedEvidence
from enclave import continuum, ehbp
from enclave.atoma import NODE_PATH, AtomaClient
from enclave.continuum import ContinuumClient, pq
from enclave.dialect import ClientDialect, OuterResponse, refusal
from enclave.ehbp import EhbpClient
from enclave.errors import RequestRefused, UnauthenticatedAnswer
from enclave.ohttp import KeyConfig, decode_key_configs
from enclave.ohttp.dialect import PATH as OHTTP_PATH
from enclave.ohttp.dialect import OhttpClient
from enclave.ohttp.encapsulation import choose_suite
from enclave.ohttp.keyconfig import KeyConfigError
from proxy.attestor import Attestation
from proxy.client import GatewayClient

# Register a new Continuum secret this long before the old one expires.
RENEW_MARGIN_SECONDS = 60


async def _get(http: httpx.AsyncClient, path: str) -> bytes:
    r = await http.get(path)
    if r.status_code != 200:
        raise refusal(OuterResponse(r.status_code, (), r.content))
    return r.content


def _configs(body: bytes) -> list[KeyConfig]:
    try:
        return decode_key_configs(body)
    except KeyConfigError as exc:
        raise UnauthenticatedAnswer("malformed key configuration") from exc


def _usable(config: KeyConfig) -> bool:
    try:
        choose_suite(config)
    except RequestRefused:
        return False
    return True


def _first(configs: list[KeyConfig], ok: Callable[[KeyConfig], bool] = _usable
           ) -> KeyConfig:
    for config in configs:
        if ok(config):
            return config
    raise UnauthenticatedAnswer("the gateway offers no usable key configuration")


def _bound(claims: VerifiedEvidence, name: str) -> list[KeyConfig]:
    try:
        return decode_key_configs(claims.keys.get(name, b""))
    except KeyConfigError:
        return []


class _Static:
    """For dialects whose fetched keys are their client side, ready once verified."""

    async def ready(self, http: httpx.AsyncClient, candidate: Any) -> ClientDialect:
        assert isinstance(candidate, OhttpClient | EhbpClient | AtomaClient)
        return candidate

    def expired(self, dialect: ClientDialect) -> bool:
        return False


class OhttpKeys(_Static):
    name = "ohttp"
    sealed_models = True

    async def fetch(self, http: httpx.AsyncClient) -> OhttpClient:
        return OhttpClient(_first(_configs(await _get(http, OHTTP_PATH))))

    def vouched(self, candidate: Any, claims: VerifiedEvidence) -> bool:
        return isinstance(candidate, OhttpClient) and candidate.config in _bound(claims,
                                                                                 "ohttp")


class EhbpKeys(_Static):
    name = "ehbp"
    sealed_models = True

    async def fetch(self, http: httpx.AsyncClient) -> EhbpClient:
        """EHBP publishes one bare key configuration (no list, one suite)."""
        try:
            config = KeyConfig.decode(await _get(http, ehbp.KEYS_PATH))
        except KeyConfigError as exc:
            raise UnauthenticatedAnswer("malformed key configuration") from exc
        return EhbpClient(_first([config], lambda c: c.supports(ehbp.SUITE)))

    def vouched(self, candidate: Any, claims: VerifiedEvidence) -> bool:
        return (isinstance(candidate, EhbpClient)
                and candidate.config.encode() == claims.keys.get("ehbp"))


class AtomaKeys(_Static):
    name = "atoma"
    sealed_models = False

    def __init__(self, api_key: str | None = None) -> None:
        self._api_key = api_key  # sent as Bearer: a gateway with accounts requires one

    async def fetch(self, http: httpx.AsyncClient) -> AtomaClient:
        return AtomaClient.from_node_info(await _get(http, NODE_PATH), api_key=self._api_key)

    def vouched(self, candidate: Any, claims: VerifiedEvidence) -> bool:
        return isinstance(candidate, AtomaClient) and candidate.node_keys == (
            claims.keys.get("atoma-node-x25519"), claims.keys.get("atoma-signing-ed25519"))


@dataclass(frozen=True)
class HybridPublicKey:
    """The gateway's ML-KEM-768 + X25519 key for the Continuum secret exchange."""

    public_bytes: bytes


class ContinuumKeys:
    name = "continuum"
    sealed_models = False

    def __init__(self) -> None:
        self._expires: dict[str, float] = {}

    async def fetch(self, http: httpx.AsyncClient) -> KeyConfig | HybridPublicKey:
        """The key the secret will be sealed to: the hybrid post-quantum key where the
        gateway offers one, else the X25519 key configuration."""
        r = await http.get(continuum.HYBRID_KEY_PATH)
        if r.status_code == 200:
            try:
                offered = r.json()
                if offered["kem"] == pq.KEM_NAME:
                    return HybridPublicKey(bytes.fromhex(offered["public_key"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise UnauthenticatedAnswer("malformed hybrid key") from exc
        return _first(_configs(await _get(http, OHTTP_PATH)))

    def vouched(self, candidate: Any, claims: VerifiedEvidence) -> bool:
        attested_hybrid = claims.keys.get(pq.KEY_NAME)
        if isinstance(candidate, HybridPublicKey):
            return candidate.public_bytes == attested_hybrid
        # The classic key only from a gateway that attests no hybrid one: whoever hid
        # the hybrid key from us does not get a downgrade.
        return (isinstance(candidate, KeyConfig) and attested_hybrid is None
                and candidate in _bound(claims, "continuum"))

    async def ready(self, http: httpx.AsyncClient, candidate: Any) -> ClientDialect:
        secret = os.urandom(continuum.SECRET_SIZE)
        if isinstance(candidate, HybridPublicKey):
            sealed = continuum.seal_secret_hybrid(candidate.public_bytes, secret)
        else:
            assert isinstance(candidate, KeyConfig)
            sealed = continuum.seal_secret(candidate, secret)
        body = json.dumps(sealed).encode()
        r = await http.post(continuum.SECRETS_PATH, content=body,
                            headers={"content-type": "application/json"})
        if r.status_code != 200:
            raise refusal(OuterResponse(r.status_code, (), r.content))
        try:
            info = r.json()
            client = ContinuumClient(str(info["secret_id"]), secret)
            self._expires[client.secret_id] = float(info["expires_at"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UnauthenticatedAnswer("malformed secret registration") from exc
        return client

    def expired(self, dialect: ClientDialect) -> bool:
        if not isinstance(dialect, ContinuumClient):
            return True
        expires = self._expires.get(dialect.secret_id, 0.0)
        return expires - time.time() < RENEW_MARGIN_SECONDS


KEYS: dict[str, type[OhttpKeys | EhbpKeys | AtomaKeys | ContinuumKeys]] = {
    "ohttp": OhttpKeys, "ehbp": EhbpKeys, "atoma": AtomaKeys, "continuum": ContinuumKeys}


def make_client(gateway_url: str, protocol: str, *, attestation: Attestation,
                transport: httpx.AsyncBaseTransport | None = None,
                api_key: str | None = None) -> GatewayClient:
    """A client for one gateway in one dialect (`ohttp`, `ehbp`, `atoma`, `continuum`);
    `api_key` is the platform API key Atoma requests carry where the gateway keeps
    accounts (the other dialects are anonymous)."""
    keys = AtomaKeys(api_key) if protocol == "atoma" else KEYS[protocol]()
    return GatewayClient(gateway_url, keys, attestation=attestation, transport=transport)
