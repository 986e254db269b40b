"""The manual builds without a broken link, and the README's links land on real pages and headings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {github_slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", target)]


def test_the_manual_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "evaluation" / "index.html").is_file()
    assert (tmp_path / "site" / "experiments" / "results_demo" / "index.html").is_file()


def test_readme_links_land_on_files_and_headings() -> None:
    readme = REPO / "README.md"
    links = relative_links(readme)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        path, _, anchor = link.partition("#")
        target = REPO / path
        assert target.exists(), f"README links to {path}, which does not exist"
        if anchor:
            assert anchor in anchors(target), f"README links to {link}: no such heading in {path}"


def test_the_anchor_check_can_fail(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Sweeps and TensorBoard\n")
    assert anchors(page) == {"title", "sweeps-and-tensorboard"}
    assert github_slug("Does it help? Not yet shown") == "does-it-help-not-yet-shown"


def test_the_readme_is_an_entry_point_not_a_manual() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text) < 15_000
    assert "make demo" in text and "make test" in text
    assert not re.search(r"\b\d+ tests\b", text), "test counts drift: keep them out of the README"
