"""Verify the gateway before anything is sent to it.

`Attestor` fetches `GET /v1/attestation/report` with a fresh nonce and verifies the
document (hardware signatures, pinned roots, binding, workload, freshness) against
reference values: the client's own policy file, or the release statements the gateway
serves (`GET /v1/attestation/reference-values`) that a trusted release key signed, are
not expired and do not roll back a version this client accepted before. It then asks
the dialect whether the keys it is about to use are among those the hardware vouches
for. The client calls it before its first request and again whenever it refetches keys,
so a key that no report covers is never used, and `due()` says when to attest again:
`reattest_seconds` after the last verification (an hour by default) and shortly before
the attested keys expire. Requests already under way keep the keys they started with.
`report_mode="challenge"` asks for the cached per-epoch report and the attested key's
signature over a fresh challenge (`attestation.challenge`) instead of a quote per
verification. `Unverified` is the explicit, loudly
named alternative for development (`--insecure-skip-attestation`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from typing import Protocol

import httpx
import structlog

from attestation.errors import Reason, VerificationError
from attestation.sigstore_statement import verify_sigstore_statement
from attestation.statement import VerifiedStatement, verify_statement
from attestation.verify import (
    Policy,
    TrustRoots,
    VerifiedEvidence,
    new_nonce,
    verify_challenge_answer,
    verify_evidence,
)
from proxy.errors import GatewayNotAttested
from proxy.trust import StatementLog, Trust

REPORT_PATH = "/v1/attestation/report"
REFERENCE_VALUES_PATH = "/v1/attestation/reference-values"
# How long a verifying client waits, in all, on a rate-limited report before giving up.
MAX_RATE_LIMIT_WAIT = 10.0
REATTEST_SECONDS = 3600.0
# Attest again this long before the attested keys expire (at most a quarter of their life).
EXPIRY_MARGIN = 300.0
Clock = Callable[[], dt.datetime]
KeyCheck = Callable[[VerifiedEvidence], bool]
log = structlog.get_logger("cloister.proxy")


class Attestation(Protocol):
    """How a client decides to trust the keys it fetched."""

    last: VerifiedEvidence | None
    last_statement: VerifiedStatement | None
    verified_at: float

    async def verify(self, vouches: KeyCheck) -> None:
        """Raise `GatewayNotAttested` unless the gateway's report verifies and
        `vouches(claims)` holds."""

    def due(self) -> bool:
        """Whether the gateway must be attested again before the next request."""

    async def aclose(self) -> None: ...


async def _fetch_report(http: httpx.AsyncClient, nonce: bytes, *, mode: str = "nonce"
                        ) -> httpx.Response:
    """The report for `nonce` (`mode` "nonce", or "challenge"); a `429` is retried after
    the `Retry-After` the gateway sends, within `MAX_RATE_LIMIT_WAIT` seconds in all."""
    waited = 0.0
    while True:
        try:
            r = await http.get(REPORT_PATH, params={mode: nonce.hex()})
        except httpx.TransportError as exc:
            raise GatewayNotAttested("cannot fetch the attestation report") from exc
        try:
            delay = float(r.headers.get("retry-after", "1"))
        except ValueError:
            delay = 1.0
        delay = min(max(delay, 0.1), MAX_RATE_LIMIT_WAIT)
        if r.status_code != 429 or waited + delay > MAX_RATE_LIMIT_WAIT:
            return r
        await asyncio.sleep(delay)
        waited += delay


async def fetch_and_verify(http: httpx.AsyncClient, *, roots: TrustRoots, policy: Policy,
                           nonce: bytes | None = None, challenge: bool = False,
                           now: dt.datetime | None = None) -> VerifiedEvidence:
    nonce = nonce or new_nonce()
    r = await _fetch_report(http, nonce, mode="challenge" if challenge else "nonce")
    if r.status_code != 200:
        raise GatewayNotAttested(f"the gateway gave no attestation report (HTTP {r.status_code})",
                                 outer_status=r.status_code)
    now = now or dt.datetime.now(dt.UTC)
    try:
        if challenge:
            return verify_challenge_answer(r.content, challenge=nonce, roots=roots,
                                           policy=policy, now=now)
        return verify_evidence(r.content, expected_nonce=nonce, roots=roots, policy=policy,
                               now=now)
    except VerificationError as exc:
        raise GatewayNotAttested(f"attestation failed: {exc}") from exc


async def fetch_statements(http: httpx.AsyncClient, trust: Trust, *,
                           statements: StatementLog | None, now: dt.datetime
                           ) -> list[VerifiedStatement]:
    """The gateway's release statements that a trusted key signed, unexpired and not
    rolled back; `GatewayNotAttested` with the first refusal's reason if none is."""
    try:
        r = await http.get(REFERENCE_VALUES_PATH)
        served = r.json()["statements"] if r.status_code == 200 else []
    except httpx.TransportError as exc:
        raise GatewayNotAttested("cannot fetch the gateway's reference values") from exc
    except (ValueError, KeyError, TypeError):
        served = []
    accepted: list[VerifiedStatement] = []
    refusals: list[VerificationError] = []
    for item in served if isinstance(served, list) else []:
        try:
            verified = _verify_one(item, trust, now)
            if statements is not None:
                statements.check(verified)
        except VerificationError as err:
            refusals.append(err)
            continue
        accepted.append(verified)
    if accepted:
        return accepted
    if refusals:
        raise GatewayNotAttested(f"no acceptable release statement: {refusals[0]}")
    raise GatewayNotAttested(f"{Reason.NO_REFERENCE_VALUES.value}: the gateway serves no "
                             "release statement")


def _verify_one(item: object, trust: Trust, now: dt.datetime) -> VerifiedStatement:
    encoded = json.dumps(item).encode()
    if isinstance(item, dict) and "mediaType" in item and trust.sigstore is not None:
        sig = trust.sigstore
        return verify_sigstore_statement(encoded, identity=sig.identity, issuer=sig.issuer,
                                         trusted_root=sig.trusted_root, now=now)
    return verify_statement(encoded, trust.release_keys, now=now)


class Attestor:
    def __init__(self, gateway_url: str, *, trust: Trust,
                 statements: StatementLog | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 tls_verify: bool = True, report_mode: str = "nonce",
                 reattest_seconds: float = REATTEST_SECONDS,
                 clock: Clock = lambda: dt.datetime.now(dt.UTC)) -> None:
        """`tls_verify=False` only where the report itself vouches for the TLS key
        (`cloister attest --write-cert` checks the certificate against it)."""
        if report_mode not in ("nonce", "challenge"):
            raise ValueError(f"unknown report mode {report_mode!r}")
        self.gateway_url = gateway_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.gateway_url, transport=transport,
                                       timeout=60, verify=tls_verify)
        self._trust, self._statements = trust, statements
        self._challenge = report_mode == "challenge"
        self._reattest, self._clock = reattest_seconds, clock
        self.verified_at = 0.0  # when the last verification succeeded (Unix time)
        self.last: VerifiedEvidence | None = None
        self.last_statement: VerifiedStatement | None = None
        self.new_statement = False

    async def verify(self, vouches: KeyCheck, *, nonce: bytes | None = None) -> None:
        policy, candidates = await self._policy()
        now = self._clock()
        claims = await fetch_and_verify(self._http, roots=self._trust.roots, policy=policy,
                                        nonce=nonce, challenge=self._challenge, now=now)
        if not vouches(claims):
            raise GatewayNotAttested("the gateway's keys are not the attested ones")
        matched = next((s for s in candidates if s.values is claims.accepted), None)
        new_statement = False
        if matched is not None and self._statements is not None:
            try:
                new_statement = self._statements.record(self.gateway_url, matched)
            except VerificationError as exc:  # another client took a later one meanwhile
                raise GatewayNotAttested(f"no acceptable release statement: {exc}") from exc
            if new_statement:
                log.warning("new_reference_values", gateway=self.gateway_url,
                            detail=f"statement {matched.digest} version "
                                   f"{matched.values.version} signed by {matched.key_id}")
        self.last, self.verified_at = claims, now.timestamp()
        self.last_statement, self.new_statement = matched, new_statement

    def due(self) -> bool:
        if self.last is None:
            return True
        now = self._clock().timestamp()
        life = self.last.expires_at - self.last.generated_at
        margin = min(EXPIRY_MARGIN, life / 4)
        return (now >= self.last.expires_at - margin
                or now - self.verified_at >= self._reattest)

    async def _policy(self) -> tuple[Policy, list[VerifiedStatement]]:
        if self._trust.policy is not None:
            return self._trust.policy, []
        statements = await fetch_statements(self._http, self._trust,
                                            statements=self._statements, now=self._clock())
        return Policy(tuple(s.values for s in statements)), statements

    async def aclose(self) -> None:
        await self._http.aclose()


class Unverified:
    """DEVELOPMENT ONLY: trusts whatever keys the gateway (or anyone in between) sends."""

    last: VerifiedEvidence | None = None
    last_statement: VerifiedStatement | None = None
    verified_at = 0.0

    async def verify(self, vouches: KeyCheck) -> None:
        return None

    def due(self) -> bool:
        return False

    async def aclose(self) -> None:
        return None
