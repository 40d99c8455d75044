#!/usr/bin/env bash
# The image tools, from Debian's packages: buildah (builds the Dockerfile without a Docker daemon)
# and mmdebstrap (makes the Debian base where no image registry is reachable). Installs them only
# when missing; needs root (as on the project's machines and CI).
set -euo pipefail
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "hack/image/install.sh: ${missing[*]} missing and not root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
