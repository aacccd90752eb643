//! Looking at host processes: identity across pid reuse, and processes living in a rootfs.

use std::fs;
use std::path::{Path, PathBuf};

/// A process identified by pid and start time (field 22 of `/proc/<pid>/stat`), so a recycled
/// pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

/// The start time of `pid` in clock ticks since boot, if it exists.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts with field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl ProcessId {
    /// Records `pid` as it is now; `None` if no such process exists.
    pub fn of(pid: i32) -> Option<ProcessId> {
        if pid <= 0 {
            return None;
        }
        start_time(pid).map(|start_time| ProcessId { pid, start_time })
    }

    /// Whether the same process still exists and is not a zombie.
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time) && state(self.pid).is_some_and(|s| s != 'Z')
    }

    /// Sends SIGKILL if the process is still the one recorded.
    pub fn kill(&self) {
        if self.is_alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The state letter of `pid` (`R`, `S`, `Z`, ...).
pub fn state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// All pids in `/proc`.
pub fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose root directory or working directory is `dir` or below it (for instance a
/// bundle's rootfs), zombies excluded.
pub fn processes_in(dir: &Path) -> Vec<(i32, PathBuf)> {
    all_pids()
        .into_iter()
        .filter(|pid| state(*pid).is_some_and(|s| s != 'Z'))
        .filter_map(|pid| {
            ["root", "cwd"].iter().find_map(|link| {
                let target = fs::read_link(format!("/proc/{pid}/{link}")).ok()?;
                target.starts_with(dir).then_some((pid, target))
            })
        })
        .collect()
}

/// The parent pid of `pid`.
pub fn parent(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` and all its living descendants, parents before children.
pub fn tree_of(pid: i32) -> Vec<ProcessId> {
    let links: Vec<(i32, i32)> = all_pids()
        .into_iter()
        .filter_map(|p| parent(p).map(|pp| (p, pp)))
        .collect();
    let mut tree: Vec<i32> = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(links.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree.into_iter().filter_map(ProcessId::of).collect()
}

/// SIGKILLs the process group `pgid` and every process of `tree` that is still the one recorded.
pub fn kill_tree(pgid: i32, tree: &[ProcessId]) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
    for p in tree {
        p.kill();
    }
}

/// One line per process: pid, state, the kernel function it sleeps in, and its command line.
pub fn describe(tree: &[ProcessId]) -> String {
    tree.iter()
        .map(|p| {
            let wchan = fs::read_to_string(format!("/proc/{}/wchan", p.pid)).unwrap_or_default();
            let cmdline = fs::read(format!("/proc/{}/cmdline", p.pid))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            format!(
                "{} {} {} {}\n",
                p.pid,
                state(p.pid).unwrap_or('?'),
                wchan,
                cmdline.trim_end()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive() {
        let me = ProcessId::of(i32::try_from(std::process::id()).expect("pid fits")).expect("me");
        assert!(me.is_alive());
        assert!(ProcessId::of(0).is_none());
    }

    #[test]
    fn finds_a_process_by_cwd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .current_dir(dir.path())
            .spawn()
            .expect("spawn");
        let pid = i32::try_from(child.id()).expect("pid fits");
        let found = processes_in(dir.path());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.iter().any(|(p, _)| *p == pid), "{found:?}");
    }
}
