//! The receiving end of `--console-socket`: a listening unix socket that accepts the runtime's
//! connection and takes the pty master it sends with SCM_RIGHTS.

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use std::io::{self, IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub struct ConsoleSocket {
    dir: TempDir,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> io::Result<ConsoleSocket> {
        let dir = tempfile::Builder::new()
            .prefix("keelson-console-")
            .tempdir()?;
        let listener = UnixListener::bind(dir.path().join("console.sock"))?;
        listener.set_nonblocking(true)?;
        Ok(ConsoleSocket { dir, listener })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("console.sock")
    }

    /// Waits for the runtime's connection and returns (the name it sent, the pty master).
    pub fn receive(&self, timeout: Duration) -> io::Result<(String, OwnedFd)> {
        let end = Instant::now() + timeout;
        let stream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        let mut buf = [0u8; 4096];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        let mut fd = None;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                fd = fds.first().copied();
            }
        }
        let n = msg.bytes;
        let name = String::from_utf8_lossy(&buf[..n]).into_owned();
        let fd = fd.ok_or_else(|| io::Error::other("no descriptor came with the message"))?;
        // SAFETY: the descriptor was just received with SCM_RIGHTS and belongs to us now.
        Ok((name, unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// Reads everything from a pty master until the slave side closes (EIO) or `timeout`.
pub fn read_all(master: OwnedFd, timeout: Duration) -> String {
    let mut f = std::fs::File::from(master);
    let end = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(chunk) => out.extend(chunk),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
