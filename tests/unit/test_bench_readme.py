"""``bench.readme.replace_section``: a benchmark's section replaced between its markers, or appended."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.readme import replace_section

B, E = "<!-- X:BEGIN -->", "<!-- X:END -->"
NEW = f"{B}\nnew\n{E}"


@pytest.mark.parametrize(("before", "heading", "after"), [
    # markers present: only what is between them changes, the rest of the file stays
    (f"# Bench\n\n{B}\nold\n{E}\ntail\n", "", f"# Bench\n\n{NEW}\ntail\n"),
    (f"{B}\nold\n{E}", "## X", NEW),
    # no markers: appended, after the heading when given
    ("# Bench\n", "", f"# Bench\n\n{NEW}\n"),
    ("# Bench\n", "## X", f"# Bench\n\n## X\n\n{NEW}\n"),
    # only one marker: not a section, so appended rather than cutting the file
    (f"# Bench\n{B}\n", "", f"# Bench\n{B}\n\n{NEW}\n"),
])
def test_replace_section(tmp_path: Path, before: str, heading: str, after: str) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(before)
    replace_section(readme, NEW, begin=B, end=E, heading=heading)
    assert readme.read_text() == after


def test_a_missing_readme_is_created(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    replace_section(readme, NEW, begin=B, end=E)
    assert readme.read_text() == f"\n{NEW}\n"
