//! The pod manager: one place where config sources (today the static pod directory; the
//! apiserver next) meet the pod workers, plus the PLEG that wakes workers on runtime changes
//! and finds pods the runtime runs that no source wants any more (after a restart).

use crate::Shared;
use crate::source::{self, CONFIG_SEEN, SourcedPod};
use crate::worker::{self, Msg};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument;

/// What a source says: the whole set of pods it wants now.
pub struct SourceUpdate {
    pub pods: BTreeMap<String, SourcedPod>,
}

struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
    terminating: bool,
}

pub struct Manager {
    sh: Arc<Shared>,
    desired: BTreeMap<String, Pod>,
    workers: HashMap<String, Handle>,
    done_tx: mpsc::UnboundedSender<String>,
    sources_ready: bool,
    /// PLEG reports that came before the sources were ready (checked once they are).
    early: HashSet<String>,
    /// A QoS cgroup housekeeping pass is running.
    qos_busy: Arc<std::sync::atomic::AtomicBool>,
}

fn same_pod(a: &Pod, b: &Pod) -> bool {
    a.spec == b.spec && a.metadata.labels == b.metadata.labels && {
        let strip = |p: &Pod| {
            let mut a = p.metadata.annotations.clone().unwrap_or_default();
            a.remove(CONFIG_SEEN);
            a
        };
        strip(a) == strip(b)
    }
}

impl Manager {
    fn spawn(&mut self, pod: Pod) {
        let (ns, name, uid) = crate::podconfig::meta(&pod);
        let span = tracing::info_span!("pod", pod = %format!("{ns}/{name}"), uid = %uid);
        let uid = uid.to_string();
        self.sh.pod_states.insert(&uid);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(worker::run(self.sh.clone(), pod, rx, self.done_tx.clone()).instrument(span));
        self.workers.insert(
            uid,
            Handle {
                tx,
                terminating: false,
            },
        );
    }

    /// Admission of a new pod next to the pods that have a worker (not terminating, not
    /// finished).
    fn admit(&self, pod: &Pod) -> Result<(), crate::admission::Rejection> {
        let statuses = self.sh.pods.read().unwrap_or_else(|p| p.into_inner());
        let others: Vec<&Pod> = self
            .workers
            .iter()
            .filter(|(_, h)| !h.terminating)
            .filter(|(uid, _)| {
                let phase = statuses
                    .get(*uid)
                    .and_then(|p| p.status.as_ref())
                    .and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .filter_map(|(uid, _)| self.desired.get(uid))
            .collect();
        let a = crate::volumes::allocatable();
        let cap = crate::admission::Capacity {
            pods: i64::try_from(self.sh.cfg.max_pods).unwrap_or(i64::MAX),
            cpu_milli: a.cpu_milli,
            memory: a.memory,
            ephemeral_storage: a.ephemeral_storage,
        };
        crate::admission::admit(pod, &others, &self.sh.cfg.node_name, cap)
    }

    fn apply(&mut self, update: SourceUpdate) {
        self.apply_update(update);
        if !self.sources_ready {
            self.sources_ready = true;
            let early = std::mem::take(&mut self.early);
            self.pleg_event(early);
        }
    }

    fn apply_update(&mut self, update: SourceUpdate) {
        let now = crate::now_ts().to_string();
        // Removed pods: terminate their workers and drop them from /pods.
        let gone: Vec<String> = self
            .desired
            .keys()
            .filter(|u| !update.pods.contains_key(*u))
            .cloned()
            .collect();
        for uid in gone {
            self.desired.remove(&uid);
            self.sh
                .pods
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&uid);
            if let Some(h) = self.workers.get_mut(&uid)
                && !h.terminating
            {
                tracing::info!(uid = %uid, "pod removed from its source; terminating");
                let _ = h.tx.send(Msg::Terminate);
                h.terminating = true;
            }
        }
        for (uid, sp) in update.pods {
            let mut pod = sp.pod;
            match self.desired.get(&uid) {
                Some(old) if same_pod(old, &pod) => continue,
                Some(old) => {
                    // Keep when it was first seen.
                    let seen = old
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(CONFIG_SEEN))
                        .cloned();
                    pod.metadata
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert(CONFIG_SEEN.into(), seen.unwrap_or_else(|| now.clone()));
                    tracing::info!(uid = %uid, file = %sp.file.display(), "pod updated");
                    self.desired.insert(uid.clone(), pod.clone());
                    if let Some(e) = self
                        .sh
                        .pods
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&uid)
                    {
                        let status = e.status.take();
                        *e = pod.clone();
                        e.status = status;
                    }
                    if let Some(h) = self.workers.get(&uid)
                        && !h.terminating
                    {
                        let _ = h.tx.send(Msg::Update(Box::new(pod)));
                    }
                }
                None => {
                    pod.metadata
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert(CONFIG_SEEN.into(), now.clone());
                    tracing::info!(uid = %uid, file = %sp.file.display(), pod = ?pod.metadata.name, "pod added");
                    self.desired.insert(uid.clone(), pod.clone());
                    if let Err(r) = self.admit(&pod) {
                        // Upstream's admission: the pod fails with the predicate's reason.
                        tracing::warn!(uid = %uid, reason = %r.reason, message = %r.message, "pod rejected");
                        let mut p = pod;
                        p.status = Some(PodStatus {
                            phase: Some("Failed".into()),
                            reason: Some(r.reason),
                            message: Some(r.message),
                            qos_class: Some(
                                crate::podconfig::qos_class(crate::podconfig::spec(&p)).to_string(),
                            ),
                            ..Default::default()
                        });
                        self.sh
                            .pods
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(uid, p);
                        continue;
                    }
                    self.sh
                        .pods
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(uid.clone(), pod.clone());
                    if !self.workers.contains_key(&uid) {
                        self.spawn(pod);
                    }
                }
            }
        }
    }

    fn pleg_event(&mut self, uids: HashSet<String>) {
        for uid in uids {
            if let Some(h) = self.workers.get(&uid) {
                let _ = h.tx.send(Msg::Wake);
            } else if !self.sources_ready {
                self.early.insert(uid);
            } else if self.sources_ready && !self.desired.contains_key(&uid) {
                // Runs in the runtime, wanted by no source: an orphan (e.g. its manifest went
                // away while the kubelet was down). Tear it down.
                tracing::info!(uid = %uid, "pod found in the runtime that no source wants; terminating");
                let mut pod = Pod::default();
                pod.metadata.uid = Some(uid.clone());
                self.spawn(pod);
                if let Some(h) = self.workers.get_mut(&uid) {
                    let _ = h.tx.send(Msg::Terminate);
                    h.terminating = true;
                }
            }
        }
    }

    /// Upstream's `UpdateQOSCgroups` and `cleanupOrphanedPodCgroups`: the Burstable class's
    /// shares follow the active pods; pod cgroups of pods that neither a source nor a worker
    /// knows are killed and removed. In the background; a pass still running skips this one.
    fn qos_housekeeping(&self, known: &HashSet<String>) {
        use std::sync::atomic::Ordering;
        if self.sh.qos.is_none() || self.qos_busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let sh = self.sh.clone();
        let busy = self.qos_busy.clone();
        let known = known.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(q) = sh.qos.as_ref() {
                let active =
                    crate::qos::active_pods(&sh.pods.read().unwrap_or_else(|p| p.into_inner()));
                if let Err(e) = q.update(&active) {
                    tracing::warn!(error = %e, "failed to update QoS cgroups");
                }
                for (uid, name) in q.pod_cgroups() {
                    if known.contains(&uid) {
                        continue;
                    }
                    tracing::info!(uid = %uid, cgroup = %name, "orphaned pod found, removing pod cgroups");
                    if let Err(e) = q.destroy(&name) {
                        tracing::warn!(uid = %uid, error = %e, "removing an orphaned pod cgroup");
                    }
                }
            }
            busy.store(false, Ordering::Release);
        });
    }

    fn worker_done(&mut self, uid: String) {
        self.workers.remove(&uid);
        if let Some(pod) = self.desired.get(&uid).cloned() {
            // Added again while it was terminating.
            self.spawn(pod);
        }
    }
}

/// Runs the pod manager until the sources close.
pub async fn run(
    sh: Arc<Shared>,
    mut sources: mpsc::Receiver<SourceUpdate>,
    mut pleg: mpsc::Receiver<HashSet<String>>,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut m = Manager {
        sh,
        desired: BTreeMap::new(),
        workers: HashMap::new(),
        done_tx,
        sources_ready: false,
        early: HashSet::new(),
        qos_busy: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    // Upstream's housekeeping period: orphaned pod directories are cleaned up.
    let mut housekeeping = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            u = sources.recv() => match u {
                Some(u) => m.apply(u),
                None => break,
            },
            Some(ev) = pleg.recv() => m.pleg_event(ev),
            Some(uid) = done_rx.recv() => m.worker_done(uid),
            _ = housekeeping.tick() => {
                if m.sources_ready {
                    let known: HashSet<String> =
                        m.desired.keys().chain(m.workers.keys()).cloned().collect();
                    m.qos_housekeeping(&known);
                    crate::volumes::housekeeping(&m.sh, known).await;
                }
            }
        }
        // The garbage collectors' view: a pod is deleted once no source wants it and its
        // worker is done.
        let known = m.desired.keys().chain(m.workers.keys()).cloned().collect();
        m.sh.pod_states.set(m.sources_ready, known);
    }
}

/// The static pod source: scans `dir` every `every` and sends the set when it changed.
/// Invalid files are logged once per change of their reason.
pub async fn file_source(
    dir: PathBuf,
    node_name: String,
    every: Duration,
    tx: mpsc::Sender<SourceUpdate>,
) {
    let mut last: Option<Vec<(String, PathBuf, String)>> = None;
    let mut logged: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut watch = crate::watch::DirWatch::new(&dir);
    loop {
        let d = dir.clone();
        let n = node_name.clone();
        let scan = match tokio::task::spawn_blocking(move || source::scan(&d, &n)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "scanning the static pod directory");
                watch.wait(every).await;
                continue;
            }
        };
        for (f, e) in &scan.errors {
            if logged.get(f) != Some(e) {
                tracing::error!(file = %f.display(), "invalid static pod manifest: {e}");
            }
        }
        logged = scan.errors.clone();
        let fingerprint: Vec<(String, PathBuf, String)> = scan
            .pods
            .iter()
            .map(|(u, p)| {
                (
                    u.clone(),
                    p.file.clone(),
                    serde_json::to_string(&p.pod).unwrap_or_default(),
                )
            })
            .collect();
        if last.as_ref() != Some(&fingerprint) {
            last = Some(fingerprint);
            if tx.send(SourceUpdate { pods: scan.pods }).await.is_err() {
                return;
            }
        }
        watch.retry(&dir);
        watch.wait(every).await;
    }
}

/// The PLEG: relists the runtime every `period` (every [`crate::events::RELIST_WITH_EVENTS`]
/// while `events_up` says the runtime's event stream is followed), sends the UIDs whose
/// sandboxes or containers changed, and records when a relist last succeeded (for /healthz).
pub async fn pleg(
    sh: Arc<Shared>,
    period: Duration,
    events_up: Arc<std::sync::atomic::AtomicBool>,
    tx: mpsc::Sender<HashSet<String>>,
) {
    let mut cri = sh.cri.clone();
    let mut last: HashMap<String, Vec<(String, i32)>> = HashMap::new();
    let mut first = true;
    let mut last_start: Option<Instant> = None;
    loop {
        let start = Instant::now();
        let res = cri.relist().await;
        crate::metrics::pleg_relist(start.elapsed(), last_start.map(|l| start - l));
        last_start = Some(start);
        match res {
            Ok(now) => {
                *sh.last_relist.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                let mut changed: HashSet<String> = HashSet::new();
                for (uid, v) in &now {
                    if first || last.get(uid) != Some(v) {
                        changed.insert(uid.clone());
                    }
                }
                for uid in last.keys() {
                    if !now.contains_key(uid) {
                        changed.insert(uid.clone());
                    }
                }
                first = false;
                last = now;
                if !changed.is_empty() && tx.send(changed).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), "PLEG relist failed");
            }
        }
        let wait = if events_up.load(std::sync::atomic::Ordering::Relaxed) {
            crate::events::RELIST_WITH_EVENTS
        } else {
            period
        };
        tokio::time::sleep(wait).await;
    }
}
