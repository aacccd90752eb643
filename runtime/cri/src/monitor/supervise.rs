//! The monitor's poll loop: container output to the CRI log and attach clients, attach stdin
//! to the container, signals (SIGCHLD: reap; SIGUSR1: reopen the log), and the exit file.

use super::attach::kind;
use super::attach_server::{Event, Server};
use super::exit::{ExitStatus, write_exit};
use super::{DRAIN_TIMEOUT, pidfile};
use crate::crilog::{LineSplitter, LogFile, MAX_LINE, Stream};
use keelson_container::cgroups::Cgroups;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// Read buffer size for container output (allocated once, never zeroed: only the pages reads
/// fill become resident).
const READ_CHUNK: usize = 32 * 1024;
/// Attach stdin buffered for the container beyond which clients are not read.
const STDIN_HIGH_WATER: usize = 256 * 1024;
/// How long after entering the loop, a log reopen or the last attach client leaving the
/// monitor drops the pages it touched only then (see trim.rs).
const SETTLE: Duration = Duration::from_secs(3);

/// One output of the container (a pipe's read end, or the pty master).
pub(super) struct Output {
    pub fd: OwnedFd,
    pub stream: Stream,
    pub splitter: LineSplitter,
}

impl Output {
    pub fn new(fd: OwnedFd, stream: Stream) -> Output {
        Output {
            fd,
            stream,
            splitter: LineSplitter::new(MAX_LINE),
        }
    }
}

/// Everything the loop works with, set up by the daemon once the container is created.
pub(super) struct Supervisor {
    pub init_pid: i32,
    pub log: LogFile,
    pub outputs: Vec<Output>,
    /// Where attach stdin goes: the stdin pipe's write end, or the pty master (a dup).
    pub stdin: Option<OwnedFd>,
    pub stdin_once: bool,
    pub tty: bool,
    pub signals: SignalFd,
    pub attach: Option<Server>,
    pub cgroups: Cgroups,
    pub oom_baseline: u64,
    pub exit_file: PathBuf,
    pub state_dir: PathBuf,
    pub state: LoopState,
}

/// What the loop learns as it runs.
#[derive(Default)]
pub(super) struct LoopState {
    stdin_pending: Vec<u8>,
    /// Close stdin once what is pending was written.
    stdin_closing: bool,
    /// `--stdin-once` has fired.
    stdin_once_done: bool,
    exited: Option<(WaitStatus, SystemTime)>,
    drain_until: Option<Instant>,
    log_errors: u64,
    /// When to give back the pages the loop's first steps (or a rare event) touched.
    trim_at: Option<Instant>,
}

#[derive(Clone, Copy)]
enum Slot {
    Signals,
    Output(usize),
    Stdin,
    Listener,
    Client(usize),
}

impl Supervisor {
    /// Runs until the init exited and its output is drained, then writes the exit file.
    pub fn run(mut self) {
        let mut buf = Vec::with_capacity(READ_CHUNK);
        self.reap();
        self.state.trim_at = Some(Instant::now() + SETTLE);
        while !self.done() {
            self.step(&mut buf);
            if self.state.trim_at.is_some_and(|t| Instant::now() >= t) {
                self.state.trim_at = None;
                super::trim::settle();
            }
        }
        self.finish();
    }

    fn done(&self) -> bool {
        self.state.exited.is_some()
            && (self.outputs.is_empty()
                || self.state.drain_until.is_some_and(|d| Instant::now() >= d))
    }

    fn step(&mut self, buf: &mut Vec<u8>) {
        let stdin_room = self.state.stdin_pending.len() < STDIN_HIGH_WATER;
        let wake = match (self.state.drain_until, self.state.trim_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = match wake {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now()).as_millis();
                PollTimeout::from(u16::try_from(left.max(1)).unwrap_or(u16::MAX))
            }
            None => PollTimeout::NONE,
        };
        let mut ready: Vec<(Slot, PollFlags)> = {
            let mut slots = Vec::with_capacity(8);
            let mut fds = Vec::with_capacity(8);
            fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
            slots.push(Slot::Signals);
            for (i, o) in self.outputs.iter().enumerate() {
                fds.push(PollFd::new(o.fd.as_fd(), PollFlags::POLLIN));
                slots.push(Slot::Output(i));
            }
            if let Some(fd) = &self.stdin {
                if !self.state.stdin_pending.is_empty() {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
                    slots.push(Slot::Stdin);
                }
            }
            if let Some(srv) = &self.attach {
                fds.push(PollFd::new(srv.listener_fd(), PollFlags::POLLIN));
                slots.push(Slot::Listener);
                for (i, c) in srv.clients.iter().enumerate() {
                    let mut flags = PollFlags::empty();
                    if stdin_room {
                        flags |= PollFlags::POLLIN;
                    }
                    if c.wants_write() {
                        flags |= PollFlags::POLLOUT;
                    }
                    fds.push(PollFd::new(c.fd(), flags));
                    slots.push(Slot::Client(i));
                }
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => return,
                Err(e) => {
                    tracing::error!(error = %e, "poll");
                    // Nothing sensible is left to wait on; avoid spinning.
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    return;
                }
            }
            fds.iter()
                .zip(slots)
                .filter_map(|(fd, slot)| {
                    let r = fd.revents().unwrap_or(PollFlags::empty());
                    (!r.is_empty()).then_some((slot, r))
                })
                .collect()
        };
        let mut ended = Vec::new();
        let mut events = Vec::new();
        // New attach clients first: a client that connected before output was produced
        // gets that output.
        ready.sort_by_key(|(slot, _)| !matches!(slot, Slot::Listener));
        for (slot, flags) in ready {
            match slot {
                Slot::Signals => self.on_signals(),
                Slot::Output(i) => {
                    if !self.read_output(i, buf) {
                        ended.push(i);
                    }
                }
                Slot::Stdin => self.flush_stdin(),
                Slot::Listener => {
                    if let Some(srv) = &mut self.attach {
                        srv.accept();
                    }
                }
                Slot::Client(i) => {
                    if let Some(srv) = &mut self.attach {
                        if flags.intersects(PollFlags::POLLOUT) {
                            srv.on_writable(i);
                        }
                        if flags.intersects(PollFlags::POLLIN) {
                            srv.on_readable(i, &mut events);
                        } else if flags.intersects(
                            PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL,
                        ) {
                            srv.on_hangup(i, &mut events);
                        }
                    }
                }
            }
        }
        for e in events {
            self.on_attach_event(e);
        }
        if let Some(srv) = &mut self.attach {
            let before = srv.clients.len();
            srv.remove_gone();
            if before > 0 && srv.clients.is_empty() {
                self.state.trim_at = Some(Instant::now() + SETTLE);
            }
        }
        // Highest index first, so the others stay valid.
        ended.sort_unstable();
        for i in ended.into_iter().rev() {
            let mut o = self.outputs.remove(i);
            let (log, st) = (&mut self.log, &mut self.state);
            o.splitter.finish(|tag, content| {
                if let Err(e) = log.write(o.stream, tag, content) {
                    log_error(st, &e);
                }
            });
            tracing::debug!(stream = o.stream.as_str(), "output ended");
        }
    }

    /// Reads once from output `i`; false at its end.
    fn read_output(&mut self, i: usize, buf: &mut Vec<u8>) -> bool {
        let Some(o) = self.outputs.get_mut(i) else {
            return true;
        };
        let n = match read_into(&o.fd, buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return true,
            // A pty master reads EIO once no slave is open.
            Err(Errno::EIO) => return false,
            Err(e) => {
                tracing::warn!(error = %e, stream = o.stream.as_str(), "reading container output");
                return false;
            }
        };
        let data = &buf[..n];
        let stream = o.stream;
        let (log, st) = (&mut self.log, &mut self.state);
        o.splitter.feed(data, |tag, content| {
            if let Err(e) = log.write(stream, tag, content) {
                log_error(st, &e);
            }
        });
        if let Some(srv) = &mut self.attach {
            let k = match stream {
                Stream::Stdout => kind::STDOUT,
                Stream::Stderr => kind::STDERR,
            };
            srv.broadcast(k, data);
        }
        true
    }

    fn on_signals(&mut self) {
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => match info.ssi_signo as i32 {
                    libc::SIGCHLD => self.reap(),
                    libc::SIGUSR1 => {
                        match self.log.reopen() {
                            Ok(()) => {
                                tracing::info!(path = %self.log.path().display(), "log reopened")
                            }
                            Err(e) => {
                                tracing::error!(path = %self.log.path().display(), error = %e, "reopening the log")
                            }
                        }
                        self.state.trim_at = Some(Instant::now() + SETTLE);
                    }
                    sig => tracing::info!(signal = sig, pid = info.ssi_pid, "signal ignored"),
                },
                Ok(None) => return,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "reading signals");
                    return;
                }
            }
        }
    }

    /// Reaps every exited child; notes the init's end.
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return,
                Ok(st) => {
                    let is_init = st.pid().map(Pid::as_raw) == Some(self.init_pid);
                    let ended = matches!(st, WaitStatus::Exited(..) | WaitStatus::Signaled(..));
                    if is_init && ended && self.state.exited.is_none() {
                        tracing::info!(status = ?st, "container init exited");
                        let now = SystemTime::now();
                        self.state.exited = Some((st, now));
                        self.state.drain_until = Some(Instant::now() + DRAIN_TIMEOUT);
                        // Nobody reads the container's stdin any more.
                        self.stdin = None;
                        self.state.stdin_pending.clear();
                    } else {
                        tracing::debug!(status = ?st, "reaped");
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    fn on_attach_event(&mut self, e: Event) {
        match e {
            Event::Stdin(data) => {
                if self.stdin.is_some() && !self.state.stdin_closing {
                    self.state.stdin_pending.extend_from_slice(&data);
                    self.flush_stdin();
                }
            }
            Event::StdinEnd => {
                if self.stdin_once && !self.tty && !self.state.stdin_once_done {
                    tracing::debug!("first attach's stdin ended: closing the container's stdin");
                    self.state.stdin_once_done = true;
                    self.state.stdin_closing = true;
                    self.flush_stdin();
                }
            }
            Event::Resize { width, height } => self.resize(width, height),
        }
    }

    /// Writes what is pending to the container's stdin without blocking.
    fn flush_stdin(&mut self) {
        let Some(fd) = &self.stdin else {
            self.state.stdin_pending.clear();
            return;
        };
        while !self.state.stdin_pending.is_empty() {
            match nix::unistd::write(fd, &self.state.stdin_pending) {
                Ok(n) => {
                    self.state.stdin_pending.drain(..n);
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "container stdin closed");
                    self.stdin = None;
                    self.state.stdin_pending.clear();
                    return;
                }
            }
        }
        if self.state.stdin_closing {
            self.stdin = None;
        }
    }

    fn resize(&self, width: u16, height: u16) {
        if !self.tty {
            return;
        }
        let Some(master) = self.outputs.first() else {
            return;
        };
        let ws = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a valid winsize from the pointer; the fd is our pty master.
        let r = unsafe { libc::ioctl(master.fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "resizing the terminal");
        }
    }

    /// Ends open lines, writes the exit file and removes the monitor's files.
    fn finish(mut self) {
        for mut o in std::mem::take(&mut self.outputs) {
            let (log, st) = (&mut self.log, &mut self.state);
            o.splitter.finish(|tag, content| {
                if let Err(e) = log.write(o.stream, tag, content) {
                    log_error(st, &e);
                }
            });
        }
        if let Some(srv) = self.attach.take() {
            srv.close();
        }
        let Some((status, finished)) = self.state.exited else {
            return;
        };
        let (exit_code, signal) = match status {
            WaitStatus::Exited(_, c) => (c, None),
            WaitStatus::Signaled(_, s, _) => (128 + s as i32, Some(s as i32)),
            // reap() records only the two above.
            _ => (255, None),
        };
        let oom_killed = match self.cgroups.oom_kill_count() {
            Ok(n) => n > self.oom_baseline,
            Err(e) => {
                tracing::debug!(error = %e, "no OOM counter (cgroup gone?)");
                false
            }
        };
        let st = ExitStatus {
            exit_code,
            signal,
            finished_at: crate::crilog::format_timestamp(finished),
            oom_killed,
            pid: self.init_pid,
        };
        // The exit file first, the pid file after: whoever finds no pid file finds the exit.
        match write_exit(&self.exit_file, &st) {
            Ok(()) => tracing::info!(?st, "exit recorded"),
            Err(e) => tracing::error!(
                path = %self.exit_file.display(),
                error = %e,
                "writing the exit file"
            ),
        }
        let _ = std::fs::remove_file(self.state_dir.join(pidfile::PID_FILE));
    }
}

/// Reads once from `fd` into `buf`'s capacity (replacing its content), without zeroing it
/// first.
fn read_into(fd: &OwnedFd, buf: &mut Vec<u8>) -> nix::Result<usize> {
    buf.clear();
    let spare = buf.spare_capacity_mut();
    // SAFETY: read(2) writes at most spare.len() bytes into the vector's allocated, unused
    // capacity, which stays valid for the call; fd is an open descriptor we own.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
    let n = Errno::result(n)? as usize;
    // SAFETY: the kernel initialized the first n bytes of the capacity.
    unsafe { buf.set_len(n) };
    Ok(n)
}

/// Log write failures are reported, not fatal (the output is still drained, like containerd);
/// only the first and then every 1000th is logged.
fn log_error(st: &mut LoopState, e: &std::io::Error) {
    if st.log_errors % 1000 == 0 {
        tracing::error!(error = %e, failures = st.log_errors + 1, "writing the container log");
    }
    st.log_errors += 1;
}
