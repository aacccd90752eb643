#!/bin/sh
# PID 1 of the user-mode-linux guest booted by run.sh: the host's root read-only (hostfs),
# tmpfs for everything written, cgroup v2 alone at /sys/fs/cgroup. Runs the suites listed in
# $KEELSON_SHARE/suites (one "binary filter" per line), writes each one's output and exit code
# back to the share, then powers the guest off.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH HOME=/root LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/tmp
# Loopback up: tests talk to local servers (a registry, the kubelet) on 127.0.0.1.
ip link set lo up 2>/dev/null || true
# overlayfs (keelsond's snapshots) is a module of the UML kernel.
overlay_ko="/usr/lib/uml/modules/$(uname -r)/kernel/fs/overlayfs/overlay.ko"
overlay_msg="$(/bin/busybox insmod "$overlay_ko" 2>&1 || true)"
# The bridge (with vlan filtering, which this VM's own kernel lacks), veth and 802.1q are modules
# too, for the cni_vlan suite; each is loaded after its dependencies, failures tolerated (the
# suite reports what is missing). KEELSON_UML_GUEST tells the suites they run here.
mods="/usr/lib/uml/modules/$(uname -r)/kernel"
net_msg=""
for m in lib/crc-ccitt net/ipv6/ipv6 net/llc/llc net/802/stp net/bridge/bridge \
  drivers/net/veth net/802/garp net/802/mrp net/8021q/8021q; do
  out="$(/bin/busybox insmod "$mods/$m.ko" 2>&1)" || net_msg="$net_msg ${m##*/}: $out;"
done
export KEELSON_UML_GUEST=1
mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
mkdir -p /tmp/share
mount -t hostfs -o "$KEELSON_SHARE" none /tmp/share
# The tmpfs mounts above may cover the checkout or the build dir (a clone under /tmp): show
# them again at their own paths, which the test binaries have compiled in.
for dir in "$KEELSON_REPO" "$KEELSON_TARGET"; do
  if [ -n "$dir" ] && [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    mount -t hostfs -o "$dir" none "$dir"
  fi
done
cd "$KEELSON_REPO" || { echo "no $KEELSON_REPO in the guest" > /tmp/share/guest-info; /bin/busybox poweroff -f; }
{
  echo "kernel: $(uname -r)"
  echo "cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
  echo "block devices: $(ls /sys/block | tr '\n' ' ')"
  echo "overlay: $(grep -c overlay /proc/filesystems) ${overlay_msg}"
  echo "net modules: ${net_msg:-loaded}"
} > /tmp/share/guest-info 2>&1
n=0
while read -r bin filter; do
  [ -n "$bin" ] || continue
  n=$((n + 1))
  # libtest on the guest's single CPU; its output goes through cat, not to a raw tty.
  "$bin" --test-threads=1 $filter 2>&1 | cat > "/tmp/share/out.$n"
  # The pipeline's status is cat's: ask libtest's summary line instead.
  if grep -q '^test result: ok\.' "/tmp/share/out.$n"; then echo 0; else echo 1; fi > "/tmp/share/rc.$n"
done < /tmp/share/suites
sync
/bin/busybox poweroff -f
