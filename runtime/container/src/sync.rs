//! Messages between `create` and the processes it forks, over a SOCK_SEQPACKET socketpair.
//! The parent enables SO_PASSCRED, so the kernel stamps each message with the sender's pid as
//! seen from the parent's pid namespace: that is how the parent learns the init's pid.

use crate::error::{Context, Error, Result};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, send, setsockopt,
    socketpair, sockopt,
};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};

/// Message kinds.
pub mod tag {
    /// child -> parent: new user namespace made, write the id maps.
    pub const USERNS: u8 = b'U';
    /// parent -> child: id maps written.
    pub const MAPPED: u8 = b'M';
    /// parent -> child: the process was placed in its cgroups, go on.
    pub const GO: u8 = b'G';
    /// init -> parent: set up, waiting for `start`.
    pub const READY: u8 = b'R';
    /// child -> parent: failed; the payload says why.
    pub const ERROR: u8 = b'E';
    /// init -> parent: namespaces and mounts are ready, run prestart/createRuntime hooks.
    pub const HOOKS: u8 = b'H';
    /// parent -> init: hooks ran; the payload is the init's pid as the host sees it.
    pub const HOOKS_DONE: u8 = b'D';
}

pub struct Channel {
    pub fd: OwnedFd,
}

pub fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ctx(|| "socketpair")?;
    setsockopt(&a, sockopt::PassCred, &true).ctx(|| "SO_PASSCRED")?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

/// One received message: its tag, payload and the sender's pid (when credentials came along).
pub struct Msg {
    pub tag: u8,
    pub payload: Vec<u8>,
    pub pid: Option<i32>,
}

impl Channel {
    pub fn send(&self, tag: u8, payload: &[u8]) -> Result<()> {
        let mut buf = Vec::with_capacity(payload.len() + 1);
        buf.push(tag);
        buf.extend_from_slice(payload);
        send(self.fd.as_raw_fd(), &buf, MsgFlags::empty()).ctx(|| "sending to parent/child")?;
        Ok(())
    }

    pub fn send_error(&self, e: &Error) {
        let _ = self.send(tag::ERROR, e.to_string().as_bytes());
    }

    /// Receives one message; `None` at end of stream (every peer closed its end).
    pub fn recv(&self) -> Result<Option<Msg>> {
        let mut buf = vec![0u8; 8192];
        let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let r = recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let msg = match r {
                Ok(m) => m,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    return Err(Error::Sys {
                        context: "receiving from child".into(),
                        source: e,
                    });
                }
            };
            if msg.bytes == 0 {
                return Ok(None);
            }
            let mut pid = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmCredentials(cred) = c {
                        pid = Some(cred.pid());
                    }
                }
            }
            let n = msg.bytes;
            return Ok(Some(Msg {
                tag: buf[0],
                payload: buf[1..n].to_vec(),
                pid,
            }));
        }
    }

    /// Waits for one specific tag; an ERROR message or end of stream is an error.
    pub fn expect(&self, want: u8) -> Result<Msg> {
        match self.recv()? {
            Some(m) if m.tag == want => Ok(m),
            Some(m) if m.tag == tag::ERROR => Err(Error::Init(
                String::from_utf8_lossy(&m.payload).into_owned(),
            )),
            Some(m) => Err(Error::Init(format!(
                "unexpected message {:?}",
                m.tag as char
            ))),
            None => Err(Error::Init("peer exited before finishing setup".into())),
        }
    }
}
