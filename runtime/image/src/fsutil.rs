//! Small durable-file helpers: atomic writes, directory fsync, advisory locks.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Result, io_err};

/// Writes `data` to `path` atomically: a temp file in the same directory, fsync, rename, fsync
/// of the directory. A crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_then_rename(path, data, true)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Replaces `path` atomically (temporary file + rename: a reader or a crash of this process
/// sees the old or the new content) without fsync, for state that a power loss ends anyway.
pub fn replace(path: &Path, data: &[u8]) -> Result<()> {
    write_then_rename(path, data, false)
}

fn write_then_rename(path: &Path, data: &[u8], durable: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".tmp-{}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(data).map_err(io_err("write", &tmp))?;
    if durable {
        f.sync_all().map_err(io_err("fsync", &tmp))?;
    }
    drop(f);
    fs::rename(&tmp, path).map_err(io_err("rename", path))
}

/// fsyncs a directory, so a rename or unlink in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// Creates a directory and its parents.
pub fn mkdir_p(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io_err("mkdir", dir))
}

/// An advisory lock (`flock`) held until dropped. Works between processes and between threads
/// of one process (each lock opens its own file description).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until the exclusive lock on `path` (created if missing) is held.
    pub fn exclusive(path: &Path) -> Result<Self> {
        Self::take(path, libc::LOCK_EX)
    }

    /// Takes the exclusive lock if nobody holds the file; `None` otherwise.
    pub fn try_exclusive(path: &Path) -> Result<Option<Self>> {
        match Self::take(path, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(l) => Ok(Some(l)),
            Err(crate::Error::Io { source, .. })
                if source.raw_os_error() == Some(libc::EWOULDBLOCK) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Blocks until a shared lock on `path` is held.
    pub fn shared(path: &Path) -> Result<Self> {
        Self::take(path, libc::LOCK_SH)
    }

    fn take(path: &Path, op: libc::c_int) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("open lock", path))?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed to the kernel.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(io_err("flock", path)(err));
            }
        }
        Ok(Self {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
