//! Garbage collection, as upstream's kubelet does it (pkg/kubelet/kuberuntime/kuberuntime_gc.go,
//! pkg/kubelet/images/image_gc_manager.go):
//!
//! - **Containers** (every minute): exited (and unknown) containers created more than
//!   `--minimum-container-ttl-duration` ago are evictable, grouped by (pod UID, container
//!   name). All of a deleted pod's go; of a live pod's, the newest
//!   `--maximum-dead-containers-per-container` (1: the instance `lastState` and
//!   `/containerLogs?previous=true` read) stay; then `--maximum-dead-containers` caps the total.
//!   Running containers are never touched, and neither are the `Created` ones of live pods (the
//!   pod worker is between CreateContainer and StartContainer).
//! - **Sandboxes**: not ready and without containers; a live pod keeps its newest sandbox.
//! - **Pod log directories** `<podLogsDir>/<ns>_<name>_<uid>` of deleted pods without containers,
//!   and dangling `/var/log/containers` links of containers that are not running.
//! - **Images** (every 5 minutes): images no container uses (any state) and not pinned, oldest
//!   "last used" first, are removed when the image file system's usage reaches
//!   `imageGCHighThresholdPercent`, until it is down to `imageGCLowThresholdPercent`; images
//!   seen for less than `imageMinimumGCAge` stay. `imageMaximumGCAge` (when not 0) removes
//!   images unused for longer regardless of the disk, once the kubelet has run that long.
//!   First-detected/last-used times live in memory (they start over with the kubelet).
//!
//! "Deleted" means: the config sources have all been seen and neither the pod manager nor a
//! pod worker knows the UID ([`PodStates`]); a terminating pod's worker removes its own pod.
//! The states are read right before each removal, so a pod added meanwhile is left alone.

use crate::Shared;
use crate::cri::{LABEL_CONTAINER_NAME, LABEL_POD_UID};
use keelson_proto::runtime::v1 as pb;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Upstream's `ContainerGCPeriod` and `ImageGCPeriod`.
pub const CONTAINER_GC_PERIOD: Duration = Duration::from_secs(60);
pub const IMAGE_GC_PERIOD: Duration = Duration::from_secs(300);

/// Upstream's ContainerGCPolicy (flags `--minimum-container-ttl-duration`,
/// `--maximum-dead-containers-per-container`, `--maximum-dead-containers`; < 0 = no limit).
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerPolicy {
    pub min_age: Duration,
    pub max_per_pod_container: i64,
    pub max_containers: i64,
}

/// Upstream's ImageGCPolicy.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePolicy {
    pub high_threshold_percent: i64,
    pub low_threshold_percent: i64,
    pub min_age: Duration,
    /// 0: off.
    pub max_age: Duration,
}

/// Images pod workers are about to use, from before a worker checks the image until its
/// container exists (then the container keeps the image in use). A GC round that saw neither
/// the container nor the claim could otherwise remove an image between the pull and
/// CreateContainer; the removal checks the claims right before each image goes.
#[derive(Default)]
pub struct ImageClaims(std::sync::Mutex<HashMap<String, usize>>);

/// A worker's claim on an image's names and ID; released when dropped.
pub struct ImageClaim {
    claims: Arc<ImageClaims>,
    keys: Vec<String>,
}

impl ImageClaims {
    pub fn claim(self: &Arc<Self>, name: &str) -> ImageClaim {
        let mut c = ImageClaim {
            claims: self.clone(),
            keys: Vec::new(),
        };
        c.add(name);
        c
    }

    /// Whether an image with `id` and `names` is claimed.
    pub fn holds(&self, id: &str, names: &[String]) -> bool {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.contains_key(id) || names.iter().any(|n| m.contains_key(n))
    }
}

impl ImageClaim {
    /// Adds another key (the image ID once the runtime named it).
    pub fn add(&mut self, key: &str) {
        if key.is_empty() || self.keys.iter().any(|k| k == key) {
            return;
        }
        let mut m = self.claims.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(key.to_string()).or_default() += 1;
        self.keys.push(key.to_string());
    }
}

impl Drop for ImageClaim {
    fn drop(&mut self) {
        let mut m = self.claims.0.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(n) = m.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    m.remove(k);
                }
            }
        }
    }
}

/// What the pod manager knows, for the collectors: whether every source has been seen, and
/// the UIDs the pod manager wants or has a worker for.
#[derive(Default)]
pub struct PodStates {
    inner: RwLock<(bool, HashSet<String>)>,
}

impl PodStates {
    pub fn set(&self, sources_ready: bool, known: HashSet<String>) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = (sources_ready, known);
    }

    /// A pod is about to get a worker.
    pub fn insert(&self, uid: &str) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .insert(uid.to_string());
    }

    /// Upstream's `IsPodDeleted` (only once all sources are ready).
    pub fn deleted(&self, uid: &str) -> bool {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.0 && !g.1.contains(uid)
    }

    pub fn sources_ready(&self) -> bool {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).0
    }
}

// ---------------------------------------------------------------------------------------------
// Selection (plain data).

/// A container as the collector sees it (from ListContainers).
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub pod_uid: String,
    pub name: String,
    pub sandbox_id: String,
    pub created_at: i64,
    pub attempt: u32,
    pub state: pb::ContainerState,
}

/// Newest first: by attempt, then by creation time (upstream's `byAttempt`).
fn newest_first(a: &ContainerInfo, b: &ContainerInfo) -> std::cmp::Ordering {
    (b.attempt, b.created_at).cmp(&(a.attempt, a.created_at))
}

/// Removes the `n` oldest of `v` (appended to `out` oldest first, with whether each is in
/// unknown state and must be stopped first); `v` keeps the rest.
fn remove_oldest(v: &mut Vec<ContainerInfo>, n: usize, out: &mut Vec<(String, bool)>) {
    v.sort_by(newest_first);
    let keep = v.len().saturating_sub(n);
    for c in v.drain(keep..).rev() {
        let unknown = c.state == pb::ContainerState::ContainerUnknown;
        out.push((c.id, unknown));
    }
}

type Units = Vec<((String, String), Vec<ContainerInfo>)>;

fn enforce_per_unit(units: &mut Units, max: usize, out: &mut Vec<(String, bool)>) {
    for (_, v) in units.iter_mut() {
        let n = v.len().saturating_sub(max);
        if n > 0 {
            remove_oldest(v, n, out);
        }
    }
}

fn count(units: &Units) -> usize {
    units.iter().map(|(_, v)| v.len()).sum()
}

/// The containers to remove, in removal order, with whether each must be stopped first
/// (unknown state). `deleted` says whether a pod UID is deleted.
pub fn evictable_containers(
    all: &[ContainerInfo],
    policy: &ContainerPolicy,
    now_ns: i64,
    deleted: &dyn Fn(&str) -> bool,
) -> Vec<(String, bool)> {
    let min_age = i64::try_from(policy.min_age.as_nanos()).unwrap_or(i64::MAX);
    let newest_gc = now_ns.saturating_sub(min_age);
    let mut grouped: HashMap<(String, String), Vec<ContainerInfo>> = HashMap::new();
    for c in all {
        match c.state {
            pb::ContainerState::ContainerRunning => continue,
            // Between CreateContainer and StartContainer of a live pod's worker.
            pb::ContainerState::ContainerCreated if !deleted(&c.pod_uid) => continue,
            _ => {}
        }
        if c.created_at > newest_gc {
            continue;
        }
        grouped
            .entry((c.pod_uid.clone(), c.name.clone()))
            .or_default()
            .push(c.clone());
    }
    let mut units: Units = grouped.into_iter().collect();
    units.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    // Deleted pods: all of them.
    units.retain_mut(|(k, v)| {
        if deleted(&k.0) {
            let n = v.len();
            remove_oldest(v, n, &mut out);
            false
        } else {
            true
        }
    });
    if let Ok(max) = usize::try_from(policy.max_per_pod_container) {
        enforce_per_unit(&mut units, max, &mut out);
    }
    if let Ok(max) = usize::try_from(policy.max_containers)
        && count(&units) > max
    {
        // An equal share per unit (at least 1), then the oldest overall.
        let per = (max / units.len().max(1)).max(1);
        enforce_per_unit(&mut units, per, &mut out);
        let n = count(&units);
        if n > max {
            let mut flat: Vec<ContainerInfo> = units.into_iter().flat_map(|(_, v)| v).collect();
            remove_oldest(&mut flat, n - max, &mut out);
        }
    }
    out
}

/// A sandbox as the collector sees it (from ListPodSandbox).
#[derive(Debug, Clone)]
pub struct SandboxInfo {
    pub id: String,
    pub pod_uid: String,
    pub created_at: i64,
    pub attempt: u32,
    pub ready: bool,
}

/// The sandboxes to remove: not ready and without containers (`with_containers`: the sandbox
/// IDs containers still point to); a pod that is not deleted keeps its newest sandbox.
pub fn evictable_sandboxes(
    all: &[SandboxInfo],
    with_containers: &HashSet<String>,
    deleted: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let mut by_pod: HashMap<&str, Vec<&SandboxInfo>> = HashMap::new();
    for s in all {
        by_pod.entry(s.pod_uid.as_str()).or_default().push(s);
    }
    let mut pods: Vec<&str> = by_pod.keys().copied().collect();
    pods.sort();
    let mut out = Vec::new();
    for uid in pods {
        let mut v = by_pod.remove(uid).unwrap_or_default();
        v.sort_by_key(|s| std::cmp::Reverse((s.attempt, s.created_at)));
        let keep = usize::from(!deleted(uid));
        for s in v.into_iter().skip(keep).rev() {
            if !s.ready && !with_containers.contains(&s.id) {
                out.push(s.id.clone());
            }
        }
    }
    out
}

/// The pod UID of a pod log directory name `<ns>_<name>_<uid>`.
pub fn pod_uid_of_log_dir(name: &str) -> Option<&str> {
    let (_, uid) = name.rsplit_once('_')?;
    (!uid.is_empty()).then_some(uid)
}

/// What the image collector remembers of an image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// ns since the epoch.
    pub first_detected: i64,
    /// ns since the epoch; 0 = never seen in use.
    pub last_used: i64,
    pub size: u64,
    pub pinned: bool,
}

/// An image from ListImages.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub id: String,
    /// Tags and digests.
    pub names: Vec<String>,
    pub size: u64,
    pub pinned: bool,
}

/// Whether a container uses `img`: the containers' image references (ImageRef and the image
/// of their spec) against the image's ID, tags and digests.
fn image_used(img: &ImageInfo, in_use: &HashSet<String>) -> bool {
    in_use.contains(&img.id) || img.names.iter().any(|n| in_use.contains(n))
}

/// Upstream's `detectImages`: new images are recorded as first detected at `now`, used ones get
/// `last_used = now`, vanished ones are forgotten. Returns the IDs in use.
pub fn detect_images(
    records: &mut HashMap<String, ImageRecord>,
    images: &[ImageInfo],
    in_use: &HashSet<String>,
    now: i64,
) -> HashSet<String> {
    let mut used = HashSet::new();
    for img in images {
        let r = records.entry(img.id.clone()).or_insert(ImageRecord {
            first_detected: now,
            last_used: 0,
            size: 0,
            pinned: false,
        });
        if image_used(img, in_use) {
            r.last_used = now;
            used.insert(img.id.clone());
        }
        r.size = img.size;
        r.pinned = img.pinned;
    }
    let present: HashSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
    records.retain(|id, _| present.contains(id.as_str()));
    used
}

/// Upstream's `imagesInEvictionOrder`: images not in use and not pinned, least recently used
/// first (ties: first detected earlier first).
pub fn eviction_order(
    records: &HashMap<String, ImageRecord>,
    used: &HashSet<String>,
) -> Vec<(String, ImageRecord)> {
    let mut v: Vec<(String, ImageRecord)> = records
        .iter()
        .filter(|(id, r)| !used.contains(*id) && !r.pinned)
        .map(|(id, r)| (id.clone(), r.clone()))
        .collect();
    v.sort_by(|a, b| {
        (a.1.last_used, a.1.first_detected, &a.0).cmp(&(b.1.last_used, b.1.first_detected, &b.0))
    });
    v
}

/// Of `order`, the images `imageMaximumGCAge` removes: unused for longer than `max_age`, once
/// the collector has run for longer than `max_age` (upstream waits that long after the start).
pub fn too_old(
    order: &[(String, ImageRecord)],
    now: i64,
    began: i64,
    max_age: Duration,
) -> Vec<String> {
    let max = i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX);
    if max == 0 || now - began <= max {
        return Vec::new();
    }
    order
        .iter()
        .filter(|(_, r)| now - r.last_used > max)
        .map(|(id, _)| id.clone())
        .collect()
}

/// Of `order`, the images the disk-usage pass may remove (in that order): not used at `now`,
/// first detected at least `min_age` ago.
pub fn space_candidates(
    order: &[(String, ImageRecord)],
    now: i64,
    min_age: Duration,
) -> Vec<(String, u64)> {
    let min = i64::try_from(min_age.as_nanos()).unwrap_or(i64::MAX);
    order
        .iter()
        .filter(|(_, r)| r.last_used < now && now - r.first_detected >= min)
        .map(|(id, r)| (id.clone(), r.size))
        .collect()
}

/// Upstream's arithmetic: (usage percent, bytes to free to get down to the low threshold), or
/// None when the usage is below the high threshold.
pub fn bytes_to_free(capacity: u64, available: u64, policy: &ImagePolicy) -> Option<(i64, i64)> {
    let cap = i64::try_from(capacity).unwrap_or(i64::MAX);
    let avail = i64::try_from(available).unwrap_or(i64::MAX).min(cap);
    if cap == 0 {
        return None;
    }
    let usage = 100 - avail.saturating_mul(100) / cap;
    (usage >= policy.high_threshold_percent).then(|| {
        (
            usage,
            cap / 100 * (100 - policy.low_threshold_percent)
                + cap % 100 * (100 - policy.low_threshold_percent) / 100
                - avail,
        )
    })
}

// ---------------------------------------------------------------------------------------------
// The collectors.

fn container_infos(cs: Vec<pb::Container>) -> Vec<ContainerInfo> {
    cs.into_iter()
        .filter_map(|c| {
            // Only the kubelet's own containers.
            let uid = c.labels.get(LABEL_POD_UID)?.clone();
            let name = c
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .or_else(|| c.labels.get(LABEL_CONTAINER_NAME).cloned())
                .unwrap_or_default();
            Some(ContainerInfo {
                attempt: c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
                state: pb::ContainerState::try_from(c.state)
                    .unwrap_or(pb::ContainerState::ContainerUnknown),
                id: c.id,
                pod_uid: uid,
                name,
                sandbox_id: c.pod_sandbox_id,
                created_at: c.created_at,
            })
        })
        .collect()
}

async fn list_containers(sh: &Shared) -> Result<Vec<ContainerInfo>, tonic::Status> {
    let cs = sh
        .cri
        .runtime
        .clone()
        .list_containers(pb::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    Ok(container_infos(cs))
}

/// One round of container, sandbox and log garbage collection (upstream's
/// `containerGC.GarbageCollect`). Errors are collected and returned together.
pub async fn collect_containers(sh: &Shared) -> Result<(), String> {
    let states = &sh.pod_states;
    let deleted = |uid: &str| states.deleted(uid);
    let mut errors = Vec::new();
    let mut runtime = sh.cri.runtime.clone();
    // Containers.
    match list_containers(sh).await {
        Ok(all) => {
            let uid_of: HashMap<&str, &str> = all
                .iter()
                .map(|c| (c.id.as_str(), c.pod_uid.as_str()))
                .collect();
            for (id, unknown) in
                evictable_containers(&all, &sh.cfg.container_gc, crate::now_ns(), &deleted)
            {
                let uid = uid_of.get(id.as_str()).copied().unwrap_or("");
                if unknown {
                    tracing::info!(container = %id, "Container is in unknown state, try killing it before removal");
                    if let Err(e) = runtime
                        .stop_container(pb::StopContainerRequest {
                            container_id: id.clone(),
                            timeout: 0,
                        })
                        .await
                    {
                        tracing::warn!(container = %id, error = %e.message(), "Failed to stop container");
                        continue;
                    }
                }
                tracing::debug!(container = %id, pod_uid = %uid, "removing a dead container");
                if let Err(e) = runtime
                    .remove_container(pb::RemoveContainerRequest {
                        container_id: id.clone(),
                    })
                    .await
                    && e.code() != tonic::Code::NotFound
                {
                    tracing::warn!(container = %id, error = %e.message(), "Failed to remove container");
                }
            }
        }
        Err(e) => errors.push(format!("listing containers: {}", e.message())),
    }
    // Sandboxes, against what is left.
    let left = list_containers(sh).await;
    let sandboxes = runtime
        .list_pod_sandbox(pb::ListPodSandboxRequest { filter: None })
        .await;
    match (&left, sandboxes) {
        (Ok(left), Ok(sbs)) => {
            let with_containers: HashSet<String> =
                left.iter().map(|c| c.sandbox_id.clone()).collect();
            let infos: Vec<SandboxInfo> = sbs
                .into_inner()
                .items
                .into_iter()
                .filter_map(|s| {
                    let uid = s.labels.get(LABEL_POD_UID)?.clone();
                    Some(SandboxInfo {
                        attempt: s.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
                        ready: s.state == pb::PodSandboxState::SandboxReady as i32,
                        id: s.id,
                        pod_uid: uid,
                        created_at: s.created_at,
                    })
                })
                .collect();
            for id in evictable_sandboxes(&infos, &with_containers, &deleted) {
                tracing::debug!(sandbox = %id, "removing a dead sandbox");
                // The kubelet stopped it already; stop again to be sure, as upstream.
                if let Err(e) = runtime
                    .stop_pod_sandbox(pb::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await
                {
                    tracing::warn!(sandbox = %id, error = %e.message(), "Failed to stop sandbox before removing");
                    continue;
                }
                if let Err(e) = runtime
                    .remove_pod_sandbox(pb::RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await
                {
                    tracing::warn!(sandbox = %id, error = %e.message(), "Failed to remove sandbox");
                }
            }
        }
        (Err(e), _) => errors.push(format!("listing containers: {}", e.message())),
        (_, Err(e)) => errors.push(format!("listing sandboxes: {}", e.message())),
    }
    // Pod log directories of deleted pods that have no containers left.
    if states.sources_ready()
        && let Ok(left) = &left
    {
        let has_containers: HashSet<&str> = left.iter().map(|c| c.pod_uid.as_str()).collect();
        match std::fs::read_dir(&sh.cfg.pod_logs_dir) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let Some(uid) = pod_uid_of_log_dir(&name) else {
                        continue;
                    };
                    if has_containers.contains(uid) || !deleted(uid) {
                        continue;
                    }
                    let p = e.path();
                    let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                    match r {
                        Ok(()) => {
                            tracing::info!(dir = %p.display(), "removed the log directory of a deleted pod")
                        }
                        Err(e) => {
                            tracing::warn!(dir = %p.display(), error = %e, "Failed to remove pod logs directory")
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!(
                "failed to read podLogsRootDirectory {:?}: {e}",
                sh.cfg.pod_logs_dir
            )),
        }
    }
    dangling_links(sh, &mut runtime).await;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The container ID in a `<pod>_<ns>_<container>-<id>.log` link name.
fn link_container_id(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".log")?;
    let (_, id) = stem.rsplit_once('-')?;
    (!id.is_empty()).then_some(id)
}

/// Links in the container log links directory whose log file is gone, of containers that are
/// not running (a running container's log is briefly missing while it is rotated).
async fn dangling_links(sh: &Shared, runtime: &mut crate::cri::RuntimeClient) {
    let dir: &Path = &sh.cfg.container_log_links_dir;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".log") {
            continue;
        }
        let p = e.path();
        if std::fs::metadata(&p).is_ok() || std::fs::symlink_metadata(&p).is_err() {
            continue;
        }
        if let Some(id) = link_container_id(&name)
            && let Ok(r) = runtime
                .container_status(pb::ContainerStatusRequest {
                    container_id: id.to_string(),
                    verbose: false,
                })
                .await
            && r.into_inner()
                .status
                .is_some_and(|s| s.state != pb::ContainerState::ContainerExited as i32)
        {
            continue;
        }
        match std::fs::remove_file(&p) {
            Ok(()) => tracing::debug!(link = %p.display(), "removed a dangling container log link"),
            Err(e) => {
                tracing::warn!(link = %p.display(), error = %e, "Failed to remove container log dead symlink")
            }
        }
    }
}

/// The container collector, every `period`.
pub async fn containers(sh: Arc<Shared>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = collect_containers(&sh).await {
            tracing::error!(error = %e, "Container garbage collection failed");
        }
    }
}

/// The image collector's memory.
pub struct ImageGc {
    records: HashMap<String, ImageRecord>,
    began: i64,
}

/// The images the runtime's containers (any state) were made from: their image refs and
/// image names.
async fn images_of_containers(sh: &Shared) -> Result<HashSet<String>, String> {
    let containers = sh
        .cri
        .runtime
        .clone()
        .list_containers(pb::ListContainersRequest { filter: None })
        .await
        .map_err(|e| format!("listing containers: {}", e.message()))?
        .into_inner()
        .containers;
    let mut in_use: HashSet<String> = HashSet::new();
    for c in &containers {
        if !c.image_ref.is_empty() {
            in_use.insert(c.image_ref.clone());
        }
        if let Some(i) = c.image.as_ref().filter(|i| !i.image.is_empty()) {
            in_use.insert(i.image.clone());
        }
    }
    Ok(in_use)
}

impl ImageGc {
    pub fn new(began: i64) -> Self {
        ImageGc {
            records: HashMap::new(),
            began,
        }
    }

    /// One round (upstream's `GarbageCollect`).
    pub async fn collect(&mut self, sh: &Shared) -> Result<(), String> {
        let policy = &sh.cfg.image_gc;
        let mut images_client = sh.cri.images.clone();
        let now = crate::now_ns();
        let images = images_client
            .list_images(pb::ListImagesRequest { filter: None })
            .await
            .map_err(|e| format!("listing images: {}", e.message()))?
            .into_inner()
            .images;
        let in_use = images_of_containers(sh).await?;
        let infos: Vec<ImageInfo> = images
            .into_iter()
            .map(|i| ImageInfo {
                names: i.repo_tags.into_iter().chain(i.repo_digests).collect(),
                id: i.id,
                size: i.size,
                pinned: i.pinned,
            })
            .collect();
        let names: HashMap<String, Vec<String>> = infos
            .iter()
            .map(|i| (i.id.clone(), i.names.clone()))
            .collect();
        let names_of = |id: &str| names.get(id).cloned().unwrap_or_default();
        let used = detect_images(&mut self.records, &infos, &in_use, now);
        let order = eviction_order(&self.records, &used);
        let mut errors = Vec::new();
        let old = too_old(&order, now, self.began, policy.max_age);
        for id in &old {
            tracing::info!(image = %id, max_age = ?policy.max_age, "Removing image: unused for longer than imageMaximumGCAge");
            if let Err(e) = self.remove(sh, &mut images_client, id, &names_of(id)).await {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            return Err(format!(
                "wanted to free images older than {}, encountered errors in image deletion: {}",
                crate::configz::go_duration(policy.max_age),
                errors.join(", ")
            ));
        }
        let order: Vec<(String, ImageRecord)> = order
            .into_iter()
            .filter(|(id, _)| !old.contains(id))
            .collect();
        let fs = images_client
            .image_fs_info(pb::ImageFsInfoRequest {})
            .await
            .map_err(|e| format!("image fs info: {}", e.message()))?
            .into_inner()
            .image_filesystems
            .into_iter()
            .next()
            .ok_or("the runtime reports no image filesystem")?;
        let mount = fs.fs_id.map(|i| i.mountpoint).unwrap_or_default();
        let st = crate::cgroupstats::statvfs(Path::new(&mount))
            .ok_or_else(|| format!("statfs of the image filesystem {mount:?} failed"))?;
        if st.capacity == 0 {
            return Err("invalid capacity 0 on image filesystem".into());
        }
        let Some((usage, want)) = bytes_to_free(st.capacity, st.available, policy) else {
            tracing::debug!(
                usage = 100 - (st.available.min(st.capacity) * 100 / st.capacity),
                high = policy.high_threshold_percent,
                "image garbage collection: disk usage is below the high threshold"
            );
            return Ok(());
        };
        tracing::info!(
            usage,
            high_threshold = policy.high_threshold_percent,
            amount_to_free = want,
            low_threshold = policy.low_threshold_percent,
            "Disk usage on image filesystem is over the high threshold, trying to free bytes down to the low threshold"
        );
        let mut freed: i64 = 0;
        for (id, size) in space_candidates(&order, now, policy.min_age) {
            if freed >= want {
                break;
            }
            tracing::info!(image = %id, size, "Removing image to free bytes");
            match self
                .remove(sh, &mut images_client, &id, &names_of(&id))
                .await
            {
                Ok(true) => freed = freed.saturating_add(i64::try_from(size).unwrap_or(i64::MAX)),
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(format!(
                "wanted to free {want} bytes, but freed {freed} bytes space with errors in image deletion: {}",
                errors.join(", ")
            ));
        }
        if freed < want {
            let msg = format!(
                "Failed to garbage collect required amount of images. Attempted to free {want} bytes, but only found {freed} bytes eligible to free."
            );
            tracing::warn!(reason = "FreeDiskSpaceFailed", "{msg}");
            return Err(msg);
        }
        Ok(())
    }

    /// Removes an image unless a pod worker claimed it meanwhile (then Ok(false)).
    async fn remove(
        &mut self,
        sh: &Shared,
        client: &mut pb::image_service_client::ImageServiceClient<crate::metrics::Instrumented>,
        id: &str,
        names: &[String],
    ) -> Result<bool, String> {
        // Claims first, then the containers: a worker that released its claim has its
        // container listed by now.
        let img = ImageInfo {
            id: id.to_string(),
            names: names.to_vec(),
            size: 0,
            pinned: false,
        };
        if sh.image_claims.holds(id, names) || image_used(&img, &images_of_containers(sh).await?) {
            tracing::info!(image = %id, "not removing an image a container uses or is about to");
            return Ok(false);
        }
        client
            .remove_image(pb::RemoveImageRequest {
                image: Some(pb::ImageSpec {
                    image: id.to_string(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|e| format!("removing image {id}: {}", e.message()))?;
        self.records.remove(id);
        Ok(true)
    }
}

/// The image collector, every `period`. A high threshold of 100 turns it off, as upstream.
pub async fn images(sh: Arc<Shared>, period: Duration) {
    if sh.cfg.image_gc.high_threshold_percent == 100 {
        tracing::info!("ImageGCHighThresholdPercent is set 100, Disable image GC");
        return;
    }
    let mut gc = ImageGc::new(crate::now_ns());
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed_before = false;
    loop {
        tick.tick().await;
        match gc.collect(&sh).await {
            Ok(()) => failed_before = false,
            Err(e) if failed_before => {
                // Upstream also records an ImageGCFailed event on the node.
                tracing::error!(reason = "ImageGCFailed", error = %e, "Image garbage collection failed multiple times in a row");
            }
            Err(e) => {
                failed_before = true;
                tracing::error!(error = %e, "Image garbage collection failed once. Stats initialization may not have completed yet");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn image_claims_hold_names_and_ids_until_dropped() {
        let claims = Arc::new(ImageClaims::default());
        let names = vec!["reg/busybox:1".to_string()];
        assert!(!claims.holds("sha256:a", &names));
        let mut first = claims.claim("reg/busybox:1");
        let second = claims.claim("reg/busybox:1");
        assert!(claims.holds("sha256:a", &names));
        first.add("sha256:a");
        assert!(claims.holds("sha256:a", &[]));
        drop(first);
        // The other worker still holds the name; the ID went with the first claim.
        assert!(claims.holds("sha256:a", &names));
        assert!(!claims.holds("sha256:a", &[]));
        drop(second);
        assert!(!claims.holds("sha256:a", &names));
    }

    fn c(
        id: &str,
        uid: &str,
        name: &str,
        attempt: u32,
        created: i64,
        state: pb::ContainerState,
    ) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            pod_uid: uid.into(),
            name: name.into(),
            sandbox_id: format!("sb-{uid}"),
            created_at: created * S,
            attempt,
            state,
        }
    }

    fn policy(min_age: u64, per: i64, max: i64) -> ContainerPolicy {
        ContainerPolicy {
            min_age: Duration::from_secs(min_age),
            max_per_pod_container: per,
            max_containers: max,
        }
    }

    fn ids(v: Vec<(String, bool)>) -> Vec<String> {
        v.into_iter().map(|(i, _)| i).collect()
    }

    use pb::ContainerState::{
        ContainerCreated as Created, ContainerExited as Exited, ContainerRunning as Running,
        ContainerUnknown as Unknown,
    };

    #[test]
    fn keeps_the_newest_dead_instance_per_container() {
        let all = vec![
            c("a0", "p", "a", 0, 10, Exited),
            c("a1", "p", "a", 1, 20, Exited),
            c("a2", "p", "a", 2, 30, Exited),
            c("a3", "p", "a", 3, 40, Running),
            c("b0", "p", "b", 0, 10, Exited),
        ];
        let out = ids(evictable_containers(
            &all,
            &policy(0, 1, -1),
            100 * S,
            &|_| false,
        ));
        // Oldest first; a2 (the newest dead one) and the running a3 stay; b0 is b's only one.
        assert_eq!(out, vec!["a0", "a1"]);
        // No per-container limit: nothing.
        assert!(evictable_containers(&all, &policy(0, -1, -1), 100 * S, &|_| false).is_empty());
        // Keep none.
        let out = ids(evictable_containers(
            &all,
            &policy(0, 0, -1),
            100 * S,
            &|_| false,
        ));
        assert_eq!(out, vec!["a0", "a1", "a2", "b0"]);
    }

    #[test]
    fn attempt_orders_before_creation_time() {
        // A higher attempt is newer even when created "earlier" (clock steps).
        let all = vec![
            c("x1", "p", "a", 1, 50, Exited),
            c("x2", "p", "a", 2, 40, Exited),
        ];
        assert_eq!(
            ids(evictable_containers(
                &all,
                &policy(0, 1, -1),
                100 * S,
                &|_| false
            )),
            vec!["x1"]
        );
    }

    #[test]
    fn min_age_and_states() {
        let all = vec![
            c("old", "p", "a", 0, 10, Exited),
            c("young", "p", "a", 1, 95, Exited),
            c("newer", "p", "a", 2, 96, Exited),
            c("created", "p", "b", 0, 10, Created),
            c("created2", "p", "b", 1, 11, Created),
        ];
        // Created at 95/96 with a minimum age of 10s at t=100: too young to count.
        let out = ids(evictable_containers(
            &all,
            &policy(10, 0, -1),
            100 * S,
            &|_| false,
        ));
        assert_eq!(out, vec!["old"]);
        // A deleted pod: every dead one old enough goes, created ones too.
        let out = ids(evictable_containers(
            &all,
            &policy(10, 1, -1),
            100 * S,
            &|_| true,
        ));
        assert_eq!(out, vec!["old", "created", "created2"]);
    }

    #[test]
    fn deleted_pods_lose_everything_but_running_containers() {
        let all = vec![
            c("d0", "gone", "a", 0, 10, Exited),
            c("d1", "gone", "a", 1, 20, Unknown),
            c("d2", "gone", "a", 2, 30, Running),
            c("l0", "live", "a", 0, 10, Exited),
        ];
        let out = evictable_containers(&all, &policy(0, 1, -1), 100 * S, &|u| u == "gone");
        assert_eq!(
            out,
            vec![("d0".to_string(), false), ("d1".to_string(), true)]
        );
    }

    #[test]
    fn global_cap_shares_then_takes_the_oldest() {
        let mut all = Vec::new();
        for (uid, base) in [("p", 0), ("q", 100)] {
            for i in 0..4u32 {
                all.push(c(
                    &format!("{uid}{i}"),
                    uid,
                    "a",
                    i,
                    base + i64::from(i),
                    Exited,
                ));
            }
        }
        // 8 dead, cap 4: 2 per unit stay (the newest two of each).
        let out = ids(evictable_containers(
            &all,
            &policy(0, -1, 4),
            1000 * S,
            &|_| false,
        ));
        assert_eq!(out.len(), 4);
        for gone in ["p0", "p1", "q0", "q1"] {
            assert!(out.contains(&gone.to_string()), "{out:?}");
        }
        // Cap 1 with two units: 1 per unit (the minimum share), then the oldest overall goes.
        let out = ids(evictable_containers(
            &all,
            &policy(0, -1, 1),
            1000 * S,
            &|_| false,
        ));
        assert_eq!(out.len(), 7);
        assert!(!out.contains(&"q3".to_string()), "{out:?}");
    }

    #[test]
    fn sandboxes() {
        let sb = |id: &str, uid: &str, attempt: u32, ready: bool| SandboxInfo {
            id: id.into(),
            pod_uid: uid.into(),
            created_at: i64::from(attempt) * S,
            attempt,
            ready,
        };
        let all = vec![
            sb("l0", "live", 0, false),
            sb("l1", "live", 1, false),
            sb("l2", "live", 2, false),
            sb("g0", "gone", 0, false),
            sb("g1", "gone", 1, true),
            sb("g2", "gone", 2, false),
        ];
        let with = HashSet::from(["l0".to_string(), "g2".to_string()]);
        let mut out = evictable_sandboxes(&all, &with, &|u| u == "gone");
        out.sort();
        // live: l2 (newest) stays, l0 has containers; gone: g1 is ready, g2 has containers.
        assert_eq!(out, vec!["g0", "l1"]);
        // Once a deleted pod's containers are gone, its newest dead sandbox goes too.
        let mut out = evictable_sandboxes(&all, &HashSet::new(), &|u| u == "gone");
        out.sort();
        assert_eq!(out, vec!["g0", "g2", "l0", "l1"]);
    }

    #[test]
    fn log_dir_names() {
        assert_eq!(
            pod_uid_of_log_dir("default_web-node_0123abc"),
            Some("0123abc")
        );
        assert_eq!(pod_uid_of_log_dir("kube_system_a_b_uid"), Some("uid"));
        assert_eq!(pod_uid_of_log_dir("nounderscore"), None);
        assert_eq!(pod_uid_of_log_dir("trailing_"), None);
        assert_eq!(
            link_container_id("web_default_main-abc123.log"),
            Some("abc123")
        );
        assert_eq!(link_container_id("web_default_main.txt"), None);
    }

    fn img(id: &str, name: &str, size: u64, pinned: bool) -> ImageInfo {
        ImageInfo {
            id: id.into(),
            names: vec![name.into()],
            size,
            pinned,
        }
    }

    #[test]
    fn image_records_and_order() {
        let mut rec = HashMap::new();
        let images = vec![
            img("sha256:a", "r/a:1", 10, false),
            img("sha256:b", "r/b@sha256:bb", 20, false),
            img("sha256:c", "r/c:1", 30, false),
            img("sha256:p", "pause:1", 5, true),
        ];
        // t=10: b used (by digest reference).
        let used = detect_images(
            &mut rec,
            &images,
            &HashSet::from(["r/b@sha256:bb".to_string()]),
            10 * S,
        );
        assert_eq!(used, HashSet::from(["sha256:b".to_string()]));
        assert_eq!(rec["sha256:a"].first_detected, 10 * S);
        assert_eq!(rec["sha256:b"].last_used, 10 * S);
        // t=20: a used by ID; b no longer.
        let used = detect_images(
            &mut rec,
            &images,
            &HashSet::from(["sha256:a".to_string()]),
            20 * S,
        );
        let order = eviction_order(&rec, &used);
        // Not a (in use), not p (pinned); c never used (0) before b (last used at 10).
        let ids: Vec<&str> = order.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(ids, vec!["sha256:c", "sha256:b"]);
        // Min age 15s at t=20: both were first seen at 10: too young.
        assert!(space_candidates(&order, 20 * S, Duration::from_secs(15)).is_empty());
        assert_eq!(
            space_candidates(&order, 30 * S, Duration::from_secs(15)),
            vec![("sha256:c".to_string(), 30), ("sha256:b".to_string(), 20)]
        );
        // Max age: only after the collector ran for longer than it, unused for longer.
        assert!(too_old(&order, 20 * S, 0, Duration::ZERO).is_empty());
        assert!(too_old(&order, 20 * S, 10 * S, Duration::from_secs(15)).is_empty());
        assert_eq!(
            too_old(&order, 40 * S, 0, Duration::from_secs(35)),
            vec!["sha256:c"]
        );
        // A vanished image is forgotten.
        detect_images(&mut rec, &images[..1], &HashSet::new(), 30 * S);
        assert_eq!(rec.len(), 1);
    }

    #[test]
    fn thresholds() {
        let p = ImagePolicy {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            min_age: Duration::from_secs(120),
            max_age: Duration::ZERO,
        };
        // 50% used: nothing.
        assert_eq!(bytes_to_free(1000, 500, &p), None);
        // 90% used: free down to 80% (200 bytes available wanted, 100 there).
        assert_eq!(bytes_to_free(1000, 100, &p), Some((90, 100)));
        // Exactly the high threshold counts.
        assert_eq!(bytes_to_free(1000, 150, &p), Some((85, 50)));
        // Available above capacity is capped.
        assert_eq!(bytes_to_free(1000, 2000, &p), None);
        let p0 = ImagePolicy {
            high_threshold_percent: 1,
            low_threshold_percent: 0,
            ..p
        };
        assert_eq!(bytes_to_free(1000, 500, &p0), Some((50, 500)));
        assert_eq!(bytes_to_free(0, 0, &p0), None);
    }
}
