//! Idmapped bind mounts (the `idmap`/`ridmap` options and per-mount `uidMappings`/
//! `gidMappings` of OCI 1.1). The filesystem's superblock belongs to the host's user namespace,
//! so the runtime makes the mount on the host side before the container exists: open_tree
//! clones the source, mount_setattr(MOUNT_ATTR_IDMAP) attaches a user namespace holding the
//! mapping, and the init later moves the detached mount to its destination with move_mount.

use crate::error::{Context, Error, Result};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork, pipe, read, write};
use oci_spec::runtime::LinuxIdMapping;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const OPEN_TREE_CLONE: u32 = 1;
const AT_RECURSIVE: u32 = 0x8000;
const AT_EMPTY_PATH: u32 = 0x1000;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn maps(m: &[LinuxIdMapping]) -> String {
    m.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// A user namespace holding the given maps, kept alive by the returned descriptor.
fn userns_with(uid: &[LinuxIdMapping], gid: &[LinuxIdMapping]) -> Result<OwnedFd> {
    let (ready_r, ready_w) = pipe().ctx(|| "pipe")?;
    let (done_r, done_w) = pipe().ctx(|| "pipe")?;
    // SAFETY: called from the single-threaded CLI; the child only unshares, writes a byte,
    // waits on a pipe and exits.
    match unsafe { fork() }.ctx(|| "fork for an idmap user namespace")? {
        ForkResult::Child => {
            drop(ready_r);
            drop(done_w);
            let ok = unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = write(&ready_w, if ok { b"1" } else { b"0" });
            let mut b = [0u8; 1];
            let _ = read(&done_r, &mut b);
            // SAFETY: _exit ends the forked child without the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(done_r);
            let res = (|| {
                let mut b = [0u8; 1];
                read(&ready_r, &mut b).ctx(|| "waiting for the idmap helper")?;
                if b[0] != b'1' {
                    return Err(Error::Init(
                        "creating a user namespace for an idmapped mount".into(),
                    ));
                }
                fs::write(format!("/proc/{child}/uid_map"), maps(uid))
                    .ctx(|| "writing idmap uid_map")?;
                fs::write(format!("/proc/{child}/setgroups"), "deny")
                    .ctx(|| "writing idmap setgroups")?;
                fs::write(format!("/proc/{child}/gid_map"), maps(gid))
                    .ctx(|| "writing idmap gid_map")?;
                let f = fs::File::open(format!("/proc/{child}/ns/user"))
                    .ctx(|| "opening idmap user namespace")?;
                Ok(OwnedFd::from(f))
            })();
            drop(done_w);
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            res
        }
    }
}

/// Clones `source` as a detached mount with the mappings applied.
pub fn idmapped_clone(
    source: &Path,
    recursive: bool,
    uid: &[LinuxIdMapping],
    gid: &[LinuxIdMapping],
) -> Result<OwnedFd> {
    if uid.is_empty() || gid.is_empty() {
        return Err(Error::Config(format!(
            "idmapped mount of {}: no uid or gid mappings (give them on the mount or in linux)",
            source.display()
        )));
    }
    let userns = userns_with(uid, gid)?;
    let path = CString::new(source.as_os_str().as_bytes())
        .map_err(|_| Error::Config(format!("{} contains a NUL byte", source.display())))?;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: open_tree reads a NUL-terminated path; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::Io {
            context: format!("open_tree {}", source.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a successful open_tree returns a descriptor we own.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    let at = AT_EMPTY_PATH | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr reads `attr` (size given) for the mount behind `tree`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            at,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(Error::Io {
            context: format!(
                "idmapping the mount of {} (does its filesystem support idmapped mounts?)",
                source.display()
            ),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(tree)
}

/// Attaches a detached mount on the directory (or file) that `dest` names.
pub fn move_to(tree: &OwnedFd, dest: &OwnedFd) -> Result<()> {
    const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
    let empty = c"";
    // SAFETY: move_mount with both ends given as descriptors and empty paths.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            dest.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(Error::Io {
            context: "move_mount of an idmapped mount".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Makes the mount at `path` and every mount below it read-only (the `rro` option):
/// mount_setattr(MOUNT_ATTR_RDONLY, AT_RECURSIVE). Kernels before 5.12 have no mount_setattr:
/// that is a clear error, never a silently writable submount.
pub fn make_recursively_readonly(path: &Path) -> Result<()> {
    const AT_SYMLINK_NOFOLLOW: u32 = 0x100;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Config(format!("{} contains a NUL byte", path.display())))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads a NUL-terminated path and `attr` of the size given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            AT_RECURSIVE | AT_SYMLINK_NOFOLLOW,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSYS) {
            return Err(Error::Unimplemented(format!(
                "recursive read-only mount is not supported: mount_setattr(2) is missing \
                 (Linux 5.12 or later), mount {}",
                path.display()
            )));
        }
        return Err(Error::Io {
            context: format!("making {} recursively read-only", path.display()),
            source: e,
        });
    }
    Ok(())
}

/// Whether this kernel has mount_setattr(2), which the `rro` mount option needs.
pub fn recursive_readonly_supported() -> bool {
    let attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: an invalid descriptor: the kernel fails with EBADF if the syscall exists and
    // with ENOSYS if not; nothing is changed either way.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}
