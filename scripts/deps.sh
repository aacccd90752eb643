#!/usr/bin/env bash
# Installs what keelson's build, tests, example and benchmarks need on a fresh Debian machine.
set -euo pipefail
PKGS=(busybox-static runc crun iproute2 procps util-linux python3 user-mode-linux
      docker-registry skopeo umoci containerd podman containernetworking-plugins iptables nftables
      apache2-utils libssl-dev openssl pkg-config curl
      libc6-dev)   # libc.a: keelson-monitor links statically (runtime/cri/build.rs)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo is required (rustup toolchain)" >&2; exit 1; }
cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest
