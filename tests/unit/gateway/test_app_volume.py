"""The plain CVM's measured path (issue 27): Cloister from its wheel in a read-only
squashfs under dm-verity (deploy/cvm/app-volume.sh), reproducible and tamper-evident, its
root hash on the kernel command line that the SEV-SNP launch measurement covers."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from attestation.measure import snp_launch_measurement
from tests.wheel import ROOT, build_wheel

pytestmark = pytest.mark.slow  # outside processes or a browser: `-m "not slow"` skips it

SCRIPT = ROOT / "deploy" / "cvm" / "app-volume.sh"


def _volume(wheel: Path, out: Path) -> str:
    done = subprocess.run([str(SCRIPT), str(wheel), str(out)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> tuple[Path, str, Path, str]:
    folder = tmp_path_factory.mktemp("volume")
    wheel = build_wheel(folder)
    first, second = folder / "a" / "app", folder / "b" / "app"
    first.parent.mkdir()
    second.parent.mkdir()
    return first, _volume(wheel, first), second, _volume(wheel, second)


def test_the_volume_is_reproducible(volumes) -> None:
    first, first_root, second, second_root = volumes
    assert len(first_root) == 64 and first_root == second_root
    assert Path(f"{first}.img").read_bytes() == Path(f"{second}.img").read_bytes()


def test_veritysetup_refuses_a_flipped_byte(volumes, tmp_path) -> None:
    first, root, _, _ = volumes
    verify = [str(SCRIPT), "--verify"]
    assert subprocess.run([*verify, str(first), root], capture_output=True).returncode == 0
    image = bytearray(Path(f"{first}.img").read_bytes())
    image[len(image) // 2] ^= 0x01
    tampered = tmp_path / "app"
    Path(f"{tampered}.img").write_bytes(bytes(image))
    Path(f"{tampered}.verity").write_bytes(Path(f"{first}.verity").read_bytes())
    refused = subprocess.run([*verify, str(tampered), root], capture_output=True, text=True)
    assert refused.returncode != 0


def test_the_volume_holds_cloister_as_a_virtual_environment(volumes, tmp_path) -> None:
    first, _, _, _ = volumes
    listing = subprocess.run(["unsquashfs", "-l", "-d", "", f"{first}.img"],
                             capture_output=True, text=True, timeout=60).stdout.split()
    for package in ("cli", "gateway", "enclave", "attestation", "proxy"):
        assert any(p.endswith(f"/site-packages/{package}/__init__.py") for p in listing)
    assert "/pyvenv.cfg" in listing and "/bin/cloister" in listing
    assert not any(p.endswith("direct_url.json") or ".pyc" in p for p in listing)
    subprocess.run(["unsquashfs", "-q", "-d", str(tmp_path / "x"), f"{first}.img",
                    "bin/cloister"], check=True, capture_output=True, timeout=60)
    assert (tmp_path / "x" / "bin" / "cloister").read_text().startswith(
        "#!/opt/cloister/bin/python\n")


# --- the measurement covers the root hash --------------------------------------------------

FOOTER = "96b582de-1fb2-45f7-baea-a366c55a082d"
HASH_TABLE = "7255371f-3a3b-4b04-927b-1da6efa8d454"
RESET_BLOCK = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
METADATA = "dc886566-984a-4798-a75e-5585a7bf67cc"


def firmware_with_kernel_hashes(path: Path) -> Path:
    """A test double of an OVMF built for kernel hashes (edk2's AmdSevX64, which Debian
    does not ship): 64 KiB at the top of 4 GiB whose GUID table and SEV metadata declare
    the pages a real one does, among them the kernel-hashes page that makes the launch
    measurement cover the kernel, initrd and command line. sev-snp-measure computes the
    measurement over it exactly as over the real one."""
    size = 64 * 1024
    image = bytearray(size)
    sections = [(0x800000, 0x1000, 1), (0x801000, 0x1000, 2), (0x802000, 0x1000, 3),
                (0x80F000, 0x1000, 0x10)]  # SEC memory, secrets, CPUID, kernel hashes
    metadata = b"ASEV" + struct.pack("<III", 16 + 12 * len(sections), 1, len(sections)) \
        + b"".join(struct.pack("<III", *s) for s in sections)
    metadata_at = 0x1000
    image[metadata_at:metadata_at + len(metadata)] = metadata

    def entry(guid: str, data: bytes) -> bytes:
        return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le

    table = (entry(RESET_BLOCK, struct.pack("<I", 0xFFFFF000))
             + entry(METADATA, struct.pack("<I", size - metadata_at))
             + entry(HASH_TABLE, struct.pack("<II", 0x80FC00, 0x400)))
    footer = struct.pack("<H", len(table) + 18) + uuid.UUID(FOOTER).bytes_le
    end = size - 32
    image[end - 18 - len(table):end] = table + footer
    path.write_bytes(bytes(image))
    return path


def test_the_launch_measurement_covers_the_root_hash(volumes, tmp_path) -> None:
    _, root, _, _ = volumes
    firmware = firmware_with_kernel_hashes(tmp_path / "OVMF.amdsev.fd")
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"a kernel" * 512)
    initrd.write_bytes(b"an initrd" * 512)

    def measured(append: str) -> str:
        return snp_launch_measurement(firmware, vcpus=2, vcpu_type="EPYC-v4", kernel=kernel,
                                      initrd=initrd, append=append)

    ours = measured(f"console=ttyS0 cloister.app_roothash={root}")
    assert ours == measured(f"console=ttyS0 cloister.app_roothash={root}")
    assert ours != measured(f"console=ttyS0 cloister.app_roothash={'0' * 64}")
