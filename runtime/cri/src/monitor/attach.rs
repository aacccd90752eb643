//! The attach socket, `<state-dir>/attach.sock`: what CRI `Attach` needs from the monitor.
//!
//! A unix stream socket carrying frames both ways: `[kind: u8][length: u32 BE][payload]`,
//! payloads up to [`MAX_PAYLOAD`] bytes.
//!
//! - monitor to client: [`kind::STDOUT`] and [`kind::STDERR`] with the container's output
//!   from the moment the client connected (earlier output is in the log); a terminal's output
//!   is all `STDOUT`. The monitor closes the connection when the container's outputs ended
//!   (it exited), or when the client lags more than 1 MiB behind (the log never waits for a
//!   client).
//! - client to monitor: [`kind::STDIN`] (bytes for the container's stdin; dropped unless the
//!   monitor runs with `--stdin`), [`kind::CLOSE_STDIN`] (this client's stdin ended) and
//!   [`kind::RESIZE`] (terminal size: width then height, `u16` BE each; ignored without a tty).
//!   A client that sent any stdin frame and disconnects ends its stdin too.
//!
//! `--stdin-once`: when the stdin of the first client that used stdin ends, the container's
//! stdin is closed (after what is buffered was written), like containerd does it: not for a
//! terminal, whose stdin stays open.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The socket's name in the state directory.
pub const SOCKET_NAME: &str = "attach.sock";
/// The largest payload of one frame.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Bytes before a frame's payload.
pub const HEADER_LEN: usize = 5;

/// Frame kinds.
pub mod kind {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    pub const CLOSE_STDIN: u8 = 3;
    pub const RESIZE: u8 = 4;
}

/// A malformed frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("attach frame of {len} bytes is longer than {MAX_PAYLOAD}")]
pub struct FrameTooLong {
    pub len: usize,
}

/// Appends one frame to `out`. `payload` must not be longer than [`MAX_PAYLOAD`].
pub fn encode(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends `data` as frames of `kind`, cut at [`MAX_PAYLOAD`].
pub fn encode_all(kind: u8, data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(MAX_PAYLOAD) {
        encode(kind, chunk, out);
    }
}

/// Collects bytes and returns whole frames.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, FrameTooLong> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameTooLong { len });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let kind = self.buf[0];
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some((kind, payload)))
    }

    /// Bytes buffered but not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Output received from the monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// A blocking attach client (for tests and synchronous callers; an async caller uses
/// [`encode`] and [`Decoder`] on its own socket type).
#[derive(Debug)]
pub struct AttachClient {
    stream: UnixStream,
    decoder: Decoder,
}

impl AttachClient {
    /// Connects to a monitor's attach socket.
    pub fn connect(socket: &Path) -> io::Result<AttachClient> {
        Ok(AttachClient {
            stream: UnixStream::connect(socket)?,
            decoder: Decoder::default(),
        })
    }

    /// Limits how long [`AttachClient::read_output`] blocks.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    pub fn send_stdin(&mut self, data: &[u8]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(data.len() + HEADER_LEN);
        encode_all(kind::STDIN, data, &mut buf);
        self.stream.write_all(&buf)
    }

    /// Ends this client's stdin.
    pub fn close_stdin(&mut self) -> io::Result<()> {
        let mut buf = Vec::new();
        encode(kind::CLOSE_STDIN, &[], &mut buf);
        self.stream.write_all(&buf)
    }

    /// Sets the terminal size (ignored unless the container has a tty).
    pub fn resize(&mut self, width: u16, height: u16) -> io::Result<()> {
        let mut payload = [0u8; 4];
        payload[..2].copy_from_slice(&width.to_be_bytes());
        payload[2..].copy_from_slice(&height.to_be_bytes());
        let mut buf = Vec::new();
        encode(kind::RESIZE, &payload, &mut buf);
        self.stream.write_all(&buf)
    }

    /// The next output frame; `None` when the monitor closed the connection.
    pub fn read_output(&mut self) -> io::Result<Option<Output>> {
        let mut chunk = [0u8; 8192];
        loop {
            match self.decoder.next_frame() {
                Ok(Some((kind::STDOUT, p))) => return Ok(Some(Output::Stdout(p))),
                Ok(Some((kind::STDERR, p))) => return Ok(Some(Output::Stderr(p))),
                Ok(Some((k, _))) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected attach frame kind {k}"),
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                if self.decoder.buffered() > 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "attach connection closed inside a frame",
                    ));
                }
                return Ok(None);
            }
            self.decoder.push(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let mut wire = Vec::new();
        encode(kind::STDOUT, b"hello", &mut wire);
        encode(kind::RESIZE, &[0, 80, 0, 24], &mut wire);
        encode_all(kind::STDERR, &vec![7u8; MAX_PAYLOAD + 3], &mut wire);
        let mut d = Decoder::default();
        let mut frames = Vec::new();
        for b in wire.chunks(1000) {
            d.push(b);
            while let Some(f) = d.next_frame().expect("frame") {
                frames.push(f);
            }
        }
        assert_eq!(d.buffered(), 0);
        let kinds: Vec<(u8, usize)> = frames.iter().map(|(k, p)| (*k, p.len())).collect();
        assert_eq!(
            kinds,
            vec![
                (kind::STDOUT, 5),
                (kind::RESIZE, 4),
                (kind::STDERR, MAX_PAYLOAD),
                (kind::STDERR, 3)
            ]
        );
        let mut d = Decoder::default();
        d.push(&[kind::STDIN, 0xff, 0, 0, 0]);
        assert!(d.next_frame().is_err());
    }
}
