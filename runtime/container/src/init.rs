//! The processes between `create` and the user's program.
//!
//! `create` (the parent) forks an intermediate process that joins or creates the namespaces;
//! it forks the container's init (so a new pid namespace applies to it) and exits. The init
//! builds the rootfs, takes on the configured identity, reports READY and blocks opening the
//! exec fifo until `start` opens the other end; then it execs the program.
//!
//! Both children are forked without exec from a single-threaded process, so they may allocate;
//! callers of [`crate::container::create`] must be single-threaded (keelsond runs the CLI).

use crate::cgroups::Cgroups;
use crate::config::Config;
use crate::error::{Context, Error, Result};
use crate::hooks::{self, HookState, Kind};
use crate::process;
use crate::rootfs;
use crate::state::EXEC_FIFO;
use crate::sync::{Channel, tag};
use nix::fcntl::{OFlag, openat};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, Gid, Uid, chdir, execve, fork, setresgid, setresuid, setsid};
use oci_spec::runtime::{LinuxNamespaceType, Process};
use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;

pub fn clone_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

/// What the init needs that is not in the config.
pub struct InitArgs<'a> {
    pub id: &'a str,
    /// Idmapped mounts made on the host side, by index in `mounts`.
    pub idmapped: &'a [(usize, OwnedFd)],
    pub cfg: &'a Config,
    pub cgroups: &'a Cgroups,
    pub state_dir: &'a OwnedFd,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: u32,
    /// Connected console socket (terminal containers).
    pub console: Option<OwnedFd>,
}

/// Runs in the intermediate process; never returns.
pub fn intermediate(chan: Channel, args: &InitArgs) -> ! {
    let code = match stage1(&chan, args) {
        Ok(()) => 0,
        Err(e) => {
            chan.send_error(&e);
            1
        }
    };
    // SAFETY: _exit ends this forked child without running the parent's atexit handlers.
    unsafe { libc::_exit(code) }
}

fn stage1(chan: &Channel, args: &InitArgs) -> Result<()> {
    // Nothing in the container may open this process's /proc entries (exe included).
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // Handlers the caller installed (run forwards signals) do not belong to the container.
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: resetting a signal disposition to its default.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    chan.expect(tag::GO)?;
    let cfg = args.cfg;
    // Open every namespace to join before joining any (paths resolve differently afterwards).
    let mut joins: Vec<(LinuxNamespaceType, OwnedFd)> = Vec::new();
    for (t, path) in cfg.namespaces() {
        if let Some(p) = path {
            let fd = nix::fcntl::open(&p, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                .ctx(|| format!("opening namespace {}", p.display()))?;
            joins.push((t, fd));
        }
    }
    joins.sort_by_key(|(t, _)| *t != LinuxNamespaceType::User);
    for (t, fd) in &joins {
        setns(fd, clone_flag(*t)).ctx(|| format!("joining {t:?} namespace"))?;
    }
    if cfg.new_ns(LinuxNamespaceType::User) {
        unshare(CloneFlags::CLONE_NEWUSER).ctx(|| "creating user namespace")?;
        chan.send(tag::USERNS, &[])?;
        chan.expect(tag::MAPPED)?;
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .ctx(|| "setgid 0 in user namespace")?;
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .ctx(|| "setuid 0 in user namespace")?;
    }
    let mut flags = CloneFlags::empty();
    for (t, path) in cfg.namespaces() {
        if path.is_none() && t != LinuxNamespaceType::User {
            flags |= clone_flag(t);
        }
    }
    unshare(flags).ctx(|| format!("creating namespaces {flags:?}"))?;
    // SAFETY: this process is single-threaded (forked from a single-threaded parent).
    match unsafe { fork() }.ctx(|| "forking init")? {
        ForkResult::Child => {
            let e = match stage2(chan, args) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            chan.send_error(&e);
            // SAFETY: see intermediate().
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { .. } => Ok(()),
    }
}

fn stage2(chan: &Channel, args: &InitArgs) -> Result<std::convert::Infallible> {
    let cfg = args.cfg;
    let process = cfg
        .spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::Config("process must be set".into()))?;
    let _ = setsid();
    let has = |k| !hooks::hooks_of(&cfg.spec, k).is_empty();
    let wants_hooks = [
        Kind::Prestart,
        Kind::CreateRuntime,
        Kind::CreateContainer,
        Kind::StartContainer,
    ]
    .into_iter()
    .any(has);
    let mut host_pid = 0;
    let mut before_pivot = || -> Result<()> {
        if !wants_hooks {
            return Ok(());
        }
        // prestart and createRuntime run in the runtime's namespaces: the parent runs them.
        chan.send(tag::HOOKS, &[])?;
        let msg = chan.expect(tag::HOOKS_DONE)?;
        host_pid = String::from_utf8_lossy(&msg.payload).parse().unwrap_or(0);
        hooks::run(
            &cfg.spec,
            Kind::CreateContainer,
            &hook_state(args, host_pid, "created"),
        )
    };
    if cfg.new_ns(LinuxNamespaceType::Mount) {
        rootfs::setup(
            cfg,
            args.cgroups,
            args.no_pivot,
            args.idmapped,
            &mut before_pivot,
        )?;
    } else {
        return Err(Error::Unimplemented(
            "joining an existing mount namespace".into(),
        ));
    }
    if let Some(h) = cfg.spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).ctx(|| format!("sethostname {h}"))?;
    }
    if let Some(d) = cfg.spec.domainname().as_deref().filter(|h| !h.is_empty()) {
        // SAFETY: setdomainname reads len bytes from a valid buffer.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(Error::Io {
                context: format!("setdomainname {d}"),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    for (k, v) in cfg
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().clone())
        .unwrap_or_default()
    {
        let p = Path::new("/proc/sys").join(k.replace('.', "/"));
        fs::write(&p, &v).ctx(|| format!("setting sysctl {k}={v}"))?;
    }
    rootfs::finalize(cfg)?;
    if let Some(adj) = process.oom_score_adj() {
        process::set_oom_score_adj(adj)?;
    }
    if !args.no_new_keyring {
        join_session_keyring(args.id)?;
    }
    let tail = Tail {
        chan,
        console: args.console.as_ref(),
        preserve_fds: args.preserve_fds,
        fifo_dir: Some(args.state_dir),
        start_hooks: has(Kind::StartContainer)
            .then(|| (&cfg.spec, hook_state(args, host_pid, "created"))),
        seccomp: cfg.spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()),
    };
    exec_process(process, &tail)
}

fn hook_state(args: &InitArgs, pid: i32, status: &str) -> HookState {
    HookState::new(&args.cfg.spec, args.id, &args.cfg.bundle, pid, status)
}

/// What differs between the container's init and a process exec'd into it at the end.
pub struct Tail<'a> {
    pub chan: &'a Channel,
    /// Connected console socket, when the process has a terminal.
    pub console: Option<&'a OwnedFd>,
    /// Extra descriptors (3 .. 3+N) passed to the process.
    pub preserve_fds: u32,
    /// The state dir holding the exec fifo, for the init (which waits for `start`).
    pub fifo_dir: Option<&'a OwnedFd>,
    /// startContainer hooks to run after `start`, before the program is exec'd.
    pub start_hooks: Option<(&'a oci_spec::runtime::Spec, HookState)>,
    /// The seccomp profile, installed last (or before dropping privileges without
    /// no_new_privs, when installing needs CAP_SYS_ADMIN).
    pub seccomp: Option<&'a oci_spec::runtime::LinuxSeccomp>,
}

/// Takes on the process's identity and limits, reports READY, waits for `start` (init only)
/// and execs the program. Runs inside the container's namespaces and root.
pub fn exec_process(process: &Process, tail: &Tail) -> Result<std::convert::Infallible> {
    process::set_rlimits(process)?;
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(process.user().uid())));
    }
    let args_v = process.args().clone().unwrap_or_default();
    let arg0 = args_v
        .first()
        .ok_or_else(|| Error::Config("process.args must not be empty".into()))?;
    let program = process::lookup(arg0, &env)?;
    if process.terminal() == Some(true) {
        let sock = tail.console.ok_or_else(|| {
            Error::Config("process.terminal is set but there is no console socket".into())
        })?;
        crate::console::setup_pty(sock, process)?;
    }
    mark_fds_cloexec(3 + tail.preserve_fds)?;
    process::apply_lsm(process)?;
    let nnp = process.no_new_privileges() == Some(true);
    if let Some(sc) = tail.seccomp.filter(|_| !nnp) {
        crate::seccomp::install(sc)?;
    }
    process::drop_bounding(process.capabilities().as_ref())?;
    let cwd = process.cwd().clone();
    let early_cd = chdir(&cwd).is_ok();
    process::set_user_and_caps(process)?;
    if !early_cd {
        chdir(&cwd).ctx(|| format!("chdir to cwd {}", cwd.display()))?;
    }
    if process.no_new_privileges() == Some(true) {
        process::set_no_new_privs()?;
    }
    let c_prog = process::cstrings(&[program.to_string_lossy().into_owned()])?;
    let c_args = process::cstrings(&args_v)?;
    let c_env = process::cstrings(&env)?;
    tail.chan.send(tag::READY, &[])?;
    // The fifo stays open (close-on-exec) until execve, so `start` sees its end of file only
    // once the program runs (after the startContainer hooks), and runs poststart after that.
    let _fifo = match tail.fifo_dir {
        Some(dir) => {
            // Blocks until `start` opens the fifo for reading.
            let fifo = openat(
                dir,
                EXEC_FIFO,
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ctx(|| "opening exec fifo")?;
            nix::unistd::write(&fifo, b"0").ctx(|| "writing exec fifo")?;
            Some(fifo)
        }
        None => None,
    };
    if let Some((spec, state)) = &tail.start_hooks {
        if let Err(e) = hooks::run(spec, Kind::StartContainer, state) {
            // `start` has returned: stderr is where this can still be seen.
            eprintln!("keelson: {e}");
            // SAFETY: see intermediate().
            unsafe { libc::_exit(1) }
        }
    }
    if let Some(sc) = tail.seccomp.filter(|_| nnp) {
        if let Err(e) = crate::seccomp::install(sc) {
            eprintln!("keelson: {e}");
            // SAFETY: see intermediate().
            unsafe { libc::_exit(1) }
        }
    }
    let e = match execve(&c_prog[0], &c_args, &c_env) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // The caller has returned by now: stderr is all that is left to tell.
    eprintln!("keelson: exec {}: {e}", program.display());
    // SAFETY: see intermediate().
    unsafe { libc::_exit(127) }
}

/// A new session keyring named after the container, so containers do not share the host's
/// (runc does the same unless --no-new-keyring).
fn join_session_keyring(id: &str) -> Result<()> {
    let name = std::ffi::CString::new(id).map_err(|_| Error::InvalidId(id.into()))?;
    // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, name) reads a NUL-terminated string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            libc::KEYCTL_JOIN_SESSION_KEYRING,
            name.as_ptr(),
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSYS) {
            return Ok(());
        }
        return Err(Error::Io {
            context: "joining a new session keyring".into(),
            source: e,
        });
    }
    Ok(())
}

/// HOME for a uid from the container's /etc/passwd, "/" when it has none.
fn home_of(uid: u32) -> String {
    fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
            })
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into())
}

/// No descriptor of the runtime survives exec: everything from `first` up gets FD_CLOEXEC.
fn mark_fds_cloexec(first: u32) -> Result<()> {
    // SAFETY: close_range with the CLOEXEC flag only changes descriptor flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    for entry in fs::read_dir("/proc/self/fd").ctx(|| "listing /proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if fd >= first as i32 {
            // SAFETY: fcntl on a descriptor number; a stale one just returns EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    Ok(())
}

/// Writes the user namespace maps of `pid` (the intermediate process).
pub fn write_id_maps(cfg: &Config, pid: i32) -> Result<()> {
    let linux = cfg
        .spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::Config("linux must be set".into()))?;
    let fmt = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let uid = fmt(linux.uid_mappings());
    let gid = fmt(linux.gid_mappings());
    if !uid.is_empty() {
        fs::write(format!("/proc/{pid}/uid_map"), &uid)
            .ctx(|| format!("writing uid_map {uid:?}"))?;
    }
    if !gid.is_empty() {
        fs::write(format!("/proc/{pid}/gid_map"), &gid)
            .ctx(|| format!("writing gid_map {gid:?}"))?;
    }
    Ok(())
}
