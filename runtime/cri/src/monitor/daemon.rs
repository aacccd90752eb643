//! `keelson-monitor create`: the process keelsond starts (P0) forks the monitor (P1), which
//! detaches, creates the container and answers P0 over a pipe; P0 relays the answer and exits.

use super::attach;
use super::attach_server::Server;
use super::client::{Created, MonitorOptions};
use super::pidfile::{self, PidRecord};
use super::supervise::{LoopState, Output, Supervisor};
use crate::crilog::{LogFile, Stream};
use keelson_container::container::{self, CreateOptions};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, dup, dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe2};
use std::fs;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONSOLE_SOCKET: &str = "console.sock";
const DIAG_LOG: &str = "monitor.log";

/// Runs `keelson-monitor create`: returns the process exit code (0 once the container is
/// created, 1 with the reason on stderr otherwise). Must be called by a single-threaded
/// process: it forks, and the forked monitor runs the engine's `create`.
pub fn run_create(opts: &MonitorOptions) -> i32 {
    let opts = match absolute(opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let devnull = match open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("opening /dev/null: {e}");
            return 1;
        }
    };
    let (answer_r, answer_w) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("creating the answer pipe: {e}");
            return 1;
        }
    };
    // SAFETY: the caller is single-threaded (the binary starts no thread before this); the
    // child goes on with ordinary code in a process of its own.
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("forking the monitor: {e}");
            1
        }
        Ok(ForkResult::Child) => {
            drop(answer_r);
            let code = monitor(&opts, answer_w, devnull);
            std::process::exit(code)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(answer_w);
            wait_answer(&answer_r, child)
        }
    }
}

fn absolute(opts: &MonitorOptions) -> std::io::Result<MonitorOptions> {
    let abs = |p: &Path| std::path::absolute(p);
    Ok(MonitorOptions {
        binary: opts.binary.clone(),
        root: abs(&opts.root)?,
        id: opts.id.clone(),
        bundle: abs(&opts.bundle)?,
        log_path: abs(&opts.log_path)?,
        exit_file: abs(&opts.exit_file)?,
        state_dir: abs(&opts.state_dir)?,
        stdin: opts.stdin,
        stdin_once: opts.stdin_once,
        tty: opts.tty,
        cgroup_layout: opts.cgroup_layout.clone(),
    })
}

/// P0: waits for the monitor's one-line answer and relays it.
fn wait_answer(answer: &OwnedFd, child: Pid) -> i32 {
    let mut buf = Vec::new();
    loop {
        let mut fds = [PollFd::new(answer.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) => {
                // The container's init holds the pipe too until it execs: watch the monitor
                // itself.
                if let Ok(st) = waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    if st != WaitStatus::StillAlive {
                        eprintln!("the monitor exited before answering ({st:?})");
                        return 1;
                    }
                }
                continue;
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("waiting for the monitor: {e}");
                return 1;
            }
        }
        let mut chunk = [0u8; 4096];
        match nix::unistd::read(answer, &mut chunk) {
            Ok(0) => {
                let _ = waitpid(child, None);
                eprintln!("the monitor exited before answering");
                return 1;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(e) => {
                eprintln!("reading the monitor's answer: {e}");
                return 1;
            }
        }
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            continue;
        };
        let line = String::from_utf8_lossy(&buf[..end]).into_owned();
        if let Some(json) = line.strip_prefix("ok ") {
            println!("{json}");
            return 0;
        }
        // The monitor exits right after a failure: reap it.
        let _ = waitpid(child, None);
        eprintln!("{}", line.strip_prefix("error ").unwrap_or(&line));
        return 1;
    }
}

/// P1: the monitor. Returns its exit code.
fn monitor(opts: &MonitorOptions, answer: OwnedFd, devnull: OwnedFd) -> i32 {
    // Leave keelsond's session and its stdio (its pipes must close when P0 exits).
    let _ = nix::unistd::setsid();
    let _ = dup2_stdin(&devnull);
    let _ = dup2_stdout(&devnull);
    let _ = dup2_stderr(&devnull);
    let _ = nix::unistd::chdir("/");
    let _span;
    match setup(opts, &devnull) {
        Ok(sup) => {
            _span = tracing::info_span!("monitor", id = %opts.id).entered();
            let created = Created {
                monitor_pid: std::process::id() as i32,
                monitor_start_time: own_start_time(),
                init_pid: sup.init_pid,
            };
            let json = serde_json::to_string(&created).unwrap_or_default();
            send_answer(&answer, &format!("ok {json}\n"));
            drop(answer);
            drop(devnull);
            tracing::info!(init_pid = sup.init_pid, "container created; monitoring");
            // The start-up pages go `SETTLE` after the loop starts (supervise.rs), not here:
            // trimming now would compete for the CPU with the container's start.
            sup.run();
            0
        }
        Err(msg) => {
            tracing::error!(id = %opts.id, error = %msg, "create failed");
            let one_line = msg.replace('\n', " ");
            send_answer(&answer, &format!("error {one_line}\n"));
            1
        }
    }
}

fn send_answer(fd: &OwnedFd, line: &str) {
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        match nix::unistd::write(fd, rest) {
            Ok(n) => rest = &rest[n..],
            Err(Errno::EINTR) => {}
            // P0 is gone (keelsond gave up): the monitor goes on; keelsond finds the
            // container again through the engine and the pid file.
            Err(_) => return,
        }
    }
}

fn own_start_time() -> u64 {
    keelson_container::state::proc_stat(std::process::id() as i32)
        .map(|(_, s)| s)
        .unwrap_or(0)
}

/// Deletes the container when dropped armed: nothing is left behind when setup fails after
/// the engine created it.
struct DeleteOnFailure<'a> {
    root: &'a Path,
    id: &'a str,
    armed: bool,
}

impl Drop for DeleteOnFailure<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = container::delete(self.root, self.id, true) {
                tracing::error!(error = %e, "deleting the half-set-up container");
            }
        }
    }
}

/// Creates the container and everything the loop needs; the error is one message for
/// keelsond.
fn setup(opts: &MonitorOptions, devnull: &OwnedFd) -> Result<Supervisor, String> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("becoming a child subreaper: {e}"))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&opts.state_dir)
        .map_err(|e| format!("creating {}: {e}", opts.state_dir.display()))?;
    let diag_path = opts.state_dir.join(DIAG_LOG);
    let diag = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&diag_path)
        .map_err(|e| format!("opening {}: {e}", diag_path.display()))?;
    init_tracing(&diag);
    let log = LogFile::open(&opts.log_path)
        .map_err(|e| format!("opening log file {}: {e}", opts.log_path.display()))?;
    let stdio = ContainerStdio::new(opts)?;
    stdio.install(devnull)?;
    let console_socket = match &stdio {
        ContainerStdio::Tty { path, .. } => Some(path.clone()),
        ContainerStdio::Pipes { .. } => None,
    };
    let created = container::create(
        &opts.root,
        &CreateOptions {
            id: opts.id.clone(),
            bundle: opts.bundle.clone(),
            console_socket,
            layout: opts.cgroup_layout.clone(),
            ..Default::default()
        },
    );
    // Take our own stdio back: the container's ends are the init's now.
    let _ = dup2_stdin(devnull);
    let _ = dup2_stdout(devnull);
    let _ = dup2_stderr(&diag);
    let state = match created {
        Ok(s) => s,
        Err(e) => {
            stdio.discard();
            return Err(e.to_string());
        }
    };
    let mut cleanup = DeleteOnFailure {
        root: &opts.root,
        id: &opts.id,
        armed: true,
    };
    let (outputs, stdin) = stdio.into_streams(opts.stdin)?;
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGUSR1,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("creating a signalfd: {e}"))?;
    let oom_baseline = state.cgroups.oom_kill_count().unwrap_or(0);
    let attach = Server::bind(&opts.state_dir.join(attach::SOCKET_NAME))
        .map_err(|e| format!("creating the attach socket: {e}"))?;
    // A leftover exit file from an earlier container with these paths would be mistaken for
    // this one's.
    match fs::remove_file(&opts.exit_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing old {}: {e}", opts.exit_file.display())),
    }
    pidfile::write(
        &opts.state_dir,
        PidRecord {
            pid: std::process::id() as i32,
            start_time: own_start_time(),
            init_pid: state.pid,
        },
    )
    .map_err(|e| format!("writing the pid file: {e}"))?;
    cleanup.armed = false;
    Ok(Supervisor {
        init_pid: state.pid,
        log,
        outputs,
        stdin,
        stdin_once: opts.stdin_once,
        tty: opts.tty,
        signals,
        attach: Some(attach),
        cgroups: state.cgroups,
        oom_baseline,
        exit_file: opts.exit_file.clone(),
        state_dir: opts.state_dir.clone(),
        state: LoopState::default(),
    })
}

fn init_tracing(diag: &fs::File) {
    let Ok(file) = diag.try_clone() else {
        return;
    };
    let level = std::env::var("KEELSON_MONITOR_LOG")
        .ok()
        .and_then(|s| s.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_max_level(level)
        .try_init();
}

/// The container's side of stdio while the engine creates it.
enum ContainerStdio {
    Pipes {
        /// (container's read end, our write end)
        stdin: Option<(OwnedFd, OwnedFd)>,
        /// (our read end, container's write end)
        stdout: (OwnedFd, OwnedFd),
        stderr: (OwnedFd, OwnedFd),
    },
    Tty {
        listener: UnixListener,
        path: PathBuf,
    },
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("creating a pipe: {e}"))
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), String> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| format!("F_GETFL: {e}"))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| format!("F_SETFL: {e}"))?;
    Ok(())
}

impl ContainerStdio {
    fn new(opts: &MonitorOptions) -> Result<ContainerStdio, String> {
        if opts.tty {
            let path = opts.state_dir.join(CONSOLE_SOCKET);
            let _ = fs::remove_file(&path);
            let listener = UnixListener::bind(&path)
                .map_err(|e| format!("creating console socket {}: {e}", path.display()))?;
            return Ok(ContainerStdio::Tty { listener, path });
        }
        let stdin = if opts.stdin {
            let (r, w) = pipe()?;
            Some((r, w))
        } else {
            None
        };
        Ok(ContainerStdio::Pipes {
            stdin,
            stdout: pipe()?,
            stderr: pipe()?,
        })
    }

    /// Makes the container's ends this process's stdio, for the engine's init to inherit.
    fn install(&self, devnull: &OwnedFd) -> Result<(), String> {
        let res = match self {
            ContainerStdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => dup2_stdin(stdin.as_ref().map_or(devnull, |(r, _)| r))
                .and_then(|()| dup2_stdout(&stdout.1))
                .and_then(|()| dup2_stderr(&stderr.1)),
            ContainerStdio::Tty { .. } => dup2_stdin(devnull)
                .and_then(|()| dup2_stdout(devnull))
                .and_then(|()| dup2_stderr(devnull)),
        };
        res.map_err(|e| format!("setting up the container's stdio: {e}"))
    }

    /// Create failed: remove the console socket.
    fn discard(self) {
        if let ContainerStdio::Tty { path, .. } = self {
            let _ = fs::remove_file(path);
        }
    }

    /// After create: closes the container's ends and returns the outputs to read and where
    /// stdin goes.
    fn into_streams(self, want_stdin: bool) -> Result<(Vec<Output>, Option<OwnedFd>), String> {
        match self {
            ContainerStdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                let stdin = stdin.map(|(_, w)| w);
                if let Some(w) = &stdin {
                    set_nonblocking(w)?;
                }
                set_nonblocking(&stdout.0)?;
                set_nonblocking(&stderr.0)?;
                Ok((
                    vec![
                        Output::new(stdout.0, Stream::Stdout),
                        Output::new(stderr.0, Stream::Stderr),
                    ],
                    stdin,
                ))
            }
            ContainerStdio::Tty { listener, path } => {
                let master = receive_master(&listener);
                let _ = fs::remove_file(&path);
                let master = master?;
                set_nonblocking(&master)?;
                let stdin = if want_stdin {
                    Some(dup(&master).map_err(|e| format!("dup of the pty master: {e}"))?)
                } else {
                    None
                };
                Ok((vec![Output::new(master, Stream::Stdout)], stdin))
            }
        }
    }
}

/// Accepts the engine's connection on the console socket and takes the pty master it sent.
/// The engine has connected and sent it before `create` returned.
fn receive_master(listener: &UnixListener) -> Result<OwnedFd, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("console socket: {e}"))?;
    let (conn, _) = listener
        .accept()
        .map_err(|e| format!("the container did not connect to the console socket: {e}"))?;
    conn.set_nonblocking(false)
        .and_then(|()| conn.set_read_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| format!("console socket: {e}"))?;
    let mut name = [0u8; 512];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("receiving the pty master: {e}"))?;
    let mut master = None;
    for cmsg in msg
        .cmsgs()
        .map_err(|e| format!("receiving the pty master: {e}"))?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: SCM_RIGHTS just installed this descriptor in our table; we own it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if master.is_none() {
                    master = Some(owned);
                }
            }
        }
    }
    master.ok_or_else(|| "the console socket message carried no descriptor".to_string())
}
