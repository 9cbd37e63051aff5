"""The README stays a one-page quick start, and the links between it and the pages under docs/ do not break."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
MAX_LINES, MAX_WORDS = 200, 2500
FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), with an optional "title"; the target has no spaces.
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def code_blocks(text: str) -> list[str]:
    """The fenced code blocks' contents, in order."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def links(path: Path) -> list[str]:
    """Every link target in a Markdown file, outside code."""
    return [target for line in prose_lines(path.read_text()) for target in LINK.findall(INLINE_CODE.sub("", line))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings, numbered like GitHub's when a slug repeats."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_readme_is_a_one_page_quick_start() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"README.md: at most {MAX_LINES} lines; move the rest to docs/"
    assert len(text.split()) <= MAX_WORDS, f"README.md: at most {MAX_WORDS} words; move the rest to docs/"


def test_readme_opens_with_the_two_set_up_commands() -> None:
    first, second = code_blocks(README.read_text())[:2]
    assert "mlflow run . --env-manager local" in first, "the first code block runs the study"
    assert "pytest" in second, "the second code block runs the tests"
    for block in (first, second):
        assert block.startswith("scripts/setup.sh && . .venv/bin/activate && "), "each does all set-up itself"


def test_readme_links_every_docs_page() -> None:
    linked = {(README.parent / target.split("#")[0]).resolve() for target in links(README) if "://" not in target}
    missing = [page.name for page in PAGES if page.resolve() not in linked]
    assert PAGES and not missing, f"README.md links no docs/{missing}"


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda path: str(path.relative_to(REPO)))
def test_relative_links_point_at_existing_files_and_headings(path: Path) -> None:
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http(s), mailto: not checked
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(REPO)}")
    assert not broken, f"{path.relative_to(REPO)}: " + "; ".join(broken)
