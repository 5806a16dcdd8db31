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
from collections.abc import Callable, Sequence
from typing import Protocol

import httpx
import structlog

from attestation.errors import VerificationError
from attestation.statement import VerifiedStatement
from attestation.verify import (
    Policy,
    TrustRoots,
    VerifiedEvidence,
    new_nonce,
    verify_challenge_answer,
    verify_evidence,
)
from enclave import discovery
from enclave.receipts import Receipt
from enclave.tlog.view import LogRefused, Verified
from proxy.bundle import (
    BUNDLE_PATH,
    WITNESS_MAX_AGE,
    WitnessConfig,
    checkpoint_named,
    consistency_proof,
    cosign_all,
    verify_bundle,
)
from proxy.errors import GatewayNotAttested
from proxy.logview import KeptLogs
from proxy.statements import accepted_statements
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

    def saw_receipt(self, receipt: Receipt) -> None:
        """A receipt the client checked: one naming what was not attested makes the
        gateway due."""

    async def aclose(self) -> None: ...


async def _fetch_report(http: httpx.AsyncClient, nonce: bytes, *, mode: str = "nonce",
                        path: str = REPORT_PATH, params: dict[str, str] | None = None
                        ) -> httpx.Response:
    """The report (or bundle, at `path`) for `nonce` (`mode` "nonce", or "challenge"); a
    `429`, or a `503` with `Retry-After` (the log's first checkpoint), is retried after
    the wait the gateway asks, within `MAX_RATE_LIMIT_WAIT` seconds in all."""
    waited = 0.0
    while True:
        try:
            r = await http.get(path, params={mode: nonce.hex(), **(params or {})})
        except httpx.TransportError as exc:
            raise GatewayNotAttested("cannot fetch the attestation report") from exc
        try:
            delay = float(r.headers.get("retry-after", "1"))
        except ValueError:
            delay = 1.0
        delay = min(max(delay, 0.1), MAX_RATE_LIMIT_WAIT)
        retry = r.status_code == 429 or (r.status_code == 503 and "retry-after" in r.headers)
        if not retry or waited + delay > MAX_RATE_LIMIT_WAIT:
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
    return [v for _, v in accepted_statements(served, trust, statements=statements, now=now)]


class Attestor:
    def __init__(self, gateway_url: str, *, trust: Trust,
                 statements: StatementLog | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 tls_verify: bool = True, report_mode: str = "nonce",
                 reattest_seconds: float = REATTEST_SECONDS,
                 clock: Clock = lambda: dt.datetime.now(dt.UTC),
                 logs: KeptLogs | None = None, witnesses: Sequence[WitnessConfig] = (),
                 witness_max_age: int = WITNESS_MAX_AGE) -> None:
        """`tls_verify=False` only where the report itself vouches for the TLS key
        (`cloister attest --write-cert` checks the certificate against it).

        `logs`: verify in one request (`proxy.bundle`): the report, the statements and
        the gateway's transparency log, which must extend the one kept there. Without
        it (a keyholder, which keeps no log) the report and statements are fetched
        apart. `witnesses` (with `logs`): each must cosign the checkpoint, within
        `witness_max_age` seconds."""
        if report_mode not in ("nonce", "challenge"):
            raise ValueError(f"unknown report mode {report_mode!r}")
        if witnesses and logs is None:
            raise ValueError("witnesses cosign the log: they need the client's logs")
        self._logs, self._witnesses = logs, tuple(witnesses)
        self._witness_max_age = witness_max_age
        self.checkpoint: Verified | None = None  # the log's checkpoint last verified
        self.cosigned_at = 0  # when every witness had cosigned it (the oldest's time)
        self._unseen = False  # a receipt named what the last verification did not
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
        if self._logs is not None:
            claims, candidates = await self._bundle(nonce)
            now = self._clock()
        else:
            policy, candidates = await self._policy()
            now = self._clock()
            claims = await fetch_and_verify(self._http, roots=self._trust.roots,
                                            policy=policy, nonce=nonce,
                                            challenge=self._challenge, now=now)
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
        self._unseen = False

    async def _bundle(self, nonce: bytes | None
                      ) -> tuple[VerifiedEvidence, list[VerifiedStatement]]:
        assert self._logs is not None
        nonce = nonce or new_nonce()
        mode = "challenge" if self._challenge else "nonce"
        since = self._logs.since(self.gateway_url)
        r = await _fetch_report(self._http, nonce, mode=mode, path=BUNDLE_PATH,
                                params={"from": str(since)})
        if r.status_code != 200:
            raise GatewayNotAttested(f"the gateway gave no attestation bundle (HTTP "
                                     f"{r.status_code})", outer_status=r.status_code)
        consistency = None
        named = checkpoint_named(r.content)
        kept = self._logs.size_of(named[0]) if named is not None else 0
        if named is not None and 0 < kept < named[1] and kept != since:
            # the log was kept through another of this gateway's URLs: prove from there
            try:
                consistency = await consistency_proof(self._http, kept, named[1])
            except LogRefused as exc:
                raise GatewayNotAttested(f"transparency log: {exc}") from None
        now = self._clock()
        bundled = verify_bundle(r.content, gateway=self.gateway_url, nonce=nonce,
                                challenge=self._challenge, trust=self._trust,
                                statements=self._statements, logs=self._logs, now=now,
                                consistency=consistency)
        if self._witnesses:
            self.cosigned_at = await cosign_all(
                self._witnesses, bundled.checkpoint, gateway=self._http, logs=self._logs,
                now=int(now.timestamp()), max_age=self._witness_max_age)
        self.checkpoint = bundled.checkpoint
        return bundled.claims, bundled.statements

    def saw_receipt(self, receipt: Receipt) -> None:
        """A receipt that names a workload, or a key epoch, the last verification did not
        attest: the gateway changed under the client, so it attests again before the
        next request (continuous attestation)."""
        claims = self.last
        if claims is None:
            return
        epochs = {c.key_id for c in discovery.bound_configs(claims.keys, "ohttp")}
        if (receipt.fields.get("workload") != claims.workload.digest
                or (epochs and receipt.fields.get("epoch") not in epochs)):
            self._unseen = True

    def due(self) -> bool:
        if self.last is None or self._unseen:
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

    def saw_receipt(self, receipt: Receipt) -> None:
        return None

    async def aclose(self) -> None:
        return None
