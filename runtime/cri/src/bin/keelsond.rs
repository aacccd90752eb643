//! `keelsond`: keelson's CRI runtime daemon. Serves `runtime.v1.RuntimeService` and
//! `runtime.v1.ImageService` over gRPC on a unix socket.

use anyhow::{Context, Result, bail};
use clap::Parser;
use keelson_cri::server::{Daemon, DaemonConfig, image::Images, runtime::Runtime};
use keelson_proto::runtime::v1::{
    image_service_server::ImageServiceServer, runtime_service_server::RuntimeServiceServer,
};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "keelsond", version, about = "keelson's CRI runtime daemon")]
struct Args {
    /// The gRPC endpoint (a unix socket).
    #[arg(long, default_value = "unix:///run/keelsond/keelsond.sock")]
    listen: String,
    /// Persistent state: records, images, snapshots.
    #[arg(long, default_value = "/var/lib/keelsond")]
    root: PathBuf,
    /// Runtime state: engine state, bundles, pinned namespaces, monitors.
    #[arg(long, default_value = "/run/keelsond")]
    state: PathBuf,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// CNI plugin directories (repeat, or separate with ':').
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: Vec<String>,
    /// libcni's cache directory (results of ADD, used by DEL).
    #[arg(long, default_value = "/var/lib/cni")]
    cni_cache_dir: PathBuf,
    /// Registry hosts (containerd's hosts.toml layout, one directory per host).
    #[arg(long, default_value = "/etc/keelsond/certs.d")]
    registry_config_dir: PathBuf,
    /// The infra process binary (default: keelson-pause next to keelsond).
    #[arg(long)]
    pause_path: Option<PathBuf>,
    /// The container monitor binary (default: keelson-monitor next to keelsond).
    #[arg(long)]
    monitor_path: Option<PathBuf>,
    /// The OCI runtime CLI used for exec (default: keelson next to keelsond).
    #[arg(long)]
    runtime_path: Option<PathBuf>,
    /// The streaming server's (exec, attach, port-forward URLs) IP address.
    #[arg(long, default_value = "127.0.0.1")]
    stream_address: std::net::IpAddr,
    /// The streaming server's port (0: any free port).
    #[arg(long, default_value_t = 0)]
    stream_port: u16,
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Log verbosity (0 = info, 1 = debug, 2+ = trace).
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    verbosity: u8,
}

fn beside_me(name: &str, given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let me = std::env::current_exe().context("locating keelsond")?;
    let p = me
        .parent()
        .map(|d| d.join(name))
        .context("keelsond has no directory")?;
    if !p.exists() {
        bail!("{name} not found at {} (pass its path)", p.display());
    }
    Ok(p)
}

fn main() -> Result<()> {
    let args = Args::parse();
    // -v raises keelson's own logs; the gRPC stack's stay at info unless asked for (-v 3).
    let level = match args.verbosity {
        0 => "info",
        1 => "info,keelsond=debug,keelson_cri=debug,keelson_image=debug",
        2 => "info,keelsond=trace,keelson_cri=trace,keelson_image=trace",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let socket = args
        .listen
        .strip_prefix("unix://")
        .map(PathBuf::from)
        .with_context(|| {
            format!(
                "--listen {:?}: only unix:// endpoints are served",
                args.listen
            )
        })?;
    let cfg = DaemonConfig {
        root: args.root.clone(),
        state: args.state.clone(),
        cni_conf_dir: args.cni_conf_dir.clone(),
        cni_bin_dirs: args
            .cni_bin_dir
            .iter()
            .flat_map(|s| s.split(':'))
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect(),
        cni_cache_dir: args.cni_cache_dir.clone(),
        registry_config_dir: args.registry_config_dir.clone(),
        pause_bin: beside_me("keelson-pause", args.pause_path.clone())?,
        monitor_bin: beside_me("keelson-monitor", args.monitor_path.clone())?,
        keelson_bin: beside_me("keelson", args.runtime_path.clone())?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stream_addr = std::net::SocketAddr::new(args.stream_address, args.stream_port);
    rt.block_on(serve(cfg, socket, stream_addr))
}

async fn serve(
    cfg: DaemonConfig,
    socket: PathBuf,
    stream_addr: std::net::SocketAddr,
) -> Result<()> {
    let daemon = Daemon::open(cfg)?;
    // Containers started before a restart: their exits are reported too.
    Runtime { d: daemon.clone() }.watch_running();
    let streaming = keelson_cri::streaming::server::bind(&daemon, stream_addr)
        .await
        .with_context(|| format!("streaming server: listening on {stream_addr}"))?;
    let streaming = tokio::spawn(keelson_cri::streaming::server::serve(
        daemon.clone(),
        streaming,
    ));
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", socket.display())),
    }
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tracing::info!(socket = %socket.display(), "keelsond serving CRI runtime.v1");
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down; containers keep running");
    };
    tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(Runtime { d: daemon.clone() }))
        .add_service(ImageServiceServer::new(Images { d: daemon }))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving gRPC")?;
    streaming.abort();
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
