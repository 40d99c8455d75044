"""The files around the operator image: the Dockerfile, its build context (.dockerignore) and the
LICENSE. The image itself is built and started in tests/e2e/test_image.py."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(re-included?, regex) per line of .dockerignore, in order (Docker's rules: the last matching
    line wins; ``*`` stays within a path segment, ``**/`` spans zero or more; a match of a parent directory
    covers everything under it)."""
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        body = line.lstrip("!").strip("/")
        regex = "".join("(?:.*/)?" if part == "**/" else ".*" if part == "**" else "[^/]*" if part == "*"
                        else "[^/]" if part == "?" else re.escape(part)
                        for part in re.split(r"(\*\*/|\*\*|\*|\?)", body))
        patterns.append((negated, re.compile(regex)))
    return patterns


def in_context(path: str) -> bool:
    included = True
    parts = path.split("/")
    for negated, regex in dockerignore_patterns():
        if any(regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            included = negated
    return included


@pytest.mark.parametrize(("path", "sent"), [
    (".venv/lib/python3.11/site-packages/kopf/__init__.py", False),
    (".git/HEAD", False),
    (".run/devcluster/kubeconfig", False),
    (".mypy_cache/3.11/cache.db", False),
    (".pytest_cache/v/cache/nodeids", False),
    ("tests/e2e/test_image.py", False),
    ("tests/hfmirror.py", False),
    ("devtools/modelplane_dev/sim/server.py", False),
    ("dist/modelplane-operator-0.1.0.spdx.json", False),
    ("operator/modelplane/__pycache__/cli.cpython-311.pyc", False),
    ("operator/modelplane.egg-info/PKG-INFO", False),
    ("operator/pyproject.toml", True),
    ("operator/modelplane/cli.py", True),
    ("LICENSE", True),
])
def test_the_build_context_is_the_operator_and_the_license(path: str, sent: bool) -> None:
    assert in_context(path) is sent


def test_every_copy_source_of_the_dockerfile_is_in_the_context() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    sources = [m.group(1) for m in re.finditer(r"^COPY (?!--from)(\S+) ", dockerfile, re.MULTILINE)]
    assert sources == ["operator", "LICENSE"]
    for source in sources:
        assert in_context(source), source


def test_the_base_is_a_build_argument_and_the_user_is_not_root() -> None:
    lines = [ln for ln in (REPO / "Dockerfile").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0].startswith("ARG BASE=python:3.11")
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert froms == ["${BASE}", "${BASE}"]
    assert "USER 10001:10001" in lines
    assert 'ENTRYPOINT ["modelplane"]' in lines


def test_the_license_file_is_the_license_pyproject_names() -> None:
    for pyproject in (REPO / "pyproject.toml", REPO / "operator" / "pyproject.toml"):
        assert tomllib.loads(pyproject.read_text())["project"]["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
