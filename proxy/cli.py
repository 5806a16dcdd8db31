"""`cloister proxy` and `cloister attest`: the commands a user runs on their own machine."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
import uvicorn
from cryptography import x509

from attestation.binding import spki_sha256
from attestation.verify import Policy, TrustRoots, VerifiedEvidence
from enclave.logs import configure_logging
from proxy.app import create_proxy_app
from proxy.attestor import Attestation, Attestor, Unverified, fetch_and_verify
from proxy.client import GatewayClient
from proxy.dialects import make_client
from proxy.errors import GatewayNotAttested
from proxy.multi import MultiGatewayClient
from proxy.report import as_json, describe


def add_parsers(sub: Any) -> None:
    """The user-side commands' arguments (`cloister proxy`, `cloister attest`)."""
    proxy = sub.add_parser("proxy", help="run the local encrypting proxy (plaintext OpenAI API "
                                         "on localhost, encrypted to a verified gateway)")
    proxy.add_argument("--gateway", required=True, action="append",
                       help="a gateway's base URL; repeat it to spread requests over "
                            "several gateways (each verified separately, with failover)")
    proxy.add_argument("--host", default="127.0.0.1")
    proxy.add_argument("--port", type=int, default=8080)
    proxy.add_argument("--protocol", choices=["ohttp", "ehbp", "atoma", "continuum"],
                       default="ohttp", help="how requests are encrypted to the gateway")
    _add_trust_arguments(proxy)
    proxy.add_argument("--insecure-skip-attestation", action="store_true",
                       help="DEVELOPMENT ONLY: trust the fetched key configuration without "
                            "verifying the gateway's attestation")
    proxy.add_argument("--log-level", default="info")

    attest = sub.add_parser("attest", help="fetch and verify a gateway's attestation report")
    attest.add_argument("--gateway", required=True)
    _add_trust_arguments(attest)
    attest.add_argument("--nonce", default=None, help="64 hex digits (default: random)")
    attest.add_argument("--json", action="store_true", help="print the claims as JSON")
    attest.add_argument("--write-cert", type=Path, default=None,
                        help="for an https:// gateway: check that the certificate it presents "
                             "is the attested one and write it here, for pinning")


def _add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", type=Path, default=None,
                        help="attestation policy (TOML or JSON)")
    parser.add_argument("--simulated-roots", type=Path, default=None,
                        help="also trust this simulated test PKI (development only)")


def run(args: argparse.Namespace) -> int:
    return run_proxy(args) if args.command == "proxy" else run_attest(args)


def _trust(args: argparse.Namespace) -> tuple[TrustRoots, Policy]:
    roots = TrustRoots()
    if args.simulated_roots is not None:
        roots = roots.with_simulated(args.simulated_roots.read_bytes())
    policy = Policy.load(args.policy) if args.policy is not None else Policy()
    return roots, policy


def _attestation(args: argparse.Namespace, url: str) -> Attestation:
    if args.insecure_skip_attestation:
        return Unverified()
    roots, policy = _trust(args)
    return Attestor(url, roots=roots, policy=policy)


def _dialect_client(args: argparse.Namespace, url: str) -> GatewayClient:
    """One gateway's client in the chosen dialect, with its own attestation check."""
    return make_client(url, args.protocol, attestation=_attestation(args, url))


def run_proxy(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    log = structlog.get_logger("cloister.proxy")
    if args.insecure_skip_attestation:
        log.warning("attestation_skipped", gateway=",".join(args.gateway),
                    detail="the gateways' keys are trusted without attestation")
        print("WARNING: --insecure-skip-attestation: requests are sealed to keys that no "
              "attestation report vouches for. Development only.", file=sys.stderr)
    clients = [_dialect_client(args, url) for url in args.gateway]
    app = create_proxy_app(clients[0] if len(clients) == 1 else MultiGatewayClient(clients))
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
    return 0


def _write_attested_cert(gateway: str, attested: bytes | None, path: Path) -> str | None:
    """Fetch the certificate the TLS listener presents; write it if it is the bound one."""
    url = urlsplit(gateway)
    if url.scheme != "https":
        return "--write-cert needs an https:// gateway"
    if attested is None:
        return "the report binds no TLS key"
    pem = ssl.get_server_certificate((url.hostname or "", url.port or 443))
    if spki_sha256(x509.load_pem_x509_certificate(pem.encode())) != attested:
        return "the certificate presented is not the one the report binds"
    path.write_text(pem)
    return None


def run_attest(args: argparse.Namespace) -> int:
    roots, policy = _trust(args)
    nonce = bytes.fromhex(args.nonce) if args.nonce else None

    async def go() -> VerifiedEvidence:
        # Over https the certificate is not trusted yet: the report is what vouches for it.
        async with httpx.AsyncClient(base_url=args.gateway.rstrip("/"), timeout=60,
                                     verify=False) as http:
            return await fetch_and_verify(http, roots=roots, policy=policy, nonce=nonce)

    try:
        claims = asyncio.run(go())
    except GatewayNotAttested as exc:
        print(f"NOT VERIFIED: {exc}", file=sys.stderr)
        return 1
    if args.write_cert is not None:
        problem = _write_attested_cert(args.gateway, claims.keys.get("tls-spki-sha256"),
                                       args.write_cert)
        if problem:
            print(f"NOT VERIFIED: {problem}", file=sys.stderr)
            return 1
    print(json.dumps(as_json(claims), indent=2) if args.json else describe(claims))
    return 0
