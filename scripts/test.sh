#!/usr/bin/env bash
# Sets up a fresh machine and runs keelson's whole test suite (as root): the unit and
# integration tests on this host (cgroup v1 here), then the cgroup suites again on cgroup v2
# inside a user-mode-linux guest (tests/cgroup-v2/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# Peers the tests drive (podman, skopeo, CNI callers) keep caches in fixed system paths; remove
# the ones this run brought into being, however it ends.
created_by_peers=()
# (`ip netns add` also bind-mounts /run/netns onto itself the first time.)
for d in /var/lib/containers /var/lib/cni /run/containers /run/libpod /run/netns; do
  [ -e "$d" ] || created_by_peers+=("$d")
done
cleanup_peers() {
  for d in "${created_by_peers[@]}"; do
    if [ "$d" = /run/netns ]; then
      # Only when no namespace is pinned there any more.
      [ -z "$(ls -A /run/netns 2>/dev/null)" ] && umount /run/netns 2>/dev/null; rmdir /run/netns 2>/dev/null || true
    else
      rm -rf "$d"
    fi
  done
}
trap cleanup_peers EXIT
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests drive the built binaries.
cargo build --workspace --bins
log="$(mktemp)"
trap 'rm -f "$log"; cleanup_peers' EXIT
cargo nextest run --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
host=$(sed -n 's/.* tests run: \([0-9]*\) passed.*/\1/p' "$log" | tail -n 1)
tests/cgroup-v2/run.sh 2>&1 | tee "$log"
guest=$(sed -n 's/^cgroup v2 guest: \([0-9]*\) passed.*/\1/p' "$log" | tail -n 1)
echo "host (cgroup v1): ${host:-0} passed; cgroup v2 guest: ${guest:-0} passed"
echo "$(( ${host:-0} + ${guest:-0} )) passed, 0 failed"
