//! `monitor.pid` and signalling the monitor without ever hitting a recycled pid.
//!
//! The file holds `<pid> <start time> <init pid>`. To signal, the caller opens a pidfd on the
//! pid, *then* checks that the process behind it has the recorded start time (field 22 of
//! `/proc/<pid>/stat`) and is not a zombie, and signals through the pidfd: the pidfd pins the
//! process that was checked, so a pid reused in between cannot be signalled.

use super::{Error, Result, io_err};
use keelson_container::state::proc_stat;
use std::fs;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// The pid file's name in the state directory.
pub const PID_FILE: &str = "monitor.pid";

/// What the pid file records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PidRecord {
    pub pid: i32,
    pub start_time: u64,
    pub init_pid: i32,
}

pub(super) fn write(dir: &Path, rec: PidRecord) -> std::io::Result<()> {
    let tmp = dir.join(".monitor.pid.tmp");
    fs::write(
        &tmp,
        format!("{} {} {}\n", rec.pid, rec.start_time, rec.init_pid),
    )?;
    fs::rename(&tmp, dir.join(PID_FILE))
}

pub(super) fn read(dir: &Path) -> Result<Option<PidRecord>> {
    let path = dir.join(PID_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
    };
    let mut it = text.split_whitespace().map(str::parse::<i64>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(pid)), Some(Ok(start)), Some(Ok(init))) if pid > 0 && start >= 0 => {
            Ok(Some(PidRecord {
                pid: i32::try_from(pid).map_err(|_| bad(&path, &text))?,
                start_time: start as u64,
                init_pid: i32::try_from(init).map_err(|_| bad(&path, &text))?,
            }))
        }
        _ => Err(bad(&path, &text)),
    }
}

fn bad(path: &Path, text: &str) -> Error {
    Error::Io {
        context: format!("reading {}", path.display()),
        source: std::io::Error::new(ErrorKind::InvalidData, format!("bad content {text:?}")),
    }
}

/// Whether `pid` is alive (not a zombie) and started at `start_time`.
pub(super) fn alive(pid: i32, start_time: u64) -> bool {
    matches!(proc_stat(pid), Some((state, start)) if start == start_time && state != 'Z' && state != 'X')
}

/// A pidfd pinning the process recorded as (`pid`, `start_time`), if it is still that
/// process; `None` when it is gone. The pidfd becomes readable when the process exits.
pub(crate) fn open(pid: i32, start_time: u64) -> Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open(2) with a pid and no flags; the result is a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(None);
        }
        return Err(io_err(format!("pidfd_open {pid}"))(e));
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Ok(alive(pid, start_time).then_some(pidfd))
}

/// Sends `sig` to the process recorded as (`pid`, `start_time`), if it is still that process.
/// Returns false when it is gone.
pub(super) fn signal(pid: i32, start_time: u64, sig: i32) -> Result<bool> {
    let Some(pidfd) = open(pid, start_time)? else {
        return Ok(false);
    };
    // SAFETY: pidfd_send_signal(2) on a pidfd we own, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(false);
        }
        return Err(io_err(format!("signalling monitor {pid}"))(e));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_round_trips_and_checks_start_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()).expect("none"), None);
        let pid = std::process::id() as i32;
        let (_, start) = proc_stat(pid).expect("own stat");
        let rec = PidRecord {
            pid,
            start_time: start,
            init_pid: 7,
        };
        write(dir.path(), rec).expect("write");
        assert_eq!(read(dir.path()).expect("read"), Some(rec));
        assert!(alive(pid, start));
        assert!(!alive(pid, start + 1));
        // Signal 0 checks without delivering anything.
        assert!(signal(pid, start, 0).expect("signal self"));
        assert!(!signal(pid, start + 1, 0).expect("recycled pid"));
        fs::write(dir.path().join(PID_FILE), "12 x").expect("garble");
        assert!(read(dir.path()).is_err());
    }
}
