#!/usr/bin/env bash
# Installs the Debian packages tmoe builds with (skips apt when all are present already).
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config libeigen3-dev libxsimd-dev doctest-dev
      libbenchmark-dev nlohmann-json3-dev libpcre2-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "tmoe: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
