"""`cloister release values` (issue 27): a build's outputs (init-data documents, workload
digests, launch measurements with the app volume's root hash, NVIDIA's RIMs) become
VALUES.toml without a measurement copied by hand, and the values hold what was built."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from attestation.init_data import InitData, document
from attestation.measure import snp_launch_measurement
from attestation.statement import load_values
from cli.main import main
from tests.unit.gateway.test_app_volume import firmware_with_kernel_hashes

NOW = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"


def rim(version: str, measurements: dict[int, list[str]], *, inactive: int | None = None
        ) -> bytes:
    """A RIM shaped as NVIDIA's RIM service serves them (SWID tag, unsigned here)."""
    resources = "".join(
        f'<Resource type="Measurement" index="{i}" active="{"False" if i == inactive else "True"}"'
        f' alternatives="{len(hs)}" '
        + " ".join(f'Hash{n}="{h}"' for n, h in enumerate(hs)) + "/>"
        for i, hs in measurements.items())
    return (f'<?xml version="1.0" encoding="UTF-8"?><SoftwareIdentity xmlns="{SWID}" '
            f'name="GH100" tagId="rim" version="{version}"><Meta colloquialVersion="{version}" '
            f'product="GH100"/><Payload>{resources}</Payload></SoftwareIdentity>').encode()


def _values(tmp_path: Path, *args: str) -> tuple[int, Path]:
    out = tmp_path / "VALUES.toml"
    return main(["release", "values", "--out", str(out), "--version", "4", *args]), out


def test_a_coco_build_with_rims_becomes_values(tmp_path, capsys) -> None:
    workload = bytes.fromhex("ab" * 32)
    init_data = tmp_path / "init-data.toml"
    init_data.write_bytes(document(workload, policy="package agent_policy\n"))
    driver, vbios = tmp_path / "driver.xml", tmp_path / "vbios.xml"
    driver.write_bytes(rim("550.90.07", {12: ["aa" * 48], 13: ["bb" * 48, "cc" * 48]}))
    vbios.write_bytes(rim("96.00.9f.00.01", {0: ["dd" * 48], 1: ["ee" * 48]}, inactive=1))
    code, out = _values(tmp_path, "--init-data", str(init_data), "--snp-measurement",
                        "AB" * 48, "--gpu-rim", str(driver), "--gpu-rim", str(vbios),
                        "--model-digest", "demo=sha256:" + "ef" * 32)
    assert code == 0, capsys.readouterr().err
    values = load_values(out, now=NOW)
    assert values.version == 4 and values.valid_until == NOW + dt.timedelta(days=7)
    assert values.workloads == frozenset({workload.hex()})
    assert values.init_data == frozenset({InitData.parse(init_data.read_bytes()).digest})
    assert values.platforms["sev-snp"].measurements == frozenset({"ab" * 48})
    gpu = values.gpu
    assert gpu.required and gpu.drivers == frozenset({"550.90.07"})
    assert gpu.vbios == frozenset({"96.00.9F.00.01"})
    # a RIM's index counts from 0, the report's blocks from 1; inactive ones are not values
    assert gpu.measurements == {13: frozenset({"aa" * 48}), 14: frozenset({"bb" * 48, "cc" * 48}),
                                1: frozenset({"dd" * 48})}
    assert values.model_digests == {"demo": frozenset({"sha256:" + "ef" * 32})}


def test_the_app_volumes_root_hash_is_measured_into_the_values(tmp_path, capsys) -> None:
    firmware = firmware_with_kernel_hashes(tmp_path / "OVMF.fd")
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"k" * 4096)
    initrd.write_bytes(b"i" * 4096)
    root = "12" * 32
    code, out = _values(tmp_path, "--workload", "ab" * 32, "--ovmf", str(firmware),
                        "--vcpus", "2", "--vcpus", "4", "--kernel", str(kernel), "--initrd",
                        str(initrd), "--append", "console=ttyS0", "--verity-root", root)
    assert code == 0, capsys.readouterr().err
    measured = load_values(out, now=NOW).platforms["sev-snp"].measurements
    expected = {snp_launch_measurement(firmware, vcpus=n, vcpu_type="EPYC-v4", kernel=kernel,
                                       initrd=initrd,
                                       append=f"console=ttyS0 cloister.app_roothash={root}")
                for n in (2, 4)}
    assert measured == frozenset(expected)
    other = snp_launch_measurement(firmware, vcpus=2, vcpu_type="EPYC-v4", kernel=kernel,
                                   initrd=initrd,
                                   append=f"console=ttyS0 cloister.app_roothash={'34' * 32}")
    assert other not in measured


@pytest.mark.parametrize(("args", "said"), [
    (("--snp-measurement", "ab" * 48), "no workload"),
    (("--workload", "ab" * 32), "no platform"),
    (("--workload", "ab" * 32, "--tdx-mrtd", "ab" * 48), "--tdx-mrseam"),
    (("--workload", "ab" * 32, "--snp-measurement", "ab" * 48, "--verity-root", "12" * 32),
     "--ovmf"),
    (("--workload", "ab" * 32, "--snp-measurement", "ab" * 48, "--gpu-rim", "RIM"),
     "not XML"),
])
def test_what_cannot_make_values_is_refused_and_writes_nothing(tmp_path, capsys, args,
                                                               said) -> None:
    (tmp_path / "RIM").write_text("not a rim")
    args = tuple(str(tmp_path / "RIM") if a == "RIM" else a for a in args)
    code, out = _values(tmp_path, *args)
    assert code == 2 and said in capsys.readouterr().err and not out.exists()
