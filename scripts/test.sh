#!/usr/bin/env bash
# Sets up a fresh machine and runs keelson's whole test suite (as root): the unit and
# integration tests on this host (cgroup v1 here), then the cgroup suites again on cgroup v2
# inside a user-mode-linux guest (tests/cgroup-v2/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests drive the built binaries.
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
tests/cgroup-v2/run.sh
