#!/usr/bin/env bash
# System packages the test suite uses (Debian). Run as root; a no-op when all are present.
set -euo pipefail
packages=(python3-venv python3-dev gcc libc6-dev libssl-dev libnghttp2-dev curl unbound dnsutils knot pebble age openssh-server etcd-server ngtcp2-client nftables iproute2 conntrack victoria-metrics chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
