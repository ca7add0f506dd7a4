"""The docs' relative links and the code's pointers into docs/ resolve (scripts/check_links.py)."""
from pathlib import Path

from scripts.check_links import problems


def test_every_link_and_docs_pointer_resolves():
    assert problems() == []


def test_a_broken_link_or_pointer_is_reported(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "latinhib").mkdir()
    (tmp_path / "README.md").write_text("[speed](docs/SPEED.md#streams) [gone](docs/gone.md)\n")
    (tmp_path / "CHANGELOG.md").write_text("# Changelog\n")
    (tmp_path / "docs" / "SPEED.md").write_text("# Speed\n\n## Streams\n\n```\n## Not a heading\n```\n")
    (tmp_path / "latinhib" / "m.py").write_text('"""See docs/SPEED.md#streams and docs/SPEED.md#not-a-heading."""\n')
    found = problems(tmp_path)
    assert len(found) == 2
    assert "docs/gone.md" in found[0] and "#not-a-heading" in found[1]
