"""`cloister keyholder`: holds a fleet's root seed in its TEE and releases it to replicas
that prove they run an accepted workload (the protocol in `enclave.key_release`).

    GET  /health
    GET  /v1/attestation/report?nonce=  its own evidence, binding its signing key
                                        (`keyholder-signing-ed25519`), its audit log's
                                        key (`log-ed25519`) and its workload
    GET  /v1/log/...                    its audit log (`gateway.keyholder_audit`): every
                                        release and every policy in force, C2SP tiles,
                                        checkpoints and proofs as a gateway's log
    POST /v1/keyholder/challenge        {"challenge": hex}: single use, 60 s; nothing is
                                        kept per challenge (it carries its time and the
                                        keyholder's MAC), so anonymous callers fill nothing
    POST /v1/keyholder/release          {"challenge", "evidence"} -> {"sealed_seed",
                                        "signature"} (base64), or 403 join_refused with
                                        the verifier's reason

The replica's evidence is verified with Cloister's own verifier against the same signed
reference values clients use, verified again at each release (expiry, the measured version
floor): hardware, collateral, binding (the challenge is the nonce), launch pinning and an
accepted workload digest; and its manifest must hold the keyholder's own trust anchors
(`gateway.fleet_trust`). The seed is made inside the keyholder at
first start, or obtained from another keyholder by the same protocol (`--join`), and
never leaves a TEE in the clear.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hmac
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from attestation.errors import VerificationError
from attestation.verify import verify_evidence
from enclave import key_release
from enclave.keys import KeyRing
from enclave.wire_errors import ErrorCode
from gateway import attestation_routes, tlog, tlog_routes
from gateway.attestation_routes import Attested, ReportService
from gateway.body import parse_json_object, read_body
from gateway.config import KeyholderConfig
from gateway.errors import GatewayError, json_response
from gateway.fleet_trust import FleetTrust, policy_of
from gateway.keyholder_audit import KeyholderAudit
from gateway.limits import RateBuckets
from gateway.metrics import GatewayMetrics

log = structlog.get_logger("cloister.keyholder")
CHALLENGE_SECONDS = 60.0
MAX_RELEASE_BODY = 1 << 20
# Release attempts (each a full verification) per caller address: bursts of 10, then one
# every 2 s; the challenges used in the last minute are remembered (single use), at most
# what those rates let in.
RELEASE_RATE, RELEASE_BURST = 0.5, 10
MAX_USED_CHALLENGES = 100_000


class Keyholder:
    def __init__(self, seed: bytes, attested: Attested, *, trust: FleetTrust,
                 audit: KeyholderAudit | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`audit`: where releases and policies are logged (`cloister keyholder` always
        gives one; without, nothing is logged)."""
        self._seed, self._trust, self._clock = seed, trust, clock
        self.audit = audit
        self._signer = ed25519.Ed25519PrivateKey.generate()
        public = self._signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._mac_key = os.urandom(32)
        self._used: dict[bytes, float] = {}  # challenge -> when it expires, oldest first
        self._buckets = RateBuckets(rate=RELEASE_RATE, burst=RELEASE_BURST)
        self.releases = 0
        bound = {key_release.SIGNING_KEY: public}
        if audit is not None:
            bound[tlog.BOUND_KEY] = audit.log.public_key
        self.reports = ReportService(attested, KeyRing(), lambda: bound)

    def __repr__(self) -> str:
        return "Keyholder(seed=[redacted])"

    async def challenge(self, request: Request) -> Response:
        issued = int(self._clock()).to_bytes(8, "big") + os.urandom(8)
        challenge = issued + self._tag(issued)
        return json_response(200, {"challenge": challenge.hex(),
                                   "expires_in": int(CHALLENGE_SECONDS)})

    def _tag(self, issued: bytes) -> bytes:
        return hmac.new(self._mac_key, b"keyholder-challenge" + issued, "sha256").digest()[:16]

    def _take(self, challenge: bytes) -> None:
        """The challenge is this keyholder's, current and not used before (it is used now);
        `GatewayError` otherwise."""
        now = self._clock()
        valid = (len(challenge) == 32
                 and hmac.compare_digest(challenge[16:], self._tag(challenge[:16]))
                 and 0 <= now - int.from_bytes(challenge[:8], "big") <= CHALLENGE_SECONDS)
        while self._used and next(iter(self._used.values())) <= now:
            del self._used[next(iter(self._used))]
        if not valid or challenge in self._used:
            raise GatewayError(ErrorCode.UNKNOWN_CHALLENGE, "unknown, used or expired "
                               "challenge: ask for a new one")
        if len(self._used) >= MAX_USED_CHALLENGES:
            raise GatewayError(ErrorCode.OVERLOADED, "too many releases under way",
                               headers={"Retry-After": "5"})
        self._used[challenge] = now + CHALLENGE_SECONDS

    async def release(self, request: Request) -> Response:
        wait = self._buckets.take(request.client.host if request.client else "unknown")
        if wait is not None:
            raise GatewayError(ErrorCode.RATE_LIMITED, "too many release attempts from this "
                               "address; retry later", headers={"Retry-After": str(wait)})
        body = parse_json_object(await read_body(request, MAX_RELEASE_BODY, timeout=30))
        try:
            challenge = bytes.fromhex(str(body["challenge"]))
            evidence = json.dumps(body["evidence"]).encode()
        except (KeyError, ValueError):
            raise GatewayError(ErrorCode.INVALID_REQUEST, "a release needs `challenge` and "
                               "`evidence`") from None
        self._take(challenge)  # single use, whatever follows
        started = time.perf_counter()
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        try:
            # statements expire and have a version floor: those in force now
            statements = self._trust.statements_now(now)
            policy = policy_of(statements)
            claims = await asyncio.to_thread(
                verify_evidence, evidence, expected_nonce=challenge, roots=self._trust.roots,
                policy=policy, now=now)
            self._trust.check_peer(claims, keyholder=False)
        except VerificationError as exc:
            raise GatewayError(ErrorCode.JOIN_REFUSED, f"the replica's evidence: {exc}"
                               ) from None
        recipient = claims.keys.get(key_release.RECIPIENT_KEY)
        if recipient is None or len(recipient) != 32:
            raise GatewayError(ErrorCode.JOIN_REFUSED, "the evidence binds no recipient key")
        sealed, signature = key_release.seal(self._seed, recipient, challenge, self._signer)
        if self.audit is not None:  # logged before the seed leaves
            self.audit.released(claims, challenge, statements, self._clock())
        self.releases += 1
        log.info("seed_released", detail=claims.workload.digest,
                 duration_ms=round((time.perf_counter() - started) * 1000, 2))
        return json_response(200, {"sealed_seed": base64.b64encode(sealed).decode(),
                                   "signature": base64.b64encode(signature).decode(),
                                   "workload": claims.workload.digest})

    def app(self) -> Starlette:
        async def health(request: Request) -> Response:
            return json_response(200, {"status": "ok", "role": "keyholder"})

        async def gateway_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, GatewayError)
            return exc.response()

        metrics = GatewayMetrics(lambda: None)
        audit_routes = tlog_routes.log_routes(self.audit.log) if self.audit else []
        app = Starlette(routes=[
            *audit_routes,
            Route("/health", health, methods=["GET"]),
            Route(attestation_routes.PATH,
                  attestation_routes.report_endpoint(self.reports, metrics), methods=["GET"]),
            Route("/v1/keyholder/challenge", self.challenge, methods=["POST"]),
            Route("/v1/keyholder/release", self.release, methods=["POST"]),
        ], exception_handlers={GatewayError: gateway_error}, lifespan=self._lifespan)
        app.state.keyholder = self
        return app

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """The audit log's turns (sequence, sign a checkpoint) while serving."""
        if self.audit is None:
            yield
            return
        turning = asyncio.create_task(self.audit.log.run())
        try:
            yield
        finally:
            turning.cancel()


def keyholder_manifest(config: KeyholderConfig) -> dict[str, Any]:
    """Its workload manifest: the keyholder role and its measured settings (its release
    keys among them), no models."""
    from gateway.workload import build_manifest

    return build_manifest([], config.workload_settings())
