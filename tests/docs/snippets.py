"""The code blocks of README.md and docs/*.md, with the marker comment that precedes each (if any).

A block runs in the test suite unless the line before its fence is ``<!-- not run: REASON -->``;
``<!-- runs: right column -->`` runs only the right half of a two-column before/after listing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[2]
FENCE = re.compile(r"^(?:<!--\s*(?P<marker>[^>]*?)\s*-->\n)?```(?P<lang>[\w-]*)\n(?P<code>.*?)^```\s*$", re.M | re.S)


@dataclass(frozen=True)
class Snippet:
    path: Path       # the Markdown file
    line: int        # 1-based line of the opening fence
    lang: str        # "python", "bash", ... ("" for a plain block)
    code: str
    marker: str      # the comment before the fence, "" if none

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def snippets(langs: tuple[str, ...]) -> list[Snippet]:
    found = []
    for path in markdown_files():
        text = path.read_text()
        for m in FENCE.finditer(text):
            if m.group("lang") in langs:
                line = text.count("\n", 0, m.start("lang")) + 1
                found.append(Snippet(path, line, m.group("lang"), m.group("code"), m.group("marker") or ""))
    return found


def right_column(code: str) -> str:
    """The right half of a two-column listing: each line's text after its first run of 3+ spaces."""
    lines = [re.split(r"\s{3,}", line.strip(), maxsplit=1) for line in code.splitlines() if line.strip()]
    return "\n".join(parts[1] for parts in lines if len(parts) == 2 and not parts[1].startswith("#"))
