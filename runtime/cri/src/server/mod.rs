//! keelsond's gRPC services: `runtime.v1.RuntimeService` ([`runtime`]) and
//! `runtime.v1.ImageService` ([`image`]) over one [`Daemon`].
//!
//! The daemon's view is the records in [`Store`] (persistent root) plus what the host says
//! (the engine's state, the monitors' exit files, the infra processes). Every mutating call on
//! a sandbox or container holds that object's lock, so the kubelet's retries and parallel
//! calls never interleave on one object.

pub mod events;
pub mod image;
pub mod live;
pub mod mon;
pub mod net;
pub mod runtime;
pub mod stats;
pub mod trash;

use crate::store::{ContainerRecord, SandboxRecord, Store};
use keelson_image::ImageStore;
use keelson_proto::runtime::v1 as pb;
use prost::Message as _;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where things are and which helpers run; from keelsond's flags.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Persistent state (records, images, snapshots): `/var/lib/keelsond`.
    pub root: PathBuf,
    /// Runtime state (engine root, bundles, netns pins, monitors): `/run/keelsond`.
    pub state: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// libcni's cache dir (results): `/var/lib/cni`.
    pub cni_cache_dir: PathBuf,
    pub registry_config_dir: PathBuf,
    /// The helper binaries; by default next to keelsond.
    pub pause_bin: PathBuf,
    pub monitor_bin: PathBuf,
    pub keelson_bin: PathBuf,
}

impl DaemonConfig {
    pub fn engine_root(&self) -> PathBuf {
        self.state.join("keelson")
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.state.join("containers").join(id)
    }
}

/// The daemon: configuration, records, images, and a lock per object.
pub struct Daemon {
    pub cfg: DaemonConfig,
    pub store: Store,
    pub images: ImageStore,
    pub sandboxes: Mutex<HashMap<String, SandboxRecord>>,
    pub containers: Mutex<HashMap<String, ContainerRecord>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub events: tokio::sync::broadcast::Sender<pb::ContainerEventResponse>,
    /// Containers whose monitor an exit watcher waits on ([`events`]).
    watching: Mutex<std::collections::HashSet<String>>,
    /// Containers whose stop was reported (ContainerStoppedEvent goes once per container).
    stopped: Mutex<std::collections::HashSet<String>>,
    /// Pod CIDR from UpdateRuntimeConfig (reported in Status info).
    pub pod_cidr: Mutex<String>,
    /// The streaming server's waiting requests and URL base (Exec, Attach, PortForward).
    pub streams: crate::streaming::Streams,
    /// The previous CPU sample of each container and pod (for `usage_nano_cores`).
    pub cpu_samples: stats::CpuSamples,
    /// The last walk of each container's writable layer (ContainerStats.writable_layer).
    pub layer_usage: stats::LayerUsage,
    /// Deletes retired snapshot trees in the background.
    pub trash: trash::Trash,
    /// Pidfds of the infra processes and monitors found alive ([`live`]).
    pub live: live::Liveness,
    /// The cgroup hierarchies and keelsond's own cgroups, read once at start (mountinfo
    /// grows with every pod, and each read of it costs more); monitors get it too. A change
    /// of the host's cgroup mounts needs a restart, as containerd's cgroup mode does.
    pub cgroup_layout: keelson_container::cgroups::Layout,
}

/// Errors of daemon operations, mapped onto gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<DaemonError> for tonic::Status {
    fn from(e: DaemonError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            DaemonError::NotFound(_) => tonic::Status::not_found(msg),
            DaemonError::Invalid(_) => tonic::Status::invalid_argument(msg),
            DaemonError::Exists(_) => tonic::Status::already_exists(msg),
            DaemonError::Unimplemented(_) => tonic::Status::unimplemented(msg),
            DaemonError::Precondition(_) => tonic::Status::failed_precondition(msg),
            DaemonError::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(msg),
            DaemonError::Unavailable(_) => tonic::Status::unavailable(msg),
            DaemonError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}

pub type DResult<T> = std::result::Result<T, DaemonError>;

pub fn internal(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Internal(e.to_string())
}

/// Nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A new 64-hex-digit object ID.
pub fn new_id() -> DResult<String> {
    let mut b = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom").map_err(internal)?;
    std::io::Read::read_exact(&mut f, &mut b).map_err(internal)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Daemon {
    /// Opens the stores and rebuilds the view from disk.
    pub fn open(cfg: DaemonConfig) -> anyhow::Result<Arc<Daemon>> {
        use anyhow::Context;
        for d in [&cfg.root, &cfg.state] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let store = Store::open(&cfg.root).context("opening the records")?;
        // The state dir holds a tree per sandbox and per container (the engine's too); on
        // ext4, spread those over the block groups (see `mark_top_dir`).
        for d in [
            cfg.state.join("sandboxes"),
            cfg.state.join("containers"),
            cfg.engine_root(),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            keelson_image::fsutil::mark_top_dir_or_log(&d);
        }
        // The image store shares the root with the records (content/, snapshots/, metadata/
        // beside records.log), so `keelson-image` with its default root works
        // on keelsond's images (import, inspect, gc).
        let mut icfg = keelson_image::StoreConfig::new(cfg.root.clone());
        if cfg.registry_config_dir.is_dir() {
            icfg.hosts = keelson_image::RegistryHosts::load_dir(&cfg.registry_config_dir)
                .with_context(|| {
                    format!(
                        "reading registry hosts from {}",
                        cfg.registry_config_dir.display()
                    )
                })?;
        }
        let images = ImageStore::open(icfg).context("opening the image store")?;
        let trash = trash::Trash::start().context("starting the snapshot deleting thread")?;
        match images.retired_snapshots() {
            Ok(dirs) => dirs.into_iter().for_each(|d| trash.put(d)),
            Err(e) => tracing::warn!(error = %e, "listing retired snapshots"),
        }
        let sandboxes = store
            .sandboxes()?
            .into_iter()
            .map(|mut r| {
                decode_sandbox_facts(&mut r);
                (r.id.clone(), r)
            })
            .collect();
        let containers = store
            .containers()?
            .into_iter()
            .map(|mut r| {
                r.labels = container_labels(&r.config);
                (r.id.clone(), r)
            })
            .collect();
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let cgroup_layout =
            keelson_container::cgroups::Layout::discover().context("reading the cgroup layout")?;
        Ok(Arc::new(Daemon {
            cfg,
            store,
            images,
            sandboxes: Mutex::new(sandboxes),
            containers: Mutex::new(containers),
            locks: Mutex::new(HashMap::new()),
            events,
            watching: Mutex::new(std::collections::HashSet::new()),
            stopped: Mutex::new(std::collections::HashSet::new()),
            pod_cidr: Mutex::new(String::new()),
            streams: crate::streaming::Streams::default(),
            cpu_samples: stats::CpuSamples::default(),
            layer_usage: stats::LayerUsage::default(),
            trash,
            live: live::Liveness::default(),
            cgroup_layout,
        }))
    }

    /// The lock of one object (sandbox or container ID).
    pub async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks
                .entry(id.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        m.lock_owned().await
    }

    pub fn forget_lock(&self, id: &str) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.remove(id);
    }

    pub fn sandbox(&self, id: &str) -> DResult<SandboxRecord> {
        let s = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
        find_by_prefix(&s, id, "sandbox")
    }

    pub fn container(&self, id: &str) -> DResult<ContainerRecord> {
        let c = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        find_by_prefix(&c, id, "container")
    }

    /// Writes the record (synced to disk, so off the async workers), then updates the table.
    pub async fn put_sandbox(&self, mut r: SandboxRecord) -> DResult<()> {
        let store = self.store.clone();
        let r2 = r.clone();
        blocking(move || store.save_sandbox(&r2).map_err(internal)).await?;
        // A record taken from the table has them; a new one gets them here.
        if r.metadata.is_none() {
            decode_sandbox_facts(&mut r);
        }
        let mut s = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
        s.insert(r.id.clone(), r);
        Ok(())
    }

    /// As [`Daemon::put_sandbox`].
    pub async fn put_container(&self, mut r: ContainerRecord) -> DResult<()> {
        let store = self.store.clone();
        let r2 = r.clone();
        blocking(move || store.save_container(&r2).map_err(internal)).await?;
        if r.labels.is_empty() {
            r.labels = container_labels(&r.config);
        }
        let mut c = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        c.insert(r.id.clone(), r);
        Ok(())
    }

    pub async fn drop_sandbox(&self, id: &str) -> DResult<()> {
        let store = self.store.clone();
        let rid = id.to_string();
        blocking(move || store.remove_sandbox(&rid).map_err(internal)).await?;
        let mut s = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
        s.remove(id);
        Ok(())
    }

    pub async fn drop_container(&self, id: &str) -> DResult<()> {
        let store = self.store.clone();
        let rid = id.to_string();
        blocking(move || store.remove_container(&rid).map_err(internal)).await?;
        let mut c = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        c.remove(id);
        drop(c);
        let mut s = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        s.remove(id);
        Ok(())
    }

    pub fn all_sandboxes(&self) -> Vec<SandboxRecord> {
        self.sandboxes_where(|_| true)
    }

    pub fn all_containers(&self) -> Vec<ContainerRecord> {
        self.containers_where(|_| true)
    }

    /// The sandbox records `keep` selects (only those are cloned).
    pub fn sandboxes_where(&self, keep: impl Fn(&SandboxRecord) -> bool) -> Vec<SandboxRecord> {
        let s = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
        s.values().filter(|r| keep(r)).cloned().collect()
    }

    /// The container records `keep` selects (only those are cloned).
    pub fn containers_where(
        &self,
        keep: impl Fn(&ContainerRecord) -> bool,
    ) -> Vec<ContainerRecord> {
        let c = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        c.values().filter(|r| keep(r)).cloned().collect()
    }

    /// Marks `id` as watched; false if a watcher already waits on it.
    pub fn watching_insert(&self, id: &str) -> bool {
        let mut w = self.watching.lock().unwrap_or_else(|p| p.into_inner());
        w.insert(id.to_string())
    }

    pub fn watching_remove(&self, id: &str) {
        let mut w = self.watching.lock().unwrap_or_else(|p| p.into_inner());
        w.remove(id);
    }

    /// Records that the stop of container `id` was reported; false if it already was.
    pub fn mark_stopped(&self, id: &str) -> bool {
        let mut s = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        s.insert(id.to_string())
    }
}

/// Finds a record by full ID or unique prefix (crictl accepts prefixes).
fn find_by_prefix<T: Clone>(m: &HashMap<String, T>, id: &str, what: &str) -> DResult<T> {
    if id.is_empty() {
        return Err(DaemonError::Invalid(format!("{what} ID must not be empty")));
    }
    if let Some(v) = m.get(id) {
        return Ok(v.clone());
    }
    let hits: Vec<&String> = m.keys().filter(|k| k.starts_with(id)).collect();
    match hits.as_slice() {
        [one] => Ok(m[*one].clone()),
        [] => Err(DaemonError::NotFound(format!("{what} \"{id}\" not found"))),
        _ => Err(DaemonError::Invalid(format!(
            "{what} ID prefix \"{id}\" is ambiguous"
        ))),
    }
}

/// The labels and metadata of a stored `PodSandboxConfig` (none if it does not decode: such
/// a record is reported by whatever decodes its config next).
fn decode_sandbox_facts(r: &mut SandboxRecord) {
    let c = pb::PodSandboxConfig::decode(r.config.as_slice()).unwrap_or_default();
    r.labels = Arc::new(c.labels);
    r.metadata = c.metadata.map(Arc::new);
}

/// The labels of a stored `ContainerConfig`, as [`sandbox_labels`].
fn container_labels(config: &[u8]) -> Arc<HashMap<String, String>> {
    Arc::new(
        pb::ContainerConfig::decode(config)
            .map(|c| c.labels)
            .unwrap_or_default(),
    )
}

/// Whether `labels` has every pair of `selector`.
pub fn matches_labels(
    labels: &HashMap<String, String>,
    selector: &HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Runs blocking host work off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> DResult<T> + Send + 'static,
) -> DResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DaemonError::Internal(format!("worker task: {e}")))?
}

/// Waits up to `d` for `cond`, polling.
pub async fn wait_until(d: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + d;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
