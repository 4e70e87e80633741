"""README.md and docs/: every relative link resolves to a file (and heading) in the repo."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "ops").glob("**/README.md")]
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def links(path: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", path.read_text()))


def dead_links(path: Path, root: Path = ROOT) -> list[str]:
    """The links in `path` that leave the repo or point at a missing file or heading."""
    dead = []
    for target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...: not relative
            continue
        name, _, anchor = target.partition("#")
        dest = (path.parent / name).resolve() if name else path
        if not dest.is_relative_to(root.resolve()) or not dest.exists():
            dead.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            dead.append(target)
    return dead


def test_slug_follows_github():
    """Anchors are made as GitHub makes them, so a link to a heading can be checked."""
    assert slug("Metrics (`/metrics`)") == "metrics-metrics"
    assert slug("create — start a stream") == "create--start-a-stream"
    assert slug("Inside the server (for contributors)") == "inside-the-server-for-contributors"


def test_checker_finds_dead_links(tmp_path):
    """A missing file, a missing heading and a path out of the repo are all reported."""
    (tmp_path / "b.md").write_text("# Here\n")
    doc = tmp_path / "a.md"
    doc.write_text(
        "[ok](b.md) [ok](b.md#here) [gone](c.md) [no heading](b.md#there) "
        "[outside](../x.md) [web](https://example.org) [self](#top)\n# Top\n"
        "```\n[in code](nowhere.md)\n```\n"
    )
    assert dead_links(doc, tmp_path) == ["c.md", "b.md#there", "../x.md"]


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_no_dead_relative_links(path):
    """Every relative link of this document resolves inside the repository."""
    assert dead_links(path) == []
