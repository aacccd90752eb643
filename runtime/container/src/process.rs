//! The container process's identity and limits: rlimits, oom_score_adj, user and groups,
//! capabilities, no_new_privs, umask, and the executable lookup. Runs in the init process.

use crate::error::{Context, Error, Result};
use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
use oci_spec::runtime::{LinuxCapabilities, PosixRlimitType, Process};
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

pub fn set_rlimits(p: &Process) -> Result<()> {
    for r in p.rlimits().iter().flatten() {
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: setrlimit reads a valid, initialised rlimit struct.
        let rc = unsafe { libc::setrlimit(rlimit_resource(r.typ()), &lim) };
        if rc != 0 {
            return Err(Error::Io {
                context: format!("setting rlimit {:?} to {}/{}", r.typ(), r.soft(), r.hard()),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Writes oom_score_adj. Lowering it needs CAP_SYS_RESOURCE; without it the value is clamped
/// to the current one (containerd's restrict_oom_score_adj), which is the lowest allowed.
pub fn set_oom_score_adj(value: i32) -> Result<()> {
    let path = "/proc/self/oom_score_adj";
    match fs::write(path, value.to_string()) {
        Ok(()) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EPERM) || e.raw_os_error() == Some(libc::EACCES) =>
        {
            let current: i32 = fs::read_to_string(path)
                .ctx(|| "reading oom_score_adj")?
                .trim()
                .parse()
                .unwrap_or(0);
            if value < current {
                tracing::warn!(
                    requested = value,
                    applied = current,
                    "oom_score_adj clamped: lowering it is not permitted"
                );
                Ok(())
            } else {
                Err(Error::Io {
                    context: format!("writing oom_score_adj {value}"),
                    source: e,
                })
            }
        }
        Err(e) => Err(Error::Io {
            context: format!("writing oom_score_adj {value}"),
            source: e,
        }),
    }
}

/// Converts the spec's capability names to the caps crate's.
fn cap_set(set: &Option<oci_spec::runtime::Capabilities>) -> Result<CapsHashSet> {
    let mut out = CapsHashSet::new();
    for c in set.iter().flatten() {
        let name = format!("CAP_{c}");
        let cap = Capability::from_str(&name)
            .map_err(|_| Error::Config(format!("unknown capability {name:?}")))?;
        out.insert(cap);
    }
    Ok(out)
}

/// Checks capability names early (before any process exists).
pub fn check_caps(c: &LinuxCapabilities) -> Result<()> {
    for s in [
        c.bounding(),
        c.effective(),
        c.inheritable(),
        c.permitted(),
        c.ambient(),
    ] {
        cap_set(s)?;
    }
    Ok(())
}

fn cap_bits(set: &CapsHashSet) -> (u32, u32) {
    let mut bits = 0u64;
    for c in set {
        bits |= c.bitmask();
    }
    (bits as u32, (bits >> 32) as u32)
}

/// Drops the bounding set to what the config keeps. Needs CAP_SETPCAP, so it runs before the
/// user switch.
pub fn drop_bounding(caps: Option<&LinuxCapabilities>) -> Result<()> {
    let keep = match caps {
        Some(c) => cap_set(c.bounding())?,
        None => CapsHashSet::new(),
    };
    for c in caps::all() {
        if !keep.contains(&c) && caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, c)
                .map_err(|e| Error::Init(format!("dropping bounding {c}: {e}")))?;
        }
    }
    Ok(())
}

/// Switches to the configured uid/gid/groups, keeping capabilities across the switch, then
/// sets effective/permitted/inheritable in one capset and raises the ambient ones.
pub fn set_user_and_caps(p: &Process) -> Result<()> {
    let user = p.user();
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(Error::Init(format!(
            "PR_SET_KEEPCAPS: {}",
            std::io::Error::last_os_error()
        )));
    }
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    setgroups(&groups).ctx(|| "setgroups")?;
    let gid = Gid::from_raw(user.gid());
    setresgid(gid, gid, gid).ctx(|| format!("setgid {}", user.gid()))?;
    let uid = Uid::from_raw(user.uid());
    setresuid(uid, uid, uid).ctx(|| format!("setuid {}", user.uid()))?;
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };

    let (eff, perm, inh, amb) = match p.capabilities() {
        Some(c) => (
            cap_set(c.effective())?,
            cap_set(c.permitted())?,
            cap_set(c.inheritable())?,
            cap_set(c.ambient())?,
        ),
        None => Default::default(),
    };
    let (e0, e1) = cap_bits(&eff);
    let (p0, p1) = cap_bits(&perm);
    let (i0, i1) = cap_bits(&inh);
    let header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: capset reads a valid v3 header and two data structs, as the ABI defines.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(Error::Init(format!(
            "capset: {}",
            std::io::Error::last_os_error()
        )));
    }
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| Error::Init(format!("clearing ambient: {e}")))?;
    for c in amb {
        // Like runc: an ambient capability missing from permitted or inheritable is skipped.
        if let Err(e) = caps::raise(None, CapSet::Ambient, c) {
            tracing::debug!(cap = %c, error = %e, "ambient capability not raised");
        }
    }
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask & 0o777));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

pub fn set_no_new_privs() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Error::Init(format!(
            "PR_SET_NO_NEW_PRIVS: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Finds the program to run as the container's PATH says, like exec.LookPath does for runc.
pub fn lookup(arg0: &str, env: &[String]) -> Result<PathBuf> {
    let not_found = || {
        Error::Init(format!(
            "exec: {arg0:?}: executable file not found in $PATH"
        ))
    };
    if arg0.contains('/') {
        let p = Path::new(arg0);
        return if is_executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(Error::Init(format!(
                "exec: {arg0:?}: no such executable file"
            )))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(arg0);
        if is_executable(&cand) {
            return Ok(cand);
        }
    }
    Err(not_found())
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub fn cstrings(v: &[String]) -> Result<Vec<CString>> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| Error::Config(format!("{s:?} contains a NUL byte")))
        })
        .collect()
}

/// Whether the kernel runs SELinux (selinuxfs is mounted).
pub fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// Sets the AppArmor profile and SELinux label the program is exec'd with. As runc does, an
/// AppArmor profile is written whatever the host runs, so a host without AppArmor refuses it.
pub fn apply_lsm(process: &Process) -> Result<()> {
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        let data = format!("exec {profile}");
        let res = fs::write("/proc/self/attr/apparmor/exec", &data)
            .or_else(|_| fs::write("/proc/self/attr/exec", &data));
        res.map_err(|e| Error::Init(format!("unable to apply apparmor profile {profile:?}: {e}")))?;
    }
    if let Some(label) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        if !selinux_enabled() {
            return Err(Error::Config(
                "selinux label is specified in config, but selinux is disabled or not supported"
                    .into(),
            ));
        }
        fs::write("/proc/self/attr/exec", label)
            .map_err(|e| Error::Init(format!("setting selinux label {label:?}: {e}")))?;
    }
    Ok(())
}

/// Refuses args + env that execve(2) could never take (E2BIG), with a message saying so
/// instead of failing only after the container was set up.
pub fn check_exec_size(process: &Process) -> Result<()> {
    let bytes: usize = process
        .args()
        .iter()
        .flatten()
        .chain(process.env().iter().flatten())
        .map(|s| s.len() + 1 + std::mem::size_of::<usize>())
        .sum();
    // SAFETY: sysconf with a constant name only reads a system value.
    let max = unsafe { libc::sysconf(libc::_SC_ARG_MAX) };
    let max = if max > 0 {
        max as usize
    } else {
        2 * 1024 * 1024
    };
    if bytes > max {
        return Err(Error::Config(format!(
            "process.args and env take {bytes} bytes, more than the kernel's ARG_MAX of {max}"
        )));
    }
    for s in process
        .args()
        .iter()
        .flatten()
        .chain(process.env().iter().flatten())
    {
        // The kernel also caps each single string (MAX_ARG_STRLEN, 32 pages).
        if s.len() >= 32 * 4096 {
            return Err(Error::Config(format!(
                "a process argument or env entry of {} bytes is longer than the kernel allows (131072)",
                s.len()
            )));
        }
    }
    Ok(())
}
