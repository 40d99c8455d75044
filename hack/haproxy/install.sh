#!/usr/bin/env bash
# HAProxy for bench.gateway.overhead: Debian's own package, the baseline the gateway is measured
# against (issue 15). Installs it with apt-get when `haproxy` is not on PATH; prints its version.
set -euo pipefail
if ! command -v haproxy >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends haproxy >/dev/null
    # The package starts a system service; the benchmark runs its own instance, so stop that one.
    $SUDO systemctl stop haproxy 2>/dev/null || $SUDO service haproxy stop 2>/dev/null || true
fi
haproxy -v | head -1
