//! `keelson-image`: the image store's library as a command line, for humans and tests.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use keelson_image::{AuthConfig, ImageStore, Platform, StoreConfig};

#[derive(Parser)]
#[command(name = "keelson-image", about = "keelson's image store")]
struct Cli {
    /// Persistent state (content, snapshots, image records).
    #[arg(long, default_value = "/var/lib/keelsond")]
    root: PathBuf,
    /// containerd-style registry host configuration: <DIR>/<registry>/hosts.toml.
    #[arg(long, default_value = "/etc/keelsond/certs.d")]
    registry_config_dir: PathBuf,
    /// Registries reached over plain HTTP (localhost and 127.0.0.1 always are).
    #[arg(long = "plain-http", value_name = "HOST[:PORT]")]
    plain_http: Vec<String>,
    /// A mirror: REGISTRY=[http://]HOST[:PORT], tried before the registry (repeatable).
    #[arg(long = "mirror", value_name = "REGISTRY=MIRROR")]
    mirrors: Vec<String>,
    /// Platform to pick from image indexes.
    #[arg(long)]
    platform: Option<String>,
    /// Refuse layers larger than this many bytes uncompressed.
    #[arg(long)]
    max_layer_size: Option<u64>,
    /// Layers downloaded at the same time.
    #[arg(long, default_value_t = 3)]
    max_concurrent_downloads: usize,
    /// How containers' snapshots are made: overlayfs, or native (merged copies, for
    /// filesystems without overlayfs).
    #[arg(long, default_value = "overlayfs")]
    snapshotter: String,
    /// Log format.
    #[arg(long, default_value = "text")]
    log_format: String,
    /// More logging.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pull an image from a registry.
    Pull {
        reference: String,
        /// USER:PASSWORD for basic auth.
        #[arg(long)]
        creds: Option<String>,
        /// A bearer token.
        #[arg(long)]
        registry_token: Option<String>,
    },
    /// List images (JSON with --json).
    Ls {
        #[arg(long)]
        json: bool,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show one image as JSON.
    Inspect { name: String },
    /// Remove an image by tag, digest reference or ID, and free what it alone used.
    Rm { names: Vec<String> },
    /// Import an OCI layout directory, an oci-archive or a docker-archive tar.
    Import {
        path: PathBuf,
        /// Name for an image the archive does not name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Write an image as an OCI layout directory (or an oci-archive if PATH ends in .tar).
    Export { name: String, path: PathBuf },
    /// Create a writable snapshot of an image and mount it at TARGET.
    Mount {
        image: String,
        key: String,
        target: PathBuf,
    },
    /// Unmount and remove a snapshot.
    Unmount { key: String },
    /// List active snapshots.
    Snapshots,
    /// Free unreferenced blobs and snapshots.
    Gc,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keelson-image: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = StoreConfig::new(&cli.root);
    config.hosts = keelson_image::RegistryHosts::load_dir(&cli.registry_config_dir)
        .with_context(|| format!("registry config {}", cli.registry_config_dir.display()))?;
    config
        .hosts
        .plain_http
        .extend(cli.plain_http.iter().cloned());
    for m in &cli.mirrors {
        let (reg, mirror) = m
            .split_once('=')
            .with_context(|| format!("--mirror {m:?}: want REGISTRY=MIRROR"))?;
        config
            .hosts
            .mirrors
            .entry(reg.to_string())
            .or_default()
            .push(mirror.to_string());
    }
    if let Some(p) = &cli.platform {
        config.platform = Platform::parse(p)?;
    }
    if let Some(max) = cli.max_layer_size {
        config.unpack.max_uncompressed = max;
    }
    config.max_concurrent_downloads = cli.max_concurrent_downloads;
    config.snapshotter = cli.snapshotter.parse()?;
    let store =
        ImageStore::open(config).with_context(|| format!("open store {}", cli.root.display()))?;
    match cli.cmd {
        Cmd::Pull {
            reference,
            creds,
            registry_token,
        } => {
            let mut auth = AuthConfig::default();
            if let Some(c) = creds {
                let (u, p) = c.split_once(':').context("--creds: want USER:PASSWORD")?;
                auth = AuthConfig::basic(u, p);
            }
            if let Some(t) = registry_token {
                auth.registry_token = t;
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("tokio runtime")?;
            let img = rt
                .block_on(store.pull(&reference, &auth))
                .with_context(|| format!("pull {reference}"))?;
            println!("{}", img.id);
        }
        Cmd::Ls { json, quiet } => {
            let images = store.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else if quiet {
                for i in images {
                    println!("{}", i.id);
                }
            } else {
                println!("{:<60} {:<20} {:>12}", "NAME", "ID", "SIZE");
                for i in images {
                    let short = &i.id.hex()[..12];
                    let names = if i.repo_tags.is_empty() {
                        i.repo_digests.clone()
                    } else {
                        i.repo_tags.clone()
                    };
                    for n in names {
                        println!("{n:<60} {short:<20} {:>12}", i.size);
                    }
                }
            }
        }
        Cmd::Inspect { name } => {
            let img = store.get(&name)?;
            println!("{}", serde_json::to_string_pretty(&img)?);
        }
        Cmd::Rm { names } => {
            for n in names {
                let img = store.remove(&n).with_context(|| format!("rm {n}"))?;
                println!("{}", img.id);
            }
        }
        Cmd::Import { path, name } => {
            let images = store
                .import(&path, name.as_deref())
                .with_context(|| format!("import {}", path.display()))?;
            for i in images {
                println!("{}", i.id);
            }
        }
        Cmd::Export { name, path } => {
            store
                .export(&name, &path)
                .with_context(|| format!("export {name}"))?;
        }
        Cmd::Mount { image, key, target } => {
            store.prepare_snapshot(&key, &image)?;
            if let Err(e) = store.mount_snapshot(&key, &target) {
                let _ = store.remove_snapshot(&key);
                return Err(e.into());
            }
            println!("{}", target.display());
        }
        Cmd::Unmount { key } => store.remove_snapshot(&key)?,
        Cmd::Snapshots => {
            for s in store.snapshotter().list_active()? {
                println!("{}", serde_json::to_string(&s)?);
            }
        }
        Cmd::Gc => {
            let stats = store.gc()?;
            println!("{}", serde_json::to_string(&stats)?);
        }
    }
    Ok(())
}
