"""Check that the docs' relative links resolve: every ``[text](path#anchor)`` in README.md,
CHANGELOG.md and docs/*.md names a file that exists and, for a Markdown file, a heading
that exists (GitHub's anchor rule), and every ``docs/NAME.md#anchor`` that a docstring or
comment in latinhib/ points at names a real heading. Prints one line per broken link and
exits 1 if there is any.

    .venv/bin/python -m scripts.check_links
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")
POINTER = re.compile(r"\b(docs/[\w.-]+\.md)(?:#([\w-]+))?")


def anchors(page: Path) -> set:
    """The anchors GitHub gives the headings of ``page`` (lowercase, punctuation dropped,
    spaces to hyphens, repeats numbered), skipping fenced code."""
    seen: dict = {}
    out = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"#{1,6} (.*)", line)
        if heading:
            anchor = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            out.add(anchor if count == 0 else f"{anchor}-{count}")
    return out


def broken(source: Path, target: Path, anchor: str) -> str:
    """Why a link from ``source`` to ``target#anchor`` is broken ('' when it is not)."""
    if not target.exists():
        return f"{source}: no file {target}"
    if anchor and target.suffix == ".md" and anchor not in anchors(target):
        return f"{source}: no heading #{anchor} in {target}"
    return ""


def problems(root: Path = ROOT) -> list:
    found = []
    for page in [root / "README.md", root / "CHANGELOG.md", *sorted((root / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for link in LINK.findall(text):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, anchor = link.partition("#")
            found.append(broken(page, (page.parent / path).resolve() if path else page, anchor))
    for module in sorted((root / "latinhib").rglob("*.py")):
        for path, anchor in POINTER.findall(module.read_text(encoding="utf-8")):
            found.append(broken(module, root / path, anchor))
    return [problem for problem in found if problem]


if __name__ == "__main__":
    lines = problems()
    print("\n".join(lines) or "all links resolve")
    sys.exit(1 if lines else 0)
