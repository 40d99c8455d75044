"""Writing a benchmark's section into a README between its markers (shared by every bench)."""

from __future__ import annotations

from pathlib import Path


def replace_section(readme: Path, section: str, *, begin: str, end: str, heading: str = "") -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in ``readme``.

    The text between an existing pair of markers is replaced; without them the section is
    appended, after ``heading`` (a Markdown heading line) when one is given. A missing README is
    created.
    """
    text = readme.read_text() if readme.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text += "\n" + (f"{heading}\n\n" if heading else "") + section + "\n"
    readme.write_text(text)
