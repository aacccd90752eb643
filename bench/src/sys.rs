//! The raw system calls the bench needs: a private mount namespace, child-subreaper mode,
//! waiting for processes with their resource usage, and Ctrl-C handling.

use std::fs;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::mount::{MntFlags, MsFlags};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::resource::UsageWho;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::time::TimeVal;

/// Where a hybrid host mounts its (here empty) cgroup2 hierarchy.
pub const UNIFIED: &str = "/sys/fs/cgroup/unified";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP set a flag (see [`interrupted`]) instead of killing the
/// bench, so it can delete its containers and cgroups first. The handler runs once per signal
/// (`SA_RESETHAND`): a second Ctrl-C kills the bench at once. No `SA_RESTART`, so a blocking
/// `poll` returns `EINTR` and the bench notices the flag.
pub fn install_signal_handlers() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe, and it
        // replaces no handler another part of the program relies on.
        unsafe { nix::sys::signal::sigaction(signal, &action) }
            .with_context(|| format!("install a {signal} handler"))?;
    }
    Ok(())
}

/// Whether SIGINT, SIGTERM or SIGHUP arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Moves this process into a new mount namespace whose mounts do not propagate to the host's,
/// like `unshare -m` followed by `mount --make-rprivate /`. Must run while the process is
/// single-threaded.
pub fn enter_private_mount_namespace() -> Result<()> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("mount --make-rprivate / (in the bench's own mount namespace)")?;
    Ok(())
}

/// Lazily unmounts the cgroup2 hierarchy at [`UNIFIED`] if one is mounted there, so the
/// hierarchies left are v1 only. Returns whether it unmounted something. Call it only inside
/// the namespace made by [`enter_private_mount_namespace`].
pub fn detach_unified_hierarchy() -> Result<bool> {
    let mounted = |mounts: &[keelson_tests::mountinfo::MountInfo]| {
        mounts
            .iter()
            .any(|m| m.mount_point == UNIFIED && m.fs_type == "cgroup2")
    };
    let mounts = keelson_tests::mountinfo::current().context("read /proc/self/mountinfo")?;
    if !mounted(&mounts) {
        return Ok(false);
    }
    nix::mount::umount2(UNIFIED, MntFlags::MNT_DETACH)
        .with_context(|| format!("umount -l {UNIFIED} (in the bench's own mount namespace)"))?;
    let mounts = keelson_tests::mountinfo::current().context("read /proc/self/mountinfo")?;
    if mounted(&mounts) {
        bail!("{UNIFIED} is still a cgroup2 mount after umount -l");
    }
    Ok(true)
}

/// Makes orphaned descendants (a container's init once the runtime process that forked it
/// exits) children of this process, so it reaps them and their CPU time is counted.
pub fn become_child_subreaper() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context("prctl(PR_SET_CHILD_SUBREAPER)")
}

fn duration_of(tv: TimeVal) -> Duration {
    let secs = u64::try_from(tv.tv_sec()).unwrap_or(0);
    let micros = u32::try_from(tv.tv_usec()).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(u64::from(micros))
}

/// User plus system CPU time of all waited-for descendants so far (`RUSAGE_CHILDREN`): each
/// process this one reaped, together with everything those had reaped before they exited.
pub fn children_cpu_time() -> Result<Duration> {
    let usage =
        nix::sys::resource::getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage(CHILDREN)")?;
    Ok(duration_of(usage.user_time()) + duration_of(usage.system_time()))
}

/// How a reaped process ended and its resource usage (its own plus what it had reaped).
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// The raw wait status.
    pub status: i32,
    /// `ru_maxrss` in KiB.
    pub max_rss_kib: i64,
}

impl Exit {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    /// "exited 1", "killed by signal 9".
    pub fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exited {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("wait status {:#x}", self.status)
        }
    }
}

/// `wait4(pid, options)`, retried on `EINTR`. `Ok(None)`: with `WNOHANG`, nothing to reap yet.
fn wait4(pid: libc::pid_t, options: libc::c_int) -> io::Result<Option<(libc::pid_t, Exit)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `usage` are valid, writable and live for the whole call.
        let got = unsafe { libc::wait4(pid, &mut status, options, &mut usage) };
        if got > 0 {
            let exit = Exit {
                status,
                max_rss_kib: usage.ru_maxrss,
            };
            return Ok(Some((got, exit)));
        }
        if got == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1; no memory is
    // shared with the kernel.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Why waiting for a process ended without it exiting.
#[derive(Debug)]
pub enum WaitError {
    TimedOut,
    Interrupted,
    Os(io::Error),
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::TimedOut => write!(f, "timed out"),
            WaitError::Interrupted => write!(f, "interrupted by a signal"),
            WaitError::Os(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for WaitError {}

/// The outcome of [`wait_exit`].
#[derive(Debug)]
pub enum Waited {
    /// It was our child and is reaped now.
    Reaped(Exit),
    /// It exited, but another process (not this one) is its parent and reaps it.
    NotOurChild,
}

/// Waits until process `pid` has exited (or `deadline` passes, or a signal flags
/// [`interrupted`]), then reaps it if it is our child.
pub fn wait_exit(pid: libc::pid_t, deadline: Instant) -> Result<Waited, WaitError> {
    match pidfd_open(pid) {
        Ok(pidfd) => loop {
            if interrupted() {
                return Err(WaitError::Interrupted);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WaitError::TimedOut);
            }
            let millis =
                u16::try_from(left.as_millis().saturating_add(1).min(1000)).unwrap_or(1000);
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, PollTimeout::from(millis)) {
                Ok(0) => continue,
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(WaitError::Os(e.into())),
            }
        },
        // Gone entirely: somebody else already reaped it.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
        Err(e) => return Err(WaitError::Os(e)),
    }
    match wait4(pid, 0) {
        Ok(Some((_, exit))) => Ok(Waited::Reaped(exit)),
        Ok(None) => Err(WaitError::Os(io::Error::other(
            "wait4 returned 0 without WNOHANG",
        ))),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(Waited::NotOurChild),
        Err(e) => Err(WaitError::Os(e)),
    }
}

/// SIGKILLs our child `pid` and reaps it.
pub fn kill_and_reap(pid: libc::pid_t) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    let _ = wait4(pid, 0);
}

/// What [`reap_zombies`] found.
#[derive(Debug, Default)]
pub struct Reaped {
    /// Exits of the children reaped now.
    pub exits: Vec<(libc::pid_t, Exit)>,
    /// Whether children that are still running remain.
    pub running_left: bool,
}

/// Reaps every child that has exited already, without blocking.
pub fn reap_zombies() -> Reaped {
    let mut reaped = Reaped::default();
    loop {
        match wait4(-1, libc::WNOHANG) {
            Ok(Some(found)) => reaped.exits.push(found),
            Ok(None) => {
                reaped.running_left = true;
                return reaped;
            }
            // ECHILD: no children at all.
            Err(_) => return reaped,
        }
    }
}

/// Our children, zombies included: (pid, command name, state letter), from `/proc`.
pub fn children() -> Vec<(libc::pid_t, String, String)> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
        else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may contain anything, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat.get(open + 1..close).unwrap_or("?").to_string();
        let mut rest = stat.get(close + 1..).unwrap_or("").split_whitespace();
        let state = rest.next().unwrap_or("?").to_string();
        let ppid = rest.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            found.push((pid, comm, state));
        }
    }
    found
}

/// Our children that still run, as (pid, command name), from `/proc`.
pub fn running_children() -> Vec<(libc::pid_t, String)> {
    children()
        .into_iter()
        .filter(|(_, _, state)| state != "Z")
        .map(|(pid, comm, _)| (pid, comm))
        .collect()
}

/// The keelson binary: `--keelson`, else `$KEELSON_BIN`, else `release/keelson` in the
/// `CARGO_TARGET_DIR` this bench was built with (if that exists), else
/// `<workspace>/target/release/keelson`.
pub fn keelson_binary(flag: Option<PathBuf>) -> PathBuf {
    if let Some(bin) = flag {
        return bin;
    }
    if let Some(bin) = std::env::var_os("KEELSON_BIN") {
        return PathBuf::from(bin);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if let Some(dir) = option_env!("CARGO_TARGET_DIR") {
        let bin = workspace.join(dir).join("release/keelson");
        if bin.is_file() {
            return bin;
        }
    }
    workspace.join("target/release/keelson")
}

/// The first non-empty line `bin <flag>` prints on stdout or stderr.
pub fn version_line(bin: &Path, flag: &str) -> String {
    match Command::new(bin).arg(flag).stdin(Stdio::null()).output() {
        Ok(out) => {
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            // `containerd-shim-runc-v2 -v` prints its name alone on the first line.
            match lines.as_slice() {
                [first, second, ..] if first.ends_with(':') => format!("{first} {second}"),
                [first, ..] => first.to_string(),
                [] => "(no version output)".to_string(),
            }
        }
        Err(e) => format!("({flag} failed: {e})"),
    }
}

/// A program built next to the running bench (`target/release/<name>` for a release bench).
#[allow(dead_code)] // not every bench looks for one
pub fn sibling(name: &str) -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let p = me.parent()?.join(name);
    p.is_file().then_some(p)
}

/// Busy and total jiffies of all CPUs (`cpu` line of /proc/stat).
fn cpu_jiffies() -> Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().context("a field of /proc/stat's cpu line"))
        .collect::<Result<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user/nice).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total.saturating_sub(idle), total))
}

/// Waits until the machine is quiet, that is every CPU at least `idle_pct` % idle over
/// `window`, twice in a row, or `limit` passes. Returns whether it got quiet. Used before a
/// timed batch so that it does not share the CPUs with the tail of the previous one (a
/// runtime and a kubelet finish a removal after the pods have left the API).
pub fn wait_quiet(window: Duration, idle_pct: f64, limit: Duration) -> Result<bool> {
    let end = Instant::now() + limit;
    let mut quiet_in_a_row = 0;
    let mut last = cpu_jiffies()?;
    while Instant::now() < end && !interrupted() {
        std::thread::sleep(window);
        let now = cpu_jiffies()?;
        // Saturating: the iowait counter is known to step backwards.
        let (busy, total) = (now.0.saturating_sub(last.0), now.1.saturating_sub(last.1));
        last = now;
        let idle = if total == 0 {
            100.0
        } else {
            100.0 * total.saturating_sub(busy) as f64 / total as f64
        };
        quiet_in_a_row = if idle >= idle_pct {
            quiet_in_a_row + 1
        } else {
            0
        };
        if quiet_in_a_row >= 2 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `/run/netns` as this process found it. `ip netns add` (the test networks' namespaces are
/// pinned with it) creates the directory and bind-mounts it onto itself the first time; a
/// bench that brought it into being unmounts and removes it when it ends, if no namespace is
/// pinned there any more (what `scripts/test.sh` does for the test suite).
pub struct NetnsDirGuard {
    created_here: bool,
}

impl NetnsDirGuard {
    const DIR: &str = "/run/netns";

    pub fn new() -> NetnsDirGuard {
        NetnsDirGuard {
            created_here: !Path::new(Self::DIR).exists(),
        }
    }
}

impl Drop for NetnsDirGuard {
    fn drop(&mut self) {
        if !self.created_here {
            return;
        }
        let dir = Path::new(Self::DIR);
        let empty = || fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
        // A peer runtime (containerd) may still be removing its namespaces' pins.
        let end = Instant::now() + Duration::from_secs(5);
        while !empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !empty() {
            eprintln!("{} is not empty: left in place", dir.display());
            return;
        }
        if let Err(e) = nix::mount::umount(dir)
            && e != nix::errno::Errno::EINVAL
        {
            eprintln!("unmounting {}: {e}", dir.display());
        }
        if let Err(e) = fs::remove_dir(dir) {
            eprintln!("removing {}: {e}", dir.display());
        }
    }
}
