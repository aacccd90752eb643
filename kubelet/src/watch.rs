//! inotify on the static pod directory, as upstream's file source (file_linux.go) does on top
//! of the relist every `fileCheckFrequency`: a file created, written, moved or deleted in the
//! directory wakes the source at once.
//!
//! nix's inotify is used (the workspace already has nix) rather than the `notify` or
//! `inotify` crates: one directory, Linux only, read through tokio's `AsyncFd`.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// How long after the first event of a burst the directory is read.
const BURST: Duration = Duration::from_millis(10);

struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct DirWatch {
    fd: Option<AsyncFd<Fd>>,
}

impl DirWatch {
    /// Watches `dir`; when that fails (no directory yet, no inotify) the source only relists.
    pub fn new(dir: &Path) -> DirWatch {
        match open(dir) {
            Ok(fd) => {
                tracing::debug!(path = %dir.display(), "watching the static pod directory with inotify");
                DirWatch { fd: Some(fd) }
            }
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "cannot watch the static pod directory; relisting only");
                DirWatch { fd: None }
            }
        }
    }

    /// Tries again (quietly) to watch `dir` when not watching.
    pub fn retry(&mut self, dir: &Path) {
        if self.fd.is_none() {
            self.fd = open(dir).ok();
        }
    }
}

fn open(dir: &Path) -> Result<AsyncFd<Fd>, String> {
    let i =
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| e.to_string())?;
    i.add_watch(
        dir,
        AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ATTRIB,
    )
    .map_err(|e| e.to_string())?;
    // SAFETY: `Fd` owns the inotify descriptor; it stays open, and `as_raw_fd` keeps naming
    // it, for as long as the AsyncFd holds it.
    unsafe { AsyncFd::register_with_interest(Fd(i), tokio::io::Interest::READABLE) }
        .map_err(|e| e.to_string())
}

impl DirWatch {
    #[cfg(test)]
    fn watching(&self) -> bool {
        self.fd.is_some()
    }

    /// Waits until something changes in the directory or `max` passes. Events that come in a
    /// burst (an editor's write + rename) are taken together. True when woken by a change.
    pub async fn wait(&mut self, max: Duration) -> bool {
        let Some(fd) = &self.fd else {
            tokio::time::sleep(max).await;
            return false;
        };
        let deadline = tokio::time::Instant::now() + max;
        let mut dead = false;
        loop {
            let ready = tokio::select! {
                r = fd.readable() => r,
                _ = tokio::time::sleep_until(deadline) => return false,
            };
            let mut guard = match ready {
                Ok(g) => g,
                Err(_) => {
                    dead = true;
                    break;
                }
            };
            match guard.get_inner().0.read_events() {
                Ok(evs) => {
                    if evs.iter().any(|e| {
                        e.mask.intersects(
                            AddWatchFlags::IN_DELETE_SELF
                                | AddWatchFlags::IN_MOVE_SELF
                                | AddWatchFlags::IN_IGNORED,
                        )
                    }) {
                        dead = true;
                    }
                    break;
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    guard.clear_ready();
                    continue;
                }
                Err(_) => {
                    dead = true;
                    break;
                }
            }
        }
        // Let the rest of a burst arrive (an editor's write + rename, a tool writing several
        // files), then drain it. Short: every static pod's start waits for it.
        tokio::time::sleep(BURST).await;
        if let Some(fd) = &self.fd {
            while fd.get_ref().0.read_events().is_ok_and(|e| !e.is_empty()) {}
        }
        if dead {
            // The directory itself went away: back to relisting (a new watch is made when
            // the source starts again).
            self.fd = None;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_on_a_new_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = DirWatch::new(dir.path());
        assert!(w.watching());
        let p = dir.path().join("a.yaml");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::fs::write(p, "x").expect("write");
        });
        assert!(
            w.wait(Duration::from_secs(60)).await,
            "not woken by the write"
        );
        writer.await.expect("writer");
    }
}
