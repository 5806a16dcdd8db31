"""`cloister`: the command line (argument parsing and dispatch).

    cloister serve [--host 127.0.0.1] [--port 8000] [--model PATH_OR_NAME]
                   [--embedding-model auto|none|PATH_OR_NAME] [--tls] [-- VLLM_ENGINE_ARGS...]
    cloister workload [the same flags as serve]       the manifest and digest, nothing started
    cloister proxy --gateway URL ...                  cloister attest --gateway URL ...
    cloister apikey create|list|revoke ...            cloister chatbot create ...
    cloister demo-model PATH

The gateway's commands live in `cli_serve.py`; the user-side ones (`proxy`, `attest`) in
`proxy/cli.py`, the one place the server package reaches the client package (this entry
point dispatches to both).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enclave.keys import DEFAULT_GRACE_SECONDS, DEFAULT_ROTATION_SECONDS
from gateway.settings import DEFAULT_MAX_BODY_BYTES
from proxy import cli as client_cli


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
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


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="local path or hub name (downloaded first, then served from the "
                             "verified local copy); default: the offline demo model")
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--embedding-model", default="auto",
                        help="'auto' (packaged all-MiniLM-L6-v2 if installed), 'none', or a "
                             "path or hub name")
    parser.add_argument("--model-digest", default=None, metavar="sha256:HEX",
                        help="refuse to serve a model whose digest differs")
    parser.add_argument("--model-signature", type=Path, default=None,
                        help="an OpenSSF model signature to verify (offline) before serving")
    parser.add_argument("--model-signing-key", type=Path, default=None,
                        help="the signer's public key (PEM) for --model-signature")
    parser.add_argument("--model-signing-certificate-chain", type=Path, action="append",
                        default=[], help="a certificate chain (PEM) that --model-signature's "
                                         "certificate must chain to (repeatable)")
    parser.add_argument("--model-verity-root", default=None, metavar="HEX",
                        help="the dm-verity root hash of the read-only volume the model is "
                             "served from (deploy/model-volume.sh), recorded in the manifest")


def _add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """Every flag that shapes the workload: `serve` and `workload` take the same ones."""
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    _add_model_arguments(serve)
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
    serve.add_argument("--reference-values", type=Path, action="append", default=[],
                       metavar="STATEMENT.json",
                       help="a signed release statement to serve to clients (repeatable; "
                            "`cloister release sign` makes one)")
    serve.add_argument("--pccs-url", default=None, metavar="URL",
                       help="TDX: where to fetch Intel collateral (PCS API v4 or a PCCS; "
                            "default Intel's PCS)")
    serve.add_argument("--amd-kds-url", default=None, metavar="URL",
                       help="SEV-SNP: where to fetch AMD's CRL (default AMD's KDS)")
    serve.add_argument("--launch-init-data", type=Path, default=None,
                       help="Confidential Containers: the init-data document whose hash the "
                            "host put in HOST_DATA / MRCONFIGID (it names the workload digest)")
    serve.add_argument("--simulated-host-data", default="auto", metavar="auto|none|HEX",
                       help="with the simulated TEE: what the simulated host pinned at launch "
                            "(auto: this workload's digest; none: nothing)")
    serve.add_argument("--max-in-flight", type=int, default=256,
                       help="requests served at once before 503 overloaded")
    serve.add_argument("--max-per-client", type=int, default=64,
                       help="concurrent requests per client address before 429")
    serve.add_argument("--max-engine-queue", type=int, default=512,
                       help="engine backlog past which new work gets 503")
    serve.add_argument("--body-timeout", type=float, default=30.0,
                       help="seconds a client has to send its whole body (408 after)")
    serve.add_argument("--head-timeout", type=float, default=10.0,
                       help="seconds a connection has to send a complete request head "
                            "(closed after; heads over 32 KiB are refused with 400)")
    serve.add_argument("--write-timeout", type=float, default=20.0,
                       help="seconds a stream may wait on a reader that stopped reading "
                            "(then its engine request is aborted and its slot freed)")
    serve.add_argument("--max-tokens", type=int, default=None,
                       help="cap on max_tokens a request may ask for")
    serve.add_argument("--metrics-port", type=int, default=None,
                       help="serve /metrics on this port (a scrape-only listener)")
    serve.add_argument("--metrics-host", default="127.0.0.1",
                       help="the metrics listener's address (default loopback)")
    serve.add_argument("--metrics-token-file", type=Path, default=None,
                       help="also serve /metrics on the public listener, to requests that "
                            "carry this file's token as `Authorization: Bearer`")
    serve.add_argument("--admin-public-key", type=Path, default=None,
                       help="the operator's Ed25519 admin key (`cloister admin keygen`): "
                            "signed admin requests on the TLS listener; pinned in the "
                            "workload manifest")
    serve.add_argument("--join", action="append", default=[], metavar="URL",
                       help="a fleet replica: obtain the fleet's seed from this attested "
                            "keyholder (repeatable) and derive every key from it")
    serve.add_argument("--release-key", type=Path, action="append", default=[],
                       help="with --join: the keys the --reference-values statements are "
                            "signed with (they must name the keyholder's workload)")
    serve.add_argument("--forwarded-allow-ips", default=None,
                       help="trust X-Forwarded-* headers only from these addresses (a "
                            "front the operator runs); off by default")
    serve.add_argument("--padding", default="pow2:256", metavar="off|pow2:N|fixed:N",
                       help="pad every sealed plaintext to a size bucket (default pow2:256)")
    serve.add_argument("--stream-interval-ms", type=float, default=50.0,
                       help="send streamed tokens together every interval (0: as they come)")
    serve.add_argument("--constant-rate", action="store_true",
                       help="send a padded chunk every stream interval, token or not")
    serve.add_argument("--replay-window-seconds", type=float, default=120.0,
                       help="refuse requests dated further than this from the gateway's clock")
    serve.add_argument("--replay-cache-entries", type=int, default=500_000,
                       help="requests remembered against replays (about 150 bytes each)")
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
    serve.add_argument("--workers", type=_positive, default=1, metavar="N",
                       help="gateway processes (HTTP, crypto, framing) in front of one engine "
                            "core per model, on vLLM's multi-API-server machinery; they share "
                            "keys, replay records, state and metrics")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("engine_args", nargs=argparse.REMAINDER,
                       help="after `--`: arguments for the vLLM engine (e.g. --max-model-len); "
                            "only an allow-list of them is accepted inside the enclave")


def _add_release_parsers(sub: Any) -> None:
    """`cloister release ...` and `cloister measure ...`: for a release pipeline."""
    release = sub.add_parser("release", help="make and check signed release statements "
                                             "(reference values)")
    release_sub = release.add_subparsers(dest="action", required=True)
    keygen = release_sub.add_parser("keygen", help="make a release key pair")
    keygen.add_argument("--out", type=Path, required=True,
                        help="private key file (0600); the public key goes to OUT.pub")
    keygen.add_argument("--kind", choices=["ecdsa-p256", "ed25519"], default="ecdsa-p256")
    sign = release_sub.add_parser("sign", help="sign VALUES.toml into a statement")
    sign.add_argument("--key", type=Path, required=True)
    sign.add_argument("--values", type=Path, required=True)
    sign.add_argument("--out", type=Path, required=True)
    verify = release_sub.add_parser("verify", help="check a statement's signature and dates")
    verify.add_argument("statement", type=Path)
    verify.add_argument("--release-key", type=Path, action="append", required=True)

    measure = sub.add_parser("measure", help="compute expected launch measurements")
    measure_sub = measure.add_subparsers(dest="platform", required=True)
    snp = measure_sub.add_parser("snp", help="an SEV-SNP launch measurement "
                                             "(sev-snp-measure)")
    snp.add_argument("--ovmf", type=Path, required=True)
    snp.add_argument("--kernel", type=Path, default=None)
    snp.add_argument("--initrd", type=Path, default=None)
    snp.add_argument("--append", default=None, help="the kernel command line")
    snp.add_argument("--vcpus", type=int, required=True)
    snp.add_argument("--vcpu-type", required=True, help="e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa")
    snp.add_argument("--vmm-type", choices=["QEMU", "ec2", "gce"], default="QEMU")
    snp.add_argument("--guest-features", default="0x1")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloister", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve_arguments(sub.add_parser(
        "serve", help="run the gateway with its embedded vLLM engine"))
    workload = sub.add_parser("workload", help="print the workload manifest and digest "
                                               "`serve` with the same flags would attest")
    _add_serve_arguments(workload)
    workload.add_argument("--digest-only", action="store_true",
                          help="print only the digest (lowercase hex)")
    workload.add_argument("--launch-pin", choices=["snp", "tdx", "init-data"], default=None,
                          help="print what the host sets at launch to pin this workload: "
                               "QEMU's sev-snp-guest host-data or tdx-guest mrconfigid "
                               "(base64), or a Confidential Containers init-data document")
    client_cli.add_parsers(sub)
    _add_release_parsers(sub)
    from gateway import cli_keyholder

    cli_keyholder.add_parser(sub)

    apikey = sub.add_parser("apikey", help="manage the platform API's keys")
    apikey_sub = apikey.add_subparsers(dest="action", required=True)
    create = apikey_sub.add_parser("create", help="make a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--account", default="default",
                        help="the account (name or id) the key belongs to; made if new")
    create.add_argument("--budget-tokens", type=int, default=None)
    apikey_sub.add_parser("list", help="list keys (never the keys themselves)")
    revoke = apikey_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    for sub_parser in apikey_sub.choices.values():
        _add_store_arguments(sub_parser)

    chatbot = sub.add_parser("chatbot", help="manage the platform API's chatbots")
    chatbot_sub = chatbot.add_subparsers(dest="action", required=True)
    bot_create = chatbot_sub.add_parser("create")
    bot_create.add_argument("--name", required=True)
    bot_create.add_argument("--model", required=True)
    bot_create.add_argument("--system-prompt", required=True)
    bot_create.add_argument("--description", default="")
    bot_create.add_argument("--account", default="default",
                            help="the account (name or id) the chatbot belongs to")
    _add_store_arguments(bot_create)

    demo = sub.add_parser("demo-model", help="build the offline demo model into PATH")
    demo.add_argument("path", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from gateway import cli_serve

        # What the simulated TEE's release statement covers: these flags' defaults.
        defaults = _parser().parse_args(["serve", "--attestation", args.attestation])
        return cli_serve.serve(args, defaults=defaults)
    if args.command in ("workload", "apikey", "chatbot"):
        from gateway import cli_serve

        return {"workload": cli_serve.run_workload, "apikey": cli_serve.run_apikey,
                "chatbot": cli_serve.run_chatbot}[args.command](args)
    if args.command in ("release", "measure"):
        from gateway import cli_release

        return cli_release.run(args)
    if args.command == "keyholder":
        from gateway import cli_keyholder

        return cli_keyholder.run(args)
    if args.command in ("proxy", "attest", "admin"):
        return client_cli.run(args)
    if args.command == "demo-model":
        from enclave.demo_model import build_demo_model

        print(build_demo_model(args.path))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
