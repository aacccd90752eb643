//! The per-container monitor: a small process per container (like containerd's shim, without
//! its gRPC API) that owns the container's stdio and exit status, so containers keep running,
//! logging and being reaped while keelsond restarts or dies.
//!
//! # Process structure
//!
//! ```text
//! keelsond ──spawn()──> keelson-monitor create ...        (P0: returns the synchronous answer)
//!                           └─fork─> keelson-monitor      (P1: setsid, child subreaper, detached)
//!                                      └─ engine create ─> container init (waits for `start`)
//! ```
//!
//! - keelsond runs `keelson-monitor create` ([`spawn`]). That process (P0) forks the monitor
//!   (P1) and waits for its answer on a pipe: P0 exits 0 printing [`Created`] (JSON, one line)
//!   once the engine's `create` is done, or exits 1 with the engine's error message (one line)
//!   on stderr. P0 also notices P1 dying without an answer.
//! - P1 calls `setsid`, points its stdio at `/dev/null` at once (so keelsond's pipes close when
//!   P0 exits), `chdir("/")`, becomes a child subreaper and creates the container with the
//!   engine library ([`keelson_container::container::create`]; P1 is single-threaded). The
//!   container's init is forked by the engine, reparented to P1 and reaped by it. When P0 has
//!   exited, P1's parent is the system's init (or the nearest subreaper), never keelsond, so a
//!   `kill -9` of keelsond leaves it alone.
//! - The monitor never starts the container: keelsond calls the engine's `start` itself.
//!
//! # Stdio and logs
//!
//! The engine's init inherits its caller's stdin/stdout/stderr, so P1 puts pipe ends there for
//! the duration of `create` (stdin: a pipe with `--stdin`, else `/dev/null`), then takes its own
//! stdio back. With `--tty` the container gets a pty instead: P1 listens on
//! `<state-dir>/console.sock` during `create` and receives the pty master (SCM_RIGHTS, as runc
//! sends it); all terminal output is `stdout`.
//!
//! P1 reads the outputs with `poll` (no threads, no async runtime) and writes
//! [`crate::crilog`] records to `--log-path`, split like containerd does (16 KiB records,
//! `\r\n` ends a line, an unterminated last line is a `P` record). `SIGUSR1` makes the monitor
//! reopen `--log-path` (CRI `ReopenContainerLog` after the kubelet renamed the file):
//! [`reopen_log`] sends it after checking the pid is still the monitor's (see below).
//!
//! # Exit
//!
//! When the init exits, the monitor reads the outputs to their end (at most
//! [`DRAIN_TIMEOUT`] more, in case a process outside the container's pid namespace still holds
//! them), ends open lines with a `P` record, and writes `--exit-file` atomically (temp file +
//! rename) as [`ExitStatus`] JSON:
//!
//! ```json
//! {"exit_code":137,"signal":9,"finished_at":"2026-01-02T03:04:05.123456789Z","oom_killed":true,"pid":4242}
//! ```
//!
//! `exit_code` is 128+signal for a death by signal; `signal` is present only then;
//! `finished_at` is when the init was reaped (RFC3339Nano, UTC); `oom_killed` is true when the
//! OOM killer killed a process of the container's cgroup during its life (cgroup v1
//! `memory.oom_control` / v2 `memory.events` `oom_kill` counter, compared with its value at
//! create time), like containerd's CRI reports `OOMKilled`; `pid` is the init's host pid. Then
//! the monitor removes its pid file and attach socket and exits. A container deleted before it
//! was started (the engine SIGKILLs the waiting init) gets an exit file too (137, signal 9).
//! Other children reparented to the monitor (it is a subreaper) are reaped and ignored.
//!
//! # Files in `--state-dir` (one directory per container; keelsond puts it below `/run/keelsond`)
//!
//! - `monitor.pid`: `<pid> <start time> <init pid>`, the start time being field 22 of
//!   `/proc/<pid>/stat`. Signals go through a pidfd opened on the pid and checked against that
//!   start time after opening, so a recycled pid is never signalled (see [`MonitorHandle`]).
//! - `attach.sock`: the attach socket (protocol in [`attach`]).
//! - `console.sock`: only during `create` with `--tty`.
//! - `monitor.log`: the monitor's own diagnostics (tracing, plain text; level from
//!   `KEELSON_MONITOR_LOG`, e.g. `debug`, default `info`).
//!
//! Unix socket paths are limited to 107 bytes: keep `--state-dir` short.
//!
//! # After a keelsond restart
//!
//! For each container keelsond finds in the engine's root: an exit file means it exited
//! ([`read_exit`]); else [`MonitorHandle::load`] plus [`MonitorHandle::is_running`] means it is
//! still monitored; else its monitor died (SIGKILL, OOM) and the exit status is unknown
//! (containerd reports 255 then).
//!
//! # Signals
//!
//! SIGCHLD and SIGUSR1 are read from a signalfd. SIGTERM, SIGINT and SIGHUP are blocked and
//! ignored: a monitor gives up its container's exit status only by SIGKILL.
//!
//! # Memory
//!
//! There is one monitor per container, so its resident set is what keelson pays per container
//! on top of the container itself; the target is under 1 MiB of RSS (containerd's shim is a
//! Go process with its runtime's threads and heap). The monitor is one thread with no async runtime, and what a release build
//! keeps resident in its loop is mostly the pages of code the loop runs, so:
//!
//! - `keelson-monitor` is linked statically and not as a PIE (`build.rs`; the other binaries
//!   are not). A dynamically linked PIE keeps ld.so's and libc's data and, above all, its own
//!   relocated `.data.rel.ro` (about 270 KiB of private copies, written at start by the
//!   dynamic loader) resident for its whole life; libc's code it runs comes in 64 KiB
//!   fault-around windows of a 1.4 MiB library. Static and position-dependent, the read-only
//!   data is never written, stays the file's own (shared between monitors through the page
//!   cache) and can be dropped, and the libc functions the loop calls lie in the monitor's
//!   own text. Nothing the monitor does needs NSS or `dlopen`. Go links containerd's shim
//!   the same way (not a PIE).
//! - A few seconds into the loop the monitor gives back what `create` and the start used
//!   (`trim.rs`: `malloc_trim`, then `madvise(MADV_DONTNEED)` of the clean file pages of its
//!   read-only mappings, of anonymous pages holding only zeros, and of the stack below the
//!   stack pointer), and does it again after a log reopen or an attach session, so that only
//!   the pages of the quiet loop stay. Not earlier: while containers start, the CPU is theirs. Code comes back in
//!   the kernel's 64 KiB fault-around windows, which is most of what remains.
//! - Buffers are small and allocated once: 32 KiB for reading output (never zeroed, so only
//!   what reads fill is resident), a 16 KiB line per stream at most, the attach queues only
//!   while a client is connected.
//!
//! Measured on a release build with a container writing a line every 200 ms (the monitor's
//! smaps, one monitor running, 6 s after start): before these steps 1504 KiB RSS: 540 KiB
//! anonymous or private dirty (272 KiB of it the relocated `.data.rel.ro`, 116 KiB heap, 60
//! KiB stack, ld.so's and libc's data), 512 KiB of the binary's code and read-only data and
//! 452 KiB of libc's code. After them 764 KiB RSS: 160 KiB anonymous (88 KiB heap, 32 KiB
//! stack, 28 KiB `.data`/`.bss`), 612 KiB of the binary's file pages (448 KiB code in ~7
//! fault-around windows, 64 KiB rodata, 100 KiB RELRO, clean), shared with every other
//! monitor through the page cache.

pub mod attach;
mod attach_server;
mod client;
mod daemon;
mod exit;
pub(crate) mod pidfile;
mod supervise;
mod trim;

pub use client::{Created, MonitorHandle, MonitorOptions, default_binary, reopen_log, spawn};
pub use daemon::run_create;
pub use exit::{ExitStatus, read_exit, wait_exit};
pub use pidfile::PID_FILE;

use std::path::PathBuf;
use std::time::Duration;

/// How long the monitor keeps reading outputs after the init exited, waiting for their end.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What can go wrong starting, finding or asking a monitor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("running {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The monitor's one-line reason why the container was not created (the engine's message
    /// when the engine failed).
    #[error("{0}")]
    Create(String),
    #[error("unexpected answer from the monitor: {0}")]
    Protocol(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("exit file {path}: {reason}")]
    ExitFile { path: PathBuf, reason: String },
    #[error("no monitor is running for {0}")]
    NotRunning(PathBuf),
    #[error("invalid monitor options: {0}")]
    Options(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
