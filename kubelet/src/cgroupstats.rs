//! Reading usage figures straight from cgroup files (v1 and v2) and /proc, for what the
//! runtime's stats RPCs do not give: pod-level figures when PodSandboxStats is not
//! implemented, RSS and page faults, the node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The cgroup directories of one cgroup: v1 per-controller directories, or a v2 directory.
#[derive(Clone, Debug, Default)]
pub struct Dirs {
    pub cpuacct: Option<PathBuf>,
    pub memory: Option<PathBuf>,
    pub unified: Option<PathBuf>,
}

impl Dirs {
    /// The child cgroup `name` of each directory.
    pub fn child(&self, name: &str) -> Dirs {
        Dirs {
            cpuacct: self.cpuacct.as_ref().map(|p| p.join(name)),
            memory: self.memory.as_ref().map(|p| p.join(name)),
            unified: self.unified.as_ref().map(|p| p.join(name)),
        }
    }

    pub fn parent(&self) -> Dirs {
        let up = |p: &Option<PathBuf>| p.as_ref().and_then(|p| p.parent()).map(Path::to_path_buf);
        Dirs {
            cpuacct: up(&self.cpuacct),
            memory: up(&self.memory),
            unified: up(&self.unified),
        }
    }
}

/// A cgroup mount: (v2?, controllers, mount point, root within the hierarchy).
#[derive(Debug, Clone)]
pub struct Mount {
    pub v2: bool,
    /// The mount's super options (v1: its controllers, `name=...`, and the rest).
    pub controllers: Vec<String>,
    pub point: PathBuf,
    pub root: String,
}

pub fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = pre.split(' ').collect();
        let p: Vec<&str> = post.split(' ').collect();
        if f.len() < 5 || p.len() < 3 {
            continue;
        }
        let v2 = match p[0] {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        out.push(Mount {
            v2,
            controllers: p[2].split(',').map(str::to_string).collect(),
            point: PathBuf::from(f[4]),
            root: f[3].to_string(),
        });
    }
    out
}

fn under(m: &Mount, path: &str) -> PathBuf {
    let rel = path.strip_prefix(m.root.as_str()).unwrap_or(path);
    m.point.join(rel.trim_start_matches('/'))
}

/// The cgroup directories of process `pid` (from /proc/<pid>/cgroup and the mount table).
pub fn of_pid(pid: i64) -> Option<Dirs> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let ms = mounts();
    let mut d = Dirs::default();
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            if let Some(m) = ms.iter().find(|m| m.v2) {
                let dir = under(m, path);
                let has =
                    std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
                if has.split_whitespace().any(|c| c == "memory" || c == "cpu") {
                    d.unified = Some(dir);
                }
            }
            continue;
        }
        let names: Vec<&str> = ctrls.split(',').collect();
        for (want, slot) in [("cpuacct", &mut d.cpuacct), ("memory", &mut d.memory)] {
            if names.contains(&want)
                && let Some(m) = ms
                    .iter()
                    .find(|m| !m.v2 && m.controllers.iter().any(|c| c == want))
            {
                *slot = Some(under(m, path));
            }
        }
    }
    Some(d)
}

/// The root cgroup's directories (for the node).
pub fn root() -> Dirs {
    let ms = mounts();
    let v1 = |want: &str| {
        ms.iter()
            .find(|m| !m.v2 && m.controllers.iter().any(|c| c == want))
            .map(|m| m.point.clone())
    };
    Dirs {
        cpuacct: v1("cpuacct"),
        memory: v1("memory"),
        unified: ms.iter().find(|m| m.v2).map(|m| m.point.clone()),
    }
}

/// Usage figures of one cgroup; None where the file is missing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_ns: Option<u64>,
    pub memory: Option<u64>,
    pub working_set: Option<u64>,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat).
pub fn flat(text: &str) -> BTreeMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect()
}

pub fn usage(d: &Dirs) -> Usage {
    let mut u = Usage::default();
    if let Some(dir) = &d.cpuacct {
        u.cpu_ns = read_u64(&dir.join("cpuacct.usage"));
    }
    if let Some(dir) = &d.memory {
        u.memory = read_u64(&dir.join("memory.usage_in_bytes"));
        if let Ok(s) = std::fs::read_to_string(dir.join("memory.stat")) {
            let st = flat(&s);
            let inactive = st.get("total_inactive_file").copied().unwrap_or(0);
            u.working_set = u.memory.map(|m| m.saturating_sub(inactive));
            u.rss = st.get("total_rss").copied();
            u.page_faults = st.get("total_pgfault").copied();
            u.major_page_faults = st.get("total_pgmajfault").copied();
        }
    }
    if let Some(dir) = &d.unified {
        if u.cpu_ns.is_none()
            && let Ok(s) = std::fs::read_to_string(dir.join("cpu.stat"))
        {
            u.cpu_ns = flat(&s).get("usage_usec").map(|v| v * 1000);
        }
        if u.memory.is_none() {
            u.memory = read_u64(&dir.join("memory.current"));
            if let Ok(s) = std::fs::read_to_string(dir.join("memory.stat")) {
                let st = flat(&s);
                let inactive = st.get("inactive_file").copied().unwrap_or(0);
                u.working_set = u.memory.map(|m| m.saturating_sub(inactive));
                u.rss = st.get("anon").copied();
                u.page_faults = st.get("pgfault").copied();
                u.major_page_faults = st.get("pgmajfault").copied();
            }
        }
    }
    u
}

/// One interface of /proc/<pid>/net/dev: (name, rx bytes, rx errors, tx bytes, tx errors).
pub type Iface = (String, u64, u64, u64, u64);

pub fn parse_net_dev(text: &str) -> Vec<Iface> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() < 16 {
                return None;
            }
            Some((name.trim().to_string(), v[0], v[2], v[8], v[10]))
        })
        .collect()
}

/// The interfaces seen by `pid` (its network namespace), loopback left out like cAdvisor.
pub fn net_of(pid: Option<i64>) -> Vec<Iface> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/net/dev"),
        None => "/proc/net/dev".to_string(),
    };
    parse_net_dev(&std::fs::read_to_string(path).unwrap_or_default())
        .into_iter()
        .filter(|i| i.0 != "lo")
        .collect()
}

/// /proc/meminfo in bytes.
pub fn meminfo() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let n: u64 = v.split_whitespace().next()?.parse().ok()?;
            let mul = if v.trim_end().ends_with("kB") {
                1024
            } else {
                1
            };
            Some((k.to_string(), n * mul))
        })
        .collect()
}

/// Total CPU time of the machine from /proc/stat (ns), for when no root cgroup counts it.
pub fn proc_stat_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let busy: u64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, x)| *x)
        .sum();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(busy * (1_000_000_000 / hz))
}

/// Seconds since boot.
pub fn uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Capacity, available and used bytes, inodes, free and used inodes of the filesystem of `p`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsInfo {
    pub capacity: u64,
    pub available: u64,
    pub used: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

pub fn statvfs(p: &Path) -> Option<FsInfo> {
    let s = nix::sys::statvfs::statvfs(p).ok()?;
    let f = s.fragment_size().max(1);
    let cap = s.blocks() * f;
    let free = s.blocks_free() * f;
    Some(FsInfo {
        capacity: cap,
        available: s.blocks_available() * f,
        used: cap.saturating_sub(free),
        inodes: s.files(),
        inodes_free: s.files_free(),
    })
}

/// Bytes and files below `dir` (not following links).
pub fn du(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            files += 1;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                bytes += m.len();
            }
        }
    }
    (bytes, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev() {
        let t = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    2000      10    3    0    0     0          0         0     3000      20    4    0    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(t),
            [
                ("lo".to_string(), 100, 0, 100, 0),
                ("eth0".to_string(), 2000, 3, 3000, 4)
            ]
        );
    }

    #[test]
    fn own_cgroup_reads() {
        let d = of_pid(std::process::id() as i64).expect("own cgroup");
        let u = usage(&d);
        // Some controller counts this test process on any machine with cgroups.
        assert!(u.cpu_ns.is_some() || u.memory.is_some(), "{d:?} {u:?}");
        assert!(meminfo().contains_key("MemTotal"));
        assert!(uptime().is_some_and(|u| u > 0.0));
    }
}
