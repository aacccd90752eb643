//! Control groups: discovering the host's hierarchies (v1, v2 or hybrid), placing a container
//! in them and applying `linux.resources`.
//!
//! A relative `cgroupsPath` is resolved below the calling process's own cgroup in each hierarchy
//! (as runc's cgroupfs driver does); an absolute one below the hierarchy's root. An empty one is
//! the container id, relative.

pub mod devices_bpf;
mod v1;
mod v2;

use crate::error::{Error, Result};
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// One mounted hierarchy of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hierarchy {
    pub v2: bool,
    /// v1 controllers (and `name=...`) of this hierarchy; empty for v2.
    pub controllers: Vec<String>,
    pub mount_point: PathBuf,
    /// The `root` field of the mount: which cgroup of the hierarchy sits at `mount_point`.
    pub mount_root: PathBuf,
    /// This process's own cgroup in the hierarchy.
    pub own: PathBuf,
}

/// The host's cgroup layout. A caller that creates many containers discovers it once and
/// hands it to [`crate::container::create`] (`CreateOptions::layout`): reading mountinfo costs
/// more with every mount, and a node has several per pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub hierarchies: Vec<Hierarchy>,
    /// True when resources are applied through cgroup v2 (no v1 controller is mounted).
    pub unified: bool,
}

/// A container's directory in one hierarchy, persisted in its state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CgroupDir {
    pub v2: bool,
    pub controllers: Vec<String>,
    /// Host path of the container's cgroup.
    pub path: PathBuf,
    /// Where the hierarchy is mounted.
    pub mount_point: PathBuf,
    /// The cgroup path as seen from the hierarchy root (what /proc/PID/cgroup shows).
    pub cgroup: PathBuf,
    /// Directories this container created, outermost first; removed on delete.
    pub created: Vec<PathBuf>,
}

/// The container's cgroups across all hierarchies.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cgroups {
    pub unified: bool,
    pub dirs: Vec<CgroupDir>,
}

fn cg_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Cgroup {
        path: path.to_path_buf(),
        msg: msg.into(),
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

impl Layout {
    /// Reads the hierarchies from /proc/self/mountinfo and own cgroups from /proc/self/cgroup.
    pub fn discover() -> Result<Layout> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| cg_err(Path::new("/proc/self/mountinfo"), e.to_string()))?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| cg_err(Path::new("/proc/self/cgroup"), e.to_string()))?;
        Ok(Self::parse(&mountinfo, &own))
    }

    /// Pure parser of the two proc files, testable without a host.
    pub fn parse(mountinfo: &str, proc_cgroup: &str) -> Layout {
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let fstype = post[0];
            let mount_root = PathBuf::from(unescape(pre[3]));
            let mount_point = PathBuf::from(unescape(pre[4]));
            let (v2, controllers) = match fstype {
                "cgroup2" => (true, Vec::new()),
                "cgroup" => {
                    let ctrls: Vec<String> = post[2]
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                        .map(str::to_string)
                        .collect();
                    if ctrls.is_empty() {
                        continue;
                    }
                    (false, ctrls)
                }
                _ => continue,
            };
            if hierarchies
                .iter()
                .any(|h| h.v2 == v2 && h.controllers == controllers)
            {
                continue; // the same hierarchy mounted twice: the first mount wins
            }
            let own = own_cgroup(proc_cgroup, v2, &controllers).unwrap_or_else(|| "/".into());
            hierarchies.push(Hierarchy {
                v2,
                controllers,
                mount_point,
                mount_root,
                own,
            });
        }
        let unified = !hierarchies
            .iter()
            .any(|h| !h.v2 && h.controllers.iter().any(|c| !c.starts_with("name=")));
        if unified {
            // With no v1 controller, named v1 hierarchies play no part.
            hierarchies.retain(|h| h.v2);
        }
        Layout {
            hierarchies,
            unified,
        }
    }

    /// Resolves where a container's cgroups go, without creating anything.
    pub fn resolve(&self, cgroups_path: Option<&Path>, id: &str) -> Result<Cgroups> {
        let requested = match cgroups_path {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from(id),
        };
        if requested.to_string_lossy().contains(':') {
            return Err(Error::Unimplemented(format!(
                "systemd-style cgroupsPath {requested:?} (no systemd cgroup driver)"
            )));
        }
        for c in requested.components() {
            if matches!(c, Component::ParentDir) {
                return Err(Error::Config(format!(
                    "linux.cgroupsPath {requested:?} must not contain '..'"
                )));
            }
        }
        let rel = requested.strip_prefix("/").unwrap_or(&requested);
        if rel.as_os_str().is_empty() {
            return Err(Error::Config(
                "linux.cgroupsPath must not be the root cgroup".into(),
            ));
        }
        let mut dirs = Vec::new();
        for h in &self.hierarchies {
            let cgroup = if requested.is_absolute() {
                Path::new("/").join(rel)
            } else {
                h.own.join(rel)
            };
            let inside = cgroup.strip_prefix(&h.mount_root).map_err(|_| {
                cg_err(
                    &cgroup,
                    format!(
                        "outside the mounted part {:?} of the hierarchy",
                        h.mount_root
                    ),
                )
            })?;
            dirs.push(CgroupDir {
                v2: h.v2,
                controllers: h.controllers.clone(),
                path: h.mount_point.join(inside),
                mount_point: h.mount_point.clone(),
                cgroup,
                created: Vec::new(),
            });
        }
        Ok(Cgroups {
            unified: self.unified,
            dirs,
        })
    }
}

fn own_cgroup(proc_cgroup: &str, v2: bool, controllers: &[String]) -> Option<PathBuf> {
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        if v2 {
            if ctrls.is_empty() {
                return Some(PathBuf::from(path));
            }
        } else {
            let mut set: Vec<&str> = ctrls.split(',').collect();
            set.sort_unstable();
            let mut want: Vec<&str> = controllers.iter().map(String::as_str).collect();
            want.sort_unstable();
            if !ctrls.is_empty() && set == want {
                return Some(PathBuf::from(path));
            }
        }
    }
    None
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

impl CgroupDir {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

impl Cgroups {
    /// Creates the directories (recording which ones are new) and applies the resources.
    pub fn create(
        &mut self,
        resources: Option<&LinuxResources>,
        devices: &[DeviceRule],
    ) -> Result<()> {
        for dir in &mut self.dirs {
            dir.created = mkdir_tracked(&dir.path)?;
            if !dir.v2 && dir.has("cpuset") {
                v1::init_cpuset(dir)?;
            }
            if dir.v2 && self.unified {
                v2::enable_controllers(dir, &dir.mount_point)?;
            }
        }
        let res = resources.cloned().unwrap_or_default();
        for dir in &self.dirs {
            if self.unified {
                v2::apply(dir, &res, devices)?;
            } else if !dir.v2 {
                v1::apply(dir, &res, devices)?;
            }
        }
        if !self.unified {
            v1::refuse_v2_only(&res)?;
        }
        Ok(())
    }

    /// Applies new resource limits to the existing cgroups (`update`); device rules are left
    /// as they are.
    pub fn update(&self, res: &LinuxResources) -> Result<()> {
        if !self.unified {
            v1::refuse_v2_only(res)?;
        }
        for dir in &self.dirs {
            if self.unified {
                v2::apply(dir, res, &[])?;
            } else if !dir.v2 {
                v1::apply(dir, res, &[])?;
            }
        }
        Ok(())
    }

    /// Moves a process into the container's cgroup in every hierarchy.
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        for dir in &self.dirs {
            let f = dir.path.join("cgroup.procs");
            fs::write(&f, pid.to_string()).map_err(|e| cg_err(&f, e.to_string()))?;
        }
        Ok(())
    }

    /// Pids in the container's cgroup (from the first hierarchy that lists them).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let dir = self
            .dirs
            .iter()
            .find(|d| d.v2 == self.unified && (d.v2 || d.has("pids") || d.has("freezer")))
            .or_else(|| self.dirs.first())
            .ok_or_else(|| cg_err(Path::new("/"), "no cgroup hierarchy"))?;
        let f = dir.path.join("cgroup.procs");
        match fs::read_to_string(&f) {
            Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(cg_err(&f, e.to_string())),
        }
    }

    /// How many times the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_kill_count(&self) -> Result<u64> {
        for dir in &self.dirs {
            let (file, key) = if self.unified && dir.v2 {
                ("memory.events", "oom_kill")
            } else if !dir.v2 && dir.has("memory") {
                ("memory.oom_control", "oom_kill")
            } else {
                continue;
            };
            let f = dir.path.join(file);
            let text = fs::read_to_string(&f).map_err(|e| cg_err(&f, e.to_string()))?;
            return Ok(flat_key(&text, key).unwrap_or(0));
        }
        Ok(0)
    }

    /// Whether the freezer holds the container frozen.
    pub fn frozen(&self) -> bool {
        for dir in &self.dirs {
            if self.unified && dir.v2 {
                return fs::read_to_string(dir.path.join("cgroup.freeze"))
                    .map(|s| s.trim() == "1")
                    .unwrap_or(false);
            }
            if !dir.v2 && dir.has("freezer") {
                return fs::read_to_string(dir.path.join("freezer.state"))
                    .map(|s| s.trim() == "FROZEN")
                    .unwrap_or(false);
            }
        }
        false
    }

    /// Freezes (or thaws) every task of the container: v1 freezer.state, v2 cgroup.freeze.
    /// Waits until the kernel reports the new state.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let dir = self
            .dirs
            .iter()
            .find(|d| {
                if self.unified {
                    d.v2
                } else {
                    !d.v2 && d.has("freezer")
                }
            })
            .ok_or_else(|| {
                cg_err(
                    Path::new("/sys/fs/cgroup"),
                    "no freezer controller is mounted",
                )
            })?;
        let (file, value) = if self.unified {
            ("cgroup.freeze", if frozen { "1" } else { "0" })
        } else {
            ("freezer.state", if frozen { "FROZEN" } else { "THAWED" })
        };
        for _ in 0..1000 {
            write_file(&dir.path, file, value)?;
            let done = if self.unified {
                let events = fs::read_to_string(dir.path.join("cgroup.events")).unwrap_or_default();
                flat_key(&events, "frozen") == Some(u64::from(frozen))
            } else {
                fs::read_to_string(dir.path.join("freezer.state"))
                    .map(|s| s.trim() == value)
                    .unwrap_or(false)
            };
            if done {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(cg_err(
            &dir.path,
            format!("the kernel did not reach {value}"),
        ))
    }

    /// Removes the directories this container created, deepest first. Waits up to ~2 s for
    /// exiting tasks to leave; directories still shared with others (EBUSY on a parent that has
    /// other children) are left alone.
    pub fn destroy(&self) -> Result<()> {
        let mut first_err = None;
        for dir in &self.dirs {
            for (i, d) in dir.created.iter().rev().enumerate() {
                let leaf = i == 0;
                if let Err(e) = rmdir_retry(d, leaf) {
                    if leaf && first_err.is_none() {
                        first_err = Some(cg_err(d, e.to_string()));
                    }
                    break;
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn rmdir_retry(d: &Path, wait: bool) -> std::io::Result<()> {
    let attempts = if wait { 100 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        match fs::remove_dir(d) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EBUSY)))
}

fn mkdir_tracked(path: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = path.to_path_buf();
    while !cur.exists() {
        missing.push(cur.clone());
        if !cur.pop() {
            break;
        }
    }
    missing.reverse();
    for (i, d) in missing.iter().enumerate() {
        if let Err(e) = fs::create_dir(d) {
            if e.kind() != ErrorKind::AlreadyExists {
                for done in missing[..i].iter().rev() {
                    let _ = fs::remove_dir(done);
                }
                return Err(cg_err(d, e.to_string()));
            }
        }
    }
    Ok(missing)
}

/// Value of `key` in a flat-keyed cgroup file ("key value" per line).
pub(crate) fn flat_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

pub(crate) fn write_file(dir: &Path, file: &str, value: &str) -> Result<()> {
    let p = dir.join(file);
    fs::write(&p, value).map_err(|e| cg_err(&p, format!("writing {value:?}: {e}")))
}

/// A device cgroup rule in kernel terms ("c 1:3 rwm").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    /// 'a', 'c' or 'b'
    pub kind: char,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

impl DeviceRule {
    pub fn to_v1(&self) -> String {
        if self.kind == 'a' {
            return "a".into();
        }
        let n = |v: Option<i64>| v.map_or("*".to_string(), |v| v.to_string());
        format!(
            "{} {}:{} {}",
            self.kind,
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

/// The devices every container may use, whatever its rules say (the set runc allows).
pub fn default_allowed_devices() -> Vec<DeviceRule> {
    let r = |kind, major: Option<i64>, minor: Option<i64>, access: &str| DeviceRule {
        allow: true,
        kind,
        major,
        minor,
        access: access.into(),
    };
    vec![
        r('c', None, None, "m"),
        r('b', None, None, "m"),
        r('c', Some(1), Some(3), "rwm"),
        r('c', Some(1), Some(8), "rwm"),
        r('c', Some(1), Some(7), "rwm"),
        r('c', Some(5), Some(0), "rwm"),
        r('c', Some(1), Some(5), "rwm"),
        r('c', Some(1), Some(9), "rwm"),
        r('c', Some(5), Some(1), "rwm"),
        r('c', Some(136), None, "rwm"),
        r('c', Some(5), Some(2), "rwm"),
        r('c', Some(10), Some(200), "rwm"),
    ]
}

/// What a cgroup has used, as the CRI stats report it (containerd's cgroups metrics): v1 from
/// the cpuacct/memory/pids hierarchies, v2 from the unified one. A counter the host does not
/// expose is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Cumulative CPU time, nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory charged to the cgroup (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub memory_bytes: Option<u64>,
    /// Usage less the inactive file cache (the kubelet's working set).
    pub working_set_bytes: Option<u64>,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub rss_bytes: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// The memory limit, `None` when unlimited.
    pub memory_limit: Option<u64>,
    /// Tasks in the cgroup (`pids.current`, else the processes in `cgroup.procs`).
    pub pids: Option<u64>,
}

/// v1's "no limit" is the largest page-aligned i64; anything at or above 2^62 counts as none.
const UNLIMITED: u64 = 1 << 62;

impl Cgroups {
    /// Reads the cgroup's usage counters (hierarchical: a pod's cgroup includes its
    /// containers'). Missing files leave their fields empty.
    pub fn usage(&self) -> Usage {
        let read = |p: PathBuf| fs::read_to_string(p).ok();
        let num = |p: PathBuf| read(p).and_then(|s| s.trim().parse::<u64>().ok());
        let mut u = Usage::default();
        for dir in &self.dirs {
            if dir.v2 {
                if !self.unified {
                    continue;
                }
                if let Some(s) = read(dir.path.join("cpu.stat")) {
                    u.cpu_ns = flat_key(&s, "usage_usec").map(|v| v.saturating_mul(1000));
                }
                u.memory_bytes = num(dir.path.join("memory.current"));
                if let Some(s) = read(dir.path.join("memory.stat")) {
                    let inactive = flat_key(&s, "inactive_file").unwrap_or(0);
                    u.working_set_bytes = u.memory_bytes.map(|m| m.saturating_sub(inactive));
                    u.rss_bytes = flat_key(&s, "anon");
                    u.page_faults = flat_key(&s, "pgfault");
                    u.major_page_faults = flat_key(&s, "pgmajfault");
                }
                u.memory_limit = num(dir.path.join("memory.max")).filter(|&l| l < UNLIMITED);
                u.pids = num(dir.path.join("pids.current"));
                continue;
            }
            if dir.has("cpuacct") {
                u.cpu_ns = num(dir.path.join("cpuacct.usage"));
            }
            if dir.has("memory") {
                u.memory_bytes = num(dir.path.join("memory.usage_in_bytes"));
                if let Some(s) = read(dir.path.join("memory.stat")) {
                    let inactive = flat_key(&s, "total_inactive_file").unwrap_or(0);
                    u.working_set_bytes = u.memory_bytes.map(|m| m.saturating_sub(inactive));
                    u.rss_bytes = flat_key(&s, "total_rss");
                    u.page_faults = flat_key(&s, "total_pgfault");
                    u.major_page_faults = flat_key(&s, "total_pgmajfault");
                    u.memory_limit =
                        flat_key(&s, "hierarchical_memory_limit").filter(|&l| l < UNLIMITED);
                }
            }
            if dir.has("pids") {
                u.pids = num(dir.path.join("pids.current"));
            }
        }
        if u.pids.is_none() {
            u.pids = self.pids().ok().map(|p| p.len() as u64);
        }
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
    const PC: &str = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n";

    #[test]
    fn hybrid_layout_resolves_relative_below_own() {
        let l = Layout::parse(MI, PC);
        assert!(!l.unified);
        assert_eq!(l.hierarchies.len(), 4);
        let cg = l.resolve(Some(Path::new("kt/x")), "id").expect("resolve");
        let mem = cg
            .dirs
            .iter()
            .find(|d| d.controllers == ["memory"])
            .expect("memory");
        assert_eq!(
            mem.path,
            Path::new("/sys/fs/cgroup/memory/process_api/abc/kt/x")
        );
        let cpu = cg
            .dirs
            .iter()
            .find(|d| d.controllers == ["cpu"])
            .expect("cpu");
        assert_eq!(cpu.path, Path::new("/sys/fs/cgroup/cpu/kt/x"));
        let abs = l.resolve(Some(Path::new("/a/b")), "id").expect("resolve");
        assert!(abs.dirs.iter().all(|d| d.cgroup == Path::new("/a/b")));
    }

    #[test]
    fn unified_layout_and_bad_paths() {
        let l = Layout::parse(
            "41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw",
            "0::/user.slice\n",
        );
        assert!(l.unified);
        let cg = l.resolve(None, "abc").expect("resolve");
        assert_eq!(cg.dirs[0].path, Path::new("/sys/fs/cgroup/user.slice/abc"));
        assert!(l.resolve(Some(Path::new("../x")), "a").is_err());
        assert!(l.resolve(Some(Path::new("/")), "a").is_err());
        assert!(l.resolve(Some(Path::new("sys.slice:a:b")), "a").is_err());
    }

    #[test]
    fn flat_keys() {
        assert_eq!(
            flat_key("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
    }

    fn dir(path: &Path, v2: bool, controllers: &[&str]) -> CgroupDir {
        CgroupDir {
            v2,
            controllers: controllers.iter().map(|c| c.to_string()).collect(),
            path: path.to_path_buf(),
            mount_point: path.to_path_buf(),
            cgroup: PathBuf::from("/"),
            created: Vec::new(),
        }
    }

    #[test]
    fn usage_from_v2_files() {
        let t = tempfile::tempdir().expect("tmp");
        let p = t.path();
        fs::write(p.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").expect("w");
        fs::write(p.join("memory.current"), "10000\n").expect("w");
        fs::write(
            p.join("memory.stat"),
            "anon 4096\ninactive_file 3000\npgfault 77\npgmajfault 2\n",
        )
        .expect("w");
        fs::write(p.join("memory.max"), "max\n").expect("w");
        fs::write(p.join("pids.current"), "3\n").expect("w");
        let cg = Cgroups {
            unified: true,
            dirs: vec![dir(p, true, &[])],
        };
        let u = cg.usage();
        assert_eq!(u.cpu_ns, Some(1_500_000));
        assert_eq!(u.memory_bytes, Some(10000));
        assert_eq!(u.working_set_bytes, Some(7000));
        assert_eq!(u.rss_bytes, Some(4096));
        assert_eq!((u.page_faults, u.major_page_faults), (Some(77), Some(2)));
        assert_eq!(u.memory_limit, None);
        assert_eq!(u.pids, Some(3));
        fs::write(p.join("memory.max"), "65536\n").expect("w");
        assert_eq!(cg.usage().memory_limit, Some(65536));
    }

    #[test]
    fn usage_from_v1_files() {
        let t = tempfile::tempdir().expect("tmp");
        let (cpu, mem, pids, v2) = (
            t.path().join("cpu"),
            t.path().join("mem"),
            t.path().join("pids"),
            t.path().join("v2"),
        );
        for d in [&cpu, &mem, &pids, &v2] {
            fs::create_dir(d).expect("mkdir");
        }
        fs::write(cpu.join("cpuacct.usage"), "123456\n").expect("w");
        fs::write(mem.join("memory.usage_in_bytes"), "8192\n").expect("w");
        fs::write(
            mem.join("memory.stat"),
            "inactive_file 9\ntotal_inactive_file 192\ntotal_rss 4096\ntotal_pgfault 5\n\
             total_pgmajfault 1\nhierarchical_memory_limit 9223372036854771712\n",
        )
        .expect("w");
        fs::write(pids.join("pids.current"), "2\n").expect("w");
        // The hybrid layout's empty v2 hierarchy is not read.
        fs::write(v2.join("memory.current"), "1\n").expect("w");
        let cg = Cgroups {
            unified: false,
            dirs: vec![
                dir(&cpu, false, &["cpu", "cpuacct"]),
                dir(&mem, false, &["memory"]),
                dir(&pids, false, &["pids"]),
                dir(&v2, true, &[]),
            ],
        };
        let u = cg.usage();
        assert_eq!(u.cpu_ns, Some(123_456));
        assert_eq!(u.memory_bytes, Some(8192));
        assert_eq!(u.working_set_bytes, Some(8000));
        assert_eq!(u.rss_bytes, Some(4096));
        assert_eq!((u.page_faults, u.major_page_faults), (Some(5), Some(1)));
        assert_eq!(u.memory_limit, None, "v1's unlimited");
        assert_eq!(u.pids, Some(2));
    }
}
