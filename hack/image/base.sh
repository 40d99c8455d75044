#!/usr/bin/env bash
# The local base image of `make image`: a minimal Debian (bookworm, the "essential" package set)
# with Python 3.11 (Debian's python3, with venv for the build stage) and the CA certificates, made
# from Debian's packages with mmdebstrap and imported into buildah's storage, since no image
# registry is reachable on the project's machines. Prints the image name.
#
# Cached: the root filesystem tarball under ~/.cache/modelplane/image (keyed by this script's
# content), and the imported image in buildah's storage. A second call returns at once. To take
# Debian's newest security updates, delete the cache directory (or change this script).
set -euo pipefail
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
cache=${MODELPLANE_IMAGE_CACHE:-$HOME/.cache/modelplane/image}
key=$(cat "$0" | sha256sum | cut -c1-12)
name=localhost/modelplane-base:$SUITE-$key
tarball=$cache/base-$SUITE-$key.tar

if buildah inspect --type image "$name" >/dev/null 2>&1; then
  echo "$name"
  exit 0
fi
mkdir -p "$cache"
if [[ ! -s $tarball ]]; then
  # The machine's own apt sources (its mirror, with security updates) when it is Debian, else
  # mmdebstrap's default mirror.
  sources=()
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [[ -s $f ]] && grep -q "$SUITE" "$f"; then sources=("$f"); break; fi
  done
  # No documentation, manual pages or translations: nothing in the image reads them.
  # merged /usr through the usr-is-merged hook (the usrmerge package would pull in all of Perl).
  mmdebstrap --quiet --variant=essential --format=tar --include="$PACKAGES" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    "$SUITE" "$tarball.part" "${sources[@]}" >&2
  mv "$tarball.part" "$tarball"
fi
ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah add --quiet "$ctr" "$tarball" / >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 --cmd /bin/bash --label "org.opencontainers.image.base.name=debian:$SUITE" "$ctr"
buildah commit --quiet "$ctr" "$name" >/dev/null
echo "$name"
