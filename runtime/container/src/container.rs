//! The lifecycle operations: create, start, state, kill, delete, list, run.

use crate::cgroups::Layout;
use crate::config;
use crate::error::{Context, Error, Result};
use crate::hooks::{self, HookState, Kind};
use crate::init::{self, InitArgs};
use crate::process;
use crate::state::{
    CONFIG_COPY, EXEC_FIFO, State, StateOutput, Status, proc_alive, proc_stat, rfc3339_nano,
};
use crate::sync::{self, tag};
use nix::fcntl::{OFlag, open};
use nix::sys::signal::{Signal, kill as send_signal};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork, mkfifo};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Options of `create`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub no_pivot: bool,
    /// Where to send the pty master of a terminal container.
    pub console_socket: Option<PathBuf>,
    pub no_new_keyring: bool,
    /// Descriptors 3 .. 3+N of the caller passed to the container.
    pub preserve_fds: u32,
    /// The cgroup layout as the caller discovered it (it must be in the caller's cgroups);
    /// discovered here when `None`.
    pub layout: Option<Layout>,
}

/// Container ids: what runc accepts (letters, digits, `_+-.`), not `.` or `..`.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

/// Undoes a half-made container when dropped, unless disarmed.
struct Cleanup<'a> {
    root: &'a Path,
    id: &'a str,
    cgroups: Option<crate::cgroups::Cgroups>,
    pid: Option<i32>,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.pid {
            let _ = send_signal(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(cg) = &self.cgroups {
            for pid in cg.pids().unwrap_or_default() {
                let _ = send_signal(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if let Err(e) = cg.destroy() {
                tracing::warn!(error = %e, "removing cgroups of failed container");
            }
        }
        let _ = fs::remove_dir_all(State::dir(self.root, self.id));
    }
}

/// Creates a container and leaves its init waiting for `start`. Must be called from a
/// single-threaded process (it forks without exec).
pub fn create(root: &Path, opts: &CreateOptions) -> Result<State> {
    validate_id(&opts.id)?;
    create_with_config(root, opts, config::load(&opts.bundle)?)
}

/// [`create`] with the bundle's configuration already loaded (and checked) by the caller.
pub fn create_with_config(root: &Path, opts: &CreateOptions, cfg: config::Config) -> Result<State> {
    validate_id(&opts.id)?;
    let process = cfg
        .spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::Config("process must be set".into()))?;
    if let Some(c) = process.capabilities() {
        process::check_caps(c)?;
    }
    let terminal = process.terminal() == Some(true);
    if terminal && opts.console_socket.is_none() {
        return Err(Error::Config(
            "cannot allocate tty if keelson will detach without setting console socket".into(),
        ));
    }
    if !terminal && opts.console_socket.is_some() {
        return Err(Error::Config(
            "cannot use console socket if keelson will not detach or allocate tty".into(),
        ));
    }
    let linux = cfg
        .spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::Config("linux must be set".into()))?;
    let layout = match &opts.layout {
        Some(l) => l.clone(),
        None => Layout::discover()?,
    };
    let mut cgroups = layout.resolve(linux.cgroups_path().as_deref(), &opts.id)?;

    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(root)
        .ctx(|| format!("creating root {}", root.display()))?;
    let dir = State::dir(root, &opts.id);
    match fs::DirBuilder::new().mode(0o711).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(Error::Exists),
        Err(e) => {
            return Err(Error::Io {
                context: format!("creating {}", dir.display()),
                source: e,
            });
        }
    }
    let mut guard = Cleanup {
        root,
        id: &opts.id,
        cgroups: None,
        pid: None,
        armed: true,
    };
    mkfifo(&dir.join(EXEC_FIFO), Mode::from_bits_truncate(0o622)).ctx(|| "creating exec fifo")?;
    // mkfifo honours the umask: set the mode the init (maybe unprivileged) needs.
    fs::set_permissions(
        dir.join(EXEC_FIFO),
        std::os::unix::fs::PermissionsExt::from_mode(0o622),
    )
    .ctx(|| "chmod exec fifo")?;

    let rules = cfg.device_rules();
    let res = cgroups.create(linux.resources().as_ref(), &rules);
    guard.cgroups = Some(cgroups.clone());
    res?;

    let state_dir = open(
        &dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "opening state dir")?;
    // exec and later commands read the configuration the container was created with.
    let spec_json = serde_json::to_vec(&cfg.spec).map_err(|e| Error::State(e.to_string()))?;
    fs::write(dir.join(CONFIG_COPY), spec_json).ctx(|| "saving config")?;
    let console = match &opts.console_socket {
        Some(p) => Some(crate::console::connect_socket(p)?),
        None => None,
    };
    let idmapped = idmapped_mounts(&cfg)?;
    let (parent, child) = sync::pair()?;
    let args = InitArgs {
        idmapped: &idmapped,
        id: &opts.id,
        cfg: &cfg,
        cgroups: &cgroups,
        state_dir: &state_dir,
        no_pivot: opts.no_pivot,
        no_new_keyring: opts.no_new_keyring,
        preserve_fds: opts.preserve_fds,
        console,
    };
    // SAFETY: the CLI is single-threaded; the child only runs engine code and then exits or execs.
    let p1 = match unsafe { fork() }.ctx(|| "fork")? {
        ForkResult::Child => {
            drop(parent);
            init::intermediate(child, &args)
        }
        ForkResult::Parent { child: p1 } => p1,
    };
    drop(child);
    drop(args);
    let outcome = (|| -> Result<i32> {
        cgroups.add_pid(p1.as_raw())?;
        parent.send(tag::GO, &[])?;
        loop {
            let msg = parent
                .recv()?
                .ok_or_else(|| Error::Init("container init exited during setup".into()))?;
            match msg.tag {
                tag::USERNS => {
                    init::write_id_maps(&cfg, p1.as_raw())?;
                    parent.send(tag::MAPPED, &[])?;
                }
                tag::HOOKS => {
                    let pid = msg.pid.unwrap_or(0);
                    let st = hook_state(&cfg.spec, &opts.id, &cfg.bundle, pid, "creating");
                    hooks::run(&cfg.spec, Kind::Prestart, &st)?;
                    hooks::run(&cfg.spec, Kind::CreateRuntime, &st)?;
                    parent.send(tag::HOOKS_DONE, pid.to_string().as_bytes())?;
                }
                tag::READY => {
                    return msg
                        .pid
                        .filter(|p| *p > 0)
                        .ok_or_else(|| Error::Init("init pid not visible".into()));
                }
                tag::ERROR => {
                    return Err(Error::Init(
                        String::from_utf8_lossy(&msg.payload).into_owned(),
                    ));
                }
                t => return Err(Error::Init(format!("unexpected message {:?}", t as char))),
            }
        }
    })();
    if outcome.is_err() {
        let _ = send_signal(p1, Signal::SIGKILL);
    }
    let _ = waitpid(p1, None);
    let pid = outcome.map_err(|e| Error::StartProcess(e.to_string()))?;
    guard.pid = Some(pid);
    let pid_start = proc_stat(pid)
        .map(|(_, s)| s)
        .ok_or_else(|| Error::Init("init exited during setup".into()))?;
    let state = State {
        id: opts.id.clone(),
        oci_version: cfg.spec.version().clone(),
        pid,
        pid_start,
        bundle: cfg.bundle.clone(),
        rootfs: cfg.rootfs.clone(),
        created: rfc3339_nano(SystemTime::now()),
        owner: String::new(),
        annotations: cfg
            .spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        cgroups,
        has_hooks: cfg.spec.hooks().is_some(),
    };
    state.save(root)?;
    if let Some(pf) = &opts.pid_file {
        write_pid_file(pf, pid)?;
    }
    guard.armed = false;
    Ok(state)
}

/// Detached idmapped clones of the mounts that ask for one, by their index in `mounts`.
fn idmapped_mounts(cfg: &config::Config) -> Result<Vec<(usize, std::os::fd::OwnedFd)>> {
    let mut out = Vec::new();
    let linux = cfg.spec.linux().as_ref();
    for (i, m) in cfg.spec.mounts().iter().flatten().enumerate() {
        let opts = crate::mount_opts::parse(m.options().as_deref().unwrap_or_default())?;
        let has_maps = m.uid_mappings().is_some() || m.gid_mappings().is_some();
        if !opts.idmap && !has_maps {
            continue;
        }
        if !(opts.bind || m.typ().as_deref() == Some("bind")) {
            return Err(Error::Config(format!(
                "mount {}: idmapped mounts must be bind mounts",
                m.destination().display()
            )));
        }
        let src = m.source().as_ref().ok_or_else(|| {
            Error::Config(format!(
                "bind mount {} has no source",
                m.destination().display()
            ))
        })?;
        let src = if src.is_absolute() {
            src.clone()
        } else {
            cfg.bundle.join(src)
        };
        let uid = m
            .uid_mappings()
            .clone()
            .or_else(|| linux.and_then(|l| l.uid_mappings().clone()))
            .unwrap_or_default();
        let gid = m
            .gid_mappings()
            .clone()
            .or_else(|| linux.and_then(|l| l.gid_mappings().clone()))
            .unwrap_or_default();
        let fd =
            crate::idmap::idmapped_clone(&src, opts.recursive || opts.idmap_recursive, &uid, &gid)?;
        out.push((i, fd));
    }
    Ok(out)
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("keelson-tmp");
    fs::write(&tmp, pid.to_string()).ctx(|| format!("writing pid file {}", tmp.display()))?;
    fs::rename(&tmp, path).ctx(|| format!("writing pid file {}", path.display()))
}

/// Lets the init exec the user's program.
pub fn start(root: &Path, id: &str) -> Result<()> {
    let state = State::load(root, id)?;
    match state.status(root) {
        Status::Created => {}
        Status::Stopped => return Err(Error::StartStopped),
        Status::Running => return Err(Error::StartRunning),
        s => return Err(Error::StartState(s.as_str().into())),
    }
    let fifo_path = State::dir(root, id).join(EXEC_FIFO);
    let fifo = open(
        &fifo_path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "opening exec fifo")?;
    let mut buf = [0u8; 1];
    loop {
        match nix::unistd::read(&fifo, &mut buf) {
            Ok(1) => break,
            Ok(_) | Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {
                if !state.init_alive() {
                    return Err(Error::StartStopped);
                }
                let mut fds = [nix::poll::PollFd::new(
                    std::os::fd::AsFd::as_fd(&fifo),
                    nix::poll::PollFlags::POLLIN,
                )];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(20u8));
            }
            Err(e) => {
                return Err(Error::Sys {
                    context: "reading exec fifo".into(),
                    source: e,
                });
            }
        }
    }
    fs::remove_file(&fifo_path).ctx(|| "removing exec fifo")?;
    // End of file: the init closed its end by exec'ing the program (or died trying).
    loop {
        match nix::unistd::read(&fifo, &mut buf) {
            Ok(0) => break,
            Ok(_) | Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {
                if !state.init_alive() {
                    break;
                }
                let mut fds = [nix::poll::PollFd::new(
                    std::os::fd::AsFd::as_fd(&fifo),
                    nix::poll::PollFlags::POLLIN,
                )];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(20u8));
            }
            Err(_) => break,
        }
    }
    if let Some(spec) = hook_spec(root, &state) {
        let st = hook_state(&spec, id, &state.bundle, state.pid, "running");
        hooks::run_warn(&spec, Kind::Poststart, &st);
    }
    Ok(())
}

/// The container's config, when it has hooks to run (start and delete need it only then).
fn hook_spec(root: &Path, state: &State) -> Option<oci_spec::runtime::Spec> {
    if !state.has_hooks {
        return None;
    }
    match crate::exec::container_spec(root, &state.id) {
        Ok(spec) => Some(spec),
        Err(e) => {
            tracing::warn!(id = %state.id, error = %e, "cannot read the config to run its hooks");
            None
        }
    }
}

fn hook_state(
    spec: &oci_spec::runtime::Spec,
    id: &str,
    bundle: &Path,
    pid: i32,
    status: &str,
) -> HookState {
    HookState::new(spec, id, bundle, pid, status)
}

pub fn state(root: &Path, id: &str) -> Result<StateOutput> {
    validate_id(id).map_err(|_| Error::NotExist)?;
    Ok(State::load(root, id)?.output(root))
}

/// Parses a signal given as a name (`KILL`, `SIGKILL`) or a number.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(Error::UnknownSignal(s.into()))
        };
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    if let Some(off) = name.strip_prefix("SIGRTMIN+") {
        let n: i32 = off.parse().map_err(|_| Error::UnknownSignal(s.into()))?;
        let v = libc::SIGRTMIN() + n;
        return if v <= libc::SIGRTMAX() {
            Ok(v)
        } else {
            Err(Error::UnknownSignal(s.into()))
        };
    }
    if let Some(off) = name.strip_prefix("SIGRTMAX-") {
        let n: i32 = off.parse().map_err(|_| Error::UnknownSignal(s.into()))?;
        let v = libc::SIGRTMAX() - n;
        return if v >= libc::SIGRTMIN() {
            Ok(v)
        } else {
            Err(Error::UnknownSignal(s.into()))
        };
    }
    match name.as_str() {
        "SIGRTMIN" => return Ok(libc::SIGRTMIN()),
        "SIGRTMAX" => return Ok(libc::SIGRTMAX()),
        _ => {}
    }
    name.parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| Error::UnknownSignal(s.into()))
}

fn raw_kill(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: kill(2) with a pid and a signal number.
    if unsafe { libc::kill(pid, sig) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(Error::Io {
                context: format!("kill {pid}"),
                source: e,
            });
        }
    }
    Ok(())
}

pub fn kill(root: &Path, id: &str, sig: i32, all: bool) -> Result<()> {
    validate_id(id).map_err(|_| Error::NotExist)?;
    let state = State::load(root, id)?;
    let status = state.status(root);
    if status == Status::Stopped && !all {
        return Err(Error::NotRunning);
    }
    if all {
        for pid in state.cgroups.pids()? {
            raw_kill(pid, sig)?;
        }
        if status == Status::Paused {
            thaw(&state);
        }
        return Ok(());
    }
    raw_kill(state.pid, sig)
}

/// Changes the resource limits of a created, running or paused container (`update`).
pub fn update(root: &Path, id: &str, res: &oci_spec::runtime::LinuxResources) -> Result<()> {
    let state = load(root, id)?;
    if state.status(root) == Status::Stopped {
        return Err(Error::NotRunning);
    }
    state.cgroups.update(res)
}

/// Freezes a running container's processes (`pause`).
pub fn pause(root: &Path, id: &str) -> Result<()> {
    let state = load(root, id)?;
    match state.status(root) {
        Status::Running => state.cgroups.freeze(true),
        Status::Created => Err(Error::State(
            "cannot pause a container that has not been started".into(),
        )),
        Status::Paused => Err(Error::State("container is already paused".into())),
        _ => Err(Error::NotRunning),
    }
}

/// Thaws a paused container (`resume`).
pub fn resume(root: &Path, id: &str) -> Result<()> {
    let state = load(root, id)?;
    match state.status(root) {
        Status::Paused => state.cgroups.freeze(false),
        _ => Err(Error::State("container not paused".into())),
    }
}

fn thaw(state: &State) {
    for d in &state.cgroups.dirs {
        if state.cgroups.unified && d.v2 {
            let _ = fs::write(d.path.join("cgroup.freeze"), "0");
        } else if !d.v2 && d.controllers.iter().any(|c| c == "freezer") {
            let _ = fs::write(d.path.join("freezer.state"), "THAWED");
        }
    }
}

/// Waits until the init is gone (or a zombie), up to `timeout`.
fn wait_gone(state: &State, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if !proc_alive(state.pid, state.pid_start) {
            return true;
        }
        // Reap it if it is ours (run's subreaper case).
        let _ = nix::sys::wait::waitpid(
            Pid::from_raw(state.pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    !proc_alive(state.pid, state.pid_start)
}

pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    validate_id(id).map_err(|_| Error::NotExist)?;
    let state = State::load(root, id)?;
    match state.status(root) {
        Status::Stopped => {}
        Status::Created => {
            raw_kill(state.pid, libc::SIGKILL)?;
            wait_gone(&state, Duration::from_secs(10));
        }
        s => {
            if !force {
                return Err(Error::DeleteNotStopped {
                    id: id.into(),
                    status: s.as_str().into(),
                });
            }
            for pid in state.cgroups.pids().unwrap_or_default() {
                raw_kill(pid, libc::SIGKILL)?;
            }
            raw_kill(state.pid, libc::SIGKILL)?;
            if s == Status::Paused {
                thaw(&state);
            }
            wait_gone(&state, Duration::from_secs(10));
        }
    }
    destroy(root, &state)
}

/// Removes what a stopped container still holds: leftover processes, cgroups, state dir;
/// then runs the poststop hooks.
fn destroy(root: &Path, state: &State) -> Result<()> {
    for pid in state.cgroups.pids().unwrap_or_default() {
        raw_kill(pid, libc::SIGKILL)?;
    }
    state.cgroups.destroy()?;
    if let Some(spec) = hook_spec(root, state) {
        let st = hook_state(&spec, &state.id, &state.bundle, 0, "stopped");
        hooks::run_warn(&spec, Kind::Poststop, &st);
    }
    fs::remove_dir_all(State::dir(root, &state.id)).ctx(|| "removing state dir")
}

/// One row of `list`: the state plus the owner's name.
pub fn list(root: &Path) -> Result<Vec<StateOutput>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(Error::Io {
                context: format!("reading {}", root.display()),
                source: e,
            });
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(state) = State::load(root, &name) else {
            continue;
        };
        let mut o = state.output(root);
        let uid = entry.metadata().map(|m| m.uid()).unwrap_or(0);
        o.owner = user_name(uid);
        out.push(o);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("#{uid}"))
}

/// The exit status of a reaped init as a shell would report it.
pub fn exit_code(status: nix::sys::wait::WaitStatus) -> Option<i32> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    }
}

/// Loads a container's state (for events and other readers).
pub fn load(root: &Path, id: &str) -> Result<State> {
    validate_id(id).map_err(|_| Error::NotExist)?;
    State::load(root, id)
}

/// Removes a stopped container (used by `run` after the init exited).
pub fn destroy_stopped(root: &Path, state: &State) -> Result<()> {
    wait_gone(state, Duration::from_secs(10));
    destroy(root, state)
}
