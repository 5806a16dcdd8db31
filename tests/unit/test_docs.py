"""The front door (issue 33): a README a newcomer reads in five minutes, and documents
whose links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "CHANGELOG.md",
             *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_is_at_most_150_lines_and_links_every_document() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for name in ("docs/using.md", "docs/operating.md", "docs/configuration.md",
                 "docs/protocols.md", "docs/security.md", "docs/benchmarks.md",
                 "ARCHITECTURE.md", "CHANGELOG.md"):
        assert f"]({name})" in readme, name


def test_every_relative_link_in_the_documents_leads_to_a_file() -> None:
    broken = []
    for document in DOCUMENTS:
        for target in LINK.findall(document.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            if not (document.parent / target).exists():
                broken.append(f"{document.relative_to(ROOT)} -> {target}")
    assert broken == []


OFFLINE = re.compile(r"^```sh offline\n(.*?)^```", re.S | re.M)


@pytest.mark.slow  # runs every offline command as its own process
def test_every_command_shown_for_offline_use_runs(tmp_path) -> None:
    """The fenced blocks marked `sh offline` in README and docs, each line run as a user
    would (a clean environment, a fresh state folder), exit 0."""
    import subprocess
    import sys

    from tests.environment import clean_environment

    commands = [line.split("#")[0].strip() for document in DOCUMENTS
                for block in OFFLINE.findall(document.read_text())
                for line in block.splitlines() if line.split("#")[0].strip()]
    assert len(commands) >= 3
    env = {**clean_environment(), "CLOISTER_STATE": str(tmp_path / "state"),
           "CLOISTER_CACHE": str(ROOT / ".cache")}
    # what the `cloister` entry point runs, from a folder of the user's own
    entry = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from cli.main import main; "
             "sys.exit(main())")
    for command in commands:
        words = command.split()
        assert words[0] == "cloister", command
        done = subprocess.run([sys.executable, "-c", entry, *words[1:]], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}: {done.stderr[-500:]}"
