"""The front door (issue 33): a README a newcomer reads in five minutes, and documents
whose links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

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
