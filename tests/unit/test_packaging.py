"""The wheel is what the container image installs (`pip install .`): it must hold every
module of the five packages and their data, or the image cannot start what the
editable install of development runs happily (two dialects were missing once)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cli", "gateway", "enclave", "attestation", "proxy")


def test_the_wheel_holds_every_module_and_data_file(tmp_path) -> None:
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", ".cache", "build", "*.egg-info", "__pycache__", "node_modules"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(tmp_path / "wheel"), str(source)],
        capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "wheel").glob("cloister-*.whl"))
    shipped = set(zipfile.ZipFile(wheel).namelist())
    wanted = {path.relative_to(ROOT).as_posix() for package in PACKAGES
              for path in (ROOT / package).rglob("*")
              if path.is_file() and "__pycache__" not in path.parts}
    assert wanted - shipped == set()
