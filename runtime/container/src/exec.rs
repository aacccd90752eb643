//! `exec`: a new process in a running container's namespaces and cgroups.
//!
//! Like `create`, the caller forks an intermediate process that joins the init's namespaces
//! (user first), and that forks the process itself so it lands in the container's pid
//! namespace. The process takes on the identity of its `process` (the container's own, or one
//! given with `--process`), reports READY and execs.

use crate::container::load;
use crate::error::{Context, Error, Result};
use crate::init::{Tail, clone_flag, exec_process};
use crate::state::{CONFIG_COPY, State, Status};
use crate::sync::{self, Channel, tag};
use nix::fcntl::{OFlag, open};
use nix::sched::setns;
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork, setsid};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Options of `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub id: String,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
}

/// The spec the container was created with.
pub fn container_spec(root: &Path, id: &str) -> Result<Spec> {
    let p = State::dir(root, id).join(CONFIG_COPY);
    let data = fs::read(&p).ctx(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&data).map_err(|e| Error::State(format!("{}: {e}", p.display())))
}

fn ns_file(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Starts `process` in the container; returns the pid (in the caller's pid namespace) once
/// it is about to exec. Must be called from a single-threaded process.
pub fn exec(root: &Path, opts: &ExecOptions, process: &Process) -> Result<(State, i32)> {
    let state = load(root, &opts.id)?;
    match state.status(root) {
        Status::Running | Status::Created => {}
        Status::Paused => return Err(Error::State("cannot exec in a paused container".into())),
        _ => return Err(Error::State("cannot exec in a stopped container".into())),
    }
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::Config("process.args must not be empty".into()));
    }
    if !process.cwd().is_absolute() {
        return Err(Error::Config(format!(
            "process.cwd {:?} is not an absolute path",
            process.cwd()
        )));
    }
    if let Some(c) = process.capabilities() {
        crate::process::check_caps(c)?;
    }
    crate::process::check_exec_size(process)?;
    let terminal = process.terminal() == Some(true);
    if terminal != opts.console_socket.is_some() {
        return Err(Error::Config(if terminal {
            "cannot allocate tty without setting console socket".into()
        } else {
            "cannot use console socket without a tty".into()
        }));
    }
    let spec = container_spec(root, &opts.id)?;
    // Open every namespace of the init before joining any.
    let mut joins: Vec<(LinuxNamespaceType, OwnedFd)> = Vec::new();
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
    {
        let t = ns.typ();
        let p = format!("/proc/{}/ns/{}", state.pid, ns_file(t));
        let fd = open(
            p.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| format!("opening {p}"))?;
        joins.push((t, fd));
    }
    if !state.init_alive() {
        return Err(Error::State("cannot exec in a stopped container".into()));
    }
    // User first (it owns the others), mount last (it changes the root).
    joins.sort_by_key(|(t, _)| match t {
        LinuxNamespaceType::User => 0,
        LinuxNamespaceType::Mount => 2,
        _ => 1,
    });
    let console = match &opts.console_socket {
        Some(p) => Some(crate::console::connect_socket(p)?),
        None => None,
    };
    let (parent, child) = sync::pair()?;
    // SAFETY: the CLI is single-threaded; the child only runs engine code, then exits or execs.
    let p1 = match unsafe { fork() }.ctx(|| "fork")? {
        ForkResult::Child => {
            drop(parent);
            let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
            let code = match exec_stage1(
                &child,
                &joins,
                process,
                console.as_ref(),
                opts.preserve_fds,
                seccomp,
            ) {
                Ok(()) => 0,
                Err(e) => {
                    child.send_error(&e);
                    1
                }
            };
            // SAFETY: _exit ends the forked child without the parent's atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child: p1 } => p1,
    };
    drop(child);
    drop(console);
    drop(joins);
    let outcome = (|| -> Result<i32> {
        state.cgroups.add_pid(p1.as_raw())?;
        parent.send(tag::GO, &[])?;
        let msg = parent.expect(tag::READY)?;
        msg.pid
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::Init("exec'd process pid not visible".into()))
    })();
    if outcome.is_err() {
        let _ = kill(p1, Signal::SIGKILL);
    }
    let _ = waitpid(p1, None);
    let pid = outcome.map_err(|e| Error::StartProcess(e.to_string()))?;
    if let Some(pf) = &opts.pid_file {
        let tmp = pf.with_extension("keelson-tmp");
        fs::write(&tmp, pid.to_string()).ctx(|| format!("writing pid file {}", tmp.display()))?;
        fs::rename(&tmp, pf).ctx(|| format!("writing pid file {}", pf.display()))?;
    }
    Ok((state, pid))
}

fn exec_stage1(
    chan: &Channel,
    joins: &[(LinuxNamespaceType, OwnedFd)],
    process: &Process,
    console: Option<&OwnedFd>,
    preserve_fds: u32,
    seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
) -> Result<()> {
    // SAFETY: prctl with integer arguments only: nothing in the container may open our /proc.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: resetting a signal disposition to its default.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    chan.expect(tag::GO)?;
    for (t, fd) in joins {
        setns(fd, clone_flag(*t))
            .ctx(|| format!("joining the container's {} namespace", ns_file(*t)))?;
    }
    // SAFETY: single-threaded, forked from a single-threaded parent.
    match unsafe { fork() }.ctx(|| "forking the exec'd process")? {
        ForkResult::Child => {
            let _ = setsid();
            let tail = Tail {
                chan,
                console,
                preserve_fds,
                fifo_dir: None,
                start_hooks: None,
                seccomp: seccomp.as_ref(),
            };
            let e = match exec_process(process, &tail) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            chan.send_error(&e);
            // SAFETY: see above.
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { .. } => Ok(()),
    }
}
