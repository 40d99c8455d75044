#!/usr/bin/env bash
# `make image`: the operator image from the repository's Dockerfile, built by buildah with chroot
# isolation (no Docker daemon, no registry) on the local Debian base of base.sh, then its SBOM.
#   IMAGE   the tag to build (default localhost/modelplane/operator:<operator version>)
# Prints the image name on the last line. --layers keeps each step's result, so a second build
# with an unchanged operator/ takes seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bash hack/image/install.sh
version=$(sed -n 's/^version = "\(.*\)"/\1/p' operator/pyproject.toml)
image=${IMAGE:-localhost/modelplane/operator:$version}
base=$(bash hack/image/base.sh)
# The host's CA bundle for pip inside the build stage (this machine's TLS path to the package index
# may need it); read-only and only during the build, nothing of it is in the image.
buildah bud --quiet --isolation chroot --layers \
  --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
  --build-arg "BASE=$base" --build-arg "VERSION=$version" \
  --tag "$image" --file Dockerfile . >&2
# The SBOM (SPDX JSON: dpkg's packages and the virtualenv's distributions) and the size.
python=${PYTHON:-$root/.venv/bin/python}
sbom=$root/dist/modelplane-operator-$version.spdx.json
ctr=$(buildah from --pull-never "$image")
trap 'buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
rootfs=$(buildah mount "$ctr")
PYTHONPATH=$root/devtools${PYTHONPATH:+:$PYTHONPATH} "$python" -m modelplane_dev.sbom "$rootfs" \
  --name "$image" --output "$sbom" >&2
echo "image $image: $(buildah images --format '{{.Size}}' "$image")" >&2
echo "$image"
