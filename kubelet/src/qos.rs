//! QoS cgroups, as upstream's container manager does them with the cgroupfs driver:
//!
//! - `<cgroupRoot>/kubepods`, limited to node allocatable (capacity minus systemReserved and
//!   kubeReserved) when enforceNodeAllocatable has `pods`;
//! - `kubepods/burstable` (cpu shares: the Burstable pods' cpu requests) and
//!   `kubepods/besteffort` (2 shares);
//! - one `pod<uid>` cgroup per pod below its QoS class's cgroup (Guaranteed pods directly
//!   below kubepods), created before the pod's sandbox with the cpu shares, CFS quota, memory
//!   limit and pids limit upstream derives from the pod's requests and limits, and destroyed
//!   (its processes killed, its tree removed) once the pod is terminated. The runtime puts
//!   the sandbox and the containers below it: the pod cgroup is the sandbox's
//!   `cgroup_parent`.
//!
//! Paths resolve as the runtime resolves a `cgroup_parent`: an absolute cgroupRoot below each
//! hierarchy's root, a relative one (keelson's extension, for tests and the example) below
//! this process's own cgroup in each hierarchy, which is the runtime's when both run in the
//! same cgroup. Directories are made in every mounted hierarchy (as runc's cgroupfs manager
//! does). Values go to the v1 controllers when any is mounted (cpu.shares,
//! cpu.cfs_period_us/cfs_quota_us, memory.limit_in_bytes, pids.max); on a v2-only host to
//! cpu.weight, cpu.max, memory.max and pids.max, with the controllers enabled in the parents'
//! cgroup.subtree_control.

use crate::config::Config;
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum QosError {
    #[error("{}: {msg}", path.display())]
    Cgroup { path: PathBuf, msg: String },
    #[error("no cgroup hierarchy is mounted (/proc/self/mountinfo has no cgroup or cgroup2)")]
    NoHierarchy,
    #[error("cgroup {cgroup:?} is outside the mounted part {root:?} of its hierarchy")]
    Outside { cgroup: String, root: String },
}

fn cg_err(path: &Path, msg: impl std::fmt::Display) -> QosError {
    QosError::Cgroup {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// Upstream's bounds: `MinShares`, `MaxShares`, `MinQuotaPeriod`.
pub const MIN_SHARES: u64 = 2;
pub const MAX_SHARES: u64 = 262_144;
const MIN_QUOTA_US: i64 = 1000;

/// Upstream's `MilliCPUToShares`.
pub fn milli_cpu_to_shares(milli: i64) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    ((milli as u64) * 1024 / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// Upstream's `MilliCPUToQuota`: 0 (no quota) for no cpu, else at least 1 ms per period.
pub fn milli_cpu_to_quota(milli: i64, period_us: u64) -> i64 {
    if milli <= 0 {
        return 0;
    }
    (milli * period_us as i64 / 1000).max(MIN_QUOTA_US)
}

/// cpu.shares → cgroup v2 cpu.weight (runc's conversion, [2, 262144] → [1, 10000]).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.max(MIN_SHARES) - MIN_SHARES) * 9999 / 262_142
}

/// What the kubelet sets on a QoS or pod cgroup (upstream's `ResourceConfig`); `None` leaves
/// the file as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    /// Microseconds per period; -1 is no quota.
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// Bytes; -1 is no limit.
    pub memory: Option<i64>,
    /// Tasks; -1 is no limit.
    pub pids: Option<i64>,
}

/// Upstream's `ResourceConfigForPod`: Guaranteed pods get shares from their requests, a
/// quota and a memory limit from their limits; Burstable pods the shares, and the quota or
/// the memory limit only when every container declares that limit; BestEffort pods 2 shares.
/// podPidsLimit, when positive, caps every pod.
pub fn pod_resources(cfg: &Config, pod: &Pod) -> Resources {
    let (cpu_req, _, _) = crate::admission::pod_requests(pod);
    let lim = crate::admission::pod_limits(pod);
    let period = cfg.cpu_cfs_period_us;
    let quota = if cfg.cpu_cfs_quota {
        milli_cpu_to_quota(lim.cpu_milli, period)
    } else {
        -1
    };
    let shares = milli_cpu_to_shares(cpu_req);
    let mut r = Resources::default();
    match crate::podconfig::qos_class(crate::podconfig::spec(pod)) {
        "Guaranteed" => {
            r.cpu_shares = Some(shares);
            r.cpu_quota = Some(quota);
            r.cpu_period = Some(period);
            r.memory = Some(lim.memory);
        }
        "Burstable" => {
            r.cpu_shares = Some(shares);
            if lim.cpu_declared {
                r.cpu_quota = Some(quota);
                r.cpu_period = Some(period);
            }
            if lim.memory_declared {
                r.memory = Some(lim.memory);
            }
        }
        _ => r.cpu_shares = Some(MIN_SHARES),
    }
    if cfg.pod_pids_limit > 0 {
        r.pids = Some(cfg.pod_pids_limit);
    }
    r
}

/// The node's capacity: (cpu millicores, memory bytes, pids).
pub fn capacity() -> (i64, i64, i64) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as i64)
        .unwrap_or(1);
    let mem = crate::cgroupstats::meminfo()
        .get("MemTotal")
        .copied()
        .unwrap_or(0) as i64;
    let pids = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (cpus * 1000, mem, pids)
}

/// The kubepods cgroup's settings (upstream's `getCgroupConfig` of node allocatable): cpu
/// shares, memory limit and pids limit of capacity minus the reservations when
/// enforceNodeAllocatable has `pods`, of capacity otherwise.
pub fn kubepods_resources(cfg: &Config, cap: (i64, i64, i64)) -> Resources {
    let minus = |v: i64, name: &str| {
        if cfg.enforce_pods_allocatable {
            (v - cfg.reserved.get(name).copied().unwrap_or(0)).max(0)
        } else {
            v
        }
    };
    Resources {
        cpu_shares: Some(milli_cpu_to_shares(minus(cap.0, "cpu"))),
        memory: Some(minus(cap.1, "memory")),
        pids: Some(minus(cap.2, "pid")),
        ..Default::default()
    }
}

/// The cpu shares of `kubepods/burstable`: the Burstable pods' cpu requests.
pub fn burstable_shares<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> u64 {
    let milli: i64 = pods
        .into_iter()
        .filter(|p| crate::podconfig::qos_class(crate::podconfig::spec(p)) == "Burstable")
        .map(|p| crate::admission::pod_requests(p).0)
        .sum();
    milli_cpu_to_shares(milli)
}

/// The pods that count for the QoS classes: those of the pod manager not yet finished.
pub fn active_pods(pods: &BTreeMap<String, Pod>) -> Vec<Pod> {
    pods.values()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .cloned()
        .collect()
}

/// One mounted hierarchy.
#[derive(Debug, Clone)]
struct Hier {
    v2: bool,
    /// v1 controllers (and `name=...`) of the hierarchy.
    controllers: Vec<String>,
    point: PathBuf,
    /// Which cgroup of the hierarchy is mounted at `point`.
    root: PathBuf,
    /// This process's own cgroup in the hierarchy.
    own: PathBuf,
}

impl Hier {
    fn has(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }
}

const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

fn own_cgroup(proc_cgroup: &str, h: &Hier) -> Option<PathBuf> {
    proc_cgroup.lines().find_map(|line| {
        let mut it = line.splitn(3, ':');
        let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
        let matches = if h.v2 {
            ctrls.is_empty()
        } else {
            !ctrls.is_empty() && ctrls.split(',').all(|c| h.has(c))
        };
        matches.then(|| PathBuf::from(path))
    })
}

/// The kubelet's QoS cgroup manager.
pub struct Qos {
    hiers: Vec<Hier>,
    /// Values go through cgroup v2 (no v1 cpu or memory controller is mounted).
    unified: bool,
    /// cgroupRoot, without a trailing slash ("" is the root).
    root: String,
    /// The last cpu shares written to `kubepods/burstable`.
    burstable: Mutex<Option<u64>>,
}

/// Upstream's QoS cgroup names.
pub const KUBEPODS: &str = "kubepods";
pub const BURSTABLE: &str = "burstable";
pub const BESTEFFORT: &str = "besteffort";

impl Qos {
    /// Reads the hierarchies and this process's cgroups.
    pub fn discover(cgroup_root: &str) -> Result<Qos, QosError> {
        let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| cg_err(Path::new("/proc/self/cgroup"), e))?;
        let mut hiers: Vec<Hier> = Vec::new();
        for m in crate::cgroupstats::mounts() {
            let controllers: Vec<String> = if m.v2 {
                Vec::new()
            } else {
                m.controllers
                    .iter()
                    .filter(|c| V1_CONTROLLERS.contains(&c.as_str()) || c.starts_with("name="))
                    .cloned()
                    .collect()
            };
            if !m.v2 && controllers.is_empty() {
                continue;
            }
            // The same hierarchy mounted twice: keep the first mount.
            if hiers
                .iter()
                .any(|h| h.v2 == m.v2 && h.controllers == controllers)
            {
                continue;
            }
            let mut h = Hier {
                v2: m.v2,
                controllers,
                point: m.point.clone(),
                root: PathBuf::from(&m.root),
                own: PathBuf::from("/"),
            };
            match own_cgroup(&proc_cgroup, &h) {
                Some(own) => h.own = own,
                // A hierarchy this process is not in (not in /proc/self/cgroup): skip it.
                None => continue,
            }
            hiers.push(h);
        }
        if hiers.is_empty() {
            return Err(QosError::NoHierarchy);
        }
        let v1 = hiers
            .iter()
            .any(|h| !h.v2 && (h.has("cpu") || h.has("memory")));
        Ok(Qos {
            unified: !v1,
            hiers,
            root: cgroup_root.trim_end_matches('/').to_string(),
            burstable: Mutex::new(None),
        })
    }

    /// The full cgroup name of `rel` below cgroupRoot ("kubepods/burstable" →
    /// "<root>/kubepods/burstable").
    pub fn name(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root)
    }

    /// The directories of cgroup `name` (absolute below each hierarchy's root, relative below
    /// this process's own cgroup), each with its hierarchy and the directory to start
    /// enabling v2 controllers from.
    fn dirs(&self, name: &str) -> Result<Vec<(&Hier, PathBuf, PathBuf)>, QosError> {
        let rel = name.trim_start_matches('/');
        let mut out = Vec::new();
        for h in &self.hiers {
            let base = if name.starts_with('/') {
                PathBuf::from("/")
            } else {
                h.own.clone()
            };
            let cgroup = base.join(rel);
            let to_host = |c: &Path| -> Result<PathBuf, QosError> {
                let inside = c.strip_prefix(&h.root).map_err(|_| QosError::Outside {
                    cgroup: c.display().to_string(),
                    root: h.root.display().to_string(),
                })?;
                Ok(h.point.join(inside))
            };
            out.push((h, to_host(&cgroup)?, to_host(&base)?));
        }
        Ok(out)
    }

    /// Whether cgroup `name` exists in every hierarchy.
    pub fn exists(&self, name: &str) -> bool {
        self.dirs(name)
            .map(|d| d.iter().all(|(_, p, _)| p.is_dir()))
            .unwrap_or(false)
    }

    /// Creates cgroup `name` in every hierarchy (parents included) and applies `res`.
    pub fn create(&self, name: &str, res: &Resources) -> Result<(), QosError> {
        for (h, dir, base) in self.dirs(name)? {
            let mut missing = Vec::new();
            let mut cur = dir.clone();
            while !cur.is_dir() {
                missing.push(cur.clone());
                if !cur.pop() {
                    break;
                }
            }
            for d in missing.iter().rev() {
                match std::fs::create_dir(d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(cg_err(d, format!("creating the cgroup: {e}"))),
                }
                if !h.v2 && h.has("cpuset") {
                    init_cpuset(d)?;
                }
            }
            if h.v2 && self.unified {
                enable_controllers(&base, &dir);
            }
        }
        self.apply(name, res)
    }

    /// Writes `res` into cgroup `name`.
    pub fn apply(&self, name: &str, res: &Resources) -> Result<(), QosError> {
        for (h, dir, _) in self.dirs(name)? {
            if self.unified && h.v2 {
                apply_v2(&dir, res)?;
            } else if !self.unified && !h.v2 {
                apply_v1(h, &dir, res)?;
            }
        }
        Ok(())
    }

    /// Kills what runs in cgroup `name` and below, and removes the tree, deepest first, in
    /// every hierarchy (upstream's pod container manager `Destroy`). Blocks up to a few
    /// seconds while killed tasks exit.
    pub fn destroy(&self, name: &str) -> Result<(), QosError> {
        let dirs = self.dirs(name)?;
        let mut last: Option<QosError> = None;
        for attempt in 0..50 {
            last = None;
            for (_, dir, _) in &dirs {
                if !dir.is_dir() {
                    continue;
                }
                let tree = subtree(dir);
                for d in &tree {
                    kill_tasks(d);
                }
                for d in &tree {
                    match std::fs::remove_dir(d) {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => last = Some(cg_err(d, format!("removing the cgroup: {e}"))),
                    }
                }
            }
            if last.is_none() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(if attempt < 10 { 20 } else { 100 }));
        }
        Err(last.unwrap_or(QosError::NoHierarchy))
    }

    /// Creates the QoS hierarchy at start: kubepods with node allocatable, burstable, and
    /// besteffort with 2 shares.
    pub fn start(&self, cfg: &Config) -> Result<(), QosError> {
        let kubepods = kubepods_resources(cfg, capacity());
        self.create(&self.name(KUBEPODS), &kubepods)?;
        tracing::info!(
            cgroup = %self.name(KUBEPODS),
            cpu_shares = ?kubepods.cpu_shares,
            memory = ?kubepods.memory,
            pids = ?kubepods.pids,
            v2 = self.unified,
            "node allocatable cgroup"
        );
        self.create(
            &self.name(&format!("{KUBEPODS}/{BURSTABLE}")),
            &Resources::default(),
        )?;
        self.create(
            &self.name(&format!("{KUBEPODS}/{BESTEFFORT}")),
            &Resources {
                cpu_shares: Some(MIN_SHARES),
                ..Default::default()
            },
        )
    }

    /// Sets the Burstable QoS cgroup's cpu shares from the active pods (upstream's
    /// `UpdateCgroups`), when they changed.
    pub fn update(&self, active: &[Pod]) -> Result<(), QosError> {
        let shares = burstable_shares(active);
        let mut last = self.burstable.lock().unwrap_or_else(|p| p.into_inner());
        if *last == Some(shares) {
            return Ok(());
        }
        self.apply(
            &self.name(&format!("{KUBEPODS}/{BURSTABLE}")),
            &Resources {
                cpu_shares: Some(shares),
                ..Default::default()
            },
        )?;
        *last = Some(shares);
        Ok(())
    }

    /// The three classes' parents a pod cgroup can sit under (Guaranteed pods directly below
    /// `kubepods`).
    fn class_parents(&self) -> [String; 3] {
        [
            self.name(KUBEPODS),
            self.name(&format!("{KUBEPODS}/{BURSTABLE}")),
            self.name(&format!("{KUBEPODS}/{BESTEFFORT}")),
        ]
    }

    /// The pod cgroups that exist: pod UID → cgroup name. One readdir per class parent and
    /// hierarchy; the entry's type comes from readdir, so no entry is looked up.
    pub fn pod_cgroups(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for name in self.class_parents() {
            for (_, dir, _) in self.dirs(&name).unwrap_or_default() {
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let f = e.file_name();
                    let Some(uid) = f.to_str().and_then(|s| s.strip_prefix("pod")) else {
                        continue;
                    };
                    if !uid.is_empty() && e.file_type().is_ok_and(|t| t.is_dir()) {
                        out.insert(uid.to_string(), format!("{name}/pod{uid}"));
                    }
                }
            }
        }
        out
    }

    /// The cgroup of pod `uid` if it exists in any hierarchy: a lookup of the at most three
    /// places it can be, not a listing of every pod's.
    pub fn pod_cgroup(&self, uid: &str) -> Option<String> {
        if uid.is_empty() || uid.contains('/') {
            return None;
        }
        self.class_parents().into_iter().find_map(|parent| {
            let name = format!("{parent}/pod{uid}");
            let dirs = self.dirs(&name).ok()?;
            dirs.iter().any(|(_, d, _)| d.is_dir()).then_some(name)
        })
    }
}

/// A new v1 cpuset cgroup has no cpus and mems; tasks cannot join it until they are set.
fn init_cpuset(dir: &Path) -> Result<(), QosError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let mine = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        if !mine.trim().is_empty() {
            continue;
        }
        let theirs = std::fs::read_to_string(parent.join(f)).map_err(|e| cg_err(parent, e))?;
        write(&dir.join(f), theirs.trim())?;
    }
    Ok(())
}

/// Enables the available controllers in cgroup.subtree_control from `base` down to the
/// parent of `dir`, best effort (as runc: a cgroup with processes refuses, EBUSY).
fn enable_controllers(base: &Path, dir: &Path) {
    let Ok(rel) = dir.strip_prefix(base) else {
        return;
    };
    let mut cur = base.to_path_buf();
    for c in rel.components() {
        let avail = std::fs::read_to_string(cur.join("cgroup.controllers")).unwrap_or_default();
        let on = std::fs::read_to_string(cur.join("cgroup.subtree_control")).unwrap_or_default();
        for ctrl in avail.split_whitespace() {
            if !on.split_whitespace().any(|x| x == ctrl)
                && let Err(e) =
                    std::fs::write(cur.join("cgroup.subtree_control"), format!("+{ctrl}"))
            {
                tracing::debug!(dir = %cur.display(), controller = ctrl, error = %e, "enabling a cgroup v2 controller");
            }
        }
        cur.push(c);
    }
}

fn write(path: &Path, value: &str) -> Result<(), QosError> {
    std::fs::write(path, value).map_err(|e| cg_err(path, format!("writing {value:?}: {e}")))
}

fn apply_v1(h: &Hier, dir: &Path, r: &Resources) -> Result<(), QosError> {
    if h.has("cpu") {
        if let Some(s) = r.cpu_shares {
            write(&dir.join("cpu.shares"), &s.to_string())?;
        }
        if let Some(p) = r.cpu_period {
            write(&dir.join("cpu.cfs_period_us"), &p.to_string())?;
        }
        if let Some(q) = r.cpu_quota {
            let q = if q <= 0 { -1 } else { q };
            write(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
        }
    }
    if h.has("memory")
        && let Some(m) = r.memory
    {
        let m = if m <= 0 { -1 } else { m };
        write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
    }
    if h.has("pids")
        && let Some(p) = r.pids
    {
        let v = max_or(p);
        write(&dir.join("pids.max"), &v)?;
    }
    Ok(())
}

/// A limit as cgroup files take it: "max" for none (0 or below).
fn max_or(v: i64) -> String {
    if v <= 0 { "max".into() } else { v.to_string() }
}

fn apply_v2(dir: &Path, r: &Resources) -> Result<(), QosError> {
    if let Some(s) = r.cpu_shares {
        write(&dir.join("cpu.weight"), &shares_to_weight(s).to_string())?;
    }
    if let Some(q) = r.cpu_quota {
        let period = r.cpu_period.unwrap_or(100_000);
        let q = max_or(q);
        write(&dir.join("cpu.max"), &format!("{q} {period}"))?;
    }
    if let Some(m) = r.memory {
        let v = max_or(m);
        write(&dir.join("memory.max"), &v)?;
    }
    if let Some(p) = r.pids {
        let v = max_or(p);
        write(&dir.join("pids.max"), &v)?;
    }
    Ok(())
}

/// `dir` and every cgroup below it, deepest first.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(subtree(&e.path()));
        }
    }
    out.push(dir.to_path_buf());
    out
}

/// SIGKILLs the processes of one cgroup (its cgroup.procs only).
fn kill_tasks(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if pid > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(y: &str) -> Pod {
        serde_norway::from_str(y).expect("pod yaml")
    }

    fn cfg() -> Config {
        let flags = crate::config::Flags {
            container_runtime_endpoint: Some("unix:///run/x.sock".into()),
            ..Default::default()
        };
        Config::load(&flags).expect("config")
    }

    #[test]
    fn conversions_follow_upstream() {
        assert_eq!(milli_cpu_to_shares(0), 2);
        assert_eq!(milli_cpu_to_shares(1), 2);
        assert_eq!(milli_cpu_to_shares(100), 102);
        assert_eq!(milli_cpu_to_shares(1000), 1024);
        assert_eq!(milli_cpu_to_shares(1_000_000), MAX_SHARES);
        assert_eq!(milli_cpu_to_quota(0, 100_000), 0);
        assert_eq!(milli_cpu_to_quota(5, 100_000), 1000);
        assert_eq!(milli_cpu_to_quota(250, 100_000), 25_000);
        assert_eq!(milli_cpu_to_quota(1500, 50_000), 75_000);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn pod_resources_per_qos_class() {
        let c = cfg();
        let g = pod(
            "spec:\n  containers:\n  - name: a\n    resources:\n      limits: {cpu: 250m, memory: 64Mi}\n",
        );
        assert_eq!(
            pod_resources(&c, &g),
            Resources {
                cpu_shares: Some(256),
                cpu_quota: Some(25_000),
                cpu_period: Some(100_000),
                memory: Some(64 << 20),
                pids: None,
            }
        );
        // Burstable: quota only when every container has a cpu limit, memory likewise; the
        // init container's larger request wins.
        let b = pod(
            "spec:\n  initContainers:\n  - name: i\n    resources:\n      requests: {cpu: 600m}\n      limits: {cpu: '1', memory: 32Mi}\n  containers:\n  - name: a\n    resources:\n      requests: {cpu: 100m}\n      limits: {cpu: 500m}\n  - name: b\n    resources:\n      limits: {cpu: 200m, memory: 16Mi}\n",
        );
        assert_eq!(
            pod_resources(&c, &b),
            Resources {
                cpu_shares: Some(614),
                cpu_quota: Some(100_000),
                cpu_period: Some(100_000),
                memory: None,
                pids: None,
            }
        );
        let be = pod("spec:\n  containers:\n  - name: a\n");
        assert_eq!(
            pod_resources(&c, &be),
            Resources {
                cpu_shares: Some(2),
                ..Default::default()
            }
        );
        // cpuCFSQuota off: no quota; podPidsLimit caps every class.
        let mut c2 = c.clone();
        c2.cpu_cfs_quota = false;
        c2.pod_pids_limit = 100;
        let r = pod_resources(&c2, &g);
        assert_eq!(r.cpu_quota, Some(-1));
        assert_eq!(r.pids, Some(100));
        assert_eq!(pod_resources(&c2, &be).pids, Some(100));
        // Sidecars add up with the app containers.
        let s = pod(
            "spec:\n  initContainers:\n  - name: s\n    restartPolicy: Always\n    resources:\n      requests: {cpu: 300m}\n  containers:\n  - name: a\n    resources:\n      requests: {cpu: 100m}\n",
        );
        assert_eq!(pod_resources(&c, &s).cpu_shares, Some(409));
        assert_eq!(burstable_shares([&b, &s, &g, &be]), 1024);
    }

    #[test]
    fn kubepods_is_capacity_minus_reservations_when_enforced() {
        let mut c = cfg();
        c.reserved = [("cpu".to_string(), 500), ("memory".to_string(), 1 << 30)]
            .into_iter()
            .collect();
        let cap = (2000, 4 << 30, 4_194_304);
        let r = kubepods_resources(&c, cap);
        assert_eq!(r.cpu_shares, Some(1536));
        assert_eq!(r.memory, Some(3 << 30));
        assert_eq!(r.pids, Some(4_194_304));
        c.enforce_pods_allocatable = false;
        let r = kubepods_resources(&c, cap);
        assert_eq!(r.cpu_shares, Some(2048));
        assert_eq!(r.memory, Some(4 << 30));
    }

    #[test]
    fn own_cgroup_matches_the_hierarchy() {
        let text = "4:memory:/process_api/x\n2:cpu,cpuacct:/a\n1:name=systemd:/s\n0::/u\n";
        let h = |v2: bool, c: &[&str]| Hier {
            v2,
            controllers: c.iter().map(|s| s.to_string()).collect(),
            point: PathBuf::new(),
            root: PathBuf::from("/"),
            own: PathBuf::new(),
        };
        assert_eq!(
            own_cgroup(text, &h(false, &["memory"])),
            Some(PathBuf::from("/process_api/x"))
        );
        assert_eq!(
            own_cgroup(text, &h(false, &["cpu", "cpuacct"])),
            Some(PathBuf::from("/a"))
        );
        assert_eq!(
            own_cgroup(text, &h(false, &["name=systemd"])),
            Some(PathBuf::from("/s"))
        );
        assert_eq!(own_cgroup(text, &h(true, &[])), Some(PathBuf::from("/u")));
        assert_eq!(own_cgroup(text, &h(false, &["pids"])), None);
    }
}
