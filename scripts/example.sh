#!/usr/bin/env bash
# Builds keelson and runs the example container: a busybox rootfs made from Debian's static
# busybox, the default spec from `keelson spec`, a probe script as the process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release -p keelson-container
KEELSON="$PWD/target/release/keelson"
BUNDLE="$(mktemp -d /tmp/keelson-example.XXXXXX)"
ROOT="$(mktemp -d /tmp/keelson-root.XXXXXX)"
trap 'rm -rf "$BUNDLE" "$ROOT"' EXIT
mkdir -p "$BUNDLE/rootfs/bin"
cp /bin/busybox "$BUNDLE/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$BUNDLE/rootfs/bin/$applet"
done
(cd "$BUNDLE" && "$KEELSON" spec)
python3 - "$BUNDLE/config.json" examples/hello.sh <<'PY'
import json, sys
path, script = sys.argv[1], open(sys.argv[2]).read()
spec = json.load(open(path))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["sh", "-c", script]
spec["hostname"] = "keelson-example"
json.dump(spec, open(path, "w"), indent=2)
PY
"$KEELSON" --root "$ROOT" run --bundle "$BUNDLE" "example-$$"
