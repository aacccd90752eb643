//! Attach: the client joins a running container's stdio through its monitor's attach socket
//! ([`crate::monitor::attach`]), with the same frames as the blocking `AttachClient`.
//!
//! The session ends when the monitor closes the connection (the container's outputs ended),
//! when the client goes away, or when the client's stdin ends: then the monitor gets a
//! close-stdin frame, and unless the container is `stdin_once` without a terminal (whose
//! stdin the monitor now closes, the output running on until the container exits) the
//! session ends at once, as containerd does it.

use super::cache::StdioOptions;
use super::session::{Input, Io, Output};
use super::status::Outcome;
use crate::monitor::attach::{self, Decoder, kind};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How the container was created.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContainerStdio {
    pub tty: bool,
    pub stdin_once: bool,
}

/// Relays between the client and the monitor's attach socket `socket`.
pub async fn run(
    socket: &Path,
    opts: StdioOptions,
    container: ContainerStdio,
    mut io: Io,
) -> Outcome {
    let conn = match UnixStream::connect(socket).await {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failure(format!(
                "error attaching to container: connecting to {}: {e}",
                socket.display()
            ));
        }
    };
    let (mut rd, mut wr) = conn.into_split();
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 32 * 1024];
    let mut stdin_open = opts.stdin;
    let mut input_open = true;
    loop {
        tokio::select! {
            i = io.input.recv(), if input_open => {
                let mut frames = Vec::new();
                match i {
                    None => return Outcome::ClientGone,
                    Some(Input::Stdin(d)) if stdin_open => attach::encode_all(kind::STDIN, &d, &mut frames),
                    Some(Input::Stdin(_)) => {}
                    Some(Input::StdinEnd) if stdin_open => {
                        stdin_open = false;
                        attach::encode(kind::CLOSE_STDIN, &[], &mut frames);
                    }
                    Some(Input::StdinEnd) => {}
                    Some(Input::Resize { width, height }) => {
                        let mut p = [0u8; 4];
                        p[..2].copy_from_slice(&width.to_be_bytes());
                        p[2..].copy_from_slice(&height.to_be_bytes());
                        attach::encode(kind::RESIZE, &p, &mut frames);
                    }
                }
                if !frames.is_empty() && wr.write_all(&frames).await.is_err() {
                    // The monitor is gone: what it sent is read below until the end.
                    input_open = false;
                }
                if opts.stdin && !stdin_open && (container.tty || !container.stdin_once) {
                    return Outcome::Success;
                }
            }
            n = rd.read(&mut buf) => {
                let n = match n {
                    Ok(0) => return Outcome::Success,
                    Ok(n) => n,
                    Err(e) => return Outcome::Failure(format!("error attaching to container: {e}")),
                };
                decoder.push(&buf[..n]);
                loop {
                    let (k, p) = match decoder.next_frame() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => return Outcome::Failure(format!("error attaching to container: {e}")),
                    };
                    let out = match k {
                        kind::STDOUT if opts.stdout => Output::Stdout(p),
                        kind::STDERR if opts.stderr => Output::Stderr(p),
                        _ => continue,
                    };
                    if io.output.send(out).await.is_err() {
                        return Outcome::ClientGone;
                    }
                }
            }
        }
    }
}
