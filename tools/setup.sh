#!/usr/bin/env bash
# Installs what tether needs to build and test on Debian 12 (only what is
# missing, so it is cheap to run again), then configures and builds it.
#   tools/setup.sh [BUILD_DIR] [extra meson options...]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shift || true

packages=(gcc pkg-config meson ninja-build libevent-dev libssl-dev libxxhash-dev libyaml-dev
          libhiredis-dev libjansson-dev check python3 curl openssl redis-server ca-certificates
          mandoc)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -f "$build/build.ninja" ]; then
    meson setup "$build" "$@"
else
    meson configure "$build" "$@" >/dev/null
fi
ninja -C "$build"
