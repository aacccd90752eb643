//! A pod sandbox on the host: the infra process (`keelson-pause`) holding the pod's
//! namespaces, the namespaces pinned by bind mounts so they outlive any process, the
//! sandbox's cgroup, and the files its containers share (resolv.conf, hostname, hosts).
//!
//! ```text
//! <state>/sandboxes/<id>/ns/{net,ipc,uts,pid}   pinned namespaces (bind mounts of nsfs)
//! <state>/sandboxes/<id>/{resolv.conf,hostname,hosts}
//! ```
//!
//! Synchronous code: keelsond calls it from `spawn_blocking`.

use crate::pause::PauseOptions;
use keelson_container::cgroups::{self, Cgroups, Layout};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("starting the infra process {bin}: {msg}")]
    Infra { bin: PathBuf, msg: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error("pod cgroup: {0}")]
    Cgroup(#[from] keelson_container::Error),
}

type Result<T> = std::result::Result<T, SandboxError>;

fn io_ctx(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

/// DNS settings of a pod (CRI `DNSConfig`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// What a sandbox needs on the host, decided from the CRI `PodSandboxConfig`.
#[derive(Debug, Default, Clone)]
pub struct InfraSpec {
    pub id: String,
    pub hostname: String,
    pub host_network: bool,
    pub host_ipc: bool,
    /// The pod has a PID namespace of its own (CRI `NamespaceMode::POD`).
    pub pod_pid: bool,
    pub sysctls: Vec<(String, String)>,
    /// `cgroup_parent` of the pod; the sandbox's cgroup is `<parent>/<id>`. Empty: a cgroup
    /// `<id>` below keelsond's own.
    pub cgroup_parent: String,
    pub dns: Option<Dns>,
}

/// A running (or once running) sandbox's host resources; persisted with the sandbox.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Infra {
    pub pid: i32,
    /// Start time of `pid` (clock ticks since boot), so a recycled pid is never signalled.
    pub start_time: u64,
    pub dir: PathBuf,
    /// Pinned namespaces (absent where the pod uses the host's).
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    pub pidns: Option<PathBuf>,
    pub cgroups: Option<Cgroups>,
    pub resolv_conf: PathBuf,
    pub hostname_file: PathBuf,
    pub hosts_file: PathBuf,
}

impl Infra {
    /// Whether the infra process recorded here still runs.
    pub fn alive(&self) -> bool {
        self.pid > 0 && keelson_container::state::proc_alive(self.pid, self.start_time)
    }

    /// The namespace paths containers of this pod join, by type.
    pub fn namespace_paths(&self) -> Vec<(&'static str, PathBuf)> {
        let mut v = Vec::new();
        for (t, p) in [
            ("network", &self.netns),
            ("ipc", &self.ipcns),
            ("uts", &self.utsns),
        ] {
            if let Some(p) = p {
                v.push((t, p.clone()));
            }
        }
        if self.pidns.is_some() && self.alive() {
            v.push(("pid", PathBuf::from(format!("/proc/{}/ns/pid", self.pid))));
        }
        v
    }
}

/// Starts the infra process of a sandbox and pins its namespaces. On any failure everything
/// made so far is undone.
pub fn start(
    pause_bin: &Path,
    state_dir: &Path,
    layout: &Layout,
    spec: &InfraSpec,
) -> Result<Infra> {
    let dir = state_dir.join("sandboxes").join(&spec.id);
    fs::create_dir_all(dir.join("ns")).map_err(io_ctx(format!("creating {}", dir.display())))?;
    let mut infra = Infra {
        dir: dir.clone(),
        resolv_conf: dir.join("resolv.conf"),
        hostname_file: dir.join("hostname"),
        hosts_file: dir.join("hosts"),
        ..Infra::default()
    };
    match start_inner(pause_bin, layout, spec, &mut infra) {
        Ok(()) => Ok(infra),
        Err(e) => {
            if let Err(undo) = remove(&infra) {
                tracing::warn!(id = %spec.id, error = %undo, "undoing a failed sandbox start");
            }
            Err(e)
        }
    }
}

fn start_inner(
    pause_bin: &Path,
    layout: &Layout,
    spec: &InfraSpec,
    infra: &mut Infra,
) -> Result<()> {
    write_files(spec, infra)?;
    // The pod's /dev/shm, shared by its containers (they share the IPC namespace too).
    let shm = infra.dir.join("shm");
    fs::create_dir_all(&shm).map_err(io_ctx("creating shm"))?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(|source| SandboxError::Sys {
        context: format!("mounting the pod's shm at {}", shm.display()),
        source,
    })?;
    let opts = PauseOptions {
        net: !spec.host_network,
        ipc: !spec.host_ipc,
        uts: !spec.host_network,
        pid: spec.pod_pid,
        hostname: (!spec.host_network && !spec.hostname.is_empty()).then(|| spec.hostname.clone()),
        sysctls: spec.sysctls.clone(),
    };
    let infra_err = |msg: String| SandboxError::Infra {
        bin: pause_bin.to_path_buf(),
        msg,
    };
    let mut child = Command::new(pause_bin)
        .args(opts.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| infra_err(e.to_string()))?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| infra_err("no stdout".into()))?;
    let mut pid = None;
    let mut failure = None;
    let mut ready = false;
    for line in BufReader::new(out).lines() {
        let line = line.map_err(|e| infra_err(format!("reading its output: {e}")))?;
        if let Some(p) = line.strip_prefix("pid ") {
            pid = p.trim().parse::<i32>().ok();
        } else if let Some(e) = line.strip_prefix("error: ") {
            failure = Some(e.to_string());
        } else if line == "ready" {
            // Either process may speak first: read on to end of file (both have closed).
            ready = true;
        }
    }
    let status = child.wait().map_err(|e| infra_err(e.to_string()))?;
    if let Some(msg) = failure {
        return Err(infra_err(msg));
    }
    let pid = match pid {
        Some(p) if ready && status.success() => p,
        _ => {
            if let Some(p) = pid {
                kill_pid(p);
            }
            return Err(infra_err(format!(
                "it exited ({status}) without reporting ready"
            )));
        }
    };
    infra.pid = pid;
    infra.start_time = keelson_container::state::proc_stat(pid)
        .map(|(_, start)| start)
        .ok_or_else(|| infra_err("it died at once".into()))?;

    // The pod's cgroup: <parent>/<id>, relative parents below keelsond's own cgroup.
    let path = if spec.cgroup_parent.is_empty() {
        PathBuf::from(&spec.id)
    } else {
        Path::new(&spec.cgroup_parent).join(&spec.id)
    };
    let mut cg = layout.resolve(Some(&path), &spec.id)?;
    cg.create(None, &cgroups::default_allowed_devices())?;
    infra.cgroups = Some(cg.clone());
    cg.add_pid(pid)?;

    let ns = infra.dir.join("ns");
    if opts.net {
        infra.netns = Some(pin(pid, "net", &ns.join("net"))?);
    }
    if opts.ipc {
        infra.ipcns = Some(pin(pid, "ipc", &ns.join("ipc"))?);
    }
    if opts.uts {
        infra.utsns = Some(pin(pid, "uts", &ns.join("uts"))?);
    }
    if opts.pid {
        infra.pidns = Some(pin(pid, "pid", &ns.join("pid"))?);
    }
    Ok(())
}

fn write_files(spec: &InfraSpec, infra: &Infra) -> Result<()> {
    let resolv = match &spec.dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            resolv_conf(d)
        }
        _ => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    fs::write(&infra.resolv_conf, resolv).map_err(io_ctx("writing resolv.conf"))?;
    let hostname = if spec.host_network {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        spec.hostname.clone()
    };
    fs::write(&infra.hostname_file, format!("{hostname}\n")).map_err(io_ctx("writing hostname"))?;
    let hosts = if spec.host_network {
        fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        DEFAULT_HOSTS.to_string()
    };
    fs::write(&infra.hosts_file, hosts).map_err(io_ctx("writing hosts"))?;
    Ok(())
}

const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n";

/// resolv.conf for a pod's DNS config: search line, then nameservers, then options.
pub fn resolv_conf(d: &Dns) -> String {
    let mut s = String::new();
    if !d.searches.is_empty() {
        s.push_str(&format!("search {}\n", d.searches.join(" ")));
    }
    for n in &d.servers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !d.options.is_empty() {
        s.push_str(&format!("options {}\n", d.options.join(" ")));
    }
    s
}

fn pin(pid: i32, kind: &str, target: &Path) -> Result<PathBuf> {
    fs::File::create(target).map_err(io_ctx(format!("creating {}", target.display())))?;
    let src = PathBuf::from(format!("/proc/{pid}/ns/{kind}"));
    mount(
        Some(&src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| SandboxError::Sys {
        context: format!("pinning {} at {}", src.display(), target.display()),
        source,
    })?;
    Ok(target.to_path_buf())
}

fn kill_pid(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Stops the infra process (SIGKILL; the holder has nothing to flush). Idempotent.
pub fn stop(infra: &Infra) {
    if infra.alive() {
        kill_pid(infra.pid);
        for _ in 0..200 {
            if !infra.alive() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Releases what a stopped sandbox holds on the host besides its cgroup, files and record:
/// every namespace pin (the netns after the CNI DEL) and the shm mount, as containerd does at
/// StopPodSandbox. Nothing of the pod runs any more, and each mount left in keelsond's
/// namespace is copied into every new container's mount namespace.
pub fn release_mounts(infra: &mut Infra) -> Result<()> {
    unmount_all(infra)?;
    infra.netns = None;
    Ok(())
}

/// Unmounts the namespace pins under `<dir>/ns/` and the shm mount; what is gone is skipped.
fn unmount_all(infra: &Infra) -> Result<()> {
    if infra.dir.as_os_str().is_empty() {
        return Ok(());
    }
    let ns = infra.dir.join("ns");
    for kind in ["net", "ipc", "uts", "pid"] {
        unpin(&ns.join(kind))?;
    }
    match umount2(&infra.dir.join("shm"), MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(SandboxError::Sys {
            context: "unmounting the pod's shm".into(),
            source,
        }),
    }
}

fn unpin(p: &Path) -> Result<()> {
    match umount2(p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(source) => {
            return Err(SandboxError::Sys {
                context: format!("unmounting {}", p.display()),
                source,
            });
        }
    }
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_ctx(format!("removing {}", p.display()))(e)),
    }
}

/// Removes everything of a sandbox on the host: the infra process, pins, cgroup and files.
/// Idempotent: what is already gone is skipped.
pub fn remove(infra: &Infra) -> Result<()> {
    stop(infra);
    if infra.dir.as_os_str().is_empty() {
        return Ok(());
    }
    unmount_all(infra)?;
    if let Some(cg) = &infra.cgroups {
        cg.destroy()?;
    }
    match fs::remove_dir_all(&infra.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_ctx(format!("removing {}", infra.dir.display()))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_has_search_then_servers_then_options() {
        let d = Dns {
            servers: vec!["10.0.0.10".into(), "10.0.0.11".into()],
            searches: vec!["ns.svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&d),
            "search ns.svc.cluster.local cluster.local\nnameserver 10.0.0.10\nnameserver 10.0.0.11\noptions ndots:5\n"
        );
    }
}
