#!/usr/bin/env bash
# Build (or reuse) helm from its Go module (helm.sh/helm/v3, pinned in go.mod beside this script).
#
# A release binary cannot be downloaded on the machines this project runs on, but the Go module
# proxy serves helm's source, so helm is built the way hack/devcluster/build.sh builds the cluster.
# The binary is cached outside the repo, keyed by the version and a hash of go.mod/go.sum, so a warm
# call takes milliseconds and a version bump never reuses a stale binary. Prints the binary's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if ! command -v go >/dev/null 2>&1; then
  echo "hack/helm/build.sh: no Go toolchain on PATH. Install Go >= 1.26 (the kind of machine this" >&2
  echo "project runs on ships one at /usr/local/go/bin)." >&2
  exit 2
fi

version=$(sed -n 's#^require helm.sh/helm/v3 \(v[0-9.]*\)$#\1#p' "$here/go.mod")
if [ -z "$version" ]; then
  echo "hack/helm/build.sh: cannot read the helm version from $here/go.mod" >&2
  exit 2
fi
sum_hash=$(cat "$here"/go.{mod,sum} | sha256sum | cut -c1-12)
cache=${MODELPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelplane}/helm/${version}_${sum_hash}
out=$cache/helm
if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi
mkdir -p "$cache"

# Stamp what helm's own Makefile stamps: its version, and the Kubernetes version of its client-go
# modules (otherwise `.Capabilities.KubeVersion` and the linter's deprecation checks say v1.20).
k8s=$(cd "$here" && GOFLAGS=-mod=readonly go list -f '{{.Version}}' -m k8s.io/client-go)  # v0.MINOR.PATCH
k8s_minor=${k8s#v0.}; k8s_minor=${k8s_minor%%.*}
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
ldflags="$ldflags -X helm.sh/helm/v3/internal/version.metadata= -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags="$ldflags -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done

echo "hack/helm/build.sh: building helm $version (log: $cache/build.log; a cold build takes minutes)" >&2
start=$SECONDS
if ! (cd "$here" && CGO_ENABLED=0 GOFLAGS=-mod=readonly \
      go build -trimpath -ldflags "$ldflags" -o "$out.tmp.$$" helm.sh/helm/v3/cmd/helm) \
    >"$cache/build.log" 2>&1; then
  echo "hack/helm/build.sh: building helm failed; the last lines of $cache/build.log:" >&2
  tail -n 20 "$cache/build.log" >&2
  rm -f "$out.tmp.$$"
  exit 1
fi
mv "$out.tmp.$$" "$out"   # atomic: an interrupted or concurrent build never leaves a half binary
echo "hack/helm/build.sh: built helm in $((SECONDS - start)) s" >&2
echo "$out"
