"""The README and docs/ as a reader meets them: every relative link leads somewhere, the
README stays a short page, and each docs page says first what it holds."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")
PAGES = [ROOT / "README.md", ROOT / "streaming" / "README.md",
         *sorted((ROOT / "docs").glob("*.md"))]


def broken_links(page: Path) -> list[str]:
    found = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (page.parent / target.split("#", 1)[0]).exists():
            found.append(target)
    return found


def test_docs_every_relative_link_leads_to_a_file() -> None:
    assert {p.name: broken_links(p) for p in PAGES if broken_links(p)} == {}


def test_docs_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("x")
    page.write_text("[ok](there.md#top) [web](https://example.com) [gone](docs/nowhere.md)")
    assert broken_links(page) == ["docs/nowhere.md"]


def test_docs_readme_is_a_short_page() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_docs_each_page_opens_with_what_it_holds() -> None:
    for page in sorted((ROOT / "docs").glob("*.md")):
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# ") and lines[1] == "", page.name
        assert lines[2] and not lines[2].startswith(("#", "|", "```", "-")), page.name
