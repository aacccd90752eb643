//! The memory of a CRI runtime's own processes, from `/proc`: PSS (`smaps_rollup`) and RSS
//! (`VmRSS`), grouped as the daemon, its helpers (containerd's shims, keelsond's monitors)
//! and the pods' infra processes.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;

/// What a daemon's processes hold in memory, by role.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub procs: usize,
    /// Sum of `Pss` from `/proc/<pid>/smaps_rollup`, KiB.
    pub pss_kib: u64,
    /// Sum of `VmRSS` from `/proc/<pid>/status`, KiB.
    pub rss_kib: u64,
    /// Command names (`comm`) counted, with how many of each.
    pub names: BTreeMap<String, usize>,
}

impl Usage {
    fn add(&mut self, pid: i32, comm: String) {
        self.procs += 1;
        self.pss_kib += kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:");
        self.rss_kib += kib_field(&format!("/proc/{pid}/status"), "VmRSS:");
        *self.names.entry(comm).or_default() += 1;
    }
}

/// The memory of a runtime's own processes (its containers' processes are not counted).
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// The daemon itself.
    pub daemon: Usage,
    /// Everything else in the daemon's mount namespace and not in a pod's sandbox cgroup:
    /// containerd's shims, keelsond's container monitors.
    pub helpers: Usage,
    /// Processes in the pods' sandbox cgroups (`<cgroup_parent>/<sandbox id>`): containerd's
    /// pause containers, keelsond's `keelson-pause`.
    pub infra: Usage,
}

impl Memory {
    pub fn total(&self) -> Usage {
        let mut t = Usage::default();
        for u in [&self.daemon, &self.helpers, &self.infra] {
            t.procs += u.procs;
            t.pss_kib += u.pss_kib;
            t.rss_kib += u.rss_kib;
            for (n, c) in &u.names {
                *t.names.entry(n.clone()).or_default() += c;
            }
        }
        t
    }
}

/// The `<field> N kB` value of a `/proc` file, 0 when missing (a process that just exited).
pub fn kib_field(path: &str, field: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// `comm` and state letter of `pid`.
pub fn comm_and_state(pid: i32) -> Option<(String, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let state = stat.get(close + 1..)?.trim_start().chars().next()?;
    Some((comm, state))
}

/// All live (non-zombie) pids.
pub fn live_pids() -> Vec<i32> {
    crate::procs::all_pids()
        .into_iter()
        .filter(|p| comm_and_state(*p).is_some_and(|(_, s)| s != 'Z'))
        .collect()
}

/// Groups the live processes of the machine: `daemon` itself; processes in a sandbox cgroup
/// (`<cgroup_parent>/<id>` with `id` in `sandboxes`, in any hierarchy) as infra; the rest of
/// `mount_ns` (the daemon's mount namespace) as helpers. Everything else is not counted.
pub fn measure(
    daemon: Option<i32>,
    mount_ns: &HashSet<i32>,
    cgroup_parent: &Path,
    sandboxes: &HashSet<String>,
) -> Memory {
    let mut m = Memory::default();
    for pid in live_pids() {
        let Some((comm, _)) = comm_and_state(pid) else {
            continue;
        };
        let infra = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|path| {
                let path = Path::new(path);
                path.parent() == Some(cgroup_parent)
                    && path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| sandboxes.contains(n))
            });
        if infra {
            m.infra.add(pid, comm);
        } else if Some(pid) == daemon {
            m.daemon.add(pid, comm);
        } else if mount_ns.contains(&pid) {
            m.helpers.add(pid, comm);
        }
    }
    m
}
