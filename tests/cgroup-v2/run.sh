#!/usr/bin/env bash
# Runs keelson's cgroup suites on cgroup v2: boots a throw-away user-mode-linux guest in unified
# mode (cgroup_no_v1=all) whose root is this machine's root, read-only, and runs the suites of
# suites.txt inside it as root. Prints their output and exits non-zero when one fails, the guest
# does not report, or the time runs out. Leaves nothing on the host: the guest's files live in a
# temp dir under /dev/shm that is removed, and the guest's processes are killed.
#
#   tests/cgroup-v2/run.sh [SUITES_FILE]      (as root; needs the test binaries built)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
suites_file="${1:-$here/suites.txt}"
timeout_s="${KEELSON_UML_TIMEOUT:-900}"
if ! command -v linux.uml >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq user-mode-linux >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq user-mode-linux >/dev/null; }
fi

cd "$repo"
# The test binaries of keelson-tests, by target name (built like the host suite builds them).
cargo build --workspace --bins --quiet
mapfile -t targets < <(grep -v '^\s*#' "$suites_file" | awk 'NF {print $1}' | sort -u)
declare -A exe
while IFS=$'\t' read -r name path; do exe[$name]="$path"; done < <(
  cargo test -p keelson-tests --no-run --message-format=json --quiet 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["target"]["name"] + "\t" + m["executable"])
')

target_dir="$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
share="$(mktemp -d /dev/shm/keelson-uml.XXXXXX)"
guest_pid=""
cleanup() {
  if [ -n "$guest_pid" ]; then kill -KILL -- "-$guest_pid" 2>/dev/null || true; fi
  rm -rf "$share"
}
trap cleanup EXIT INT TERM

: > "$share/suites"
names=()
while read -r name filter; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  bin="${exe[$name]:-}"
  [ -n "$bin" ] || { echo "no test binary for suite '$name'" >&2; exit 1; }
  echo "$bin $filter" >> "$share/suites"
  names+=("$name${filter:+ ($filter)}")
done < "$suites_file"
# A scratch disk, so io limits have a real block device (ubda, 98:0) in the guest.
truncate -s 64M "$share/scratch.img"

start=$(date +%s)
# setsid: the guest and the helper processes UML forks form one group that cleanup can kill.
TMPDIR="$share" setsid timeout --kill-after=10 "$timeout_s" linux.uml \
  mem=2048M root=/dev/root rootfstype=hostfs rootflags=/ ro \
  cgroup_no_v1=all init="$here/guest-init.sh" ubd0="$share/scratch.img" \
  con0=null,fd:2 con=null ssl=null \
  KEELSON_SHARE="$share" KEELSON_REPO="$repo" KEELSON_TARGET="$target_dir" \
  </dev/null >"$share/console.log" 2>&1 &
guest_pid=$!
status=0
wait "$guest_pid" || status=$?
guest_pid=""
echo "cgroup v2 guest: finished in $(( $(date +%s) - start )) s (UML exit $status)"
cat "$share/guest-info" 2>/dev/null || true

failed=0
passed_tests=0
failed_tests=0
for i in "${!names[@]}"; do
  n=$((i + 1))
  echo "=== suite ${names[$i]} (cgroup v2 guest) ==="
  if [ ! -f "$share/rc.$n" ]; then
    echo "the guest did not report this suite; console:"; tail -n 40 "$share/console.log"
    failed=1
    continue
  fi
  cat "$share/out.$n"
  [ "$(cat "$share/rc.$n")" = 0 ] || failed=1
  read -r p f < <(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$share/out.$n" | tail -n 1)
  passed_tests=$((passed_tests + ${p:-0}))
  failed_tests=$((failed_tests + ${f:-0}))
done
echo "cgroup v2 guest: $passed_tests passed, $failed_tests failed"
exit "$failed"
