//! The monitor's side of the attach socket (protocol in [`super::attach`]): non-blocking
//! clients driven by the supervisor's poll loop.

use super::attach::{self, Decoder, kind};
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// More clients than this are refused (closed at once).
const MAX_CLIENTS: usize = 16;
/// A client further behind than this is disconnected.
const MAX_QUEUED: usize = 1024 * 1024;

/// What a client asked for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    Stdin(Vec<u8>),
    /// The client's stdin ended (close frame, or disconnect after using stdin).
    StdinEnd,
    Resize {
        width: u16,
        height: u16,
    },
}

#[derive(Debug)]
pub(super) struct Client {
    stream: UnixStream,
    out: Vec<u8>,
    out_pos: usize,
    decoder: Decoder,
    used_stdin: bool,
    stdin_ended: bool,
    gone: bool,
}

impl Client {
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    pub(super) fn wants_write(&self) -> bool {
        self.out_pos < self.out.len()
    }

    fn flush(&mut self) {
        while self.wants_write() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => {
                    self.gone = true;
                    return;
                }
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.gone = true;
                    return;
                }
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > 64 * 1024 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    fn end_stdin(&mut self, events: &mut Vec<Event>) {
        if self.used_stdin && !self.stdin_ended {
            self.stdin_ended = true;
            events.push(Event::StdinEnd);
        }
    }
}

#[derive(Debug)]
pub(super) struct Server {
    listener: UnixListener,
    path: PathBuf,
    pub(super) clients: Vec<Client>,
}

impl Server {
    /// Listens on `path` (replacing a stale socket file), mode 0600.
    pub(super) fn bind(path: &Path) -> io::Result<Server> {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            clients: Vec::new(),
        })
    }

    pub(super) fn listener_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Takes every pending connection.
    pub(super) fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS {
                        tracing::warn!("attach: too many clients, refusing one");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        tracing::warn!(error = %e, "attach: cannot use a client");
                        continue;
                    }
                    tracing::debug!("attach: client connected");
                    self.clients.push(Client {
                        stream,
                        out: Vec::new(),
                        out_pos: 0,
                        decoder: Decoder::default(),
                        used_stdin: false,
                        stdin_ended: false,
                        gone: false,
                    });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        tracing::warn!(error = %e, "attach: accept");
                    }
                    return;
                }
            }
        }
    }

    /// Sends container output to every client.
    pub(super) fn broadcast(&mut self, frame_kind: u8, data: &[u8]) {
        for c in &mut self.clients {
            if c.gone {
                continue;
            }
            attach::encode_all(frame_kind, data, &mut c.out);
            c.flush();
            if c.out.len() - c.out_pos > MAX_QUEUED {
                tracing::warn!("attach: client too slow, disconnecting it");
                c.gone = true;
            }
        }
    }

    /// Reads what client `i` sent.
    pub(super) fn on_readable(&mut self, i: usize, events: &mut Vec<Event>) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        let n = match c.stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return;
            }
            Err(_) => 0,
        };
        if n == 0 {
            c.gone = true;
            c.end_stdin(events);
            return;
        }
        c.decoder.push(&buf[..n]);
        loop {
            match c.decoder.next_frame() {
                Ok(None) => break,
                Ok(Some((kind::STDIN, payload))) => {
                    c.used_stdin = true;
                    if !c.stdin_ended && !payload.is_empty() {
                        events.push(Event::Stdin(payload));
                    }
                }
                Ok(Some((kind::CLOSE_STDIN, _))) => {
                    c.used_stdin = true;
                    c.end_stdin(events);
                }
                Ok(Some((kind::RESIZE, p))) if p.len() == 4 => events.push(Event::Resize {
                    width: u16::from_be_bytes([p[0], p[1]]),
                    height: u16::from_be_bytes([p[2], p[3]]),
                }),
                Ok(Some((k, _))) => {
                    tracing::warn!(kind = k, "attach: bad frame, disconnecting the client");
                    c.gone = true;
                    c.end_stdin(events);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "attach: disconnecting the client");
                    c.gone = true;
                    c.end_stdin(events);
                    break;
                }
            }
        }
    }

    pub(super) fn on_writable(&mut self, i: usize) {
        if let Some(c) = self.clients.get_mut(i) {
            c.flush();
        }
    }

    /// A client hung up or failed: forget it, ending its stdin if it used stdin.
    pub(super) fn on_hangup(&mut self, i: usize, events: &mut Vec<Event>) {
        if let Some(c) = self.clients.get_mut(i) {
            c.gone = true;
            c.end_stdin(events);
        }
    }

    /// Drops clients that are gone.
    pub(super) fn remove_gone(&mut self) {
        self.clients.retain(|c| !c.gone);
    }

    /// Gives every client a short time to take what is queued, closes them and removes the
    /// socket file.
    pub(super) fn close(mut self) {
        for c in &mut self.clients {
            if c.gone || !c.wants_write() {
                continue;
            }
            if c.stream.set_nonblocking(false).is_ok()
                && c.stream
                    .set_write_timeout(Some(Duration::from_millis(200)))
                    .is_ok()
            {
                let _ = c.stream.write_all(&c.out[c.out_pos..]);
            }
        }
        self.clients.clear();
        let _ = fs::remove_file(&self.path);
    }
}
