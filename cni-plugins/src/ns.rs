//! Running code inside another network namespace, on a dedicated thread.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

use crate::error::{CniError, Code, Result};

/// Opens a network namespace file (`CNI_NETNS`).
pub fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| {
        CniError::with_details(
            Code::Plugin,
            format!("failed to open netns {:?}", path.display()),
            e,
        )
    })
}

/// Moves the calling thread into the network namespace `ns`. Only for a thread spawned for
/// that purpose (the main thread never changes namespace).
pub fn enter(ns: &File) -> Result<()> {
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| CniError::with_details(Code::Plugin, "failed to enter netns", e))
}

/// Runs `f` on a new thread that first joins the network namespace `ns`; the caller's own
/// thread never changes namespace.
pub fn run_in<T, F>(ns: &File, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    std::thread::scope(|s| {
        let handle = s.spawn(|| {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| CniError::with_details(Code::Plugin, "failed to enter netns", e))?;
            f()
        });
        handle
            .join()
            .unwrap_or_else(|_| Err(CniError::plugin("netns worker thread panicked")))
    })
}
