#!/usr/bin/env bash
# Build (or reuse) the dev cluster's binaries: kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd and kwok, from the pinned Go modules beside this script.
#
# Binaries are cached outside the repo, keyed by the versions and a hash of the go.sum files, so a
# warm start takes seconds and a version bump never reuses a stale binary. Prints the bin directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: no Go toolchain on PATH. Install Go >= 1.26 (the kind of machine this project" >&2
  echo "runs on ships one at /usr/local/go/bin), then run 'make cluster-up' again." >&2
  exit 2
fi
go_version=$(go env GOVERSION)
case "$go_version" in
  go1.2[6-9]*|go1.[3-9]*) ;;
  *) echo "build.sh: $go_version is too old; Kubernetes $KUBERNETES_VERSION needs Go >= 1.26." >&2; exit 2 ;;
esac

sum_hash=$(cat "$here"/{kubernetes,etcd,kwok}/go.{mod,sum} | sha256sum | cut -c1-12)
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_${sum_hash}"
cache=${MODELPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelplane}/devcluster/$key
bin=$cache/bin
mkdir -p "$bin"

export CGO_ENABLED=0 GOFLAGS=-mod=readonly
build() { # module-dir output-name package [ldflags]
  local dir=$1 out=$2 pkg=$3 ldflags=${4:-}
  if [ -x "$bin/$out" ]; then return 0; fi
  echo "build.sh: building $out from $pkg (log: $cache/build-$out.log)" >&2
  local start=$SECONDS
  if ! (cd "$here/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/$out.tmp" "$pkg") \
      >"$cache/build-$out.log" 2>&1; then
    echo "build.sh: building $out failed; the last lines of $cache/build-$out.log:" >&2
    tail -n 20 "$cache/build-$out.log" >&2
    exit 1
  fi
  mv "$bin/$out.tmp" "$bin/$out"   # atomic: an interrupted build never leaves a half binary
  echo "build.sh: built $out in $((SECONDS - start)) s" >&2
}

# Stamp the version so `kubectl version` and /version tell the truth.
vpkg=k8s.io/component-base/version
major=1; minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
kver="-X $vpkg.gitVersion=$KUBERNETES_VERSION -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor"
kver="$kver -X $vpkg.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
build etcd etcd go.etcd.io/etcd/server/v3
build kwok kwok sigs.k8s.io/kwok/cmd/kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  build kubernetes "$cmd" "k8s.io/kubernetes/cmd/$cmd" "$kver"
done
echo "$bin"
