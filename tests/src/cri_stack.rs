//! CRI runtimes for the `cri` bench and the kubelet's tests, set up alike: keelsond, and containerd with its
//! built-in CRI plugin and runc.
//!
//! Each [`Daemon`] gets
//! - its root, state, logs and socket in a temp dir of its own, the state dir a tmpfs (as
//!   /run is on a node) mounted in its mount namespace;
//! - a mount namespace of its own, kept by a holder process (`unshare --mount --propagation
//!   slave sleep infinity`); the daemon runs in it through `nsenter --mount`, so its overlay
//!   rootfs, netns pins and shm mounts never reach the machine's mount table, and every
//!   process it leaves behind (containerd's shims, keelsond's monitors and infra processes)
//!   can be found there;
//! - the same CNI conflist (bridge + host-local, portmap) over the same plugin binaries, each
//!   wrapped to run in a test "host" netns of its own ([`TestNet`]), where the bridge and the
//!   host veths live;
//! - a `cgroup_parent` for its pods: one absolute path below the bench's own cgroup.
//!
//! Drop removes every pod through CRI, stops the daemon, kills whatever is left in its mount
//! namespace and in its pods' cgroups, removes those cgroups, and lets the netns and the temp
//! dir go.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cni::{Plugins, TestNet};
use anyhow::{Context as _, Result, anyhow, bail};
use keelson_proto::runtime::v1 as pb;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pb::image_service_client::ImageServiceClient;
use pb::runtime_service_client::RuntimeServiceClient;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::cri_memory::{self, Memory, live_pids};
use crate::images::{Compression, ImageSpec, LayerBuilder, Layout, sha256};
use crate::registry::Registry;
use serde_json::{Value, json};

/// containerd's shims put their sockets here whatever the daemon's state dir
/// (`shim.SocketAddress` in containerd 1.6).
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// The namespace containerd's CRI plugin keeps everything in.
const CRI_NAMESPACE: &str = "k8s.io";

/// What the pause image of containerd runs: stays up, exits on SIGTERM.
pub const PAUSE_ENTRYPOINT: [&str; 3] = [
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done",
];

/// The images both runtimes use, in a local registry.
pub struct Images {
    /// Kept for its drop: stops the registry.
    _registry: Registry,
    pub busybox: String,
    pub pause: String,
    /// containerd-style `certs.d` naming the registry as plain HTTP.
    pub certs_d: tempfile::TempDir,
}

/// A busybox image (`/bin/sleep` among its applets) and a pause image with the same layer
/// whose entrypoint stays up until SIGTERM, pushed to a fresh local registry.
pub fn build_images() -> Result<Images> {
    let registry = Registry::start().context("start the registry")?;
    let layer = LayerBuilder::busybox_base()
        .context("busybox layer")?
        .symlink("bin/sleep", "busybox")
        .finish();
    let mut layout = Layout::new()?;
    let spec = ImageSpec::new(vec![(layer.clone(), Compression::Gzip)]);
    let busybox = layout.add_tagged(&spec, "bench")?;

    // The pause image: the busybox manifest's layer, a config with an entrypoint.
    let manifest_digest = busybox
        .get("digest")
        .and_then(Value::as_str)
        .context("busybox manifest digest")?;
    let manifest: Value = serde_json::from_slice(
        &fs::read(layout.blob_path(manifest_digest)).context("read the busybox manifest")?,
    )?;
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": PAUSE_ENTRYPOINT, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    }))?;
    let config_digest = layout.add_blob(&config)?;
    let pause_manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": manifest["layers"],
    }))?;
    let pause_digest = layout.add_blob(&pause_manifest)?;
    layout.tag(
        &json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": pause_digest,
            "size": pause_manifest.len(),
        }),
        "pause",
    )?;
    registry.push_layout(layout.path(), "bench", "kt/busybox", &[])?;
    registry.push_layout(layout.path(), "pause", "kt/pause", &[])?;

    let certs_d = tempfile::Builder::new().prefix("kcb-certs").tempdir()?;
    let host_dir = certs_d.path().join(registry.addr());
    fs::create_dir_all(&host_dir)?;
    fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"http://{a}\"\n\n[host.\"http://{a}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            a = registry.addr()
        ),
    )?;
    Ok(Images {
        busybox: format!("{}/kt/busybox:bench", registry.addr()),
        pause: format!("{}/kt/pause:pause", registry.addr()),
        _registry: registry,
        certs_d,
    })
}

/// Which runtime a [`Daemon`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Keelsond,
    Containerd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Keelsond => "keelsond",
            Kind::Containerd => "containerd",
        }
    }
}

/// What both runtimes get alike.
pub struct Shared<'a> {
    /// The CNI plugin binaries (wrapped per daemon).
    pub plugins: &'a Plugins,
    /// The interpreter of the plugin wrappers (`netns-exec`); `None`: a shell and `nsenter`.
    pub cni_launcher: Option<&'a Path>,
    /// containerd-style `certs.d`: `<dir>/<registry>/hosts.toml`.
    pub registry_config_dir: &'a Path,
    /// containerd's `sandbox_image` (keelsond has no infra image).
    pub sandbox_image: &'a str,
    /// runc for containerd's shim.
    pub runc: &'a Path,
    /// The absolute cgroup below which each daemon gets `<base>/<daemon name>`.
    pub cgroup_base: &'a str,
    /// The host directories of `cgroup_base`, one per hierarchy.
    pub cgroup_base_dirs: &'a [PathBuf],
    /// Give up on a daemon that does not answer Status with RuntimeReady and NetworkReady
    /// after this long.
    pub ready_timeout: Duration,
    /// Asked while waiting for a daemon: `true` gives up (a bench's Ctrl-C).
    pub interrupted: fn() -> bool,
}

/// The gRPC clients of one runtime: clones share one HTTP/2 connection.
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

/// The command line of `pid` as arguments.
fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn sigkill(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// A runtime under test, ready for CRI calls.
///
/// Field order is drop order after [`Drop::drop`]: the netns goes once nothing uses it, the
/// temp dir last.
pub struct Daemon {
    pub kind: Kind,
    pub bin: PathBuf,
    pub cri: Cri,
    /// `runtime_name runtime_version` from the CRI Version call.
    pub version: String,
    /// Every pod's `linux.cgroup_parent`: absolute, below the bench's own cgroup.
    pub cgroup_parent: String,
    /// Where the pods' log directories go.
    pub log_dir: PathBuf,
    handle: tokio::runtime::Handle,
    child: Option<Child>,
    holder: Child,
    /// Host directories of `cgroup_parent`, one per hierarchy.
    cgroup_dirs: Vec<PathBuf>,
    socket: PathBuf,
    /// containerd: whether /run/containerd existed before (if not, its empty dirs go).
    run_dir_existed: bool,
    /// Kept for its drop, after the daemon's: deletes the test host netns.
    _net: TestNet,
    dir: TempDir,
}

impl Daemon {
    /// Sets up and starts `kind` from `bin`, and waits until it reports RuntimeReady and
    /// NetworkReady. Must be called outside the async runtime of `handle`, from the thread
    /// that lives as long as the daemon (the holder's parent-death signal follows it).
    pub fn start(
        kind: Kind,
        bin: &Path,
        shared: &Shared<'_>,
        handle: tokio::runtime::Handle,
    ) -> Result<Daemon> {
        let net = TestNet::new(match kind {
            Kind::Keelsond => "kd",
            Kind::Containerd => "cd",
        })
        .context("test host netns")?;
        // Short paths: unix sockets live below this dir (108-byte limit); keelsond's monitors
        // put theirs at <state>/<...>/<64-hex id>/attach.sock.
        let dir = tempfile::Builder::new()
            .prefix(match kind {
                Kind::Keelsond => "kk",
                Kind::Containerd => "kc",
            })
            .tempdir()
            .context("temp dir")?;
        let d = dir.path();
        for sub in ["root", "s", "net.d", "cni-bin", "cni-cache", "logs"] {
            fs::create_dir_all(d.join(sub)).with_context(|| format!("mkdir {sub}"))?;
        }
        net.write_runtime_cni(
            shared.plugins,
            &d.join("cni-bin"),
            &d.join("net.d"),
            "10-bench.conflist",
            shared.cni_launcher,
        )
        .context("writing the CNI plugin wrappers and conflist")?;

        let mut holder = Command::new("unshare");
        holder
            .args(["--mount", "--propagation", "slave", "sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C at the terminal reaches only the bench.
            .process_group(0);
        // SAFETY: prctl in the child between fork and exec; async-signal-safe.
        unsafe {
            holder.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let holder = holder.spawn().context("spawn the mount namespace holder")?;

        // Replaced by a connected channel in `wait_ready`; never used for calls before.
        let channel_stub = {
            let _inside = handle.enter();
            tonic::transport::Endpoint::from_static("http://[::1]:1").connect_lazy()
        };
        let cgroup_parent = format!("{}/{}", shared.cgroup_base, kind.name());
        let mut daemon = Daemon {
            kind,
            bin: bin.to_path_buf(),
            cri: Cri {
                runtime: RuntimeServiceClient::new(channel_stub.clone()),
                images: ImageServiceClient::new(channel_stub),
            },
            version: String::new(),
            cgroup_parent,
            log_dir: d.join("logs"),
            handle,
            child: None,
            holder,
            cgroup_dirs: shared
                .cgroup_base_dirs
                .iter()
                .map(|b| b.join(kind.name()))
                .collect(),
            socket: d.join(format!("{}.sock", kind.name())),
            run_dir_existed: Path::new("/run/containerd").exists(),
            _net: net,
            dir,
        };
        daemon.wait_holder()?;
        // The runtime state dir (keelsond's `--state`, containerd's `state`) on a tmpfs, as
        // /run is on a node: on this machine /run and /tmp are ext4 without a journal, where
        // each new inode scans the ones deleted in the last seconds, and state directories
        // churn through many small files.
        let state = daemon.dir.path().join("s");
        crate::cri::mount_tmpfs_in(daemon.holder.id(), &state, 1 << 30)
            .context("a tmpfs for the state dir")?;
        daemon.launch(shared)?;
        daemon.wait_ready(shared.ready_timeout, shared.interrupted)?;
        Ok(daemon)
    }

    fn wait_holder(&self) -> Result<()> {
        let mine = fs::read_link("/proc/self/ns/mnt").context("readlink /proc/self/ns/mnt")?;
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(ns) = fs::read_link(format!("/proc/{}/ns/mnt", self.holder.id()))
                && ns != mine
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("the mount namespace holder did not unshare within 5 s")
    }

    fn launch(&mut self, shared: &Shared<'_>) -> Result<()> {
        let d = self.dir.path().to_path_buf();
        let log = fs::File::create(self.log_path()).context("create the daemon log")?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg("--")
            .arg(&self.bin);
        match self.kind {
            Kind::Keelsond => {
                cmd.arg("--listen")
                    .arg(format!("unix://{}", self.socket.display()))
                    .arg("--root")
                    .arg(d.join("root"))
                    .arg("--state")
                    .arg(d.join("s"))
                    .arg("--cni-conf-dir")
                    .arg(d.join("net.d"))
                    .arg("--cni-bin-dir")
                    .arg(d.join("cni-bin"))
                    .arg("--cni-cache-dir")
                    .arg(d.join("cni-cache"))
                    .arg("--registry-config-dir")
                    .arg(shared.registry_config_dir);
            }
            Kind::Containerd => {
                let config = containerd_config(&d, &self.socket, shared);
                fs::write(d.join("config.toml"), config).context("write config.toml")?;
                cmd.arg("--config").arg(d.join("config.toml"));
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup the log")?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, timeout: Duration, interrupted: fn() -> bool) -> Result<()> {
        let end = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(st) = c.try_wait().context("wait for the daemon")?
            {
                self.child = None;
                bail!(
                    "{} exited with {st} while starting; its log:\n{}",
                    self.kind.name(),
                    self.log_tail(30)
                );
            }
            if interrupted() {
                bail!("interrupted");
            }
            if self.socket.exists() {
                match self.handle.block_on(probe(&self.socket)) {
                    Ok((cri, version)) => {
                        self.cri = cri;
                        self.version = version;
                        return Ok(());
                    }
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() > end {
                bail!(
                    "{} not ready after {} s ({last}); its log:\n{}",
                    self.kind.name(),
                    timeout.as_secs(),
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process holding the daemon's mount namespace (for `nsenter --mount`).
    pub fn mount_ns_pid(&self) -> u32 {
        self.holder.id()
    }

    /// The daemon's CRI socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// Whether the daemon process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Where a pod's log directory goes (created here, as the kubelet does before
    /// RunPodSandbox).
    pub fn pod_log_dir(&self, uid: &str) -> Result<PathBuf> {
        let dir = self.log_dir.join(uid);
        fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(dir)
    }

    fn mount_ns(&self) -> Option<PathBuf> {
        fs::read_link(format!("/proc/{}/ns/mnt", self.holder.id())).ok()
    }

    /// Live processes in the daemon's mount namespace, the holder left out.
    fn processes_in_mount_ns(&self) -> Vec<i32> {
        let Some(ns) = self.mount_ns() else {
            return Vec::new();
        };
        let holder = i32::try_from(self.holder.id()).unwrap_or(-1);
        live_pids()
            .into_iter()
            .filter(|p| *p != holder)
            .filter(|p| fs::read_link(format!("/proc/{p}/ns/mnt")).is_ok_and(|n| n == ns))
            .collect()
    }

    /// The memory of the daemon's own processes while the pods `sandboxes` run: the daemon,
    /// the rest of its mount namespace, and what runs in the sandboxes' cgroups.
    pub fn memory(&self, sandboxes: &HashSet<String>) -> Memory {
        let in_ns: HashSet<i32> = self.processes_in_mount_ns().into_iter().collect();
        cri_memory::measure(
            self.pid(),
            &in_ns,
            Path::new(&self.cgroup_parent),
            sandboxes,
        )
    }
}

/// Stops and removes every pod the daemon lists. Returns how many it removed.
pub async fn remove_all_pods(cri: &Cri, timeout: Duration) -> Result<usize> {
    let mut rt = cri.runtime.clone();
    let list = tokio::time::timeout(
        timeout,
        rt.list_pod_sandbox(pb::ListPodSandboxRequest { filter: None }),
    )
    .await
    .map_err(|_| anyhow!("ListPodSandbox timed out"))?
    .map_err(|s| anyhow!("ListPodSandbox: {}", s.message()))?
    .into_inner();
    let mut removed = 0;
    let mut first_error = None;
    for s in list.items {
        match remove_pod(cri, &s.id, timeout).await {
            Ok(_) => removed += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

impl Daemon {
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills what runs in the pods' cgroups and removes them, deepest first.
    fn remove_cgroups(&self) {
        for top in &self.cgroup_dirs {
            let mut tree = Vec::new();
            collect_dirs(top, &mut tree);
            tree.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in tree {
                drain_cgroup(&d);
            }
        }
    }
}

/// Stops and removes one pod (StopPodSandbox, then RemovePodSandbox).
pub async fn remove_pod(cri: &Cri, id: &str, timeout: Duration) -> Result<()> {
    let mut rt = cri.runtime.clone();
    tokio::time::timeout(
        timeout,
        rt.stop_pod_sandbox(pb::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        }),
    )
    .await
    .map_err(|_| anyhow!("StopPodSandbox {id} timed out"))?
    .map_err(|s| anyhow!("StopPodSandbox {id}: {}", s.message()))?;
    tokio::time::timeout(
        timeout,
        rt.remove_pod_sandbox(pb::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        }),
    )
    .await
    .map_err(|_| anyhow!("RemovePodSandbox {id} timed out"))?
    .map_err(|s| anyhow!("RemovePodSandbox {id}: {}", s.message()))?;
    Ok(())
}

/// A channel to the unix socket `path`.
async fn connect(path: &Path) -> Result<Channel> {
    tonic::transport::Endpoint::from_shared(format!("unix://{}", path.display()))
        .context("endpoint")?
        .connect()
        .await
        .context("connect")
}

/// Connects and asks Version and Status: ready when RuntimeReady and NetworkReady are true.
async fn probe(socket: &Path) -> Result<(Cri, String)> {
    let channel = connect(socket).await?;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let v = rt
        .version(pb::VersionRequest {
            version: "v1".into(),
        })
        .await
        .map_err(|s| anyhow!("Version: {}", s.message()))?
        .into_inner();
    let st = rt
        .status(pb::StatusRequest { verbose: false })
        .await
        .map_err(|s| anyhow!("Status: {}", s.message()))?
        .into_inner();
    let conds = st.status.map(|s| s.conditions).unwrap_or_default();
    for want in ["RuntimeReady", "NetworkReady"] {
        match conds.iter().find(|c| c.r#type == want) {
            Some(c) if c.status => {}
            Some(c) => bail!("{want} is false: {} {}", c.reason, c.message),
            None => bail!("no {want} condition"),
        }
    }
    Ok((
        Cri {
            runtime: rt,
            images: ImageServiceClient::new(channel),
        },
        format!("{} {}", v.runtime_name, v.runtime_version),
    ))
}

/// containerd's config: everything in `dir`, the CRI plugin with runc (cgroupfs), overlayfs,
/// the bench's CNI dirs, registry hosts and sandbox image.
fn containerd_config(dir: &Path, socket: &Path, shared: &Shared<'_>) -> String {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    format!(
        r#"version = 2
root = {root}
state = {state}

[grpc]
  address = {sock}

[ttrpc]
  address = {ttrpc}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[{cri}]
  sandbox_image = {sandbox:?}
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true

  [{cri}.cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
    max_conf_num = 1

  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [{cri}.containerd.runtimes.runc.options]
        BinaryName = {runc}
        Root = {runc_root}
        SystemdCgroup = false

  [{cri}.registry]
    config_path = {certs}
"#,
        root = q(&dir.join("root")),
        state = q(&dir.join("s")),
        sock = q(socket),
        ttrpc = q(&dir.join("ttrpc.sock")),
        opt = q(&dir.join("opt")),
        sandbox = shared.sandbox_image,
        cni_bin = q(&dir.join("cni-bin")),
        cni_conf = q(&dir.join("net.d")),
        runc = q(shared.runc),
        runc_root = q(&dir.join("runc")),
        certs = q(shared.registry_config_dir),
    )
}

/// `dir` and every directory below it; nothing if `dir` does not exist.
fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    out.push(dir.to_path_buf());
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}

/// SIGKILLs the tasks of the cgroup `dir` until it is empty and removes it.
fn drain_cgroup(dir: &Path) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            sigkill(pid);
        }
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > end => {
                eprintln!("cri: cannot remove cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The socket a containerd 1.6 shim of sandbox `id` listens on for a daemon at `address`.
fn shim_socket(address: &Path, id: &str) -> PathBuf {
    let key = format!("{}/{CRI_NAMESPACE}/{id}", address.display());
    Path::new(SHIM_SOCKET_DIR).join(format!("{:x}", Sha256::digest(key.as_bytes())))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.alive() {
            let cri = self.cri.clone();
            let removed = self.handle.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(120),
                    remove_all_pods(&cri, Duration::from_secs(30)),
                )
                .await
            });
            match removed {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("cri: {}: removing pods: {e:#}", self.kind.name()),
                Err(_) => eprintln!("cri: {}: removing pods timed out", self.kind.name()),
            }
        }
        self.stop_daemon();
        // Shims (containerd) or monitors and infra processes (keelsond) still running.
        let left = self.processes_in_mount_ns();
        let shim_ids: Vec<String> = left
            .iter()
            .filter_map(|p| {
                let args = cmdline(*p);
                let i = args.iter().position(|a| a == "-id")?;
                args.get(i + 1).cloned()
            })
            .collect();
        for p in &left {
            sigkill(*p);
        }
        self.remove_cgroups();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        if self.kind == Kind::Containerd {
            for id in shim_ids {
                let _ = fs::remove_file(shim_socket(&self.socket, &id));
            }
            if !self.run_dir_existed {
                // Only empty directories go: another containerd may use them.
                for d in ["s", ""] {
                    let _ = fs::remove_dir(Path::new("/run/containerd").join(d));
                }
            }
        }
    }
}
