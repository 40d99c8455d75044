"""The operator image's software bill of materials, as SPDX 2.3 JSON, from its root filesystem.

Two sources, both read from files (no package manager runs): the Debian packages dpkg installed
(``var/lib/dpkg/status``) and the Python distributions in the image's virtualenv (each
``*.dist-info/METADATA`` under a ``site-packages``). Each package gets a purl (``pkg:deb/debian/...``,
``pkg:pypi/...``), which is what vulnerability scanners match on.

``make image`` writes it next to the image: ``dist/modelplane-operator-<version>.spdx.json``::

    python -m modelplane_dev.sbom ROOTFS --name localhost/modelplane/operator:0.1.0 -o FILE
"""

from __future__ import annotations

import argparse
import datetime as dt
import email.parser
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

NOASSERTION = "NOASSERTION"


@dataclass(frozen=True, order=True)
class Package:
    ecosystem: str  #: "deb" or "pypi"
    name: str
    version: str
    arch: str = ""  #: Debian's architecture ("amd64", "all"); empty for Python
    license: str = NOASSERTION

    @property
    def purl(self) -> str:
        if self.ecosystem == "deb":
            qualifier = f"?arch={self.arch}" if self.arch else ""
            return f"pkg:deb/debian/{quote(self.name)}@{quote(self.version)}{qualifier}"
        return f"pkg:pypi/{normalize_pypi_name(self.name)}@{quote(self.version)}"


def normalize_pypi_name(name: str) -> str:
    """PEP 503's normal form, which the pypi purl uses."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_dpkg_status(text: str) -> list[Package]:
    """The installed packages of a dpkg status file (stanzas of ``Field: value`` lines)."""
    packages: list[Package] = []
    for stanza in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue  # a continuation line of a multi-line field (descriptions, conffiles)
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if fields.get("Status", "").split()[-1:] != ["installed"]:
            continue
        if "Package" not in fields or "Version" not in fields:
            raise ValueError(f"a dpkg status stanza without Package or Version: {stanza[:80]!r}")
        packages.append(Package("deb", fields["Package"], fields["Version"],
                                fields.get("Architecture", "")))
    return sorted(packages)


def parse_dist_metadata(text: str) -> Package:
    """One Python distribution from its core metadata (``METADATA``, an RFC 822 header block)."""
    headers = email.parser.HeaderParser().parsestr(text)
    name, version = headers.get("Name"), headers.get("Version")
    if not name or not version:
        raise ValueError("a METADATA file without Name or Version")
    license_ = headers.get("License-Expression") or NOASSERTION
    return Package("pypi", str(name), str(version), license=str(license_))


def spdx_document(image: str, packages: Iterable[Package], created: dt.datetime) -> dict[str, Any]:
    """An SPDX 2.3 document: the image as the described package, containing every package."""
    listed = sorted(set(packages))
    digest = hashlib.sha256(json.dumps([p.purl for p in listed]).encode()).hexdigest()[:16]
    root_id = "SPDXRef-image"
    spdx_packages: list[dict[str, Any]] = [{
        "SPDXID": root_id, "name": image, "downloadLocation": NOASSERTION,
        "filesAnalyzed": False, "primaryPackagePurpose": "CONTAINER",
    }]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": root_id}]
    for index, package in enumerate(listed):
        spdx_id = f"SPDXRef-{package.ecosystem}-{index}"
        spdx_packages.append({
            "SPDXID": spdx_id, "name": package.name, "versionInfo": package.version,
            "downloadLocation": NOASSERTION, "filesAnalyzed": False,
            "licenseDeclared": package.license,
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": package.purl}],
        })
        relationships.append({"spdxElementId": root_id, "relationshipType": "CONTAINS",
                              "relatedSpdxElement": spdx_id})
    return {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
        "name": image,
        "documentNamespace": f"https://modelplane.dev/spdx/{quote(image, safe='')}-{digest}",
        "creationInfo": {"created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "creators": ["Tool: modelplane_dev.sbom"]},
        "packages": spdx_packages,
        "relationships": relationships,
    }


def packages_of(rootfs: Path) -> list[Package]:
    """Every Debian package and Python distribution installed under ``rootfs``."""
    status = rootfs / "var" / "lib" / "dpkg" / "status"
    found = parse_dpkg_status(status.read_text()) if status.exists() else []
    for metadata in sorted(rootfs.glob("**/site-packages/*.dist-info/METADATA")):
        found.append(parse_dist_metadata(metadata.read_text(errors="replace")))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelplane_dev.sbom", description=__doc__.split("\n")[0])
    parser.add_argument("rootfs", type=Path, help="the image's root filesystem (e.g. `buildah mount`)")
    parser.add_argument("--name", required=True, help="the image's name, e.g. its tag")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the JSON")
    args = parser.parse_args(argv)
    if not args.rootfs.is_dir():
        print(f"sbom: {args.rootfs} is not a directory", file=sys.stderr)
        return 2
    packages = packages_of(args.rootfs)
    document = spdx_document(args.name, packages, dt.datetime.now(dt.UTC))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=1) + "\n")
    debs = sum(1 for p in packages if p.ecosystem == "deb")
    print(f"{args.output}: {debs} Debian packages, {len(packages) - debs} Python packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
