"""`cloister release keygen|sign|verify` and `cloister measure snp`: what a release
pipeline runs to publish reference values (`attestation/statement.py`,
`attestation/measure.py`)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

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


def run(args: argparse.Namespace) -> int:
    if args.command == "measure":
        return _measure(args)
    return {"keygen": _keygen, "sign": _sign, "verify": _verify}[args.action](args)


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
