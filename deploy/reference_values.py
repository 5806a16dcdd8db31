"""From a build to reference values and a signed release statement.

    .venv/bin/python deploy/reference_values.py --key release.key --out-dir release/ \\
        --ovmf OVMF.fd [--kernel vmlinuz --initrd initrd.img --append "..."] \\
        --vcpus 4 --vcpus 8 --vcpu-type EPYC-v4 \\
        [--tdx-mrtd HEX --tdx-rtmr0 HEX ... --tdx-mrseam HEX] \\
        [--version N] [--valid-days 7] [--gpu-required] -- SERVE_FLAGS...

Computes, with the project's own commands: the SEV-SNP launch measurement for every
vCPU count (`cloister measure snp`, sev-snp-measure), the workload digest of the gateway
the SERVE_FLAGS describe (`cloister workload`); takes TDX MRTD/RTMRs from the external
tool that computes them (no Python tool does) and MRSEAM from the TDX module release
(clients refuse a TDX entry that pins no MRSEAM); writes VALUES.toml and signs it
(`cloister release sign`) into statement.json. The gateway serves the statement with
`cloister serve --reference-values statement.json`; clients check it with the release
key's public half.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CLOISTER = [sys.executable, "-m", "cli"]


def _run(*args: str) -> str:
    done = subprocess.run([*CLOISTER, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cloister {args[0]} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def values_toml(args: argparse.Namespace, workload: str) -> str:
    lines = [f"version = {args.version}", f"valid_days = {args.valid_days}",
             f"workloads = {_toml_list([workload])}", ""]
    if args.ovmf is not None:
        lines.append("[platforms.sev-snp]")
        entries = []
        for vcpus in args.vcpus:
            measure = ["measure", "snp", "--ovmf", str(args.ovmf), "--vcpus", str(vcpus),
                       "--vcpu-type", args.vcpu_type]
            for flag in ("kernel", "initrd", "append"):
                if getattr(args, flag) is not None:
                    measure += [f"--{flag}", str(getattr(args, flag))]
            digest = _run(*measure)
            entries.append(f'{{vcpus = {vcpus}, vcpu_type = "{args.vcpu_type}", '
                           f'measurement = "{digest}"}}')
        lines += ["measurements = [" + ", ".join(entries) + "]", "vmpl = 0", ""]
    if args.tdx_mrtd:
        lines += ["[platforms.tdx]", f"mrtd = {_toml_list(args.tdx_mrtd)}"]
        for name in ("rtmr0", "rtmr1", "rtmr2", "mrseam"):
            given = getattr(args, f"tdx_{name}")
            if given:
                lines.append(f"{name} = {_toml_list(given)}")
        lines += ['tcb_statuses = ["UpToDate"]', ""]
    lines += ["[gpu]", f"required = {'true' if args.gpu_required else 'false'}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--key", type=Path, required=True, help="the release private key")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--ovmf", type=Path, default=None)
    parser.add_argument("--kernel", type=Path, default=None)
    parser.add_argument("--initrd", type=Path, default=None)
    parser.add_argument("--append", default=None)
    parser.add_argument("--vcpus", type=int, action="append", default=[])
    parser.add_argument("--vcpu-type", default="EPYC-v4")
    for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "mrseam"):
        parser.add_argument(f"--tdx-{name}", action="append", default=[])
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--valid-days", type=float, default=7)
    parser.add_argument("--gpu-required", action="store_true")
    parser.add_argument("serve_flags", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.ovmf is not None and not args.vcpus:
        parser.error("--ovmf needs at least one --vcpus")
    flags = [f for f in args.serve_flags if f != "--"]
    workload = _run("workload", "--digest-only", *flags).splitlines()[-1]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    values = args.out_dir / "VALUES.toml"
    values.write_text(values_toml(args, workload))
    statement = args.out_dir / "statement.json"
    _run("release", "sign", "--key", str(args.key), "--values", str(values),
         "--out", str(statement))
    print(f"{values}\n{statement}\nworkload {workload}")


if __name__ == "__main__":
    main()
