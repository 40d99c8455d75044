#!/usr/bin/env bash
# Build (or reuse) a Prometheus server from its Go module, for the end-to-end test of the operator's
# Prometheus source (`modelplane run --prometheus-url`). Built without the service-discovery
# plugins (`remove_all_sd`: static and file discovery remain, which is all the test uses). Cached
# outside the repo, keyed by the version and a hash of go.mod/go.sum, like the dev cluster's
# binaries. Prints the binary's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v go >/dev/null 2>&1; then
  echo "hack/prometheus/build.sh: no Go toolchain on PATH (Go >= 1.26; /usr/local/go/bin on this kind of machine)" >&2
  exit 2
fi
version=$(awk '$1 == "github.com/prometheus/prometheus" {print $2}' "$here/go.mod")
sum_hash=$(cat "$here"/go.mod "$here"/go.sum | sha256sum | cut -c1-12)
cache=${MODELPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelplane}/prometheus/${version}_${sum_hash}
bin=$cache/prometheus
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  echo "hack/prometheus/build.sh: building prometheus $version (log: $cache/build.log)" >&2
  start=$SECONDS
  if ! (cd "$here" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -tags remove_all_sd,netgo \
        -ldflags "-s -w" -o "$bin.tmp" github.com/prometheus/prometheus/cmd/prometheus) >"$cache/build.log" 2>&1; then
    echo "hack/prometheus/build.sh: the build failed; the last lines of $cache/build.log:" >&2
    tail -n 20 "$cache/build.log" >&2
    exit 1
  fi
  mv "$bin.tmp" "$bin"   # atomic: an interrupted build never leaves a half binary
  echo "hack/prometheus/build.sh: built in $((SECONDS - start)) s" >&2
fi
echo "$bin"
