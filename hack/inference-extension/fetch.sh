#!/usr/bin/env bash
# Fetch (or reuse) the CRDs of the Gateway API (standard channel: GatewayClass, Gateway, HTTPRoute)
# and of the Gateway API Inference Extension (InferencePool, inference.networking.k8s.io/v1), from
# their Go modules at the pinned versions below, through the Go module proxy. Nothing is built.
#
# The proxy refuses to list the Inference Extension's versions, but serves a named one; the module
# sums below are checked against what `go mod download` reports (which the checksum database has
# verified), so a bump changes them here on purpose. The CRD files are copied to a cache keyed by
# the versions, so later calls make no network request. Prints the directory holding the YAMLs.
set -euo pipefail

GATEWAY_API_VERSION=v1.4.1
GATEWAY_API_SUM="h1:NPxFutNkKNa8UfLd2CMlEuhIPMQgDQ6DXNKG9sHbJU8="
INFERENCE_EXTENSION_VERSION=v1.1.0
INFERENCE_EXTENSION_SUM="h1:MqRYk+3LNUWB0MbTgTZVhmJGNDTvm8l3ze4MOlzR7MU="

key="gateway-api-${GATEWAY_API_VERSION}_inference-extension-${INFERENCE_EXTENSION_VERSION}"
cache=${MODELPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelplane}/inference-extension/$key
if [ -f "$cache/.complete" ]; then
  echo "$cache"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "fetch.sh: no Go toolchain on PATH (export PATH=/usr/local/go/bin:\$PATH); it downloads the" >&2
  echo "Gateway API and Inference Extension modules that hold the CRDs." >&2
  exit 2
fi

download() { # module version expected-sum -> prints the module's directory
  local module=$1 version=$2 sum=$3 json
  # Outside any module, so that no go.mod or go.work of the checkout is consulted.
  if ! json=$(cd "$(mktemp -d)" && GOFLAGS=-mod=mod go mod download -json "$module@$version" 2>&1); then
    echo "fetch.sh: go mod download $module@$version failed:" >&2
    echo "$json" >&2
    exit 1
  fi
  python3 - "$module@$version" "$sum" "$json" <<'PY'
import json, sys
what, want, text = sys.argv[1], sys.argv[2], sys.argv[3]
info = json.loads(text)
if info.get("Error"):
    sys.exit(f"fetch.sh: {what}: {info['Error']}")
if info.get("Sum") != want:
    sys.exit(f"fetch.sh: {what} has sum {info.get('Sum')}, expected {want} (pinned in fetch.sh)")
print(info["Dir"])
PY
}

gateway_dir=$(download sigs.k8s.io/gateway-api "$GATEWAY_API_VERSION" "$GATEWAY_API_SUM")
inference_dir=$(download sigs.k8s.io/gateway-api-inference-extension "$INFERENCE_EXTENSION_VERSION" \
  "$INFERENCE_EXTENSION_SUM")

tmp="$cache.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
for kind in gatewayclasses gateways httproutes; do
  cp "$gateway_dir/config/crd/standard/gateway.networking.k8s.io_$kind.yaml" "$tmp/"
done
cp "$inference_dir/config/crd/bases/inference.networking.k8s.io_inferencepools.yaml" "$tmp/"
chmod 644 "$tmp"/*.yaml
touch "$tmp/.complete"
rm -rf "$cache"
mkdir -p "$(dirname "$cache")"
mv "$tmp" "$cache"   # atomic: an interrupted fetch never leaves half a set
echo "$cache"
