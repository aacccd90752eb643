//! Resource usage for ContainerStats and PodSandboxStats (containerd's CRI plugin): cgroup
//! counters through the engine's [`Cgroups::usage`], `usage_nano_cores` from the previous sample
//! of the same object, and the pod's network counters from its infra process's
//! `/proc/<pid>/net/dev` (read from the host, no namespace switching).

use keelson_container::cgroups::{Cgroups, Usage};
use keelson_proto::runtime::v1 as pb;
use std::collections::HashMap;
use std::sync::Mutex;

/// The interface a pod's network usage is reported for first (containerd's `defaultIfName`).
pub const DEFAULT_INTERFACE: &str = "eth0";

/// Last CPU sample per object (`ctr/<id>` or `pod/<id>`): cumulative ns and when.
#[derive(Default)]
pub struct CpuSamples(Mutex<HashMap<String, (u64, i64)>>);

impl CpuSamples {
    /// Records `(usage_ns, at_ns)` and returns the rate since the previous sample in nano
    /// cores (ns of CPU per s), or `None` for the first sample or a counter that went back.
    pub fn nano_cores(&self, key: &str, usage_ns: u64, at_ns: i64) -> Option<u64> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let prev = m.insert(key.to_string(), (usage_ns, at_ns));
        let (pu, pt) = prev?;
        let dt = u64::try_from(at_ns.checked_sub(pt)?)
            .ok()
            .filter(|&d| d > 0)?;
        let du = usage_ns.checked_sub(pu)?;
        Some(((u128::from(du) * 1_000_000_000) / u128::from(dt)) as u64)
    }

    /// Drops the samples of a removed object.
    pub fn forget(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// How long a writable layer's usage is reused before it is walked again (containerd's CRI
/// refreshes its snapshot usage on the same period).
pub const LAYER_USAGE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// The last walk of each container's writable layer: its usage and when (ns since the epoch),
/// so that the kubelet's periodic ListContainerStats does not walk every layer every time.
#[derive(Default)]
pub struct LayerUsage(
    Mutex<HashMap<String, (std::time::Instant, i64, keelson_image::snapshot::Usage)>>,
);

impl LayerUsage {
    /// The usage of `key`'s layer, from a walk younger than [`LAYER_USAGE_TTL`] or from `walk`
    /// (run without the lock held); `None` when there is none (`walk` failed).
    pub fn get(
        &self,
        key: &str,
        walk: impl FnOnce() -> Option<keelson_image::snapshot::Usage>,
    ) -> Option<(i64, keelson_image::snapshot::Usage)> {
        let lock = || self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, ts, u)) = lock().get(key)
            && at.elapsed() < LAYER_USAGE_TTL
        {
            return Some((*ts, *u));
        }
        let ts = crate::server::now_ns();
        let u = walk()?;
        lock().insert(key.to_string(), (std::time::Instant::now(), ts, u));
        Some((ts, u))
    }

    /// Drops what is known of a removed container's layer.
    pub fn forget(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// ContainerStats.writable_layer: the layer's usage on the filesystem at `mountpoint` (the
/// image store's root, as ImageFsInfo names it).
pub fn writable_layer(
    mountpoint: &std::path::Path,
    at_ns: i64,
    u: keelson_image::snapshot::Usage,
) -> pb::FilesystemUsage {
    pb::FilesystemUsage {
        timestamp: at_ns,
        fs_id: Some(pb::FilesystemIdentifier {
            mountpoint: mountpoint.display().to_string(),
        }),
        used_bytes: Some(u64v(u.bytes)),
        inodes_used: Some(u64v(u.inodes)),
    }
}

fn u64v(value: u64) -> pb::UInt64Value {
    pb::UInt64Value { value }
}

/// The CRI CPU usage of a cgroup sample (`None` when the host has no CPU accounting).
pub fn cpu(samples: &CpuSamples, key: &str, u: &Usage, ts: i64) -> Option<pb::CpuUsage> {
    let ns = u.cpu_ns?;
    Some(pb::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: Some(u64v(ns)),
        usage_nano_cores: samples.nano_cores(key, ns, ts).map(u64v),
        ..Default::default()
    })
}

/// The CRI memory usage of a cgroup sample: available = limit − working set when limited.
pub fn memory(u: &Usage, ts: i64) -> Option<pb::MemoryUsage> {
    let usage = u.memory_bytes?;
    let ws = u.working_set_bytes.unwrap_or(usage);
    Some(pb::MemoryUsage {
        timestamp: ts,
        working_set_bytes: Some(u64v(ws)),
        available_bytes: u.memory_limit.map(|l| u64v(l.saturating_sub(ws))),
        usage_bytes: Some(u64v(usage)),
        rss_bytes: u.rss_bytes.map(u64v),
        page_faults: u.page_faults.map(u64v),
        major_page_faults: u.major_page_faults.map(u64v),
        ..Default::default()
    })
}

/// Usage of an engine cgroup set, empty when it cannot be read.
pub fn usage_of(cg: Option<&Cgroups>) -> Usage {
    cg.map(Cgroups::usage).unwrap_or_default()
}

/// Adds `b`'s counters to `a`'s (a pod without a common cgroup: its sandbox's and its
/// containers' cgroups summed). The sum has no limit.
pub fn add_usage(a: &mut Usage, b: &Usage) {
    fn sum(x: &mut Option<u64>, y: Option<u64>) {
        if let Some(y) = y {
            *x = Some(x.unwrap_or(0).saturating_add(y));
        }
    }
    sum(&mut a.cpu_ns, b.cpu_ns);
    sum(&mut a.memory_bytes, b.memory_bytes);
    sum(&mut a.working_set_bytes, b.working_set_bytes);
    sum(&mut a.rss_bytes, b.rss_bytes);
    sum(&mut a.page_faults, b.page_faults);
    sum(&mut a.major_page_faults, b.major_page_faults);
    sum(&mut a.pids, b.pids);
    a.memory_limit = None;
}

/// Parses `/proc/<pid>/net/dev`: every interface but `lo`, with eth0 (else the first) as the
/// default one, like containerd's netlink walk of the pod's netns.
pub fn parse_net_dev(text: &str, ts: i64) -> pb::NetworkUsage {
    let mut interfaces = Vec::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if f.len() < 16 {
            continue;
        }
        interfaces.push(pb::NetworkInterfaceUsage {
            name: name.to_string(),
            rx_bytes: Some(u64v(f[0])),
            rx_errors: Some(u64v(f[2])),
            tx_bytes: Some(u64v(f[8])),
            tx_errors: Some(u64v(f[10])),
        });
    }
    let default_interface = interfaces
        .iter()
        .find(|i| i.name == DEFAULT_INTERFACE)
        .or_else(|| interfaces.first())
        .cloned();
    pb::NetworkUsage {
        timestamp: ts,
        default_interface,
        interfaces,
    }
}

/// The network usage of the netns the process `pid` lives in.
pub fn network_of_pid(pid: i32, ts: i64) -> std::io::Result<pb::NetworkUsage> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev"))?;
    Ok(parse_net_dev(&text, ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_is_walked_once_per_period_and_forgotten_with_its_container() {
        let cache = LayerUsage::default();
        let u = |bytes| keelson_image::snapshot::Usage { bytes, inodes: 1 };
        let mut walks = 0;
        let first = cache.get("c1", || {
            walks += 1;
            Some(u(4096))
        });
        let again = cache.get("c1", || {
            walks += 1;
            Some(u(8192))
        });
        assert_eq!(walks, 1);
        assert_eq!(first, again);
        // Another container, a failed walk: nothing cached, nothing reported.
        assert_eq!(cache.get("c2", || None), None);
        assert_eq!(
            cache.get("c2", || Some(u(1))).map(|(_, u)| u.bytes),
            Some(1)
        );
        cache.forget("c1");
        let fresh = cache.get("c1", || Some(u(8192)));
        assert_eq!(fresh.map(|(_, u)| u.bytes), Some(8192));
    }

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0:    5000      40    1    0    0     0          0         0     3000      30    2    0    0     0       0          0
";

    #[test]
    fn net_dev_skips_lo_and_picks_eth0() {
        let n = parse_net_dev(NET_DEV, 7);
        assert_eq!(n.interfaces.len(), 1);
        let d = n.default_interface.expect("default interface");
        assert_eq!(d.name, "eth0");
        assert_eq!(d.rx_bytes.map(|v| v.value), Some(5000));
        assert_eq!(d.rx_errors.map(|v| v.value), Some(1));
        assert_eq!(d.tx_bytes.map(|v| v.value), Some(3000));
        assert_eq!(d.tx_errors.map(|v| v.value), Some(2));
        assert_eq!(n.timestamp, 7);
    }

    #[test]
    fn nano_cores_needs_two_samples() {
        let s = CpuSamples::default();
        assert_eq!(s.nano_cores("a", 1_000, 1_000_000_000), None);
        // 0.5 s of CPU over 1 s: half a core.
        assert_eq!(
            s.nano_cores("a", 500_001_000, 2_000_000_000),
            Some(500_000_000)
        );
        assert_eq!(s.nano_cores("a", 1, 3_000_000_000), None);
    }
}
