//! The ext2/3/4 "top of directory hierarchies" flag (`chattr +T`) on the directories that hold
//! one tree per pod (`<root-dir>/pods`, `podLogsDir`).
//!
//! With the flag the Orlov allocator places each new subdirectory in a block group of its own
//! instead of beside its parent. On ext4 without a journal an inode allocation walks, one by
//! one, every inode of its group freed in the last minutes (`recently_deleted`), so pods
//! created and removed in bursts in one group make each allocation cost O(recent removals).
//! The same helper lives in keelson-image (`fsutil::mark_top_dir`); the kubelet depends on no
//! runtime crate.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;

/// `FS_TOPDIR_FL` of linux/fs.h; the libc crate does not name it.
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

// Both ioctls pass an int, whatever the `long` in their definition says.
nix::ioctl_read_bad!(get_flags, libc::FS_IOC_GETFLAGS, libc::c_int);
nix::ioctl_write_ptr_bad!(set_flags, libc::FS_IOC_SETFLAGS, libc::c_int);

/// Sets the flag on `dir`. `Ok(false)` where the filesystem has none (tmpfs, xfs, btrfs).
pub fn set_top_dir(dir: &Path) -> io::Result<bool> {
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(dir)?;
    let no_flag = |e: Errno| matches!(e, Errno::ENOTTY | Errno::EOPNOTSUPP | Errno::EINVAL);
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS stores one int at the pointer, which is `flags`.
    if let Err(e) = unsafe { get_flags(d.as_raw_fd(), &mut flags) } {
        return if no_flag(e) { Ok(false) } else { Err(e.into()) };
    }
    if flags & FS_TOPDIR_FL == FS_TOPDIR_FL {
        return Ok(true);
    }
    let flags = flags | FS_TOPDIR_FL;
    // SAFETY: FS_IOC_SETFLAGS loads one int from the pointer, which is `flags`.
    match unsafe { set_flags(d.as_raw_fd(), &flags) } {
        Ok(_) => Ok(true),
        Err(e) if no_flag(e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// [`set_top_dir`] as a hint: a failure is logged, never fatal.
pub fn hint_top_dir(dir: &Path) {
    match set_top_dir(dir) {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(dir = %dir.display(), "the filesystem has no top-directory flag")
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not set the top-directory flag")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_ext4(p: &Path) -> bool {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type() == nix::sys::statfs::EXT4_SUPER_MAGIC)
            .unwrap_or(false)
    }

    fn has_t(p: &Path) -> bool {
        let out = std::process::Command::new("lsattr")
            .arg("-d")
            .arg(p)
            .output()
            .expect("lsattr");
        assert!(out.status.success(), "lsattr -d {}: {out:?}", p.display());
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace().next().unwrap_or("").contains('T')
    }

    #[test]
    fn the_flag_is_set_on_ext4_and_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let set = set_top_dir(dir.path()).expect("set_top_dir");
        if on_ext4(dir.path()) {
            assert!(set);
            assert!(has_t(dir.path()));
            assert!(set_top_dir(dir.path()).expect("again"));
        }
        let e = set_top_dir(&dir.path().join("nope")).expect_err("a missing dir");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
