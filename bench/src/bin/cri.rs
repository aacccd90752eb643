//! `cri`: keelsond against containerd's CRI plugin, driven over CRI in the same run, with the
//! same CNI plugins and conflist, the same images and the same cgroup placement. Prints pod
//! start latency (one at a time and all at once), the memory of each runtime's own processes
//! with the pods running, and the ratios keelsond / containerd; see `bench/README.md`.

#[path = "../cri_stack.rs"]
mod cri_stack;
// Shared with `lifecycle`; this bench uses part of it.
#[allow(dead_code)]
#[path = "../placement.rs"]
mod placement;
#[path = "../stats.rs"]
mod stats;
// Shared with the other benches; this one uses part of it.
#[allow(dead_code)]
#[path = "../sys.rs"]
mod sys;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use keelson_proto::runtime::v1 as pb;
use keelson_tests::CgroupScope;
use keelson_tests::cni::Plugins;
use keelson_tests::images::{Compression, ImageSpec, LayerBuilder, Layout, sha256};
use keelson_tests::registry::Registry;
use serde_json::{Value, json};

use crate::cri_stack::{Cri, Daemon, Kind, Memory, Shared, Usage};
use crate::placement::{Placement, Relative};
use crate::stats::{ms, quantile};

/// What the pause image of containerd runs: stays up, exits on SIGTERM.
const PAUSE_ENTRYPOINT: [&str; 3] = [
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done",
];

/// The container of every pod.
const CONTAINER_COMMAND: [&str; 2] = ["/bin/sleep", "3600"];

/// The targets: keelsond at most this fraction of containerd.
const LATENCY_TARGET: f64 = 0.5;
const MEMORY_TARGET: f64 = 1.0 / 3.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CniSet {
    /// containernetworking-plugins in /usr/lib/cni
    Reference,
    /// keelson's plugins (next to this bench, or $KEELSON_CNI_DIR)
    Keelson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Seccomp {
    /// No seccomp profile (the kubelet's default)
    Unconfined,
    /// Each runtime's own default profile
    RuntimeDefault,
}

#[derive(Parser, Debug)]
#[command(
    name = "cri",
    about = "Pod start latency and memory of keelsond vs containerd (CRI plugin + runc), over CRI"
)]
struct Args {
    /// Pods per runtime in each phase
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=200))]
    pods: u32,
    /// The keelsond binary [default: $KEELSOND_BIN, else keelsond next to this bench]
    #[arg(long)]
    keelsond: Option<PathBuf>,
    /// The containerd binary
    #[arg(long, default_value = "/usr/bin/containerd")]
    containerd: PathBuf,
    /// The runc binary containerd's shim runs
    #[arg(long, default_value = "/usr/sbin/runc")]
    runc: PathBuf,
    /// Which CNI plugins both runtimes run (bridge, host-local, loopback, portmap)
    #[arg(long, value_enum, default_value_t = CniSet::Reference)]
    cni: CniSet,
    /// The containers' seccomp profile, for both runtimes
    #[arg(long, value_enum, default_value_t = Seccomp::Unconfined)]
    seccomp: Seccomp,
    /// Seconds to wait with all pods running before reading memory
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Give up on one CRI call (or on a container reaching RUNNING) after this many seconds
    #[arg(long, default_value_t = 60)]
    step_timeout: u64,
}

/// The durations of one pod start.
#[derive(Debug, Clone)]
struct PodStart {
    sandbox: String,
    run_sandbox: Duration,
    create: Duration,
    start: Duration,
    /// From StartContainer's return to ContainerStatus saying RUNNING.
    running: Duration,
    total: Duration,
}

/// One runtime's results.
struct Subject {
    daemon: Daemon,
    sequential: Vec<PodStart>,
    concurrent: Option<Batch>,
    idle: Option<Memory>,
    loaded: Option<Memory>,
    /// StopPodSandbox + RemovePodSandbox of each sequential pod.
    removal: Vec<Duration>,
    /// Sandboxes started and not removed yet.
    running: HashSet<String>,
    failure: Option<String>,
}

impl Subject {
    fn name(&self) -> &'static str {
        self.daemon.kind.name()
    }

    fn fail(&mut self, why: String) {
        eprintln!("cri: {}: {why}", self.name());
        if self.failure.is_none() {
            self.failure = Some(why);
        }
    }
}

/// All pods of a runtime started at once.
#[derive(Debug, Default)]
struct Batch {
    wall: Duration,
    pods: Vec<PodStart>,
    failed: usize,
    first_error: Option<String>,
}

/// The images both runtimes use, in a local registry.
struct Images {
    /// Kept for its drop: stops the registry.
    _registry: Registry,
    busybox: String,
    pause: String,
    /// containerd-style `certs.d` naming the registry as plain HTTP.
    certs_d: tempfile::TempDir,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cri: {e:#}");
            if sys::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn beside_me(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.is_file().then_some(p)
}

fn keelsond_binary(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = flag.or_else(|| std::env::var_os("KEELSOND_BIN").map(PathBuf::from)) {
        return Ok(p);
    }
    beside_me("keelsond").context(
        "keelsond not found next to this bench; build it (cargo build --release --workspace \
         --bins) or pass --keelsond",
    )
}

fn cni_plugins(set: CniSet) -> Result<Plugins> {
    Ok(match set {
        CniSet::Reference => Plugins::reference(),
        CniSet::Keelson => {
            let dir = match std::env::var_os("KEELSON_CNI_DIR") {
                Some(d) => PathBuf::from(d),
                None => beside_me("bridge")
                    .and_then(|b| b.parent().map(Path::to_path_buf))
                    .context("keelson's CNI plugins not found next to this bench")?,
            };
            Plugins {
                dir,
                label: "keelson",
            }
        }
    })
}

fn run(args: Args) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root (it runs two CRI daemons, pods and network namespaces)");
    }
    sys::install_signal_handlers()?;
    let keelsond = keelsond_binary(args.keelsond.clone())?;
    let plugins = cni_plugins(args.cni)?;
    let step = Duration::from_secs(args.step_timeout);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;

    let scope = CgroupScope::new("cri").context("cgroup scope")?;
    let placement = Placement::new(&scope, Relative::ToRoot)?;
    let cgroup_base_dirs: Vec<PathBuf> = placement.leaves().map(|(_, d)| d).collect();
    let images = build_images().context("build and push the images")?;
    let shared = Shared {
        plugins: &plugins,
        registry_config_dir: images.certs_d.path(),
        sandbox_image: &images.pause,
        runc: &args.runc,
        cgroup_base: &placement.cgroups_path,
        cgroup_base_dirs: &cgroup_base_dirs,
        ready_timeout: Duration::from_secs(60),
    };

    let mut subjects: Vec<Subject> = Vec::new();
    let mut skipped: Vec<(&str, String)> = Vec::new();
    for (kind, bin) in [
        (Kind::Keelsond, keelsond.clone()),
        (Kind::Containerd, args.containerd.clone()),
    ] {
        if sys::interrupted() {
            break;
        }
        match Daemon::start(kind, &bin, &shared, rt.handle().clone()) {
            Ok(daemon) => subjects.push(Subject {
                daemon,
                sequential: Vec::new(),
                concurrent: None,
                idle: None,
                loaded: None,
                removal: Vec::new(),
                running: HashSet::new(),
                failure: None,
            }),
            Err(e) => {
                eprintln!("cri: {} not started: {e:#}", kind.name());
                skipped.push((kind.name(), format!("{e:#}")));
            }
        }
    }
    if !subjects.iter().any(|s| s.daemon.kind == Kind::Keelsond) {
        bail!("keelsond could not be started");
    }

    print_header(&args, &plugins, &subjects, &placement, &images);

    // Images: keelsond pulls the container image; containerd that and its pause image.
    for s in subjects.iter_mut() {
        let mut refs = vec![images.busybox.clone()];
        if s.daemon.kind == Kind::Containerd {
            refs.push(images.pause.clone());
        }
        for r in refs {
            if let Err(e) = rt.block_on(pull(&s.daemon.cri, &r, step)) {
                s.fail(format!("PullImage {r}: {e:#}"));
            }
        }
    }
    settle(Duration::from_secs(args.settle_secs.min(2)));
    for s in subjects.iter_mut().filter(|s| s.failure.is_none()) {
        s.idle = Some(s.daemon.memory(&HashSet::new()));
    }

    let pods = args.pods as usize;
    sequential_phase(&rt, &mut subjects, pods, &images, args.seccomp, step);
    if !sys::interrupted() {
        settle(Duration::from_secs(args.settle_secs));
        for s in subjects.iter_mut().filter(|s| s.failure.is_none()) {
            s.loaded = Some(s.daemon.memory(&s.running));
        }
    }
    removal_phase(&rt, &mut subjects, step);
    if !sys::interrupted() {
        concurrent_phase(&rt, &mut subjects, pods, &images, args.seccomp, step);
    }

    print_results(&subjects, &skipped, pods, args.settle_secs);
    let keelsond_measured = subjects
        .iter()
        .any(|s| s.daemon.kind == Kind::Keelsond && !s.sequential.is_empty());
    // Drop order: the daemons (pods, processes, their cgroups) before the placement and the
    // scope remove the cgroups above them.
    drop(subjects);
    drop(placement);
    drop(scope);
    if sys::interrupted() {
        return Ok(ExitCode::from(130));
    }
    Ok(if keelsond_measured {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn settle(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !sys::interrupted() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A busybox image (`/bin/sleep` among its applets) and a pause image with the same layer
/// whose entrypoint stays up until SIGTERM, pushed to a fresh local registry.
fn build_images() -> Result<Images> {
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

async fn pull(cri: &Cri, image: &str, timeout: Duration) -> Result<String> {
    let mut c = cri.images.clone();
    let r = tokio::time::timeout(
        timeout,
        c.pull_image(pb::PullImageRequest {
            image: Some(pb::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        }),
    )
    .await
    .map_err(|_| anyhow!("timed out"))?
    .map_err(|s| anyhow!("{}", s.message()))?;
    Ok(r.into_inner().image_ref)
}

fn namespaces() -> pb::NamespaceOption {
    pb::NamespaceOption {
        network: pb::NamespaceMode::Pod as i32,
        pid: pb::NamespaceMode::Container as i32,
        ipc: pb::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A pod sandbox config like the kubelet's: metadata and labels, a log directory, the
/// daemon's cgroup parent, pod network and IPC, a PID namespace per container.
fn pod_config(d: &Daemon, name: &str) -> Result<pb::PodSandboxConfig> {
    let uid = keelson_tests::unique::name("uid", name);
    let log_dir = d.pod_log_dir(&uid)?;
    let labels = HashMap::from([
        ("io.kubernetes.pod.name".to_string(), name.to_string()),
        (
            "io.kubernetes.pod.namespace".to_string(),
            "default".to_string(),
        ),
        ("io.kubernetes.pod.uid".to_string(), uid.clone()),
    ]);
    Ok(pb::PodSandboxConfig {
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
            cgroup_parent: d.cgroup_parent.clone(),
            security_context: Some(pb::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn container_config(image: &str, seccomp: Seccomp) -> pb::ContainerConfig {
    pb::ContainerConfig {
        metadata: Some(pb::ContainerMetadata {
            name: "sleep".into(),
            attempt: 0,
        }),
        image: Some(pb::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: CONTAINER_COMMAND.iter().map(|s| s.to_string()).collect(),
        log_path: "sleep/0.log".into(),
        linux: Some(pb::LinuxContainerConfig {
            security_context: Some(pb::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces()),
                seccomp: match seccomp {
                    Seccomp::Unconfined => None,
                    Seccomp::RuntimeDefault => Some(pb::SecurityProfile {
                        profile_type: pb::security_profile::ProfileType::RuntimeDefault as i32,
                        localhost_ref: String::new(),
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// RunPodSandbox, CreateContainer, StartContainer, then ContainerStatus until RUNNING.
async fn start_pod(
    cri: Cri,
    pod: pb::PodSandboxConfig,
    container: pb::ContainerConfig,
    timeout: Duration,
) -> Result<PodStart> {
    let mut rt = cri.runtime;
    let call = |what: &'static str| move |s: tonic::Status| anyhow!("{what}: {}", s.message());
    let late = |what: &'static str| move |_| anyhow!("{what}: timed out after {timeout:?}");
    let t0 = Instant::now();
    let sandbox = tokio::time::timeout(
        timeout,
        rt.run_pod_sandbox(pb::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        }),
    )
    .await
    .map_err(late("RunPodSandbox"))?
    .map_err(call("RunPodSandbox"))?
    .into_inner()
    .pod_sandbox_id;
    let t1 = Instant::now();
    let id = tokio::time::timeout(
        timeout,
        rt.create_container(pb::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(container),
            sandbox_config: Some(pod),
        }),
    )
    .await
    .map_err(late("CreateContainer"))?
    .map_err(call("CreateContainer"))?
    .into_inner()
    .container_id;
    let t2 = Instant::now();
    tokio::time::timeout(
        timeout,
        rt.start_container(pb::StartContainerRequest {
            container_id: id.clone(),
        }),
    )
    .await
    .map_err(late("StartContainer"))?
    .map_err(call("StartContainer"))?;
    let t3 = Instant::now();
    loop {
        let status = tokio::time::timeout(
            timeout,
            rt.container_status(pb::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            }),
        )
        .await
        .map_err(late("ContainerStatus"))?
        .map_err(call("ContainerStatus"))?
        .into_inner()
        .status
        .context("ContainerStatus without a status")?;
        if status.state == pb::ContainerState::ContainerRunning as i32 {
            break;
        }
        if status.state == pb::ContainerState::ContainerExited as i32 {
            bail!(
                "container exited ({} {}: {})",
                status.exit_code,
                status.reason,
                status.message
            );
        }
        if t3.elapsed() > timeout {
            bail!("container not RUNNING {timeout:?} after StartContainer");
        }
        if sys::interrupted() {
            bail!("interrupted");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let t4 = Instant::now();
    Ok(PodStart {
        sandbox,
        run_sandbox: t1 - t0,
        create: t2 - t1,
        start: t3 - t2,
        running: t4 - t3,
        total: t4 - t0,
    })
}

/// `pods` pods per runtime, one at a time, the runtimes in alternation (the order flips
/// every round). The pods stay running.
fn sequential_phase(
    rt: &tokio::runtime::Runtime,
    subjects: &mut [Subject],
    pods: usize,
    images: &Images,
    seccomp: Seccomp,
    step: Duration,
) {
    let container = container_config(&images.busybox, seccomp);
    for i in 0..pods {
        let mut order: Vec<usize> = (0..subjects.len()).collect();
        if i % 2 == 1 {
            order.reverse();
        }
        for j in order {
            if sys::interrupted() {
                return;
            }
            let s = &mut subjects[j];
            if s.failure.is_some() {
                continue;
            }
            let pod = match pod_config(&s.daemon, &format!("seq-{i}")) {
                Ok(p) => p,
                Err(e) => {
                    s.fail(format!("pod config: {e:#}"));
                    continue;
                }
            };
            match rt.block_on(start_pod(
                s.daemon.cri.clone(),
                pod,
                container.clone(),
                step,
            )) {
                Ok(p) => {
                    s.running.insert(p.sandbox.clone());
                    s.sequential.push(p);
                }
                Err(e) => {
                    let log = s.daemon.log_tail(15);
                    s.fail(format!("sequential pod {i}: {e:#}\n{log}"));
                }
            }
        }
    }
}

/// Removes the sequential pods one by one (timed), then anything else still listed.
fn removal_phase(rt: &tokio::runtime::Runtime, subjects: &mut [Subject], step: Duration) {
    for s in subjects.iter_mut() {
        let ids: Vec<String> = s.sequential.iter().map(|p| p.sandbox.clone()).collect();
        for id in ids {
            if !s.running.contains(&id) {
                continue;
            }
            let t0 = Instant::now();
            match rt.block_on(cri_stack::remove_pod(&s.daemon.cri, &id, step)) {
                Ok(()) => {
                    s.removal.push(t0.elapsed());
                    s.running.remove(&id);
                }
                Err(e) => {
                    s.fail(format!("removal: {e:#}"));
                    break;
                }
            }
        }
        if let Err(e) = rt.block_on(cri_stack::remove_all_pods(&s.daemon.cri, step)) {
            s.fail(format!("removing the remaining pods: {e:#}"));
        }
        s.running.clear();
    }
}

/// `pods` pods per runtime started at once, one runtime after the other; then removed.
fn concurrent_phase(
    rt: &tokio::runtime::Runtime,
    subjects: &mut [Subject],
    pods: usize,
    images: &Images,
    seccomp: Seccomp,
    step: Duration,
) {
    let container = container_config(&images.busybox, seccomp);
    for s in subjects.iter_mut() {
        if s.failure.is_some() || sys::interrupted() {
            continue;
        }
        let mut configs = Vec::new();
        for i in 0..pods {
            match pod_config(&s.daemon, &format!("conc-{i}")) {
                Ok(p) => configs.push(p),
                Err(e) => {
                    s.fail(format!("pod config: {e:#}"));
                    break;
                }
            }
        }
        if s.failure.is_some() {
            continue;
        }
        let cri = s.daemon.cri.clone();
        let batch = rt.block_on(async {
            let t0 = Instant::now();
            let tasks: Vec<_> = configs
                .into_iter()
                .map(|pod| tokio::spawn(start_pod(cri.clone(), pod, container.clone(), step)))
                .collect();
            let mut batch = Batch::default();
            for t in tasks {
                let outcome = match t.await {
                    Ok(r) => r,
                    Err(e) => Err(anyhow!("task: {e}")),
                };
                match outcome {
                    Ok(p) => batch.pods.push(p),
                    Err(e) => {
                        batch.failed += 1;
                        batch.first_error.get_or_insert(format!("{e:#}"));
                    }
                }
            }
            batch.wall = t0.elapsed();
            batch
        });
        if let Some(e) = &batch.first_error {
            let log = s.daemon.log_tail(15);
            eprintln!(
                "cri: {}: {} of {pods} concurrent pods failed; first: {e}\n{log}",
                s.name(),
                batch.failed
            );
        }
        s.concurrent = Some(batch);
        if let Err(e) = rt.block_on(cri_stack::remove_all_pods(&s.daemon.cri, step)) {
            s.fail(format!("removing the concurrent pods: {e:#}"));
        }
    }
}

fn print_header(
    args: &Args,
    plugins: &Plugins,
    subjects: &[Subject],
    placement: &Placement,
    images: &Images,
) {
    println!(
        "CRI pod start and memory: {} pods per runtime, container {:?} from {}",
        args.pods, CONTAINER_COMMAND, images.busybox
    );
    for s in subjects {
        let d = &s.daemon;
        println!(
            "  {:<10} {}  ({}; CRI Version: {})",
            d.kind.name(),
            d.bin.display(),
            sys::version_line(&d.bin, "--version"),
            d.version
        );
    }
    println!(
        "  runc       {}  ({})",
        args.runc.display(),
        sys::version_line(&args.runc, "--version")
    );
    println!(
        "  shim       {}",
        sys::version_line(Path::new("containerd-shim-runc-v2"), "-v")
    );
    println!(
        "  containerd sandbox image {} (entrypoint {:?})",
        images.pause, PAUSE_ENTRYPOINT
    );
    println!(
        "  CNI: {} plugins from {} (bridge + host-local, portmap; loopback), each runtime on \
         its own bridge in its own test host netns",
        plugins.label,
        plugins.dir.display()
    );
    println!(
        "  cgroup_parent: {}/<runtime>; seccomp: {:?}",
        placement.cgroups_path, args.seccomp
    );
    println!();
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format!("{v:.decimals$}"))
        .unwrap_or_else(|| "-".into())
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> Option<f64> {
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn ratio_cell(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}x"))
        .unwrap_or_else(|| "n/a".into())
}

fn col(pods: &[PodStart], f: impl Fn(&PodStart) -> Duration) -> Vec<f64> {
    pods.iter().map(|p| ms(f(p))).collect()
}

fn median(v: &[f64]) -> Option<f64> {
    quantile(v, 0.5)
}

fn p99(v: &[f64]) -> Option<f64> {
    quantile(v, 0.99)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn usage_cell(u: Option<&Usage>) -> String {
    match u {
        Some(u) => format!("{:>8} {:>8} {:>5}", mib(u.pss_kib), mib(u.rss_kib), u.procs),
        None => format!("{:>8} {:>8} {:>5}", "-", "-", "-"),
    }
}

fn print_results(subjects: &[Subject], skipped: &[(&str, String)], pods: usize, settle: u64) {
    println!(
        "pod start one at a time (RunPodSandbox + CreateContainer + StartContainer until \
         ContainerStatus RUNNING), ms"
    );
    println!(
        "{:<11} {:>4} {:>8} {:>8}  | medians: {:>8} {:>8} {:>8} {:>8}",
        "runtime", "n", "median", "p99", "run pod", "create", "start", "running"
    );
    for s in subjects {
        let p = &s.sequential;
        let total = col(p, |x| x.total);
        println!(
            "{:<11} {:>4} {:>8} {:>8}  |          {:>8} {:>8} {:>8} {:>8}",
            s.name(),
            p.len(),
            cell(median(&total), 2),
            cell(p99(&total), 2),
            cell(median(&col(p, |x| x.run_sandbox)), 2),
            cell(median(&col(p, |x| x.create)), 2),
            cell(median(&col(p, |x| x.start)), 2),
            cell(median(&col(p, |x| x.running)), 2),
        );
    }
    println!();
    println!("{pods} pods started at once (each pod: the same calls), ms");
    println!(
        "{:<11} {:>4} {:>6} {:>9} {:>12} {:>9}",
        "runtime", "ok", "failed", "wall", "per-pod med", "p99"
    );
    for s in subjects {
        match &s.concurrent {
            Some(b) => {
                let total = col(&b.pods, |x| x.total);
                println!(
                    "{:<11} {:>4} {:>6} {:>9.1} {:>12} {:>9}",
                    s.name(),
                    b.pods.len(),
                    b.failed,
                    ms(b.wall),
                    cell(median(&total), 2),
                    cell(p99(&total), 2),
                );
            }
            None => println!(
                "{:<11} {:>4} {:>6} {:>9} {:>12} {:>9}",
                s.name(),
                "-",
                "-",
                "-",
                "-",
                "-"
            ),
        }
    }
    println!();
    println!(
        "memory of each runtime's own processes with {pods} pods running ({settle} s after the \
         last start): MiB PSS, MiB RSS, processes"
    );
    println!(
        "{:<22} {}",
        "",
        subjects_line(subjects, "PSS      RSS procs")
    );
    type Pick = fn(&Memory) -> Usage;
    let rows: [(&str, Pick); 4] = [
        ("daemon", |m| m.daemon.clone()),
        ("shims / monitors", |m| m.helpers.clone()),
        ("infra (pause)", |m| m.infra.clone()),
        ("total", |m| m.total()),
    ];
    for (label, pick) in rows {
        print!("{label:<22}");
        for s in subjects {
            print!("  {:<24}", usage_cell(s.loaded.as_ref().map(pick).as_ref()));
        }
        println!();
    }
    print!("{:<22}", "idle, before any pod");
    for s in subjects {
        print!(
            "  {:<24}",
            usage_cell(s.idle.as_ref().map(Memory::total).as_ref())
        );
    }
    println!();
    print!("{:<22}", "per pod (KiB PSS)");
    for s in subjects {
        let per = match (&s.loaded, &s.idle) {
            (Some(l), Some(i)) if !s.sequential.is_empty() => Some(
                (l.total().pss_kib as f64 - i.total().pss_kib as f64) / s.sequential.len() as f64,
            ),
            _ => None,
        };
        print!("  {:<24}", format!("{:>8}", cell(per, 0)));
    }
    println!();
    for s in subjects {
        if let Some(m) = &s.loaded {
            let names: Vec<String> = m
                .total()
                .names
                .iter()
                .map(|(n, c)| format!("{n} x{c}"))
                .collect();
            println!("  {} counted: {}", s.name(), names.join(", "));
        }
    }
    println!();
    println!("pod removal one at a time (StopPodSandbox + RemovePodSandbox), ms");
    for s in subjects {
        let v: Vec<f64> = s.removal.iter().map(|d| ms(*d)).collect();
        println!(
            "{:<11} n {:>3}  median {:>8}  p99 {:>8}",
            s.name(),
            v.len(),
            cell(median(&v), 2),
            cell(p99(&v), 2)
        );
    }

    print_ratios(subjects);

    let mut remarks: Vec<String> = skipped
        .iter()
        .map(|(n, why)| format!("{n}: not run: {why}"))
        .collect();
    for s in subjects {
        if let Some(f) = &s.failure {
            remarks.push(format!("{}: {f}", s.name()));
        }
        if let Some(b) = &s.concurrent
            && let Some(e) = &b.first_error
        {
            remarks.push(format!(
                "{}: {} concurrent pods failed, first: {e}",
                s.name(),
                b.failed
            ));
        }
    }
    if sys::interrupted() {
        remarks.push("interrupted: the figures are partial".into());
    }
    println!();
    if remarks.is_empty() {
        println!("no failures");
    } else {
        println!("remarks:");
        for r in remarks {
            println!("  {r}");
        }
    }
}

fn subjects_line(subjects: &[Subject], what: &str) -> String {
    subjects
        .iter()
        .map(|s| format!("{:<24}", format!("{} ({what})", s.name())))
        .collect::<Vec<_>>()
        .join("  ")
}

fn print_ratios(subjects: &[Subject]) {
    let find = |k: Kind| subjects.iter().find(|s| s.daemon.kind == k);
    let (Some(k), Some(c)) = (find(Kind::Keelsond), find(Kind::Containerd)) else {
        return;
    };
    let seq = |s: &Subject, q: f64| quantile(&col(&s.sequential, |x| x.total), q);
    let conc_wall = |s: &Subject| s.concurrent.as_ref().map(|b| ms(b.wall));
    let conc = |s: &Subject, q: f64| {
        s.concurrent
            .as_ref()
            .and_then(|b| quantile(&col(&b.pods, |x| x.total), q))
    };
    let mem = |s: &Subject, pss: bool| {
        s.loaded.as_ref().map(|m| {
            let t = m.total();
            (if pss { t.pss_kib } else { t.rss_kib }) as f64
        })
    };
    println!();
    println!("keelsond / containerd (below 1.00x: keelsond takes less)");
    let rows = [
        ("start median", ratio(seq(k, 0.5), seq(c, 0.5))),
        ("start p99", ratio(seq(k, 0.99), seq(c, 0.99))),
        ("concurrent wall", ratio(conc_wall(k), conc_wall(c))),
        ("concurrent median", ratio(conc(k, 0.5), conc(c, 0.5))),
        ("concurrent p99", ratio(conc(k, 0.99), conc(c, 0.99))),
        ("memory PSS", ratio(mem(k, true), mem(c, true))),
        ("memory RSS", ratio(mem(k, false), mem(c, false))),
    ];
    for (label, r) in rows {
        println!("  {label:<18} {:>8}", ratio_cell(r));
    }
    let verdict = |r: Option<f64>, target: f64| match r {
        Some(r) if r <= target => "met",
        Some(_) => "not met",
        None => "not measured",
    };
    let start = ratio(seq(k, 0.5), seq(c, 0.5));
    let memory = ratio(mem(k, true), mem(c, true));
    println!(
        "target: start latency at most half of containerd's (median, one at a time): {} ({})",
        verdict(start, LATENCY_TARGET),
        ratio_cell(start)
    );
    println!(
        "target: memory at most a third of containerd's (PSS total, {} pods): {} ({})",
        k.sequential.len(),
        verdict(memory, MEMORY_TARGET),
        ratio_cell(memory)
    );
}
