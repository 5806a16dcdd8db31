"""The wheel is what the container image installs (`pip install .`): it must hold every
module of the five packages and their data, or the image cannot start what the
editable install of development runs happily (two dialects were missing once)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from tests.wheel import build_wheel

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cli", "gateway", "enclave", "attestation", "proxy")


def test_the_wheel_holds_every_module_and_data_file(tmp_path) -> None:
    shipped = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    wanted = {path.relative_to(ROOT).as_posix() for package in PACKAGES
              for path in (ROOT / package).rglob("*")
              if path.is_file() and "__pycache__" not in path.parts}
    assert wanted - shipped == set()
