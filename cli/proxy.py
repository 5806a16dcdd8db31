"""`cloister proxy` and `cloister attest`: the commands a user runs on their own machine."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import structlog
import uvicorn

from cli.ports import busy_port_errors
from enclave.logs import configure_logging
from enclave.receipts import ReceiptError
from enclave.registry import sealed_dialects
from enclave.tlog.entries import receipt_leaf
from enclave.tlog.note import NoteKey
from enclave.tlog.view import LogRefused, check_inclusion, decode_hashes
from proxy.app import create_proxy_app
from proxy.attestor import Attestation, Attestor, Unverified
from proxy.bundle import LOG_KEY, WITNESS_MAX_AGE, WitnessConfig
from proxy.client import GatewayClient
from proxy.dialects import ROUTE_HINT_CHOICES, ROUTE_HINT_HELP, make_client, route_hint_for
from proxy.errors import CredentialInClear, GatewayNotAttested
from proxy.logview import KeptLogs
from proxy.multi import MultiGatewayClient
from proxy.pinning import attested_certificate
from proxy.receipts import KeptReceipt, ReceiptLog
from proxy.report import as_json, describe
from proxy.trust import SigstoreIdentity, StatementLog, Trust, default_state_dir, load_trust


def add_parsers(sub: Any) -> None:
    """The user-side commands' arguments (`cloister proxy`, `cloister attest`)."""
    proxy = sub.add_parser("proxy", help="run the local encrypting proxy (plaintext OpenAI API "
                                         "on localhost, encrypted to a verified gateway)")
    proxy.add_argument("--gateway", required=True, action="append",
                       help="a gateway's base URL; repeat it to spread requests over "
                            "several gateways (each verified separately, with failover)")
    proxy.add_argument("--host", default="127.0.0.1")
    proxy.add_argument("--port", type=int, default=8080)
    proxy.add_argument("--protocol", choices=sealed_dialects(),
                       default="ohttp", help="how requests are encrypted to the gateway")
    proxy.add_argument("--api-key", default=os.environ.get("CLOISTER_API_KEY"),
                       help="--protocol atoma: the platform API key sent as Bearer (default "
                            "$CLOISTER_API_KEY); a gateway with accounts requires one, sent "
                            "only to its attested TLS listener (an https:// --gateway)")
    proxy.add_argument("--route-hint", choices=ROUTE_HINT_CHOICES, default="auto",
                       help=ROUTE_HINT_HELP)
    _add_trust_arguments(proxy)
    proxy.add_argument("--report-mode", choices=["nonce", "challenge"], default="challenge",
                       help="challenge (the default): the gateway's cached report plus its "
                            "attested key's signature over a fresh challenge (cheap, not "
                            "rate-limited, so no other sender can starve it); nonce: a fresh "
                            "hardware report per verification")
    proxy.add_argument("--reattest-seconds", type=float, default=3600.0,
                       help="attest the gateway again this often (and always before the "
                            "attested keys expire)")
    _add_log_arguments(proxy)
    proxy.add_argument("--insecure-skip-attestation", action="store_true",
                       help="DEVELOPMENT ONLY: trust the fetched key configuration without "
                            "verifying the gateway's attestation")
    proxy.add_argument("--log-level", default="info")

    attest = sub.add_parser("attest", help="fetch and verify a gateway's attestation report")
    attest.add_argument("--gateway", required=True)
    _add_trust_arguments(attest)
    attest.add_argument("--nonce", default=None, help="64 hex digits (default: random)")
    attest.add_argument("--json", action="store_true", help="print the claims as JSON")
    _add_log_arguments(attest)
    attest.add_argument("--write-cert", type=Path, default=None,
                        help="for an https:// gateway: check that the certificate it presents "
                             "is the attested one and write it here, for pinning")
    from cli import admin as admin_cli

    admin_cli.add_parser(sub, _add_trust_arguments)
    receipts = sub.add_parser("receipts", help="the receipts this client kept: list, show, "
                                               "prove in the gateway's log, verify again "
                                               "offline")
    receipts.add_argument("action", choices=["list", "show", "prove", "verify"])
    receipts.add_argument("index", nargs="?", type=int, default=None,
                          help="show/prove/verify: the receipt's number in `list` (all when "
                               "omitted)")
    receipts.add_argument("--gateway", default=None,
                          help="prove: only the receipts of this gateway (verified first, as "
                               "`cloister attest` does)")
    _add_trust_arguments(receipts)


def _add_log_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--witness", action="append", default=[], metavar="URL=VKEY",
                        type=_witness,
                        help="a C2SP tlog witness (its add-checkpoint URL prefix and the "
                             "verifier key `cloister witness keygen` printed) that must "
                             "cosign the gateway's log checkpoint before its release "
                             "statements are trusted; repeatable (all must)")
    parser.add_argument("--witness-max-age", type=int, default=WITNESS_MAX_AGE,
                        metavar="SECONDS", help="the oldest cosignature accepted")


def _witness(text: str) -> WitnessConfig:
    try:
        return WitnessConfig.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--release-key", type=Path, action="append", default=[],
                        help="trust release statements signed with this public key (PEM; "
                             "repeatable); the keys shipped with Cloister are trusted too")
    parser.add_argument("--policy", type=Path, default=None,
                        help="reference values of your own (TOML or JSON) instead of the "
                             "gateway's signed release statements")
    parser.add_argument("--simulated-roots", type=Path, default=None,
                        help="also trust this simulated test PKI and its release key "
                             "(development only)")
    parser.add_argument("--sigstore-identity", default=None,
                        help="also accept statements signed through Sigstore by this "
                             "identity (with --sigstore-issuer; verified offline)")
    parser.add_argument("--sigstore-issuer", default=None)
    parser.add_argument("--sigstore-trusted-root", type=Path, default=None,
                        help="Sigstore trusted root (default: the one the sigstore package "
                             "ships)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where accepted statements are remembered (default "
                             "$CLOISTER_STATE/client or ~/.local/state/cloister/client)")


def run_receipts(args: argparse.Namespace) -> int:
    """`cloister receipts list|show|prove|verify`: exit 0, or 1 when a receipt does not
    verify, a proof does not hold (or the number names none)."""
    log = ReceiptLog(args.state_dir or default_state_dir())
    kept = log.entries()
    chosen = list(enumerate(kept, 1))
    if args.index is not None:
        chosen = [(n, k) for n, k in chosen if n == args.index]
        if not chosen:
            print(f"cloister receipts: no receipt number {args.index} "
                  f"({len(kept)} kept)", file=sys.stderr)
            return 1
    if args.action == "list":
        for n, k in chosen:
            f = k.receipt.fields
            print(f"{n}\t{f['time']}\t{f['model']}\trequest {f['request'][:16]}\t"
                  f"response {f['response'][:16]}\t{k.gateway}")
        return 0
    if args.action == "show":
        for n, k in chosen:
            print(json.dumps({"number": n, "gateway": k.gateway,
                              "key": k.key.hex() if k.key else None, **k.receipt.fields},
                             indent=2))
        return 0
    if args.action == "prove":
        return _prove(args, log, chosen)
    failed = 0
    proofs = log.proofs()
    for n, k in chosen:
        try:
            k.check()
            proof = proofs.get(receipt_leaf(k.receipt.wire).hex())
            where = "not proven in a log yet (cloister receipts prove)"
            if proof is not None:
                checkpoint = proof.check(k.receipt)
                where = (f"in log {checkpoint.origin} at {proof.index} of "
                         f"{checkpoint.size}")
            print(f"{n}\tVERIFIED\tsigned by {k.key.hex() if k.key else '?'}; {where}")
        except (ReceiptError, LogRefused) as exc:
            failed += 1
            print(f"{n}\tNOT VERIFIED\t{exc.reason}")
    return 1 if failed else 0


def _prove(args: argparse.Namespace, log: ReceiptLog,
           chosen: list[tuple[int, KeptReceipt]]) -> int:
    """Verify each gateway (one bundle: report, statements, log), then fetch and check
    an inclusion proof for each of its receipts against the verified checkpoint, and
    keep it. Exit 0 when every receipt chosen is proven, 1 otherwise (not logged yet: the
    log signs a checkpoint at least every 30 s)."""
    trust = _trust(args)
    if not trust.has_reference_values:
        print(f"cloister receipts: {NO_REFERENCE_VALUES}", file=sys.stderr)
        return 2
    gateways = sorted({k.gateway for _, k in chosen} if args.gateway is None
                      else {args.gateway.rstrip("/")})
    missing = 0
    for gateway in gateways:
        mine = [(n, k) for n, k in chosen if k.gateway == gateway]
        try:
            proven = asyncio.run(_prove_at(gateway, trust, args, log, mine))
        except GatewayNotAttested as exc:
            print(f"{gateway}\tNOT VERIFIED\t{exc}", file=sys.stderr)
            missing += len(mine)
            continue
        for n, _ in mine:
            if n in proven:
                print(f"{n}\tPROVEN\tin log {proven[n]}")
            else:
                missing += 1
                print(f"{n}\tNOT IN THE LOG YET\t{gateway}")
    return 1 if missing else 0


async def _prove_at(gateway: str, trust: Trust, args: argparse.Namespace, log: ReceiptLog,
                    mine: list[tuple[int, KeptReceipt]]) -> dict[int, str]:
    folder = args.state_dir or default_state_dir()
    attestor = Attestor(gateway, trust=trust, statements=StatementLog(folder),
                        tls_verify=False, logs=KeptLogs(folder))
    proven: dict[int, str] = {}
    try:
        await attestor.verify(lambda claims: True)
        checkpoint = attestor.checkpoint
        assert checkpoint is not None and attestor.last is not None
        key = attestor.last.keys[LOG_KEY]
        async with httpx.AsyncClient(base_url=gateway, verify=False, timeout=30) as http:
            for n, k in mine:
                r = await http.get("/v1/log/proof/inclusion", params={
                    "leaf": receipt_leaf(k.receipt.wire).hex(),
                    "size": str(checkpoint.checkpoint.size)})
                if r.status_code != 200:
                    continue
                try:
                    index, proof = int(r.json()["index"]), decode_hashes(r.json()["proof"])
                    check_inclusion(checkpoint.checkpoint, receipt_leaf(k.receipt.wire),
                                    index, proof)
                except (ValueError, KeyError, TypeError, LogRefused) as exc:
                    raise GatewayNotAttested(f"an inclusion proof does not hold: {exc}"
                                             ) from None
                log.keep_proof(k.receipt, index, proof, checkpoint.note, key)
                proven[n] = (f"{checkpoint.checkpoint.origin} at {index} of "
                             f"{checkpoint.checkpoint.size}")
    finally:
        await attestor.aclose()
    return proven


def run(args: argparse.Namespace) -> int:
    if args.command == "receipts":
        return run_receipts(args)
    if args.command == "admin":
        from cli import admin as admin_cli

        configure_logging("warning")  # stdout carries the answer's JSON; logs go to stderr
        trust = _trust(args) if args.resource != "keygen" else None
        return admin_cli.run(args, trust, _statement_log(args) if trust else None)
    return run_proxy(args) if args.command == "proxy" else run_attest(args)


NO_REFERENCE_VALUES = (
    "no reference values: nothing could tell this client which measurement and workload "
    "are the right ones. Pass --release-key PUB (the key your gateway's operator signs "
    "releases with; `cloister release verify` checks a statement), or --policy FILE with "
    "reference values of your own. With the simulated TEE, pass --simulated-roots "
    "~/.local/state/cloister/simulated-roots.pem.")


def _trust(args: argparse.Namespace) -> Trust:
    sigstore = (SigstoreIdentity(args.sigstore_identity, args.sigstore_issuer or "",
                                 args.sigstore_trusted_root)
                if args.sigstore_identity else None)
    return load_trust(release_keys=args.release_key, policy=args.policy,
                      simulated_roots=args.simulated_roots, sigstore=sigstore)


def _warn_about(trust: Trust) -> None:
    if trust.policy is not None and trust.policy.accept_any_measurement:
        print("WARNING: the policy sets accept_any_measurement: any genuine TEE is trusted, "
              "whatever it runs. Development only.", file=sys.stderr)


def _statement_log(args: argparse.Namespace) -> StatementLog:
    return StatementLog(args.state_dir or default_state_dir())


def _dialect_client(args: argparse.Namespace, url: str, trust: Trust,
                    statements: StatementLog) -> GatewayClient:
    """One gateway's client in the chosen dialect, with its own attestation check."""
    # The report vouches for itself: fetched over TLS whose certificate is not trusted
    # yet (a credential then goes only over TLS the report binds: `proxy.pinning`).
    attestation: Attestation = (Unverified() if args.insecure_skip_attestation else
                                Attestor(url, trust=trust, statements=statements,
                                         report_mode=args.report_mode, tls_verify=False,
                                         reattest_seconds=args.reattest_seconds,
                                         logs=KeptLogs(args.state_dir or default_state_dir()),
                                         witnesses=args.witness,
                                         witness_max_age=args.witness_max_age))
    folder = args.state_dir or default_state_dir()
    return make_client(url, args.protocol, attestation=attestation, api_key=args.api_key,
                       keep_receipt=ReceiptLog(folder).keeper(url),
                       route_hint=route_hint_for(args.route_hint, args.protocol, folder,
                                                 api_key=args.api_key))


def run_proxy(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    log = structlog.get_logger("cloister.proxy")
    trust = _trust(args)
    if args.insecure_skip_attestation:
        log.warning("attestation_skipped", gateway=",".join(args.gateway),
                    detail="the gateways' keys are trusted without attestation")
        print("WARNING: --insecure-skip-attestation: requests are sealed to keys that no "
              "attestation report vouches for. Development only.", file=sys.stderr)
    elif not trust.has_reference_values:
        print(f"cloister proxy: {NO_REFERENCE_VALUES}", file=sys.stderr)
        return 2
    _warn_about(trust)
    busy = busy_port_errors([(args.host, args.port, "--port")])
    if busy:
        print(f"cloister proxy: {busy[0]}", file=sys.stderr)
        return 2
    statements = _statement_log(args)
    try:
        clients = [_dialect_client(args, url, trust, statements) for url in args.gateway]
    except CredentialInClear as exc:
        print(f"cloister proxy: {exc}", file=sys.stderr)
        return 2
    app = create_proxy_app(clients[0] if len(clients) == 1 else MultiGatewayClient(clients))
    print(f"cloister proxy: OpenAI base URL http://{args.host}:{args.port}/v1, sealing to "
          f"{', '.join(args.gateway)} ({args.protocol}); the gateway is verified before "
          "the first request", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
    return 0


def _write_attested_cert(gateway: str, attested: bytes | None, path: Path) -> str | None:
    """Fetch the certificate the TLS listener presents; write it if it is the bound one."""
    try:
        pem = asyncio.run(attested_certificate(gateway, attested))
    except GatewayNotAttested as exc:
        return str(exc)
    path.write_text(pem)
    return None


def run_attest(args: argparse.Namespace) -> int:
    trust = _trust(args)
    if not trust.has_reference_values:
        print(f"NOT VERIFIED: {NO_REFERENCE_VALUES}", file=sys.stderr)
        return 1
    _warn_about(trust)
    nonce = bytes.fromhex(args.nonce) if args.nonce else None
    # Over https the certificate is not trusted yet: the report is what vouches for it.
    attestor = Attestor(args.gateway, trust=trust, statements=_statement_log(args),
                        tls_verify=False,
                        logs=KeptLogs(args.state_dir or default_state_dir()),
                        witnesses=args.witness, witness_max_age=args.witness_max_age)

    async def go() -> None:
        try:
            await attestor.verify(lambda claims: True, nonce=nonce)
        finally:
            await attestor.aclose()

    try:
        asyncio.run(go())
    except GatewayNotAttested as exc:
        print(f"NOT VERIFIED: {exc}", file=sys.stderr)
        return 1
    claims = attestor.last
    assert claims is not None
    if args.write_cert is not None:
        problem = _write_attested_cert(args.gateway, claims.keys.get("tls-spki-sha256"),
                                       args.write_cert)
        if problem:
            print(f"NOT VERIFIED: {problem}", file=sys.stderr)
            return 1
    statement = attestor.last_statement
    log = _log_claims(attestor)
    if args.json:
        print(json.dumps({**as_json(claims, statement, new=attestor.new_statement), **log},
                         indent=2))
    else:
        print(describe(claims, statement, new=attestor.new_statement))
        print(f"transparency log: {log['log']['origin']}, {log['log']['size']} entries "
              f"(verifier key {log['log']['vkey']})")
        if attestor.cosigned_at:
            print(f"cosigned by {len(args.witness)} witness(es), the oldest at "
                  f"{log['log']['cosigned_at']}")
    return 0


def _log_claims(attestor: Attestor) -> dict[str, Any]:
    checkpoint, claims = attestor.checkpoint, attestor.last
    assert checkpoint is not None and claims is not None
    vkey = NoteKey(checkpoint.checkpoint.origin, claims.keys[LOG_KEY]).vkey()
    return {"log": {"origin": checkpoint.checkpoint.origin,
                    "size": checkpoint.checkpoint.size, "vkey": vkey,
                    "cosigned_at": attestor.cosigned_at or None}}
