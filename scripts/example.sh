#!/usr/bin/env bash
# Runs a keelson node on its embedded defaults, as root: keelsond (the CRI daemon) and the
# standalone kubelet with the static pods of examples/pods/, on a busybox image imported
# locally (no registry, no internet). State lives in a work directory under /tmp; the pods'
# bridge is `kls0` (10.88.77.0/24). Runs until Ctrl-C (or EXAMPLE_SECONDS), then tears the
# pods, the bridge and the daemons down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# KEELSON_BIN_DIR: use binaries built elsewhere (e.g. target/debug) instead of building.
if [ -z "${KEELSON_BIN_DIR:-}" ]; then
  cargo build --release -p keelson-container -p keelson-image -p keelson-cri \
    -p keelson-cni-plugins -p keelson-kubelet
fi
BIN="${KEELSON_BIN_DIR:-$PWD/target/release}"
# Short paths: the monitors' unix sockets live below the state dir (108-byte limit).
W="$(mktemp -d /tmp/kn.XXXXXX)"
BRIDGE=kls0
# The bridge plugin turns on IPv4 forwarding for its gateway; the host gets its value back.
FORWARD_BEFORE="$(cat /proc/sys/net/ipv4/ip_forward)"
cleanup() {
  set +e
  echo "stopping the node"
  # The kubelet first (it would restart pods), then every pod through CRI, then keelsond.
  [ -n "${KUBELET_PID:-}" ] && kill "$KUBELET_PID" && wait "$KUBELET_PID" 2>/dev/null
  if [ -S "$W/keelsond.sock" ]; then
    "$BIN/keelsonctl" -r "unix://$W/keelsond.sock" rmp -a -f >/dev/null 2>&1
  fi
  [ -n "${KEELSOND_PID:-}" ] && kill "$KEELSOND_PID" && wait "$KEELSOND_PID" 2>/dev/null
  ip link del "$BRIDGE" 2>/dev/null
  echo "$FORWARD_BEFORE" > /proc/sys/net/ipv4/ip_forward
  # The kubelet bind-mounts its root dir onto itself (rshared, for volume propagation) and
  # mounts pod volumes below it.
  grep -q " $W/kubelet " /proc/self/mountinfo && umount -R "$W/kubelet"
  # The pods' cgroup root (cgroupRoot below) in every hierarchy, empty directories deepest
  # first: keelsond removes the pods' own cgroups, the QoS levels above them stay.
  while IFS=: read -r _ controllers path; do
    case "$controllers" in
      "") dir="/sys/fs/cgroup/unified$path" ;;
      name=*) dir="/sys/fs/cgroup/${controllers#name=}$path" ;;
      *) dir="/sys/fs/cgroup/$controllers$path" ;;
    esac
    [ -d "$dir/keelson-example" ] && find "$dir/keelson-example" -depth -type d -exec rmdir {} \; 2>/dev/null
  done < /proc/self/cgroup
  rm -rf "$W"
}
trap cleanup EXIT

# The image: static busybox as an OCI layout, imported into keelsond's store.
python3 scripts/example-image.py "$W/layout"
"$BIN/keelson-image" --root "$W/root" import "$W/layout" --name docker.io/library/busybox:example

# CNI: loopback + bridge/host-local/portmap, keelson's own plugins.
mkdir -p "$W/net.d" "$W/cni-bin" "$W/cni-cache"
for p in bridge host-local loopback portmap; do cp "$BIN/$p" "$W/cni-bin/"; done
cat > "$W/net.d/10-keelson.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "keelson-example", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": "$W/cni-ipam",
            "ranges": [[{"subnet": "10.88.77.0/24"}]]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF

# Each daemon in a session of its own: Ctrl-C at the terminal signals its whole foreground
# process group, and the daemons must outlive the script's trap, which stops the node in order
# (the kubelet, then the pods through keelsond, then keelsond). setsid execs in place here (a
# background job is no process group leader), so $! is the daemon.
setsid "$BIN/keelsond" --listen "unix://$W/keelsond.sock" --root "$W/root" --state "$W/s" \
  --cni-conf-dir "$W/net.d" --cni-bin-dir "$W/cni-bin" --cni-cache-dir "$W/cni-cache" \
  --registry-config-dir "$W/certs.d" 2>"$W/keelsond.log" &
KEELSOND_PID=$!
for _ in $(seq 100); do [ -S "$W/keelsond.sock" ] && break; sleep 0.1; done

# The kubelet: static pods from examples/pods, pod cgroups below this shell's own cgroup.
cat > "$W/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: $PWD/examples/pods
podLogsDir: $W/pods-logs
fileCheckFrequency: 2s
cgroupRoot: keelson-example
port: 10250
healthzPort: 10248
EOF
setsid "$BIN/kubelet" --config "$W/kubelet.yaml" --root-dir "$W/kubelet" \
  --container-runtime-endpoint "unix://$W/keelsond.sock" --hostname-override keelson-example \
  --cert-dir "$W/pki" --container-log-links-dir "$W/containers" \
  2>"$W/kubelet.log" &
KUBELET_PID=$!

CTL="$BIN/keelsonctl -r unix://$W/keelsond.sock"
echo "waiting for the pods..."
for _ in $(seq 120); do
  running=$($CTL ps -q --state running 2>/dev/null | wc -l)
  [ "$running" -ge 1 ] && break
  sleep 0.5
done
sleep 3
echo
echo "== pods (keelsonctl pods)"; $CTL pods
echo; echo "== containers (keelsonctl ps -a)"; $CTL ps -a
ip=$($CTL inspectp "$($CTL pods -q --name web | head -n1)" 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["network"]["ip"])' || true)
if [ -n "$ip" ]; then
  echo; echo "== curl http://$ip:8080/"; curl -s --max-time 5 "http://$ip:8080/" || true
fi
echo; echo "== kubelet: curl -k https://127.0.0.1:10250/pods (phase per pod)"
curl -sk --max-time 5 https://127.0.0.1:10250/pods | python3 -c '
import json, sys
for p in json.load(sys.stdin)["items"]:
    st = p["status"]
    ready = [c["status"] for c in st.get("conditions", []) if c["type"] == "Ready"]
    restarts = sum(c.get("restartCount", 0) for c in st.get("containerStatuses", []))
    print(p["metadata"]["name"], st.get("phase"), "Ready=" + "".join(ready),
          "restarts=%d" % restarts, st.get("podIP", ""))' || true
cat <<EOF

The node runs. Look around:
  $CTL pods | ps -a | logs <container> | exec <container> ls /
  curl -k https://127.0.0.1:10250/pods ; curl http://127.0.0.1:10248/healthz
  logs: $W/keelsond.log $W/kubelet.log $W/pods-logs/
Ctrl-C stops the node and removes everything it made.
EOF
if [ -n "${EXAMPLE_SECONDS:-}" ]; then sleep "$EXAMPLE_SECONDS"; else wait "$KUBELET_PID"; fi
