//! `cri`: keelsond against containerd's CRI plugin, driven over CRI in the same run, with the
//! same CNI plugins and conflist, the same images and the same cgroup placement. Prints pod
//! start latency (one at a time and all at once), the memory of each runtime's own processes
//! with the pods running, and the ratios keelsond / containerd; see `bench/README.md`.

#[path = "../cri_report.rs"]
mod cri_report;
#[path = "../stats.rs"]
mod stats;
// Shared with the other benches; this one uses part of it.
#[allow(dead_code)]
#[path = "../sys.rs"]
mod sys;

use std::collections::{HashMap, HashSet};

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use keelson_proto::runtime::v1 as pb;
use keelson_tests::CgroupScope;
use keelson_tests::cni::Plugins;

use keelson_tests::cri_memory::Memory;
use keelson_tests::cri_stack::{self, Cri, Daemon, Images, Kind, Shared, build_images};
use keelson_tests::placement::{Placement, Relative};

/// The container of every pod.
const CONTAINER_COMMAND: [&str; 2] = ["/bin/sleep", "3600"];

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

fn main() -> ExitCode {
    let args = Args::parse();
    // Dropped last, after every namespace of the run is gone.
    let _netns_dir = sys::NetnsDirGuard::new();
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
    let launcher = sys::sibling("netns-exec");
    let shared = Shared {
        plugins: &plugins,
        cni_launcher: launcher.as_deref(),
        registry_config_dir: images.certs_d.path(),
        sandbox_image: &images.pause,
        runc: &args.runc,
        cgroup_base: &placement.cgroups_path,
        cgroup_base_dirs: &cgroup_base_dirs,
        ready_timeout: Duration::from_secs(60),
        interrupted: sys::interrupted,
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

    cri_report::print_header(&args, &plugins, &subjects, &placement, &images);

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

    cri_report::print_results(&subjects, &skipped, pods, args.settle_secs);
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
