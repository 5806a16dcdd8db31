"""Cloister's wheel, built as an image build would (`pip wheel .`) from a copy of the
checkout, so that the build leaves nothing in it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(folder: Path) -> Path:
    source = folder / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", ".cache", "build", "*.egg-info", "__pycache__", "node_modules"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--disable-pip-version-check", "-w", str(folder / "wheel"), str(source)],
        capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    shutil.rmtree(source)
    return next((folder / "wheel").glob("cloister-*.whl"))
