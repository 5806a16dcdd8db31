"""`cloister`: the command line (argument parsing and dispatch).

    cloister serve [--host 127.0.0.1] [--port 8000] [--model PATH_OR_NAME]
                   [--embedding-model auto|none|PATH_OR_NAME] [--tls] [-- VLLM_ENGINE_ARGS...]
    cloister workload [the same flags as serve]       the manifest and digest, nothing started
    cloister proxy --gateway URL ...                  cloister attest --gateway URL ...
    cloister apikey create|list|revoke ...            cloister chatbot create ...
    cloister deploy coco --image REPO@sha256:HEX ... -- [serve flags]   (cli/deploy.py)
    cloister demo-model PATH

This package is the composition root: the only one that imports both the server side
(`gateway`) and the client side (`proxy`). Each command's module: `cli.serve` (serve,
workload, apikey, chatbot), `cli.keyholder`, `cli.release` (release, measure),
`cli.proxy` (proxy, attest, admin), `cli.admin`, `cli.deploy`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from attestation import platforms
from cli import deploy as cli_deploy
from cli import log as cli_log
from cli import proxy as client_cli
from cli import witness as cli_witness
from cli.arguments import Built, add_arguments, build
from gateway.config import KeyholderConfig, ServeConfig
from gateway.options import ConfigError, load_toml


def _add_config_arguments(parser: argparse.ArgumentParser, config_type: type) -> None:
    """Every field of `config_type`, and `--config` (`serve` and `workload` take the same
    ones)."""
    parser.add_argument("--config", type=Path, default=None, metavar="FILE.toml",
                        help="read options from this file (one table a section, as in "
                             "docs/configuration.md); flags override it")
    add_arguments(parser, config_type)


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, ServeConfig, only=("store",))


def _add_release_parsers(sub: Any) -> None:
    """`cloister release ...` and `cloister measure ...`: for a release pipeline."""
    release = sub.add_parser("release", help="make and check signed release statements "
                                             "(reference values)")
    release_sub = release.add_subparsers(dest="action", required=True)
    keygen = release_sub.add_parser("keygen", help="make a release key pair")
    keygen.add_argument("--out", type=Path, required=True,
                        help="private key file (0600); the public key goes to OUT.pub")
    keygen.add_argument("--kind", choices=["ecdsa-p256", "ed25519"], default="ecdsa-p256")
    sign = release_sub.add_parser(
        "sign", help="sign VALUES.toml into a statement; or, with --simulated, sign the "
                     "simulated TEE's values for `cloister serve` with the flags after --")
    sign.add_argument("--key", type=Path, default=None)
    sign.add_argument("--values", type=Path, default=None)
    sign.add_argument("--out", type=Path, default=None)
    sign.add_argument("--simulated", action="store_true",
                      help="DEVELOPMENT: with the simulated release key (in the state "
                           "folder), for the workload `cloister serve --attestation simulated "
                           "SERVE_FLAGS` describes; prints the serve and proxy lines to use")
    sign.add_argument("serve_flags", nargs=argparse.REMAINDER, metavar="-- SERVE_FLAGS")
    values = release_sub.add_parser("values", help="write VALUES.toml from a build's outputs "
                                                   "(attestation/release_values.py)")
    values.add_argument("--out", type=Path, required=True)
    values.add_argument("--version", type=int, required=True,
                        help="the statement version (it must grow from release to release)")
    values.add_argument("--valid-days", type=float, default=7)
    values.add_argument("--workload", action="append", default=[], metavar="HEX")
    values.add_argument("--init-data", action="append", default=[], type=Path,
                        help="a Confidential Containers init-data document (deploy coco)")
    values.add_argument("--snp-measurement", action="append", default=[], metavar="HEX")
    values.add_argument("--ovmf", type=Path, default=None)
    values.add_argument("--vcpus", type=int, action="append", default=[])
    values.add_argument("--vcpu-type", default="EPYC-v4")
    values.add_argument("--kernel", type=Path, default=None)
    values.add_argument("--initrd", type=Path, default=None)
    values.add_argument("--append", default=None, help="the kernel command line")
    values.add_argument("--verity-root", default=None, metavar="HEX",
                        help="the app volume's root hash (deploy/cvm/app-volume.sh)")
    for name in ("mrtd", "mrseam", "rtmr0", "rtmr1", "rtmr2", "rtmr3"):
        values.add_argument(f"--tdx-{name}", action="append", default=[], metavar="HEX")
    values.add_argument("--gpu-rim", action="append", default=[], type=Path,
                        help="an NVIDIA driver or VBIOS RIM (SWID XML)")
    values.add_argument("--gpu-required", action="store_true")
    values.add_argument("--model-digest", action="append", default=[],
                        metavar="NAME=sha256:HEX")
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


class _SuggestingParser(argparse.ArgumentParser):
    """argparse, and for a mistyped flag the closest one the command given takes."""

    argv: Sequence[str] = ()  # what is being parsed (set by `main`)

    def error(self, message: str) -> NoReturn:
        import difflib

        if "unrecognized arguments:" in message:
            command = _command_parser(self, self.argv)
            known = sorted(_option_strings(command))
            for word in message.split(":", 1)[1].split():
                flag = word.split("=")[0]
                if not word.startswith("--") or flag in known:
                    continue
                if flag in _option_strings(self, deep=True):
                    message += f" ({flag} is not an option of `{command.prog}`)"
                    break
                close = difflib.get_close_matches(flag, known, n=1)
                if close:
                    message += f" (did you mean {close[0]}?)"
                    break
            command.print_usage(sys.stderr)  # the usage of the command given, not cloister's
            command.exit(2, f"{command.prog}: error: {message}\n")
        super().error(message)


def _command_parser(parser: argparse.ArgumentParser,
                    argv: Sequence[str]) -> argparse.ArgumentParser:
    """The (sub)parser of the command `argv` names: `cloister release sign ...`'s."""
    for word in argv:
        subparsers = [a for a in parser._actions
                      if isinstance(a, argparse._SubParsersAction)]
        if subparsers and word in subparsers[0].choices:
            parser = subparsers[0].choices[word]
    return parser


def _option_strings(parser: argparse.ArgumentParser, *, deep: bool = False) -> set[str]:
    found: set[str] = set()
    for action in parser._actions:
        found.update(o for o in action.option_strings if o.startswith("--"))
        if deep and isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub, deep=True)
    return found


NEWCOMER = """cloister: a confidential LLM inference gateway. Five commands to start with:

  cloister serve --attestation simulated     run the gateway (make serve does this)
  cloister proxy --gateway URL ...           the encrypting proxy; point the OpenAI SDK at it
  cloister attest --gateway URL ...          verify a gateway and print what it runs
  cloister workload                          the workload digest serve would attest
  cloister receipts list                     the signed receipts your answers carried

`cloister COMMAND --help` for each; README.md for the rest."""


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = _parser()
    parser.argv = list(argv)
    return parser.parse_args(argv)


def _parser() -> _SuggestingParser:
    parser = _SuggestingParser(prog="cloister", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_config_arguments(sub.add_parser(
        "serve", help="run the gateway with its embedded vLLM engine"), ServeConfig)
    workload = sub.add_parser("workload", help="print the workload manifest and digest "
                                               "`serve` with the same flags would attest")
    _add_config_arguments(workload, ServeConfig)
    workload.add_argument("--digest-only", action="store_true",
                          help="print only the digest (lowercase hex)")
    workload.add_argument("--launch-pin", default=None,
                          choices=[*(p.choice for p in platforms.CPU_PLATFORMS), "init-data"],
                          help="print what the host sets at launch to pin this workload: "
                               "QEMU's sev-snp-guest host-data or tdx-guest mrconfigid "
                               "(base64), or a Confidential Containers init-data document")
    client_cli.add_parsers(sub)
    _add_release_parsers(sub)
    cli_deploy.add_parser(sub)
    conformance = sub.add_parser(
        "conformance", help="a third-party conformance suite's adapter: STAGE's input JSON "
                            "on stdin, the output JSON on stdout, the verdict as the exit "
                            "code (0 accept, 10 reject, 20 unsupported, 30 malformed)")
    conformance.add_argument("stage", help="verify-attestation-sev, or capabilities")
    keyholder = sub.add_parser("keyholder", help="hold a fleet's root seed and release it "
                                                 "to attested replicas")
    _add_config_arguments(keyholder, KeyholderConfig)
    keyholder.add_argument("--print-digest", action="store_true",
                           help="print this keyholder's workload digest and exit")

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

    cli_witness.add_parser(sub)
    cli_log.add_parser(sub)
    demo = sub.add_parser("demo-model", help="build the offline demo model into PATH")
    demo.add_argument("path", type=Path)
    return parser


def _configured(config_type: type, args: argparse.Namespace) -> Built:
    """The command's configuration: defaults, then `--config`, then the flags given."""
    document = load_toml(args.config) if getattr(args, "config", None) else {}
    return build(config_type, args, document)  # reads the options' own entries only


def _describe(flags: list[str], env: dict[str, str]) -> bytes:
    """The workload digest of `cloister serve FLAGS` started with `env`."""
    from gateway.launch import LaunchRefused, prepare

    try:
        built = _configured(ServeConfig, _parse(["serve", *flags]))
        return prepare(built.config, env=env).digest
    except (ConfigError, LaunchRefused) as exc:
        raise cli_deploy.DeployError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    if not (sys.argv[1:] if argv is None else argv):
        print(NEWCOMER)
        return 0
    args = _parse(sys.argv[1:] if argv is None else argv)
    command = args.command
    try:
        if command in ("serve", "workload", "apikey", "chatbot"):
            built = _configured(ServeConfig, args)
        elif command == "keyholder":
            built = _configured(KeyholderConfig, args)
    except ConfigError as exc:
        print(f"cloister {command}: {exc}", file=sys.stderr)
        return 2
    if command in ("serve", "workload", "apikey", "chatbot"):
        from cli import serve as cli_serve

        if command == "serve":
            return cli_serve.serve(built.config, overridden=built.overridden)
        if command == "workload":
            return cli_serve.run_workload(built.config, digest_only=args.digest_only,
                                          launch_pin=args.launch_pin)
        if command == "apikey":
            return cli_serve.run_apikey(built.config, args)
        return cli_serve.run_chatbot(built.config, args)
    if command == "deploy":
        return cli_deploy.run(args, _describe)
    if command == "conformance":
        import json

        from attestation.conformance import run as run_conformance

        code, output = run_conformance(args.stage, sys.stdin.read())
        print(json.dumps(output))
        return code
    if command == "release" and args.action == "sign" and args.simulated:
        from cli import release as cli_release

        flags = args.serve_flags[1:] if args.serve_flags[:1] == ["--"] else args.serve_flags
        if "--attestation" not in flags:
            flags = ["--attestation", "simulated", *flags]
        try:
            built = _configured(ServeConfig, _parse(["serve", *flags]))
        except ConfigError as exc:
            print(f"cloister release sign: {exc}", file=sys.stderr)
            return 2
        return cli_release.sign_simulated(built.config, flags, args.out)
    if command in ("release", "measure"):
        from cli import release as cli_release

        return cli_release.run(args)
    if command == "keyholder":
        from cli import keyholder as cli_keyholder

        return cli_keyholder.run(built.config, print_digest=args.print_digest,
                                 overridden=built.overridden)
    if command in ("proxy", "attest", "admin", "receipts"):
        return client_cli.run(args)
    if command == "witness":
        return cli_witness.run(args)
    if command == "log":
        return cli_log.run(args)
    if command == "demo-model":
        from enclave.demo_model import build_demo_model

        print(build_demo_model(args.path))
        return 0
    return 2

if __name__ == "__main__":
    sys.exit(main())
