"""The mathematical notes are where the code says: every ``docs/math.md#<anchor>``
cited in the repository is a heading of ``docs/math.md``, and no file cites a
notes file outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATH = ROOT / "docs" / "math.md"
CITATION = re.compile(r"docs/math\.md#([A-Za-z0-9_-]+)")
LINK = re.compile(r"\]\(#([A-Za-z0-9_-]+)\)")


def heading_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors() -> set[str]:
    headings = [line.lstrip("#") for line in MATH.read_text().splitlines() if re.match(r"#{1,6} ", line)]
    return {heading_anchor(h) for h in headings}


def repository_files() -> list[Path]:
    """The tracked and untracked-but-not-ignored text files of the repository."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()
    suffixes = {".py", ".md", ".ipynb", ".toml", ".txt", ".cfg", ""}
    return [ROOT / f for f in out if (ROOT / f).is_file() and Path(f).suffix in suffixes]


def test_heading_anchor_follows_github():
    assert heading_anchor(" The matrices H, G and E") == "the-matrices-h-g-and-e"
    assert heading_anchor(" Lemma 8.1") == "lemma-81"


def test_every_cited_anchor_exists():
    known = anchors()
    cited: dict[str, list[str]] = {}
    for path in repository_files():
        for anchor in CITATION.findall(path.read_text(errors="replace")):
            cited.setdefault(anchor, []).append(str(path.relative_to(ROOT)))
    for anchor in LINK.findall(MATH.read_text()):
        cited.setdefault(anchor, []).append("docs/math.md")
    assert cited, "no file cites docs/math.md"
    missing = {a: files for a, files in cited.items() if a not in known}
    assert not missing, f"anchors cited but not headings of docs/math.md: {missing}"


def test_no_file_cites_notes_outside_the_repository():
    name = "PAPER" + ".md"  # spelled in two parts so that this file does not cite it
    offenders = [str(p.relative_to(ROOT)) for p in repository_files() if name in p.read_text(errors="replace")]
    assert not offenders, f"files citing {name}: {offenders}"
