//! `kubelet`: keelson's node agent. Runs static pods (a manifest directory) through their
//! whole lifecycle on any CRI runtime, and serves the kubelet API.

mod admission;
mod auth;
mod cgroupstats;
mod config;
mod configz;
mod cri;
mod defaults;
mod events;
mod fsattr;
mod gc;
mod hosts;
mod lifecycle;
mod logs;
mod logstream;
mod manager;
mod metrics;
mod podconfig;
mod prober;
mod probes;
mod qos;
mod quantity;
mod server;
mod source;
mod stats;
mod status;
mod streaming;
mod termination;
mod tls;
mod validate;
mod volumes;
mod watch;
mod worker;

use anyhow::{Context, Result};
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// What every part of the kubelet shares.
pub struct Shared {
    pub cfg: config::Config,
    pub cri: cri::Cri,
    /// The runtime's name from CRI Version, for container IDs `<name>://<id>`.
    pub runtime_name: String,
    pub host_ips: Vec<String>,
    /// The pods of the pod manager by UID, with their latest computed status (for /pods and
    /// for the status sync to an apiserver later).
    pub pods: RwLock<BTreeMap<String, Pod>>,
    pub last_relist: Mutex<Instant>,
    /// The QoS cgroup manager; None when cgroupsPerQOS is off.
    pub qos: Option<qos::Qos>,
    /// What the pod manager knows, for the garbage collectors.
    pub pod_states: gc::PodStates,
    /// Images pod workers are about to use (image GC leaves them).
    pub image_claims: std::sync::Arc<gc::ImageClaims>,
}

/// When this kubelet started (probe workers jitter their first probe right after a start).
pub static STARTED: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub fn now_ts() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_second(now_ns() / 1_000_000_000).unwrap_or_default()
}

/// The node's addresses: the IPv4 (then IPv6) addresses of interfaces that are up, loopback
/// last resort.
fn host_ips() -> Vec<String> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if !a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
                || a.flags
                    .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
            {
                continue;
            }
            let Some(addr) = a.address else { continue };
            if let Some(s) = addr.as_sockaddr_in() {
                v4.push(s.ip().to_string());
            } else if let Some(s) = addr.as_sockaddr_in6()
                && !s.ip().is_unicast_link_local()
            {
                v6.push(s.ip().to_string());
            }
        }
    }
    let mut out = Vec::new();
    out.extend(v4.into_iter().take(1));
    out.extend(v6.into_iter().take(1));
    if out.is_empty() {
        out.push("127.0.0.1".into());
    }
    out
}

fn init_logging(flags: &config::Flags) {
    // --v 2-3 turns on the kubelet's own debug lines; 4+ everything (gRPC/HTTP included).
    let level = match flags.verbosity {
        0 | 1 => "info",
        2 | 3 => "info,kubelet=debug",
        4 => "debug",
        _ => "trace",
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    if flags.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_ansi(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
}

/// glibc gives every thread that allocates its own malloc arena; with tokio's worker and
/// blocking threads that left the kubelet at ~38 MiB RSS with 100 pods (27 MiB with two
/// arenas). Two arenas, set before any thread starts, as `MALLOC_ARENA_MAX=2` would.
#[cfg(target_env = "gnu")]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator tuning; it is called once, before any other
    // thread exists, with a valid parameter and value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(target_env = "gnu"))]
fn limit_malloc_arenas() {}

fn main() {
    limit_malloc_arenas();
    std::sync::LazyLock::force(&STARTED);
    let flags = config::Flags::parse();
    let cfg = match config::Config::load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubelet: invalid configuration: {e}");
            std::process::exit(1);
        }
    };
    init_logging(&flags);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubelet: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cfg)) {
        eprintln!("kubelet: {e:#}");
        std::process::exit(1);
    }
}

async fn bind(addr: &str, port: u16, what: &str) -> Result<tokio::net::TcpListener> {
    let host = if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    };
    let l = tokio::net::TcpListener::bind(format!("{host}:{port}"))
        .await
        .with_context(|| format!("{what}: listening on {host}:{port}"))?;
    tracing::info!(address = %l.local_addr()?, "{what} listening");
    Ok(l)
}

async fn run(cfg: config::Config) -> Result<()> {
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    for d in [&cfg.root_dir, &cfg.pod_logs_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // A log directory per pod below it.
    fsattr::hint_top_dir(&cfg.pod_logs_dir);
    volumes::init(&cfg).map_err(anyhow::Error::msg)?;
    let mut cri = cri::connect(&cfg.runtime_endpoint, &cfg.image_endpoint)
        .with_context(|| format!("container runtime endpoint {}", cfg.runtime_endpoint))?;
    // Upstream fails when the runtime does not answer; give it a minute to come up.
    let deadline = Instant::now() + Duration::from_secs(60);
    let version = loop {
        match cri.version().await {
            Ok(v) => break v,
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(endpoint = %cfg.runtime_endpoint, error = %e.message(), "the container runtime does not answer yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => anyhow::bail!(
                "validate service connection: {} (runtime endpoint {})",
                e.message(),
                cfg.runtime_endpoint
            ),
        }
    };
    tracing::info!(
        runtime = %version.runtime_name,
        version = %version.runtime_version,
        api = %version.runtime_api_version,
        node = %cfg.node_name,
        "connected to the container runtime"
    );
    // Upstream's container manager: the QoS hierarchy before any pod runs.
    let qos = if cfg.cgroups_per_qos {
        let q = qos::Qos::discover(&cfg.cgroup_root).context("the QoS cgroups")?;
        q.start(&cfg)
            .context("failed to start ContainerManager: creating the QoS cgroups")?;
        Some(q)
    } else {
        None
    };
    let healthz = if cfg.healthz_port > 0 {
        Some(
            bind(
                &cfg.healthz_bind_address,
                cfg.healthz_port,
                "healthz server",
            )
            .await?,
        )
    } else {
        None
    };
    let serving = tls::serving(&cfg).context("the kubelet server's TLS certificate")?;
    tracing::info!(
        cert = %serving.cert_file.display(),
        generated = serving.generated,
        authorization = %cfg.authorization_mode,
        "kubelet server certificate"
    );
    let main = bind(&cfg.address, cfg.port, "kubelet server (HTTPS)").await?;
    let read_only = if cfg.read_only_port > 0 {
        Some(bind(&cfg.address, cfg.read_only_port, "read-only kubelet server").await?)
    } else {
        None
    };
    let sh = std::sync::Arc::new(Shared {
        runtime_name: version.runtime_name.clone(),
        host_ips: host_ips(),
        cri,
        pods: RwLock::new(BTreeMap::new()),
        last_relist: Mutex::new(Instant::now()),
        qos,
        pod_states: gc::PodStates::default(),
        image_claims: Default::default(),
        cfg: cfg.clone(),
    });
    if let Some(l) = healthz {
        tokio::spawn(server::serve(sh.clone(), l, server::Mode::Healthz, None));
    }
    tokio::spawn(server::serve(
        sh.clone(),
        main,
        server::Mode::Main,
        Some(serving.acceptor),
    ));
    if let Some(l) = read_only {
        tokio::spawn(server::serve(sh.clone(), l, server::Mode::ReadOnly, None));
    }
    tokio::spawn(logs::manager(sh.clone()));
    tokio::spawn(stats::sampler(sh.clone()));
    tokio::spawn(gc::containers(sh.clone(), cfg.container_gc_period));
    tokio::spawn(gc::images(sh.clone(), cfg.image_gc_period));
    let (src_tx, src_rx) = tokio::sync::mpsc::channel(4);
    let (pleg_tx, pleg_rx) = tokio::sync::mpsc::channel(64);
    match cfg.static_pod_path.clone() {
        Some(dir) => {
            tracing::info!(path = %dir.display(), every = ?cfg.file_check_frequency, "watching static pod manifests");
            tokio::spawn(manager::file_source(
                dir,
                cfg.node_name.clone(),
                cfg.file_check_frequency,
                src_tx,
            ));
        }
        None => {
            tracing::warn!("no staticPodPath: this standalone kubelet has no pods to run");
            let _ = src_tx
                .send(manager::SourceUpdate {
                    pods: BTreeMap::new(),
                })
                .await;
            // Keep the channel open.
            std::mem::forget(src_tx);
        }
    }
    let events_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(events::watch(
        sh.clone(),
        pleg_tx.clone(),
        events_up.clone(),
    ));
    tokio::spawn(manager::pleg(
        sh.clone(),
        Duration::from_secs(1),
        events_up,
        pleg_tx,
    ));
    let mgr = tokio::spawn(manager::run(sh.clone(), src_rx, pleg_rx));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: exiting (pods keep running)"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: exiting (pods keep running)"),
        r = mgr => { r.context("the pod manager stopped")?; }
    }
    Ok(())
}
