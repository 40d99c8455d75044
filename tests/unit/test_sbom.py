"""The image SBOM (modelplane_dev.sbom): dpkg's status file and Python core metadata to SPDX 2.3."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from modelplane_dev import sbom
from modelplane_dev.sbom import Package

STATUS = """\
Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 2.36-9+deb12u10
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1

Package: ca-certificates
Status: install ok installed
Architecture: all
Version: 20230311
Conffiles:
 /etc/ca-certificates.conf abc
"""


def test_dpkg_status_lists_installed_packages_only() -> None:
    assert sbom.parse_dpkg_status(STATUS) == [
        Package("deb", "ca-certificates", "20230311", "all"),
        Package("deb", "libc6", "2.36-9+deb12u10", "amd64"),
    ]


def test_a_dpkg_stanza_without_a_version_is_an_error() -> None:
    with pytest.raises(ValueError, match="without Package or Version"):
        sbom.parse_dpkg_status("Package: x\nStatus: install ok installed\n")


@pytest.mark.parametrize(("metadata", "expected"), [
    ("Metadata-Version: 2.4\nName: kopf\nVersion: 1.38.0\nLicense-Expression: MIT\n\nbody\n",
     Package("pypi", "kopf", "1.38.0", license="MIT")),
    ("Metadata-Version: 2.1\nName: PyYAML\nVersion: 6.0.2\nLicense: MIT License\n",
     Package("pypi", "PyYAML", "6.0.2")),  # a free-text License is not an SPDX expression
])
def test_dist_metadata(metadata: str, expected: Package) -> None:
    assert sbom.parse_dist_metadata(metadata) == expected


def test_metadata_without_a_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="without Name or Version"):
        sbom.parse_dist_metadata("Metadata-Version: 2.1\nVersion: 1\n")


@pytest.mark.parametrize(("package", "purl"), [
    (Package("deb", "libc6", "2.36-9+deb12u10", "amd64"),
     "pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64"),
    (Package("deb", "python3.11", "3.11.2-6", ""), "pkg:deb/debian/python3.11@3.11.2-6"),
    (Package("pypi", "typing_extensions", "4.12.2"), "pkg:pypi/typing-extensions@4.12.2"),
    (Package("pypi", "Zope.Interface", "7.0"), "pkg:pypi/zope-interface@7.0"),
])
def test_purls(package: Package, purl: str) -> None:
    assert package.purl == purl


def test_spdx_document_describes_the_image_containing_each_package() -> None:
    packages = [Package("pypi", "kopf", "1.38.0", license="MIT"), Package("deb", "libc6", "2.36", "amd64")]
    doc = sbom.spdx_document("modelplane:1", packages, dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    assert doc["spdxVersion"] == "SPDX-2.3"
    assert doc["creationInfo"]["created"] == "2026-01-02T03:04:05Z"
    by_id = {p["SPDXID"]: p for p in doc["packages"]}
    assert by_id["SPDXRef-image"]["primaryPackagePurpose"] == "CONTAINER"
    contained = [r["relatedSpdxElement"] for r in doc["relationships"] if r["relationshipType"] == "CONTAINS"]
    assert sorted((by_id[i]["name"], by_id[i]["externalRefs"][0]["referenceLocator"]) for i in contained) == [
        ("kopf", "pkg:pypi/kopf@1.38.0"), ("libc6", "pkg:deb/debian/libc6@2.36?arch=amd64")]
    assert {r["relatedSpdxElement"] for r in doc["relationships"]
            if r["relationshipType"] == "DESCRIBES"} == {"SPDXRef-image"}


def test_main_reads_a_root_filesystem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "var/lib/dpkg").mkdir(parents=True)
    (rootfs / "var/lib/dpkg/status").write_text(STATUS)
    dist = rootfs / "opt/venv/lib/python3.11/site-packages/kopf-1.38.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kopf\nVersion: 1.38.0\n")
    out = tmp_path / "sbom.json"
    assert sbom.main([str(rootfs), "--name", "img:1", "-o", str(out)]) == 0
    names = sorted(p["name"] for p in json.loads(out.read_text())["packages"])
    assert names == ["ca-certificates", "img:1", "kopf", "libc6"]
    assert "2 Debian packages, 1 Python packages" in capsys.readouterr().out


def test_main_refuses_a_missing_root_filesystem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sbom.main([str(tmp_path / "nope"), "--name", "x", "-o", str(tmp_path / "o.json")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
