//! Exec: a new process in a running container, its stdio streamed to the client.
//!
//! keelsond never forks itself (it is multi-threaded): it runs the OCI CLI, `keelson exec`,
//! which joins the container and waits for the process, exiting with its exit code (128 +
//! signal for a death by signal, 255 when it could not start it). Without a terminal the
//! process inherits the CLI's stdio: pipes for what the client asked for, `/dev/null` for the
//! rest. With one, the CLI gets `--tty --console-socket <sock>` and the process sends its pty
//! master to keelsond over that socket (SCM_RIGHTS, as runc does); resizes are `TIOCSWINSZ`
//! on the master. A `--pid-file` tells whether the process started and which one to kill when
//! the client goes away.

use super::cache::StdioOptions;
use super::session::{Input, Io, Output};
use super::status::Outcome;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

/// How long outputs are still read after the process exited (a background process may hold
/// them open).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How much of the CLI's stderr is kept for an error message.
const ERR_TAIL: usize = 4096;

/// What exec needs from the daemon.
#[derive(Debug, Clone)]
pub struct ExecContext {
    /// The `keelson` CLI.
    pub keelson_bin: PathBuf,
    /// Its `--root`.
    pub engine_root: PathBuf,
    /// Where console sockets and pid files go (short: unix socket paths are limited).
    pub scratch: PathBuf,
}

/// Runs `cmd` in container `id` for one client.
pub async fn run(
    ctx: &ExecContext,
    id: &str,
    cmd: &[String],
    opts: StdioOptions,
    io: Io,
) -> Outcome {
    if let Err(e) = std::fs::create_dir_all(&ctx.scratch) {
        return Outcome::Failure(format!("creating {}: {e}", ctx.scratch.display()));
    }
    let name = match crate::server::new_id() {
        Ok(n) => n.get(..16).unwrap_or("exec").to_string(),
        Err(e) => return Outcome::Failure(e.to_string()),
    };
    let pid_file = ctx.scratch.join(format!("{name}.pid"));
    let sock = ctx.scratch.join(format!("{name}.sock"));
    let out = if opts.tty {
        run_tty(ctx, id, cmd, opts, io, &pid_file, &sock).await
    } else {
        run_pipes(ctx, id, cmd, opts, io, &pid_file).await
    };
    let _ = std::fs::remove_file(&pid_file);
    let _ = std::fs::remove_file(&sock);
    out
}

/// `keelson --root <root> exec --pid-file <file>`; the callers add their flags, then the
/// container ID and the command.
fn command(ctx: &ExecContext, pid_file: &Path) -> Command {
    let mut c = Command::new(&ctx.keelson_bin);
    c.arg("--root")
        .arg(&ctx.engine_root)
        .arg("exec")
        .arg("--pid-file")
        .arg(pid_file);
    c.kill_on_drop(true);
    c
}

async fn run_pipes(
    ctx: &ExecContext,
    id: &str,
    cmd: &[String],
    opts: StdioOptions,
    io: Io,
    pid_file: &Path,
) -> Outcome {
    let mut c = command(ctx, pid_file);
    c.arg(id)
        .args(cmd)
        .stdin(if opts.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if opts.stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failure(format!("running {}: {e}", ctx.keelson_bin.display()));
        }
    };
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let tx = io.output.clone();
    let outputs = async move {
        let out = async {
            if let Some(s) = stdout {
                pump(s, &tx, Output::Stdout, opts.stdout).await;
            }
        };
        let err = async {
            match stderr {
                Some(s) => pump(s, &tx, Output::Stderr, opts.stderr).await,
                None => Vec::new(),
            }
        };
        tokio::join!(out, err).1
    };
    let sink = match stdin {
        Some(s) => StdinSink::Pipe(Some(s)),
        None => StdinSink::None,
    };
    supervise(child, io, sink, outputs, pid_file).await
}

async fn run_tty(
    ctx: &ExecContext,
    id: &str,
    cmd: &[String],
    opts: StdioOptions,
    mut io: Io,
    pid_file: &Path,
    sock: &Path,
) -> Outcome {
    let _ = std::fs::remove_file(sock);
    let listener = match tokio::net::UnixListener::bind(sock) {
        Ok(l) => l,
        Err(e) => return Outcome::Failure(format!("binding {}: {e}", sock.display())),
    };
    let mut c = command(ctx, pid_file);
    c.arg("--tty")
        .arg("--console-socket")
        .arg(sock)
        .arg(id)
        .args(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failure(format!("running {}: {e}", ctx.keelson_bin.display()));
        }
    };
    let stderr = child.stderr.take();
    let err_tail = tokio::spawn(async move {
        match stderr {
            Some(s) => pump(s, &mpsc::channel(1).0, Output::Stderr, false).await,
            None => Vec::new(),
        }
    });
    // What the client sends before the pty comes is replayed to it.
    let mut early = Vec::new();
    let master = loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((s, _)) => match receive_fd(&s).await {
                    Ok(fd) => break fd,
                    Err(e) => {
                        // The CLI's own message says more, if it ends soon.
                        let st = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
                        let _ = child.start_kill();
                        let tail = err_tail.await.unwrap_or_default();
                        return match st {
                            Ok(st) if !tail.is_empty() => failed_start(st, &tail),
                            _ => Outcome::Failure(format!("receiving the pty master: {e}")),
                        };
                    }
                },
                Err(e) => return Outcome::Failure(format!("accepting on {}: {e}", sock.display())),
            },
            st = child.wait() => {
                // The CLI ended before sending a terminal: it could not start the process.
                let tail = err_tail.await.unwrap_or_default();
                return failed_start(st, &tail);
            }
            i = io.input.recv() => match i {
                Some(i) => early.push(i),
                None => {
                    kill_started(pid_file);
                    return Outcome::ClientGone;
                }
            },
        }
    };
    drop(listener);
    let pty = match Pty::new(master) {
        Ok(p) => Arc::new(p),
        Err(e) => return Outcome::Failure(format!("pty master: {e}")),
    };
    for i in early {
        match i {
            Input::Stdin(d) => {
                let _ = pty.write_all(&d).await;
            }
            Input::Resize { width, height } => pty.resize(width, height),
            Input::StdinEnd => {}
        }
    }
    let tx = io.output.clone();
    let reader = pty.clone();
    let outputs = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if opts.stdout && tx.send(Output::Stdout(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        err_tail.await.unwrap_or_default()
    };
    supervise(child, io, StdinSink::Pty(pty), outputs, pid_file).await
}

/// Where the client's stdin goes.
enum StdinSink {
    None,
    Pipe(Option<ChildStdin>),
    Pty(Arc<Pty>),
}

/// Feeds the client's input to the process; returns when the client went away.
async fn feed(mut input: mpsc::Receiver<Input>, mut sink: StdinSink, gone: oneshot::Sender<()>) {
    while let Some(i) = input.recv().await {
        match (i, &mut sink) {
            (Input::Stdin(d), StdinSink::Pipe(p)) => {
                if let Some(s) = p
                    && s.write_all(&d).await.is_err()
                {
                    *p = None;
                }
            }
            (Input::Stdin(d), StdinSink::Pty(pty)) => {
                let _ = pty.write_all(&d).await;
            }
            // EOF for a pipe; a terminal's stdin stays open (as containerd does it).
            (Input::StdinEnd, StdinSink::Pipe(p)) => *p = None,
            (Input::Resize { width, height }, StdinSink::Pty(pty)) => pty.resize(width, height),
            _ => {}
        }
    }
    let _ = gone.send(());
}

/// Waits for the process and its outputs, or for the client to go.
async fn supervise(
    mut child: Child,
    io: Io,
    sink: StdinSink,
    outputs: impl std::future::Future<Output = Vec<u8>>,
    pid_file: &Path,
) -> Outcome {
    let (gone_tx, mut gone_rx) = oneshot::channel();
    let feeder = tokio::spawn(feed(io.input, sink, gone_tx));
    drop(io.output);
    tokio::pin!(outputs);
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut tail: Option<Vec<u8>> = None;
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let outcome = loop {
        if let Some(st) = &status
            && tail.is_some()
        {
            break exit_outcome(st, tail.as_deref().unwrap_or_default(), pid_file);
        }
        tokio::select! {
            st = child.wait(), if status.is_none() => {
                status = Some(st);
                deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
            }
            t = &mut outputs, if tail.is_none() => tail = Some(t),
            _ = tokio::time::sleep_until(deadline), if status.is_some() => {
                tracing::debug!("exec: outputs still open after the process exited; not waiting longer");
                if let Some(st) = &status {
                    break exit_outcome(st, &[], pid_file);
                }
            }
            _ = &mut gone_rx => {
                kill_started(pid_file);
                let _ = child.start_kill();
                let _ = child.wait().await;
                break Outcome::ClientGone;
            }
        }
    };
    feeder.abort();
    outcome
}

fn exit_outcome(st: &std::io::Result<ExitStatus>, err_tail: &[u8], pid_file: &Path) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let st = match st {
        Ok(s) => s,
        Err(e) => return Outcome::Failure(format!("waiting for the runtime: {e}")),
    };
    if !pid_file.exists() {
        return failed_start(Ok(*st), err_tail);
    }
    match (st.code(), st.signal()) {
        (Some(0), _) => Outcome::Success,
        (Some(c), _) => Outcome::ExitCode(c),
        (None, Some(s)) => Outcome::ExitCode(128 + s),
        (None, None) => Outcome::ExitCode(255),
    }
}

/// The CLI ended without starting the process.
fn failed_start(st: std::io::Result<ExitStatus>, err_tail: &[u8]) -> Outcome {
    let msg = String::from_utf8_lossy(err_tail).trim().to_string();
    let how = match st {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    };
    if msg.is_empty() {
        Outcome::Failure(format!("the runtime could not start the command ({how})"))
    } else {
        Outcome::Failure(msg)
    }
}

/// SIGKILLs the exec'd process if it started.
fn kill_started(pid_file: &Path) {
    if let Ok(s) = std::fs::read_to_string(pid_file)
        && let Ok(pid) = s.trim().parse::<i32>()
        && pid > 0
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Copies `r` to the client as `wrap` (or drops it when `forward` is false); returns the last
/// [`ERR_TAIL`] bytes read.
async fn pump<R: AsyncRead + Unpin>(
    mut r: R,
    tx: &mpsc::Sender<Output>,
    wrap: fn(Vec<u8>) -> Output,
    forward: bool,
) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    let mut forward = forward;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > ERR_TAIL {
            tail.drain(..tail.len() - ERR_TAIL);
        }
        if forward && tx.send(wrap(buf[..n].to_vec())).await.is_err() {
            forward = false;
        }
    }
    tail
}

/// Takes the descriptor sent on a freshly accepted console connection.
async fn receive_fd(s: &tokio::net::UnixStream) -> std::io::Result<OwnedFd> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::timeout_at(deadline, s.readable())
            .await
            .map_err(|_| std::io::Error::other("no pty master within 30s"))??;
        match s.try_io(tokio::io::Interest::READABLE, || recv_fd(s.as_raw_fd())) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

fn recv_fd(sock: RawFd) -> std::io::Result<OwnedFd> {
    let mut buf = [0u8; 256];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let mut got = None;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: SCM_RIGHTS just installed this descriptor in our table; we own it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
    }
    if msg.bytes == 0 && got.is_none() {
        return Err(std::io::Error::other(
            "the console connection closed without a descriptor",
        ));
    }
    got.ok_or_else(|| std::io::Error::other("no descriptor on the console connection"))
}

/// A pty master, non-blocking, driven by tokio.
struct Pty {
    fd: AsyncFd<OwnedFd>,
}

impl Pty {
    fn new(fd: OwnedFd) -> std::io::Result<Pty> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        // SAFETY: an OwnedFd is a valid open descriptor, and the AsyncFd owns it (nothing else
        // can close or replace it) until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        Ok(Pty { fd })
    }

    /// Reads output; 0 at the end (EIO once no process holds the terminal).
    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut g = self.fd.readable().await?;
            match g.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut g = self.fd.writable().await?;
            match g
                .try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    fn resize(&self, width: u16, height: u16) {
        let ws = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize struct from a valid pointer.
        let r = unsafe { libc::ioctl(self.fd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "TIOCSWINSZ");
        }
    }
}
