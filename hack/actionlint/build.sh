#!/usr/bin/env bash
# Build (or reuse) actionlint, the linter of .github/workflows, from its Go module (a release binary
# cannot be downloaded on the project's machines; the Go module proxy serves its source). Cached
# under ~/.cache/modelplane/actionlint/<version>: a warm call takes milliseconds, a cold build about
# a minute. Prints the binary's path.
set -euo pipefail
VERSION=v1.7.12
if ! command -v go >/dev/null 2>&1; then
  echo "hack/actionlint/build.sh: no Go toolchain on PATH (export PATH=/usr/local/go/bin:\$PATH)" >&2
  exit 2
fi
cache=${MODELPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelplane}/actionlint/$VERSION
if [[ ! -x $cache/actionlint ]]; then
  mkdir -p "$cache"
  echo "hack/actionlint/build.sh: building actionlint $VERSION (log: $cache/build.log)" >&2
  if ! CGO_ENABLED=0 GOBIN="$cache" go install "github.com/rhysd/actionlint/cmd/actionlint@$VERSION" \
      >"$cache/build.log" 2>&1; then
    tail -n 20 "$cache/build.log" >&2
    exit 1
  fi
fi
echo "$cache/actionlint"
