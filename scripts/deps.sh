#!/usr/bin/env bash
# Installs the Debian packages keypool's build, tests and benchmarks need.
# A no-op (no apt at all) when everything is already installed, so it is
# cheap to call from every CI/dev script.
set -euo pipefail

packages=(
  build-essential cmake g++ clang libclang-rt-14-dev pkg-config
  libboost-dev doctest-dev libpq-dev libbenchmark-dev
  postgresql pgbouncer python3 git ca-certificates gnuplot-nox
  libcpp-httplib-dev wrk valgrind
)

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  echo "deps: all ${#packages[@]} packages already installed"
  exit 0
fi

echo "deps: installing ${missing[*]}"
sudo=()
if ((EUID != 0)); then
  command -v sudo >/dev/null || { echo "deps: need root (or sudo) to install packages" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
