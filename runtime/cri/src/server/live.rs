//! Which recorded processes (sandbox infra processes, container monitors) still run.
//!
//! The kubelet asks for every pod's sandboxes and containers each time it syncs the pod, and
//! the whole list on each relist; checking a process the plain way reads and parses
//! `/proc/<pid>/stat` (to compare the recorded start time), and a monitor's pid file first.
//! With 50 pods starting at once that was the largest single item of keelsond's CPU time. So
//! the first check of a process opens a pidfd on it and then compares the start time
//! (`monitor::pidfile::open`: the pidfd pins the process that was checked); every later check
//! is one `poll` of that pidfd, which becomes readable when the process exits. Exited entries
//! go at once; entries nobody asks about again are swept when the table has doubled.

use crate::monitor::MonitorHandle;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Default)]
pub struct Liveness {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (pid, start time) → pidfd of a process found alive.
    processes: HashMap<(i32, u64), OwnedFd>,
    /// Monitor state directory → pidfd of its monitor found alive.
    monitors: HashMap<PathBuf, OwnedFd>,
    /// Entries after the last sweep.
    swept_len: usize,
}

impl Inner {
    fn sweep_if_grown(&mut self) {
        let len = self.processes.len() + self.monitors.len();
        if len < 64 || len < 2 * self.swept_len {
            return;
        }
        self.processes.retain(|_, fd| !exited(fd));
        self.monitors.retain(|_, fd| !exited(fd));
        self.swept_len = self.processes.len() + self.monitors.len();
    }
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the process recorded as (`pid`, `start_time`) still runs (not a zombie).
    pub fn process(&self, pid: i32, start_time: u64) -> bool {
        if pid <= 0 {
            return false;
        }
        let key = (pid, start_time);
        {
            let mut inner = self.lock();
            if let Some(fd) = inner.processes.get(&key) {
                if !exited(fd) {
                    return true;
                }
                inner.processes.remove(&key);
                return false;
            }
        }
        let Ok(Some(fd)) = crate::monitor::pidfile::open(pid, start_time) else {
            return false;
        };
        let mut inner = self.lock();
        inner.processes.insert(key, fd);
        inner.sweep_if_grown();
        true
    }

    /// Whether the monitor whose state directory is `dir` still runs.
    pub fn monitor(&self, dir: &Path) -> bool {
        {
            let mut inner = self.lock();
            if let Some(fd) = inner.monitors.get(dir) {
                if !exited(fd) {
                    return true;
                }
                inner.monitors.remove(dir);
                return false;
            }
        }
        let fd = match MonitorHandle::load(dir, &dir.join("exit.json")) {
            Ok(Some(h)) => match h.pidfd() {
                Ok(Some(fd)) => fd,
                _ => return false,
            },
            _ => return false,
        };
        let mut inner = self.lock();
        inner.monitors.insert(dir.to_path_buf(), fd);
        inner.sweep_if_grown();
        true
    }
}

/// Whether the process behind `fd` has exited (its pidfd polls readable).
fn exited(fd: &OwnedFd) -> bool {
    let mut fds = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => true,
        // EINTR and the like: say alive, the next check decides.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_container::state::proc_stat;

    #[test]
    fn a_process_is_alive_until_it_exits_and_a_wrong_start_time_is_not() {
        let live = Liveness::default();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let (_, start) = proc_stat(pid).expect("stat");
        assert!(live.process(pid, start));
        assert!(live.process(pid, start), "the cached answer");
        assert!(
            !live.process(pid, start + 1),
            "another start time is another process"
        );
        child.kill().expect("kill");
        // A zombie (not reaped yet) counts as gone, as with /proc's state 'Z'.
        let gone = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            !live.process(pid, start)
        });
        assert!(gone, "the exited process still counted as alive");
        child.wait().expect("reap");
        assert!(!live.process(pid, start));
        assert!(!live.process(0, 0));
        assert!(live.lock().processes.is_empty());
    }

    #[test]
    fn a_missing_monitor_is_not_alive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = Liveness::default();
        assert!(!live.monitor(dir.path()));
        assert!(!live.monitor(&dir.path().join("nope")));
    }
}
