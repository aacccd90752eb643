//! `kubelet-pods`: the standalone kubelet starting static pods on a CRI runtime (keelsond by
//! default, or containerd's CRI plugin). Prints the time from a manifest written into the
//! static pod directory until the pod's containers are Running and Ready (median, p99) for 1,
//! 10 and 50 pods, pods started per second, and the kubelet's RSS and CPU with 0, 50 and 100
//! pods running; see `bench/README.md`.

mod stats;
// Shared with the other benches; this one uses part of it.
#[allow(dead_code)]
mod sys;

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use keelson_proto::runtime::v1 as pb;
use keelson_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use keelson_tests::CgroupScope;
use keelson_tests::cni::Plugins;
use keelson_tests::cri_stack::{Daemon, Images, Kind, Shared, build_images};
use keelson_tests::kubelet::{Kubelet, NODE, Session};
use keelson_tests::placement::{Placement, Relative};
use serde_json::Value;
use tonic::transport::Channel;

use crate::stats::{ms, quantile};

/// The targets.
const TARGET_P99: Duration = Duration::from_secs(1);
const TARGET_RSS_MIB_AT_100: f64 = 30.0;
/// A node is quiet when its CPUs are this idle over two windows in a row.
const QUIET_WINDOW: Duration = Duration::from_millis(250);
const QUIET_IDLE_PCT: f64 = 90.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Runtime {
    Keelsond,
    Containerd,
}

#[derive(Debug, Parser)]
#[command(
    name = "kubelet-pods",
    about = "Static pod start latency and kubelet RSS/CPU, standalone kubelet on a CRI runtime"
)]
struct Args {
    /// The CRI runtime under the kubelet.
    #[arg(long, value_enum, default_value = "keelsond")]
    runtime: Runtime,
    /// Pods written at once, one batch per value, measured in this order.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    batches: Vec<usize>,
    /// How many times the 1-pod batch is repeated (its figures pool all rounds).
    #[arg(long, default_value_t = 10)]
    single_rounds: usize,
    /// Running pods at which the kubelet's RSS and CPU are measured, ascending.
    #[arg(long, value_delimiter = ',', default_value = "0,50,100")]
    loads: Vec<usize>,
    /// Seconds of CPU accounting per load level (after `--settle` seconds of rest).
    #[arg(long, default_value_t = 10)]
    window: u64,
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// How often /pods is read while pods start, in milliseconds.
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// Give up on a batch (or a removal) after this many seconds.
    #[arg(long, default_value_t = 180)]
    step_timeout: u64,
    /// The kubelet binary (default: `kubelet` next to this bench).
    #[arg(long)]
    kubelet: Option<PathBuf>,
    /// keelsond (default: next to this bench).
    #[arg(long)]
    keelsond: Option<PathBuf>,
    #[arg(long, default_value = "/usr/bin/containerd")]
    containerd: PathBuf,
    /// runc for containerd's shim.
    #[arg(long, default_value = "/usr/sbin/runc")]
    runc: PathBuf,
    /// Copy the kubelet's log (`--v 2`) here at the end, to see where a start's time went.
    #[arg(long)]
    kubelet_log: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Dropped last, after every namespace of the run is gone.
    let _netns_dir = sys::NetnsDirGuard::new();
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kubelet-pods: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A binary built next to this bench (`target/release/<name>` for a release bench).
fn beside_me(name: &str, flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    sys::sibling(name).ok_or_else(|| {
        anyhow!(
            "{name} not found next to this bench; build it (cargo build --release --workspace \
             --bins) or pass --{name}"
        )
    })
}

/// keelson's CNI plugins when they are built next to this bench, else the reference plugins.
fn cni_plugins() -> Plugins {
    let here = std::env::current_exe()
        .ok()
        .and_then(|me| me.parent().map(PathBuf::from));
    match here {
        Some(dir) if dir.join("bridge").is_file() && dir.join("host-local").is_file() => Plugins {
            dir,
            label: "keelson",
        },
        _ => Plugins::reference(),
    }
}

fn run(args: Args) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root (it runs a CRI runtime, the kubelet and pods)");
    }
    sys::install_signal_handlers()?;
    let kubelet_bin = beside_me("kubelet", args.kubelet.clone())?;
    let (kind, runtime_bin) = match args.runtime {
        Runtime::Keelsond => (
            Kind::Keelsond,
            beside_me("keelsond", args.keelsond.clone())?,
        ),
        Runtime::Containerd => (Kind::Containerd, args.containerd.clone()),
    };
    let step = Duration::from_secs(args.step_timeout);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let scope = CgroupScope::new("kbench").context("cgroup scope")?;
    let placement = Placement::new(&scope, Relative::ToRoot)?;
    let dirs: Vec<PathBuf> = placement.leaves().map(|(_, d)| d).collect();
    let images = build_images().context("build and push the images")?;
    let plugins = cni_plugins();
    let launcher = sys::sibling("netns-exec");
    let shared = Shared {
        plugins: &plugins,
        cni_launcher: launcher.as_deref(),
        registry_config_dir: images.certs_d.path(),
        sandbox_image: &images.pause,
        runc: &args.runc,
        cgroup_base: &placement.cgroups_path,
        cgroup_base_dirs: &dirs,
        ready_timeout: Duration::from_secs(60),
        interrupted: sys::interrupted,
    };
    let daemon = Daemon::start(kind, &runtime_bin, &shared, rt.handle().clone())
        .with_context(|| format!("start {}", kind.name()))?;
    // Images present: the bench measures starts, not pulls.
    let mut refs = vec![images.busybox.clone()];
    if kind == Kind::Containerd {
        refs.push(images.pause.clone());
    }
    for r in &refs {
        let mut c = daemon.cri.images.clone();
        rt.block_on(c.pull_image(pb::PullImageRequest {
            image: Some(pb::ImageSpec {
                image: r.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .map_err(|s| anyhow!("PullImage {r}: {}", s.message()))?;
    }
    let kl = Kubelet::start_bin(
        &kubelet_bin,
        daemon.socket(),
        &daemon.cgroup_parent,
        daemon.mount_ns_pid(),
        "",
    )
    .context("start the kubelet")?;
    let pid = kl.pid().context("kubelet pid")?;

    println!(
        "kubelet-pods: static pods (one container: /bin/sleep 3600, image present, \
         no probes) on {}",
        daemon.version
    );
    println!("  kubelet {}", kubelet_bin.display());
    println!("  runtime {}", runtime_bin.display());
    println!(
        "  CNI plugins: {} in {} (bridge + host-local, portmap); /pods read every {} ms",
        plugins.label,
        plugins.dir.display(),
        args.poll_ms
    );

    let mut bench = Bench {
        session: kl.session(),
        kl,
        cri: daemon.cri.runtime.clone(),
        rt: rt.handle().clone(),
        images: &images,
        poll: Duration::from_millis(args.poll_ms),
        step,
        next: 0,
    };
    let mut batches = Vec::new();
    for &n in &args.batches {
        if sys::interrupted() {
            break;
        }
        let rounds = if n == 1 { args.single_rounds.max(1) } else { 1 };
        let mut pooled = Batch::default();
        for _ in 0..rounds {
            match bench.batch(n) {
                Ok(b) => pooled.merge(b),
                Err(e) => {
                    pooled.error = Some(format!("{e:#}"));
                    break;
                }
            }
            if let Err(e) = bench.remove_all() {
                pooled.error.get_or_insert(format!("removal: {e:#}"));
                break;
            }
        }
        batches.push((n, rounds, pooled));
    }

    let mut loads = Vec::new();
    let mut running = 0usize;
    for &want in &args.loads {
        if sys::interrupted() {
            break;
        }
        if want > running {
            match bench.batch(want - running) {
                Ok(_) => {
                    running = want;
                    // Close the polling connection: the window measures the kubelet with
                    // its pods, not with a client's idle TLS session.
                    bench.session = bench.kl.session();
                }
                Err(e) => {
                    loads.push((want, Err(format!("{e:#}"))));
                    break;
                }
            }
        }
        settle(Duration::from_secs(args.settle));
        loads.push((
            want,
            usage(pid, Duration::from_secs(args.window)).map_err(|e| format!("{e:#}")),
        ));
    }
    let removal = bench.remove_all();

    print_results(&batches, &loads, args.window);
    if let Some(to) = &args.kubelet_log
        && let Err(e) = fs::write(to, bench.kl.log())
    {
        eprintln!("kubelet-pods: writing {}: {e}", to.display());
    }
    if let Err(e) = removal {
        eprintln!("kubelet-pods: removing the pods: {e:#}");
    }
    // Drop order: the kubelet, the runtime (removes what is left), the cgroups.
    drop(bench);
    drop(daemon);
    drop(placement);
    drop(scope);
    Ok(if sys::interrupted() {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

fn settle(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !sys::interrupted() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Start latencies of the pods of one or more batches.
#[derive(Debug, Default)]
struct Batch {
    latencies: Vec<Duration>,
    /// From the first manifest written to the last pod Ready, per batch.
    walls: Vec<Duration>,
    error: Option<String>,
}

impl Batch {
    fn merge(&mut self, other: Batch) {
        self.latencies.extend(other.latencies);
        self.walls.extend(other.walls);
    }
}

struct Bench<'a> {
    kl: Kubelet,
    /// One kept-alive HTTPS connection for all reads of `/pods`: a TLS handshake per read
    /// cost the bench and the kubelet more CPU than the pods being measured.
    session: Session,
    /// The runtime, asked whether a removal is over.
    cri: RuntimeServiceClient<Channel>,
    rt: tokio::runtime::Handle,
    images: &'a Images,
    poll: Duration,
    step: Duration,
    /// Pods get unique names across the run.
    next: usize,
}

impl Bench<'_> {
    fn manifest(&self, name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  \
             terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {}\n    \
             imagePullPolicy: IfNotPresent\n    command: [\"/bin/sleep\", \"3600\"]\n",
            self.images.busybox
        )
    }

    /// Writes `n` manifests at once and waits until every one of those pods is Ready.
    fn batch(&mut self, n: usize) -> Result<Batch> {
        let mut written: HashMap<String, Instant> = HashMap::new();
        for _ in 0..n {
            let name = format!("b{}", self.next);
            self.next += 1;
            self.kl
                .write_manifest(&format!("{name}.yaml"), &self.manifest(&name))
                .with_context(|| format!("write the manifest of {name}"))?;
            written.insert(format!("{name}-{NODE}"), Instant::now());
        }
        let first = written.values().min().copied().unwrap_or_else(Instant::now);
        let mut ready: HashMap<String, Duration> = HashMap::new();
        let end = first + self.step;
        while ready.len() < written.len() {
            if sys::interrupted() {
                bail!("interrupted");
            }
            if Instant::now() > end {
                bail!(
                    "{} of {} pods Ready after {} s",
                    ready.len(),
                    written.len(),
                    self.step.as_secs()
                );
            }
            std::thread::sleep(self.poll);
            let Ok(list) = self.session.pods() else {
                continue;
            };
            let now = Instant::now();
            for p in list["items"].as_array().into_iter().flatten() {
                let Some(name) = p["metadata"]["name"].as_str() else {
                    continue;
                };
                if let Some(t0) = written.get(name)
                    && !ready.contains_key(name)
                    && is_ready(p)
                {
                    ready.insert(name.to_string(), now - *t0);
                }
            }
        }
        let last = ready.values().max().copied().unwrap_or_default();
        let wall = written
            .iter()
            .map(|(name, t0)| (*t0 - first) + ready.get(name).copied().unwrap_or_default())
            .max()
            .unwrap_or(last);
        Ok(Batch {
            latencies: ready.into_values().collect(),
            walls: vec![wall],
            error: None,
        })
    }

    /// Whether the runtime has no ready sandbox and no running container left.
    fn runtime_idle(&self) -> bool {
        let mut c = self.cri.clone();
        self.rt.block_on(async {
            let pods = c
                .list_pod_sandbox(pb::ListPodSandboxRequest {
                    filter: Some(pb::PodSandboxFilter {
                        state: Some(pb::PodSandboxStateValue {
                            state: pb::PodSandboxState::SandboxReady as i32,
                        }),
                        ..Default::default()
                    }),
                })
                .await;
            let ctrs = c
                .list_containers(pb::ListContainersRequest {
                    filter: Some(pb::ContainerFilter {
                        state: Some(pb::ContainerStateValue {
                            state: pb::ContainerState::ContainerRunning as i32,
                        }),
                        ..Default::default()
                    }),
                })
                .await;
            matches!((pods, ctrs), (Ok(p), Ok(c))
                if p.get_ref().items.is_empty() && c.get_ref().containers.is_empty())
        })
    }

    /// Removes every manifest and waits until the kubelet lists no pod, the runtime runs none
    /// and the machine is quiet.
    fn remove_all(&mut self) -> Result<()> {
        let dir = self.kl.manifests();
        for e in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let e = e?;
            fs::remove_file(e.path()).with_context(|| format!("rm {}", e.path().display()))?;
        }
        let end = Instant::now() + self.step;
        loop {
            let left = self
                .session
                .pods()
                .ok()
                .and_then(|l| l["items"].as_array().map(Vec::len));
            if left == Some(0) && self.runtime_idle() {
                // The pods left the API when their removal began, and the runtime runs
                // none of them now; the kubelet and the runtime may still be tearing down.
                // The next batch starts on a quiet node.
                if !sys::wait_quiet(QUIET_WINDOW, QUIET_IDLE_PCT, self.step)? {
                    eprintln!(
                        "kubelet-pods: the machine was not {QUIET_IDLE_PCT} % idle within {} s of a removal",
                        self.step.as_secs()
                    );
                }
                return Ok(());
            }
            if Instant::now() > end || sys::interrupted() {
                bail!(
                    "pods still listed after {} s: {left:?}",
                    self.step.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The kubelet's resident memory and CPU over `window`.
#[derive(Debug)]
struct Usage {
    rss_kib: u64,
    /// Percent of one core.
    cpu_pct: f64,
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) end with ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).context("utime")?;
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).context("stime")?;
    Ok(utime + stime)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

fn usage(pid: u32, window: Duration) -> Result<Usage> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid)?;
    settle(window);
    let c1 = cpu_ticks(pid)?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(Usage {
        rss_kib: rss_kib(pid)?,
        cpu_pct: (c1.saturating_sub(c0)) as f64 / hz / secs * 100.0,
    })
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())
}

fn print_results(
    batches: &[(usize, usize, Batch)],
    loads: &[(usize, std::result::Result<Usage, String>)],
    window: u64,
) {
    println!();
    println!("manifest written -> pod Ready (all containers Running and Ready)");
    println!(
        "{:>6} {:>7} {:>7} {:>9} {:>9} {:>10} {:>9}",
        "pods", "rounds", "n", "med ms", "p99 ms", "wall ms", "pods/s"
    );
    let mut worst_p99: Option<f64> = None;
    for (n, rounds, b) in batches {
        let lat: Vec<f64> = b.latencies.iter().map(|d| ms(*d)).collect();
        let med = quantile(&lat, 0.5);
        let p99 = quantile(&lat, 0.99);
        if let Some(p) = p99 {
            worst_p99 = Some(worst_p99.map_or(p, |w: f64| w.max(p)));
        }
        let walls: Vec<f64> = b.walls.iter().map(|d| ms(*d)).collect();
        let wall = quantile(&walls, 0.5);
        let rate = wall.filter(|w| *w > 0.0).map(|w| *n as f64 / (w / 1000.0));
        println!(
            "{:>6} {:>7} {:>7} {:>9} {:>9} {:>10} {:>9}",
            n,
            rounds,
            lat.len(),
            fmt_ms(med),
            fmt_ms(p99),
            fmt_ms(wall),
            rate.map(|r| format!("{r:.1}"))
                .unwrap_or_else(|| "-".into())
        );
        if let Some(e) = &b.error {
            println!("       failed: {e}");
        }
    }
    println!();
    println!("kubelet with pods running (CPU over {window} s, after settling)");
    println!("{:>6} {:>9} {:>12}", "pods", "RSS MiB", "CPU % core");
    let mut rss_at_max: Option<(usize, f64)> = None;
    for (n, u) in loads {
        match u {
            Ok(u) => {
                let mib = u.rss_kib as f64 / 1024.0;
                rss_at_max = Some((*n, mib));
                println!("{:>6} {:>9.1} {:>12.2}", n, mib, u.cpu_pct);
            }
            Err(e) => println!("{n:>6} failed: {e}"),
        }
    }
    println!();
    match worst_p99 {
        Some(p) => println!(
            "target: start latency p99 under {} ms: {} (worst p99 {p:.0} ms)",
            TARGET_P99.as_millis(),
            if p < ms(TARGET_P99) { "met" } else { "NOT met" }
        ),
        None => println!("target: start latency p99: not measured"),
    }
    match rss_at_max {
        Some((n, mib)) if n >= 100 => println!(
            "target: kubelet RSS under {TARGET_RSS_MIB_AT_100} MiB at 100 pods: {} ({mib:.1} MiB)",
            if mib < TARGET_RSS_MIB_AT_100 {
                "met"
            } else {
                "NOT met"
            }
        ),
        _ => println!("target: kubelet RSS at 100 pods: not measured"),
    }
}
