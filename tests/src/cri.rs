//! A private keelsond for CRI tests, and CRI gRPC clients to drive it.
//!
//! - keelsond runs with its root, state, CNI cache and socket in a temp dir, inside a mount
//!   namespace of the fixture's own (a holder process keeps it), so its netns pins, overlay
//!   rootfs and shm mounts never reach the machine's mount table and vanish with the fixture.
//! - It stays in the machine's network namespace (so it reaches the local registry on
//!   127.0.0.1), but the CNI plugins it runs are wrappers that enter a test "host" netns
//!   ([`TestNet`]) first: the bridge, the host veths and portmap's rules live there, and the
//!   pod IPs are reached from there.
//! - Drop removes every pod through CRI, kills whatever is left (keelsond, monitors, infra
//!   processes, containers), removes the cgroups keelsond made below this process's own, and
//!   lets the mount namespace, the netns and the temp dir go.

use crate::cni::{Plugins, TestNet};
use crate::runtime::built_binary;
use keelson_proto::runtime::v1 as pb;
use pb::image_service_client::ImageServiceClient;
use pb::runtime_service_client::RuntimeServiceClient;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// keelsond and its helpers, from the workspace build.
pub fn keelsond_binary() -> io::Result<PathBuf> {
    built_binary("KEELSOND_BIN", "keelsond", "keelson-cri")
}

pub struct Keelsond {
    pub net: TestNet,
    pub dir: tempfile::TempDir,
    holder: Child,
    child: Option<Child>,
    pub rt: tokio::runtime::Runtime,
    bin: PathBuf,
}

impl Keelsond {
    /// A keelsond with a bridge + host-local (+ portmap) network on a fresh test net.
    pub fn start(hint: &str) -> io::Result<Keelsond> {
        Keelsond::start_with_root_tmpfs(hint, None)
    }

    /// Like [`Keelsond::start`]; with `tmpfs_bytes`, keelsond's root (image store and
    /// snapshots) is a tmpfs of that size mounted in the fixture's mount namespace, so that
    /// what the image filesystem's statfs reports (its capacity and usage, as the kubelet's
    /// image GC sees them) does not depend on how full the machine's disk is.
    pub fn start_with_root_tmpfs(hint: &str, tmpfs_bytes: Option<u64>) -> io::Result<Keelsond> {
        let net = TestNet::new(hint)?;
        // Short paths: the monitors' unix sockets live below the state dir (108-byte limit).
        let dir = tempfile::Builder::new().prefix("kk").tempdir()?;
        let d = dir.path();
        for sub in [
            "root",
            "s",
            "net.d",
            "cni-cache",
            "cni-bin",
            "logs",
            "certs.d",
        ] {
            fs::create_dir_all(d.join(sub))?;
        }
        let plugins = Plugins::keelson()?;
        net.write_runtime_cni(
            &plugins,
            &d.join("cni-bin"),
            &d.join("net.d"),
            "10-kt.conflist",
            None,
        )?;
        // The mount namespace holder: dies with this process (PDEATHSIG).
        let mut holder = Command::new("unshare");
        holder
            .args(["--mount", "--propagation", "slave", "sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl in the child between fork and exec; async-signal-safe.
        unsafe {
            holder.pre_exec(|| {
                if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let holder = holder.spawn()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut k = Keelsond {
            net,
            dir,
            holder,
            child: None,
            rt,
            bin: keelsond_binary()?,
        };
        k.wait_holder()?;
        if let Some(bytes) = tmpfs_bytes {
            mount_tmpfs_in(k.holder.id(), &k.root(), bytes)?;
        }
        k.launch()?;
        Ok(k)
    }

    fn wait_holder(&self) -> io::Result<()> {
        let mine = fs::read_link("/proc/self/ns/mnt")?;
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(ns) = fs::read_link(format!("/proc/{}/ns/mnt", self.holder.id()))
                && ns != mine
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(io::Error::other("the mount namespace holder did not start"))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("keelsond.sock")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("s")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// The pid of the process holding keelsond's mount namespace (for /proc/<pid>/mountinfo).
    pub fn mount_ns_pid(&self) -> u32 {
        self.holder.id()
    }

    /// What keelsond logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("keelsond.log")).unwrap_or_default()
    }

    /// keelsond's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn launch(&mut self) -> io::Result<()> {
        let d = self.dir.path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("keelsond.log"))?;
        let _ = fs::remove_file(self.socket());
        let child = Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg("--")
            .arg(&self.bin)
            .arg("--listen")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--root")
            .arg(self.root())
            .arg("--state")
            .arg(self.state())
            .arg("--cni-conf-dir")
            .arg(d.join("net.d"))
            .arg("--cni-bin-dir")
            .arg(d.join("cni-bin"))
            .arg("--cni-cache-dir")
            .arg(d.join("cni-cache"))
            .arg("--registry-config-dir")
            .arg(d.join("certs.d"))
            .arg("-v")
            .arg("1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "keelsond exited with {st}: {}",
                    self.log()
                )));
            }
            if self.socket().exists() && self.block_on(self.version()).is_ok() {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(io::Error::other(format!(
                    "keelsond did not answer on {}: {}",
                    self.socket().display(),
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn version(&self) -> Result<pb::VersionResponse, tonic::Status> {
        let mut c = self.runtime().await?;
        c.version(pb::VersionRequest {
            version: "v1".into(),
        })
        .await
        .map(|r| r.into_inner())
    }

    /// kill -9 keelsond (what runs keeps running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kill -9 and start again on the same state.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill9();
        self.launch()
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    async fn channel(&self) -> Result<Channel, tonic::Status> {
        tonic::transport::Endpoint::from_shared(format!("unix://{}", self.socket().display()))
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))
    }

    pub async fn runtime(&self) -> Result<RuntimeServiceClient<Channel>, tonic::Status> {
        Ok(RuntimeServiceClient::new(self.channel().await?))
    }

    pub async fn images(&self) -> Result<ImageServiceClient<Channel>, tonic::Status> {
        Ok(ImageServiceClient::new(self.channel().await?))
    }

    /// Runs a command in the test host netns (where the bridge and pod routes are).
    pub fn host_exec(&self, args: &[&str]) -> io::Result<std::process::Output> {
        self.net.host.exec(args)
    }

    /// Removes every sandbox keelsond knows (and with them their containers).
    fn remove_all(&self) {
        let _ = self.block_on(async {
            let mut rt = self.runtime().await?;
            let list = rt
                .list_pod_sandbox(pb::ListPodSandboxRequest { filter: None })
                .await?
                .into_inner();
            for s in list.items {
                let _ = rt
                    .remove_pod_sandbox(pb::RemovePodSandboxRequest {
                        pod_sandbox_id: s.id,
                    })
                    .await;
            }
            Ok::<(), tonic::Status>(())
        });
    }

    /// Processes in keelsond's mount namespace other than the holder (monitors, infra).
    fn processes_in_mount_ns(&self) -> Vec<i32> {
        let Ok(ns) = fs::read_link(format!("/proc/{}/ns/mnt", self.holder.id())) else {
            return Vec::new();
        };
        crate::procs::all_pids()
            .into_iter()
            .filter(|p| *p != self.holder.id() as i32)
            .filter(|p| fs::read_link(format!("/proc/{p}/ns/mnt")).is_ok_and(|n| n == ns))
            .collect()
    }
}

/// Mounts a tmpfs of `bytes` on `path` in the mount namespace of process `ns_pid` (a fixture's
/// holder: the mount goes with the namespace).
pub fn mount_tmpfs_in(ns_pid: u32, path: &Path, bytes: u64) -> io::Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--mount=/proc/{ns_pid}/ns/mnt"))
        .arg("--")
        .args(["mount", "-t", "tmpfs", "-o"])
        .arg(format!("size={bytes},mode=0700"))
        .arg("keelson-test")
        .arg(path)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "mounting a tmpfs on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Kills the tasks of a cgroup directory and removes it (deepest first is the caller's job).
pub fn drain_cgroup(path: &Path) {
    for _ in 0..50 {
        let procs = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = fs::remove_dir(path);
}

/// Cgroup directories recorded in JSON files below `dir` (engine states, sandbox records):
/// every `"created"` list of a cgroup entry, deepest first.
fn recorded_cgroups(dir: &Path) -> Vec<PathBuf> {
    fn walk(v: &serde_json::Value, out: &mut Vec<PathBuf>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::Array(created)) = m.get("created") {
                    for c in created.iter().rev() {
                        if let Some(s) = c.as_str() {
                            out.push(PathBuf::from(s));
                        }
                    }
                }
                for v in m.values() {
                    walk(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json")
                && let Ok(data) = fs::read(&p)
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data)
            {
                walk(&v, &mut out);
            }
        }
    }
    // Only cgroups of the machine's cgroup mounts.
    out.retain(|p| p.starts_with("/sys/fs/cgroup"));
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

impl Drop for Keelsond {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.remove_all();
        }
        self.kill9();
        for p in self.processes_in_mount_ns() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Read through the holder's root: with a tmpfs root, the records on it are only
        // seen from inside the fixture's mount namespace.
        let seen = PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(self.dir.path().strip_prefix("/").unwrap_or(self.dir.path()));
        let dir = if seen.is_dir() {
            seen
        } else {
            self.dir.path().to_path_buf()
        };
        for cg in recorded_cgroups(&dir) {
            drain_cgroup(&cg);
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A local registry holding a static-busybox image `kt/busybox:<tag>`; returns it and the
/// image reference keelsond pulls.
pub fn registry_with_busybox(tag: &str) -> (crate::registry::Registry, String) {
    use crate::images::{Compression, ImageSpec, LayerBuilder, Layout};
    let reg = crate::registry::Registry::start().expect("registry");
    let layer = LayerBuilder::busybox_base().expect("busybox").finish();
    let spec = ImageSpec::new(vec![(layer, Compression::Gzip)]);
    let mut layout = Layout::new().expect("layout");
    layout.add_tagged(&spec, tag).expect("image");
    reg.push_layout(layout.path(), tag, "kt/busybox", &[])
        .expect("push");
    let name = format!("{}/kt/busybox:{tag}", reg.addr());
    (reg, name)
}

/// A pod sandbox config with the kubelet's usual labels, a log directory in the fixture and
/// the default namespaces.
pub fn pod_config(k: &Keelsond, name: &str) -> pb::PodSandboxConfig {
    let uid = crate::unique::name("uid", name);
    let log_dir = k.log_dir().join(&uid);
    let mut labels = HashMap::new();
    labels.insert("io.kubernetes.pod.name".to_string(), name.to_string());
    labels.insert(
        "io.kubernetes.pod.namespace".to_string(),
        "default".to_string(),
    );
    labels.insert("io.kubernetes.pod.uid".to_string(), uid.clone());
    pb::PodSandboxConfig {
        metadata: Some(pb::PodSandboxMetadata {
            name: name.into(),
            uid,
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels,
        linux: Some(pb::LinuxPodSandboxConfig {
            security_context: Some(pb::LinuxSandboxSecurityContext {
                namespace_options: Some(pb::NamespaceOption {
                    network: pb::NamespaceMode::Pod as i32,
                    pid: pb::NamespaceMode::Container as i32,
                    ipc: pb::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container config running `sh -c <script>` from `image`, logging to `<name>.log`.
pub fn container_config(name: &str, image: &str, script: &str) -> pb::ContainerConfig {
    pb::ContainerConfig {
        metadata: Some(pb::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(pb::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        linux: Some(pb::LinuxContainerConfig {
            security_context: Some(pb::LinuxContainerSecurityContext {
                namespace_options: Some(pb::NamespaceOption {
                    network: pb::NamespaceMode::Pod as i32,
                    pid: pb::NamespaceMode::Container as i32,
                    ipc: pb::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
