"""`cloister release keygen|sign|verify` and `cloister measure snp`: what a release
pipeline runs to publish reference values (`attestation/statement.py`,
`attestation/measure.py`)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attestation.errors import VerificationError
from attestation.measure import MeasureError, snp_launch_measurement
from attestation.statement import (
    generate_key,
    key_id,
    load_private_key,
    load_public_keys,
    load_values,
    private_pem,
    public_pem,
    sign_statement,
    verify_statement,
)

if TYPE_CHECKING:
    from gateway.config import ServeConfig


def run(args: argparse.Namespace) -> int:
    if args.command == "measure":
        return _measure(args)
    return {"keygen": _keygen, "sign": _sign, "verify": _verify,
            "values": _values}[args.action](args)


def _keygen(args: argparse.Namespace) -> int:
    key = generate_key(args.kind)
    out: Path = args.out
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem(key))
    out.with_name(out.name + ".pub").write_bytes(public_pem(key.public_key()))
    print(f"release key {key_id(key.public_key())}\n  private: {out}\n  public:  {out}.pub")
    return 0


def _sign(args: argparse.Namespace) -> int:
    if args.key is None or args.values is None or args.out is None or args.serve_flags:
        print("cloister release sign: --key, --values and --out (or --simulated -- "
              "SERVE_FLAGS)", file=sys.stderr)
        return 2
    try:
        values = load_values(args.values, now=dt.datetime.now(dt.UTC))
        envelope = sign_statement(values, load_private_key(args.key.read_bytes()))
    except (ValueError, OSError) as exc:
        print(f"cloister release sign: {exc}", file=sys.stderr)
        return 2
    args.out.write_bytes(envelope)
    assert values.valid_until is not None
    print(f"signed version {values.version} for {len(values.workloads)} workload(s), valid "
          f"until {values.valid_until:%Y-%m-%dT%H:%M:%SZ}: {args.out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    keys = {}
    for path in args.release_key:
        keys.update(load_public_keys(path.read_bytes()))
    try:
        verified = verify_statement(args.statement.read_bytes(), keys,
                                    now=dt.datetime.now(dt.UTC))
    except VerificationError as exc:
        print(f"NOT VERIFIED: {exc}", file=sys.stderr)
        return 1
    values = verified.values
    assert values.valid_until is not None
    print(f"VERIFIED statement sha256:{verified.digest}\n  version {values.version}, signed "
          f"by {verified.key_id}, valid until {values.valid_until:%Y-%m-%dT%H:%M:%SZ}\n"
          f"  platforms: {', '.join(sorted(values.platforms))}\n"
          f"  workloads: {', '.join(sorted(values.workloads))}")
    return 0


def _measure(args: argparse.Namespace) -> int:
    try:
        measurement = snp_launch_measurement(
            args.ovmf, vcpus=args.vcpus, vcpu_type=args.vcpu_type, kernel=args.kernel,
            initrd=args.initrd, append=args.append, vmm_type=args.vmm_type,
            guest_features=int(args.guest_features, 0))
    except MeasureError as exc:
        print(f"cloister measure: {exc}", file=sys.stderr)
        return 2
    print(measurement)
    return 0


def _values(args: argparse.Namespace) -> int:
    from attestation.release_values import Build, reference_values
    from attestation.rim import RimError

    models: dict[str, list[str]] = {}
    try:
        for entry in args.model_digest:
            name, sep, digest = entry.partition("=")
            if not sep:
                raise ValueError(f"--model-digest {entry!r} is not NAME=sha256:HEX")
            models.setdefault(name, []).append(digest.lower())
        build = Build(
            args.version, args.valid_days, args.workload, args.init_data,
            args.snp_measurement, args.ovmf, args.vcpus, args.vcpu_type, args.kernel,
            args.initrd, args.append, args.verity_root,
            {n: getattr(args, f"tdx_{n}") for n in ("mrtd", "mrseam", "rtmr0", "rtmr1",
                                                    "rtmr2", "rtmr3")},
            args.gpu_rim, args.gpu_required, models)
        values = reference_values(build)
    except (ValueError, RimError, MeasureError, OSError, VerificationError) as exc:
        print(f"cloister release values: {exc}", file=sys.stderr)
        return 2
    args.out.write_text(toml_document(values))
    print(f"{args.out}: version {values['version']}, workloads "
          f"{', '.join(values['workloads'])}; platforms {', '.join(values['platforms'])}")
    return 0


def toml_document(table: dict[str, Any]) -> str:
    """`table` as TOML (the shapes reference values have): scalars and arrays first,
    then each sub-table as a [section]. Hand-written: the standard library reads TOML
    but does not write it, and this needs only these shapes."""
    return "\n".join(_toml_table(table, ())) + "\n"


def _toml_table(table: dict[str, Any], path: tuple[str, ...]) -> list[str]:
    lines = [f"[{'.'.join(_toml_key(p) for p in path)}]"] if path else []
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()
              if not isinstance(v, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            lines += ["", *_toml_table(value, (*path, key))]
    return lines


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "_-" for c in key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for what JSON escapes here
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {type(value).__name__}")


def sign_simulated(config: ServeConfig, flags: list[str], out: Path | None) -> int:
    """`cloister release sign --simulated -- SERVE_FLAGS`: a statement for that workload on
    the simulated TEE, signed with the simulated release key; prints the lines to run."""
    import shlex

    from attestation.simulated import release as simulated_release
    from cli.serve import _launch, simulated_roots

    if not config.attestation.simulated:
        print("cloister release sign: --simulated signs for the simulated TEE only "
              "(--attestation simulated)", file=sys.stderr)
        return 2
    launch = _launch(config, "release sign")
    if launch is None:
        return 2
    state = config.store.folder()
    digest = launch.digest.hex()
    envelope, version = simulated_release.sign_for(state, digest,
                                                   now=dt.datetime.now(dt.UTC))
    target = out or state / f"simulated-statement-{digest[:12]}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(envelope)
    simulated_roots(state)
    listen = config.listeners
    scheme, port = ("https", listen.tls_port) if listen.tls else ("http", listen.port)
    print(f"signed version {version} for workload {digest}: {target}\n\n"
          f"  cloister serve --reference-values {shlex.quote(str(target))} "
          f"{shlex.join(flags)}\n"
          f"  cloister proxy --gateway {scheme}://127.0.0.1:{port} --simulated-roots "
          f"{shlex.quote(str(state / 'simulated-roots.pem'))}")
    return 0
