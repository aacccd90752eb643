//! Terminals: the container's pty is made inside the container (from its own devpts) and the
//! master end is sent to the caller over `--console-socket` with SCM_RIGHTS, as runc does; the
//! message's data is the master's name.

use crate::error::{Context, Error, Result};
use nix::fcntl::{OFlag, open};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, connect, sendmsg, socket,
};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, dup2_stderr, dup2_stdin, dup2_stdout, fchown};
use oci_spec::runtime::Process;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Connects to the caller's console socket (before the process leaves the host's view).
pub fn connect_socket(path: &Path) -> Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ctx(|| "creating console socket")?;
    let addr = UnixAddr::new(path).ctx(|| format!("console socket path {}", path.display()))?;
    connect(fd.as_raw_fd(), &addr)
        .ctx(|| format!("connecting to console socket {}", path.display()))?;
    Ok(fd)
}

/// Opens a pty from the container's /dev/ptmx, makes the slave the process's stdio and
/// controlling terminal, and sends the master to the console socket.
pub fn setup_pty(sock: &OwnedFd, process: &Process) -> Result<()> {
    let master = open(
        "/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "opening /dev/ptmx")?;
    // SAFETY: unlockpt/ptsname_r on a pty master descriptor we own; the buffer is sized and
    // NUL-terminated by the call.
    let slave_name = unsafe {
        if libc::unlockpt(master.as_raw_fd()) != 0 {
            return Err(Error::Io {
                context: "unlockpt".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        let mut buf = [0 as libc::c_char; 128];
        if libc::ptsname_r(master.as_raw_fd(), buf.as_mut_ptr(), buf.len()) != 0 {
            return Err(Error::Io {
                context: "ptsname".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    let slave = open(
        slave_name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("opening {slave_name}"))?;
    let user = process.user();
    fchown(
        &slave,
        Some(Uid::from_raw(user.uid())),
        Some(Gid::from_raw(user.gid())),
    )
    .ctx(|| format!("chown {slave_name}"))?;
    if let Some(size) = process.console_size() {
        let ws = libc::winsize {
            ws_row: size.height() as u16,
            ws_col: size.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a valid winsize struct.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let name = b"/dev/ptmx";
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .ctx(|| "sending the pty master to the console socket")?;
    drop(master);
    dup2_stdin(&slave).ctx(|| "pty as stdin")?;
    dup2_stdout(&slave).ctx(|| "pty as stdout")?;
    dup2_stderr(&slave).ctx(|| "pty as stderr")?;
    // SAFETY: TIOCSCTTY on our stdin (the pty slave); this process leads its session.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(Error::Io {
            context: "making the pty the controlling terminal".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
