//! The pod sandbox's infra process (`keelson-pause`): it creates and holds a pod's network,
//! IPC, UTS and (when the pod shares one) PID namespaces, instead of a pause image that a node
//! without a registry could not pull.
//!
//! keelsond runs `keelson-pause [--net] [--ipc] [--uts] [--pid] [--hostname H] [--sysctl k=v]...`
//! with stdout on a pipe. The first process unshares the namespaces, sets the hostname and
//! the sysctls inside them, forks the holder (pid 1 of the new PID namespace when `--pid`),
//! prints `pid <holder's pid>` and exits. The holder starts a session of its own, prints
//! `ready`, closes its output and then only reaps children until SIGTERM/SIGINT. Any failure
//! is one line `error: <reason>` and a non-zero exit, with nothing left running.

use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, sethostname, setsid};
use std::io::Write;

/// What the infra process is asked to create.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PauseOptions {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    pub pid: bool,
    pub hostname: Option<String>,
    pub sysctls: Vec<(String, String)>,
}

impl PauseOptions {
    /// The command line `keelson-pause` takes for these options.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for (on, flag) in [
            (self.net, "--net"),
            (self.ipc, "--ipc"),
            (self.uts, "--uts"),
            (self.pid, "--pid"),
        ] {
            if on {
                a.push(flag.to_string());
            }
        }
        if let Some(h) = &self.hostname {
            a.push("--hostname".into());
            a.push(h.clone());
        }
        for (k, v) in &self.sysctls {
            a.push("--sysctl".into());
            a.push(format!("{k}={v}"));
        }
        a
    }

    /// Parses the command line of `keelson-pause` (without the program name).
    pub fn parse(args: &[String]) -> Result<PauseOptions, String> {
        let mut o = PauseOptions::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--net" => o.net = true,
                "--ipc" => o.ipc = true,
                "--uts" => o.uts = true,
                "--pid" => o.pid = true,
                "--hostname" => {
                    o.hostname = Some(it.next().ok_or("--hostname needs a value")?.clone());
                }
                "--sysctl" => {
                    let kv = it.next().ok_or("--sysctl needs key=value")?;
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("--sysctl {kv:?}: expected key=value"))?;
                    o.sysctls.push((k.to_string(), v.to_string()));
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(o)
    }
}

/// The /proc/sys file of a sysctl name, checked before anything is written: dots separate
/// components and a slash stands for a dot inside one (the kubelet turns
/// `net/ipv4/conf/eth0.100/forwarding` into `net.ipv4.conf.eth0/100.forwarding`), plain
/// components only, nothing that climbs out of /proc/sys.
pub fn sysctl_path(name: &str) -> Result<String, String> {
    let rel: String = name
        .chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect();
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\0'))
    {
        return Err(format!("invalid sysctl name {name:?}"));
    }
    Ok(format!("/proc/sys/{rel}"))
}

/// The body of `keelson-pause`; returns the process exit code.
pub fn main_with(args: &[String]) -> i32 {
    let opts = match PauseOptions::parse(args) {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    let mut flags = CloneFlags::empty();
    for (on, f) in [
        (opts.net, CloneFlags::CLONE_NEWNET),
        (opts.ipc, CloneFlags::CLONE_NEWIPC),
        (opts.uts, CloneFlags::CLONE_NEWUTS),
        (opts.pid, CloneFlags::CLONE_NEWPID),
    ] {
        if on {
            flags |= f;
        }
    }
    if let Err(e) = unshare(flags) {
        return fail(&format!("unshare {flags:?}: {e}"));
    }
    if opts.net
        && let Err(e) = loopback_up()
    {
        return fail(&e);
    }
    if let Some(h) = &opts.hostname {
        if !opts.uts {
            return fail("--hostname needs --uts (the host's name is not the pod's to change)");
        }
        if let Err(e) = sethostname(h) {
            return fail(&format!("sethostname {h:?}: {e}"));
        }
    }
    for (k, v) in &opts.sysctls {
        let path = match sysctl_path(k) {
            Ok(p) => p,
            Err(e) => return fail(&e),
        };
        if let Err(e) = std::fs::write(&path, v) {
            return fail(&format!("sysctl {k}={v}: {e}"));
        }
    }
    // Signals the holder waits for, blocked before the fork so none is lost in between.
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        return fail(&format!("sigprocmask: {e}"));
    }
    // SAFETY: this process is single-threaded (keelson-pause starts no threads), so the child
    // may run any code after fork.
    match unsafe { fork() } {
        Err(e) => fail(&format!("fork: {e}")),
        Ok(ForkResult::Parent { child }) => {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "pid {child}");
            let _ = out.flush();
            0
        }
        Ok(ForkResult::Child) => hold(&set),
    }
}

/// Sets `lo` of the new network namespace up, which is all the CNI `loopback` plugin does
/// on ADD (the kernel gives an up `lo` 127.0.0.1/8 and ::1): done here it costs one ioctl
/// instead of a plugin process per sandbox.
fn loopback_up() -> Result<(), String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket for setting lo up: {e}"))?;
    // SAFETY: `ifreq` is plain old data, for which all zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into `req`, a valid
    // `ifreq` that outlives the call; the descriptor is an open socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(format!(
            "reading the flags of lo: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: after SIOCGIFFLAGS the union holds the flags.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS reads the name and the flags from `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(format!(
            "setting lo up: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn fail(msg: &str) -> i32 {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "error: {msg}");
    let _ = out.flush();
    1
}

/// The holder: its own session, no output, reaps whatever ends up as its child.
fn hold(set: &SigSet) -> i32 {
    let _ = setsid();
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 of a valid descriptor onto the standard ones.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            },
            Ok(_) => return 0,
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_through_the_command_line() {
        let o = PauseOptions {
            net: true,
            ipc: true,
            uts: true,
            pid: false,
            hostname: Some("pod-a".into()),
            sysctls: vec![("net.ipv4.ip_forward".into(), "1".into())],
        };
        assert_eq!(PauseOptions::parse(&o.to_args()), Ok(o));
        assert!(PauseOptions::parse(&["--bogus".into()]).is_err());
        assert!(PauseOptions::parse(&["--sysctl".into(), "novalue".into()]).is_err());
    }

    #[test]
    fn sysctl_names_stay_below_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").as_deref(),
            Ok("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0/100.forwarding").as_deref(),
            Ok("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        for bad in ["", "..", "a..b", "net.//", "net./..", "net./"] {
            assert!(sysctl_path(bad).is_err(), "{bad}");
        }
    }
}
