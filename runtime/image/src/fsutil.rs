//! Small durable-file helpers: atomic writes, directory fsync, advisory locks.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
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

/// `FS_TOPDIR_FL` of linux/fs.h (`chattr +T`); the libc crate does not name it.
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

// The inode flag ioctls take a pointer to an int (the `long` in their definition is historic).
nix::ioctl_read_bad!(get_inode_flags, libc::FS_IOC_GETFLAGS, libc::c_int);
nix::ioctl_write_ptr_bad!(set_inode_flags, libc::FS_IOC_SETFLAGS, libc::c_int);

/// Marks `dir` as the top of unrelated directory trees (`chattr +T`): ext2/3/4 then place each
/// new subdirectory in its own block group (the Orlov allocator's rule for top-level
/// directories) instead of beside `dir`. For directories that hold one tree per pod or
/// container this matters on ext4 without a journal: allocating an inode there walks, one by
/// one, every inode of the group freed in the last minutes, so trees created and removed in
/// bursts beside each other make each allocation cost O(recent removals).
///
/// A hint only: `Ok(false)` where the filesystem has no such flag (tmpfs, xfs, btrfs, overlay).
pub fn mark_top_dir(dir: &Path) -> std::io::Result<bool> {
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(dir)?;
    let unsupported = |e: nix::errno::Errno| {
        matches!(
            e,
            nix::errno::Errno::ENOTTY | nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL
        )
    };
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer, which points at `flags`.
    match unsafe { get_inode_flags(d.as_raw_fd(), &mut flags) } {
        Ok(_) => {}
        Err(e) if unsupported(e) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    if flags & FS_TOPDIR_FL != 0 {
        return Ok(true);
    }
    let want = flags | FS_TOPDIR_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one int through the pointer, which points at `want`.
    match unsafe { set_inode_flags(d.as_raw_fd(), &want) } {
        Ok(_) => Ok(true),
        Err(e) if unsupported(e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// [`mark_top_dir`] for a caller that carries on either way: logs what it could not do.
pub fn mark_top_dir_or_log(dir: &Path) {
    match mark_top_dir(dir) {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(dir = %dir.display(), "no top-directory flag on this filesystem")
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "setting the top-directory flag")
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    use nix::sys::statfs::{EXT4_SUPER_MAGIC, FsType, TMPFS_MAGIC};

    fn fs_magic(p: &Path) -> Option<FsType> {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type())
            .ok()
    }

    /// `lsattr -d`'s flag column for `p`.
    fn lsattr(p: &Path) -> String {
        let out = std::process::Command::new("lsattr")
            .arg("-d")
            .arg(p)
            .output()
            .expect("run lsattr");
        assert!(out.status.success(), "lsattr: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn an_ext4_directory_gets_the_topdir_flag_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        if fs_magic(dir.path()) != Some(EXT4_SUPER_MAGIC) {
            // Elsewhere the flag may or may not exist; the call must still not fail.
            mark_top_dir(dir.path()).expect("mark_top_dir");
            return;
        }
        assert!(!lsattr(dir.path()).contains('T'));
        assert!(mark_top_dir(dir.path()).expect("first mark"));
        assert!(lsattr(dir.path()).contains('T'), "{}", lsattr(dir.path()));
        // Again: nothing to change, still reported as set.
        assert!(mark_top_dir(dir.path()).expect("second mark"));
        // A subdirectory does not inherit it.
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).expect("mkdir");
        assert!(!lsattr(&sub).contains('T'));
    }

    #[test]
    fn a_filesystem_without_the_flag_is_not_an_error() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        if fs_magic(dir.path()) == Some(TMPFS_MAGIC) {
            assert!(!mark_top_dir(dir.path()).expect("tmpfs"));
        }
    }

    #[test]
    fn a_file_or_a_missing_path_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        fs::write(&f, b"x").expect("write");
        let e = mark_top_dir(&f).expect_err("a file");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR), "{e}");
        let e = mark_top_dir(&dir.path().join("missing")).expect_err("missing");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    }
}
