#!/usr/bin/env bash
# Build (or reuse) the LeaderWorkerSet controller manager (sigs.k8s.io/lws/cmd) from its Go module,
# for the dev cluster's multi-node serving (docs/multi-node.md). The module proxy refuses to list
# sigs.k8s.io/lws's versions, but a named version downloads: the version is the one go.mod requires.
# Cached outside the repo, keyed by the version and a hash of go.mod/go.sum, like the dev cluster's
# other binaries. Prints the binary's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v go >/dev/null 2>&1; then
  echo "hack/lws/build.sh: no Go toolchain on PATH (Go >= 1.26; /usr/local/go/bin on this kind of machine)" >&2
  exit 2
fi
version=$(awk '$1 == "sigs.k8s.io/lws" {print $2} $1 == "require" && $2 == "sigs.k8s.io/lws" {print $3}' \
  "$here/go.mod")
sum_hash=$(cat "$here"/go.mod "$here"/go.sum | sha256sum | cut -c1-12)
cache=${MODELPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelplane}/lws/${version}_${sum_hash}
bin=$cache/lws-controller-manager
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  echo "hack/lws/build.sh: building the lws controller $version (log: $cache/build.log)" >&2
  start=$SECONDS
  if ! (cd "$here" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" \
        -o "$bin.tmp" sigs.k8s.io/lws/cmd) >"$cache/build.log" 2>&1; then
    echo "hack/lws/build.sh: the build failed; the last lines of $cache/build.log:" >&2
    tail -n 20 "$cache/build.log" >&2
    exit 1
  fi
  mv "$bin.tmp" "$bin"   # atomic: an interrupted build never leaves a half binary
  echo "hack/lws/build.sh: built in $((SECONDS - start)) s" >&2
fi
# The CRDs ship in the module (config/crd/bases), at exactly the version built.
crds=$cache/crds
if [ ! -d "$crds" ]; then
  src=$(cd "$here" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' sigs.k8s.io/lws)
  mkdir -p "$crds.tmp" && cp "$src"/config/crd/bases/*.yaml "$crds.tmp"/ && chmod u+w "$crds.tmp"/*.yaml
  mv "$crds.tmp" "$crds"
fi
echo "$bin"
