//! Pod workers: one task per pod, syncs serialized within the pod, never blocking other pods.
//!
//! A sync compares the spec with what the runtime reports (by the pod's UID label) and acts on
//! the difference: sandbox, image pulls, init containers one by one to completion, then app
//! containers, restarts per restartPolicy with CrashLoopBackOff. A worker told to terminate
//! stops the containers (grace period), stops and removes the sandboxes, and ends.

use crate::cri::{self, Cri, PodRuntime};
use crate::podconfig::{self, PodFacts, meta, spec};
use crate::status::{self, Reason};
use crate::{Shared, now_ns};
use k8s_openapi::api::core::v1::{Container, Pod};
use keelson_proto::runtime::v1 as pb;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub enum Msg {
    Update(Box<Pod>),
    Wake,
    Terminate,
}

const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Upstream's `flowcontrol.Backoff` for one key: the delay doubles from 10 s to 5 min; an
/// entry idle for twice the maximum starts over.
#[derive(Default)]
struct Backoff {
    entries: HashMap<String, (Duration, i64)>,
}

impl Backoff {
    fn fresh(&self, key: &str, now: i64) -> Option<(Duration, i64)> {
        self.entries
            .get(key)
            .copied()
            .filter(|(_, last)| now - last <= 2 * BACKOFF_MAX.as_nanos() as i64)
    }

    /// Time left in back-off for an event at `since` (ns), if any.
    fn remaining(&self, key: &str, since: i64, now: i64) -> Option<(Duration, Duration)> {
        let (delay, _) = self.fresh(key, now)?;
        let elapsed = Duration::from_nanos(u64::try_from(now - since).unwrap_or(0));
        (elapsed < delay).then(|| (delay, delay - elapsed))
    }

    fn next(&mut self, key: &str, at: i64, now: i64) {
        let delay = match self.fresh(key, now) {
            Some((d, _)) => (d * 2).min(BACKOFF_MAX),
            None => BACKOFF_INITIAL,
        };
        self.entries.insert(key.to_string(), (delay, at));
    }

    fn reset(&mut self, key: &str) {
        self.entries.remove(key);
    }
}

struct Worker {
    sh: Arc<Shared>,
    cri: Cri,
    pod: Pod,
    uid: String,
    reasons: HashMap<String, Reason>,
    crash_backoff: Backoff,
    pull_backoff: Backoff,
    wake_at: Option<Instant>,
    /// The last sync could not set the pod's volumes up (the reasons say why).
    volume_error: bool,
    probes: crate::probes::PodProbes,
    /// Bumped by every step that may change the pod in the runtime (create, start, stop,
    /// remove), so a sync that did none of them needs no second look at the runtime.
    actions: u64,
    /// Updates, PLEG wakes and the terminate order for this pod.
    rx: mpsc::UnboundedReceiver<Msg>,
    /// Updates and the terminate order taken off `rx` by [`Worker::absorb_wakes`], for the
    /// next turn of the loop.
    held: VecDeque<Msg>,
}

/// Runs a pod worker until it is told to terminate and has torn the pod down; then reports
/// `uid` on `done`.
pub async fn run(
    sh: Arc<Shared>,
    pod: Pod,
    rx: mpsc::UnboundedReceiver<Msg>,
    done: mpsc::UnboundedSender<String>,
) {
    let uid = meta(&pod).2.to_string();
    let mut w = Worker {
        cri: sh.cri.clone(),
        sh,
        pod,
        uid: uid.clone(),
        reasons: HashMap::new(),
        crash_backoff: Backoff::default(),
        pull_backoff: Backoff::default(),
        wake_at: None,
        volume_error: false,
        probes: Default::default(),
        actions: 0,
        rx,
        held: VecDeque::new(),
    };
    let mut terminate = false;
    // operation_type of kubelet_pod_worker_duration_seconds.
    let mut op = "create";
    loop {
        // What came in while the last sync ran (an orphan's worker starts with Terminate).
        while let Some(m) = w.held.pop_front().or_else(|| w.rx.try_recv().ok()) {
            match m {
                Msg::Update(p) => {
                    w.pod = *p;
                    op = "update";
                }
                Msg::Wake => {}
                Msg::Terminate => terminate = true,
            }
        }
        if terminate {
            break;
        }
        w.wake_at = None;
        let started = Instant::now();
        let r = w.sync().await;
        crate::metrics::pod_worker(op, started.elapsed());
        op = "sync";
        if let Err(e) = r {
            tracing::warn!(error = %e, "sync failed; retrying");
            w.wake_at = Some(Instant::now() + Duration::from_secs(2));
        }
        let resync = Instant::now() + w.sh.cfg.sync_frequency;
        let deadline = w.wake_at.map_or(resync, |t| t.min(resync));
        if !w.held.is_empty() {
            continue;
        }
        let first = tokio::select! {
            m = w.rx.recv() => m.or(Some(Msg::Terminate)),
            _ = tokio::time::sleep_until(deadline) => None,
            _ = w.probes.changed() => None,
        };
        match first {
            Some(Msg::Update(p)) => {
                w.pod = *p;
                op = "update";
            }
            Some(Msg::Terminate) => terminate = true,
            Some(Msg::Wake) | None => {}
        }
    }
    let mut delay = Duration::from_secs(1);
    loop {
        match w.terminate().await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "tearing the pod down failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
    tracing::info!("pod terminated");
    let _ = done.send(uid);
}

fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Always" => true,
        "OnFailure" => exit_code != 0,
        _ => false,
    }
}

type SyncResult = Result<(), tonic::Status>;

impl Worker {
    /// Drops the PLEG wakes queued so far, keeping any other message for later: called right
    /// before the worker reads the pod's state from the runtime, which then includes whatever
    /// the events behind those wakes were about (mostly the worker's own creates and starts).
    /// A wake that comes after still makes another sync.
    fn absorb_wakes(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            if !matches!(m, Msg::Wake) {
                self.held.push_back(m);
            }
        }
    }

    fn policy(&self) -> String {
        spec(&self.pod)
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into())
    }

    fn wake_in(&mut self, d: Duration) {
        let t = Instant::now() + d;
        self.wake_at = Some(self.wake_at.map_or(t, |w| w.min(t)));
    }

    /// Computes the status from `rt` and publishes it; returns the phase.
    fn publish(&self, rt: &PodRuntime) -> String {
        let mut statuses = self.sh.pods.write().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = statuses.get_mut(&self.uid) else {
            return String::new();
        };
        let probes = self.probes.results();
        let policy = self.policy();
        let ctx = status::Context {
            policy: &policy,
            probes: &probes,
            reasons: &self.reasons,
            old: entry.status.as_ref(),
            runtime_name: &self.sh.runtime_name,
            host_ips: &self.sh.host_ips,
            now: crate::now_ts(),
        };
        let st = status::compute(&self.pod, rt, &ctx);
        let phase = st.phase.clone().unwrap_or_default();
        crate::metrics::pod_status_changed(&self.pod, entry.status.as_ref(), &st);
        entry.status = Some(st);
        phase
    }

    async fn sync(&mut self) -> SyncResult {
        let rt = self.cri.pod(&self.uid).await?;
        let phase = self.publish(&rt);
        if phase == "Succeeded" || phase == "Failed" {
            let runtime = self.cri.runtime.clone();
            self.probes.sync(&self.pod, &rt, None, &runtime, "");
            // A terminal pod: nothing runs any more; the sandbox goes, the containers stay
            // for their logs and statuses.
            self.kill_containers(&rt, self.grace()).await?;
            for s in rt.sandboxes.iter().filter(|s| s.ready) {
                self.cri
                    .runtime
                    .stop_pod_sandbox(pb::StopPodSandboxRequest {
                        pod_sandbox_id: s.id.clone(),
                    })
                    .await?;
            }
            if let Err(e) = crate::volumes::teardown_volumes(&self.sh.cfg.root_dir, &self.uid) {
                tracing::warn!(error = %e, "unmounting the volumes of a terminated pod");
            }
            // Upstream's SyncTerminatedPod: the pod cgroup goes once nothing runs.
            self.destroy_pod_cgroup().await;
            return Ok(());
        }
        self.ensure_pod_cgroup()?;
        if !self.setup_volumes(&rt) {
            return Ok(());
        }
        let (sandbox, rt) = match rt.ready_sandbox() {
            Some(s) => (s.clone(), rt),
            None => {
                if !self.create_sandbox(&rt).await? {
                    return Ok(());
                }
                self.absorb_wakes();
                let rt = self.cri.pod(&self.uid).await?;
                self.publish(&rt);
                match rt.ready_sandbox() {
                    Some(s) => (s.clone(), rt),
                    None => return Err(tonic::Status::unavailable("the new sandbox is not ready")),
                }
            }
        };
        // `rt` is what the runtime said at the start of this sync (or right after the new
        // sandbox): nothing since has changed the pod in the runtime.
        let mut rt = rt;
        let ip = self.facts(&sandbox).pod_ip;
        let policy = self.policy();
        let kills = self.probes.take_kills();
        if crate::probes::kill_failed(kills, &self.cri.runtime, &self.pod, &rt, &ip, &policy)
            .await?
        {
            rt = self.cri.pod(&self.uid).await?;
        }
        self.sync_probes(&rt, &sandbox);
        let before = self.actions;
        self.sync_containers(&rt, &sandbox).await?;
        if self.actions != before {
            self.absorb_wakes();
            rt = self.cri.pod(&self.uid).await?;
            self.sync_probes(&rt, &sandbox);
        }
        self.publish(&rt);
        Ok(())
    }

    /// Sets the pod's volumes up (every sync, idempotent). On failure the containers that do not
    /// run wait with their default reason and the FailedMount text as message (upstream shows
    /// ContainerCreating and a FailedMount event), and the sync stops here; retried in 5 s.
    fn setup_volumes(&mut self, rt: &PodRuntime) -> bool {
        match crate::volumes::setup(&self.sh.cfg, &self.pod) {
            Ok(()) => {
                if std::mem::take(&mut self.volume_error) {
                    self.reasons
                        .retain(|_, r| !r.message.starts_with(crate::volumes::FAILED_MOUNT));
                }
                true
            }
            Err(msg) => {
                tracing::warn!(reason = "FailedMount", "{msg}");
                let s = spec(&self.pod);
                let default = if s.init_containers.as_ref().is_some_and(|v| !v.is_empty()) {
                    status::POD_INITIALIZING
                } else {
                    status::CONTAINER_CREATING
                };
                for c in s
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(s.containers.iter())
                {
                    self.reasons.insert(
                        c.name.clone(),
                        Reason {
                            reason: default.into(),
                            message: msg.clone(),
                        },
                    );
                }
                self.volume_error = true;
                self.publish(rt);
                self.wake_in(Duration::from_secs(5));
                false
            }
        }
    }

    /// Starts and stops the probe workers for what runs in `sandbox`.
    fn sync_probes(&mut self, rt: &PodRuntime, sandbox: &cri::Sandbox) {
        let runtime = self.cri.runtime.clone();
        let ip = self.facts(sandbox).pod_ip;
        self.probes
            .sync(&self.pod, rt, Some(&sandbox.id), &runtime, &ip);
    }

    /// Creates the pod's sandbox; false when the pod must not get one (restartPolicy Never
    /// after its containers ran).
    async fn create_sandbox(&mut self, rt: &PodRuntime) -> Result<bool, tonic::Status> {
        let attempt = rt.sandboxes.first().map(|s| s.attempt + 1).unwrap_or(0);
        if self.policy() == "Never" && !rt.sandboxes.is_empty() && !rt.containers.is_empty() {
            return Ok(false);
        }
        // Whatever ran in an old sandbox goes with it.
        self.kill_containers(rt, self.grace()).await?;
        for s in rt.sandboxes.iter().filter(|s| s.ready) {
            self.cri
                .runtime
                .stop_pod_sandbox(pb::StopPodSandboxRequest {
                    pod_sandbox_id: s.id.clone(),
                })
                .await?;
        }
        let cfg = podconfig::sandbox_config(&self.sh.cfg, &self.pod, attempt);
        if let Err(e) = std::fs::create_dir_all(&cfg.log_directory) {
            tracing::warn!(dir = %cfg.log_directory, error = %e, "creating the pod log directory");
        }
        tracing::info!(attempt, "creating the pod sandbox");
        match self
            .cri
            .runtime
            .run_pod_sandbox(pb::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
        {
            Ok(r) => {
                tracing::info!(sandbox = %r.into_inner().pod_sandbox_id, "sandbox ready");
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), "FailedCreatePodSandBox");
                self.wake_in(Duration::from_secs(5));
                Ok(false)
            }
        }
    }

    fn facts(&self, sandbox: &cri::Sandbox) -> PodFacts {
        let host_ip = self.sh.host_ips.first().cloned().unwrap_or_default();
        PodFacts {
            pod_ip: if spec(&self.pod).host_network.unwrap_or(false) {
                host_ip.clone()
            } else {
                sandbox.ips.first().cloned().unwrap_or_default()
            },
            host_ip,
            node_name: self.sh.cfg.node_name.clone(),
        }
    }

    async fn sync_containers(&mut self, rt: &PodRuntime, sandbox: &cri::Sandbox) -> SyncResult {
        let s = spec(&self.pod).clone();
        let policy = self.policy();
        let in_sandbox = |name: &str| {
            rt.instances(name)
                .find(|c| c.sandbox_id == sandbox.id)
                .cloned()
        };
        // Once a main container ran, the pod is past its init phase: regular init containers
        // are not run again, sidecars restart on their own.
        let app_ran = s.containers.iter().any(|c| in_sandbox(&c.name).is_some());
        // Main containers all done for good (Never/OnFailure): the sidecars go, and with them
        // the pod completes.
        let mains_done = policy != "Always"
            && s.containers.iter().all(|c| {
                in_sandbox(&c.name).is_some_and(|i| {
                    i.state == pb::ContainerState::ContainerExited
                        && !should_restart(&policy, i.exit_code)
                })
            });
        if mains_done {
            if rt
                .containers
                .iter()
                .any(|c| c.state == pb::ContainerState::ContainerRunning)
            {
                tracing::info!("main containers completed; stopping the sidecars");
                self.kill_containers(rt, self.grace()).await?;
            }
            return Ok(());
        }
        // Init containers in order: a regular one runs to completion, a sidecar must have
        // started (startup probe passed, or running with postStart done) before the next.
        for ic in s.init_containers.iter().flatten() {
            let sidecar = crate::lifecycle::is_sidecar(ic);
            if app_ran && !sidecar {
                continue;
            }
            match in_sandbox(&ic.name) {
                None => {
                    self.start(ic, "init", rt, sandbox).await?;
                    if app_ran {
                        continue;
                    }
                    self.wake_in(Duration::from_secs(1));
                    return Ok(());
                }
                Some(c) => match c.state {
                    pb::ContainerState::ContainerRunning => {
                        if sidecar && (app_ran || self.probes.started(ic, &c.id)) {
                            continue;
                        }
                        return Ok(());
                    }
                    pb::ContainerState::ContainerExited if sidecar => {
                        self.restart_after_backoff(ic, "init", &c, rt, sandbox)
                            .await?;
                        if app_ran {
                            continue;
                        }
                        return Ok(());
                    }
                    pb::ContainerState::ContainerExited if c.exit_code == 0 => continue,
                    pb::ContainerState::ContainerExited => {
                        if policy == "Never" {
                            return Ok(());
                        }
                        return self
                            .restart_after_backoff(ic, "init", &c, rt, sandbox)
                            .await;
                    }
                    _ => {
                        self.remove_container(&c.id).await?;
                        self.start(ic, "init", rt, sandbox).await?;
                        if app_ran {
                            continue;
                        }
                        return Ok(());
                    }
                },
            }
        }
        for c in &s.containers {
            match in_sandbox(&c.name) {
                None => self.start(c, "app", rt, sandbox).await?,
                Some(cur) => match cur.state {
                    pb::ContainerState::ContainerRunning => {
                        if !cur.hash.is_empty() && cur.hash != podconfig::container_hash(c) {
                            tracing::info!(container = %c.name, "container spec changed; killing and recreating");
                            let ip = self.facts(sandbox).pod_ip;
                            self.actions += 1;
                            crate::lifecycle::kill_container(
                                &self.cri.runtime,
                                Some(c),
                                &cur.id,
                                &c.name,
                                &ip,
                                self.grace(),
                                ": container spec changed",
                            )
                            .await?;
                            self.start(c, "app", rt, sandbox).await?;
                        }
                    }
                    pb::ContainerState::ContainerExited => {
                        if should_restart(&policy, cur.exit_code) {
                            self.restart_after_backoff(c, "app", &cur, rt, sandbox)
                                .await?;
                        } else {
                            self.reasons.remove(&c.name);
                        }
                    }
                    _ => {
                        self.remove_container(&cur.id).await?;
                        self.start(c, "app", rt, sandbox).await?;
                    }
                },
            }
        }
        Ok(())
    }

    /// Upstream's `doBackOff`: restart now, or wait with CrashLoopBackOff.
    async fn restart_after_backoff(
        &mut self,
        c: &Container,
        kind: &str,
        exited: &cri::Container,
        rt: &PodRuntime,
        sandbox: &cri::Sandbox,
    ) -> SyncResult {
        self.actions += 1;
        let key = format!("{}_{}", c.name, podconfig::container_hash(c));
        let now = now_ns();
        let finished = if exited.finished_at > 0 {
            exited.finished_at
        } else {
            now
        };
        if let Some((delay, left)) = self.crash_backoff.remaining(&key, finished, now) {
            let (ns, name, _) = meta(&self.pod);
            self.reasons.insert(
                c.name.clone(),
                Reason {
                    reason: "CrashLoopBackOff".into(),
                    message: format!(
                        "back-off {} restarting failed container={} pod={name}_{ns}({})",
                        humantime::format_duration(delay),
                        c.name,
                        self.uid
                    ),
                },
            );
            self.wake_in(left + Duration::from_millis(100));
            return Ok(());
        }
        self.crash_backoff.next(&key, finished, now);
        self.start(c, kind, rt, sandbox).await
    }

    /// The image for `c`, pulled as its policy says; Err is the waiting reason.
    async fn ensure_image(
        &mut self,
        c: &Container,
        sandbox_cfg: &pb::PodSandboxConfig,
        claim: &mut crate::gc::ImageClaim,
    ) -> Result<String, Reason> {
        let image = c.image.clone().unwrap_or_default();
        let policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| crate::defaults::image_pull_policy(&image).to_string());
        let spec_img = pb::ImageSpec {
            image: image.clone(),
            user_specified_image: image.clone(),
            ..Default::default()
        };
        let present = match self
            .cri
            .images
            .image_status(pb::ImageStatusRequest {
                image: Some(spec_img.clone()),
                verbose: false,
            })
            .await
        {
            Ok(r) => r.into_inner().image.inspect(|i| claim.add(&i.id)).is_some(),
            Err(e) => {
                return Err(Reason {
                    reason: "ErrImageInspect".into(),
                    message: format!("Failed to inspect image \"{image}\": {}", e.message()),
                });
            }
        };
        if present && policy != "Always" {
            return Ok(image);
        }
        if !present && policy == "Never" {
            return Err(Reason {
                reason: "ErrImageNeverPull".into(),
                message: format!(
                    "Container image \"{image}\" is not present with pull policy of Never"
                ),
            });
        }
        let now = now_ns();
        if let Some(entry) = self.pull_backoff.fresh(&image, now)
            && self.pull_backoff.remaining(&image, entry.1, now).is_some()
        {
            let left = self
                .pull_backoff
                .remaining(&image, entry.1, now)
                .map(|r| r.1)
                .unwrap_or_default();
            self.wake_in(left + Duration::from_millis(100));
            return Err(Reason {
                reason: "ImagePullBackOff".into(),
                message: format!("Back-off pulling image \"{image}\""),
            });
        }
        tracing::info!(image = %image, "pulling image");
        match self
            .cri
            .images
            .pull_image(pb::PullImageRequest {
                image: Some(spec_img),
                auth: None,
                sandbox_config: Some(sandbox_cfg.clone()),
            })
            .await
        {
            Ok(r) => {
                claim.add(&r.into_inner().image_ref);
                self.pull_backoff.reset(&image);
                Ok(image)
            }
            Err(e) => {
                self.pull_backoff.next(&image, now, now);
                // Sync again soon: the status turns to ImagePullBackOff until the back-off ends.
                self.wake_in(Duration::from_secs(1));
                Err(Reason {
                    reason: "ErrImagePull".into(),
                    message: format!("failed to pull image \"{image}\": {}", e.message()),
                })
            }
        }
    }

    /// Pulls, creates and starts one container; failures become its waiting reason.
    async fn start(
        &mut self,
        c: &Container,
        kind: &str,
        rt: &PodRuntime,
        sandbox: &cri::Sandbox,
    ) -> SyncResult {
        self.actions += 1;
        let restart_count = rt.latest(&c.name).map(|l| l.restart_count + 1).unwrap_or(0);
        let sandbox_cfg = podconfig::sandbox_config(&self.sh.cfg, &self.pod, sandbox.attempt);
        // Held until the container exists, so image GC does not take the image meanwhile.
        let mut claim = self
            .sh
            .image_claims
            .claim(c.image.as_deref().unwrap_or_default());
        let image = match self.ensure_image(c, &sandbox_cfg, &mut claim).await {
            Ok(i) => i,
            Err(r) => {
                tracing::warn!(container = %c.name, reason = %r.reason, "{}", r.message);
                self.reasons.insert(c.name.clone(), r);
                return Ok(());
            }
        };
        let facts = self.facts(sandbox);
        let pod_ips: Vec<String> = if spec(&self.pod).host_network.unwrap_or(false) {
            self.sh.host_ips.clone()
        } else {
            sandbox.ips.clone()
        };
        let mut config = match podconfig::container_config(
            &self.sh.cfg,
            &self.pod,
            c,
            kind,
            restart_count,
            &image,
            &facts,
        )
        .and_then(|mut cfg| {
            cfg.mounts =
                crate::volumes::container_mounts(&self.sh.cfg, &self.pod, c, &pod_ips, &cfg.envs)?;
            Ok(cfg)
        }) {
            Ok(cfg) => cfg,
            Err(e) => {
                tracing::warn!(container = %c.name, error = %e, "CreateContainerConfigError");
                self.reasons.insert(
                    c.name.clone(),
                    Reason {
                        reason: "CreateContainerConfigError".into(),
                        message: e.to_string(),
                    },
                );
                self.wake_in(Duration::from_secs(10));
                return Ok(());
            }
        };
        if let Some(path) = c
            .termination_message_path
            .as_deref()
            .filter(|p| !p.is_empty())
        {
            match crate::termination::prepare(&self.sh.cfg.root_dir, &self.uid, &c.name, path) {
                Ok(m) => config.mounts.push(m),
                Err(e) => {
                    tracing::warn!(container = %c.name, error = %e, "creating the termination message file")
                }
            }
        }
        let log_dir = std::path::Path::new(&sandbox_cfg.log_directory).join(&c.name);
        let log_path = std::path::Path::new(&sandbox_cfg.log_directory).join(&config.log_path);
        let _ = std::fs::create_dir_all(&log_dir);
        let id = match self
            .cri
            .runtime
            .create_container(pb::CreateContainerRequest {
                pod_sandbox_id: sandbox.id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_cfg),
            })
            .await
        {
            Ok(r) => r.into_inner().container_id,
            Err(e) => {
                tracing::warn!(container = %c.name, error = %e.message(), "CreateContainerError");
                self.reasons.insert(
                    c.name.clone(),
                    Reason {
                        reason: "CreateContainerError".into(),
                        message: e.message().to_string(),
                    },
                );
                self.wake_in(Duration::from_secs(10));
                return Ok(());
            }
        };
        let started = self
            .cri
            .runtime
            .start_container(pb::StartContainerRequest {
                container_id: id.clone(),
            })
            .await;
        crate::metrics::container_started(kind, started.as_ref().err().map(|e| e.code()));
        if let Err(e) = started {
            tracing::warn!(container = %c.name, error = %e.message(), "RunContainerError");
            self.reasons.insert(
                c.name.clone(),
                Reason {
                    reason: "RunContainerError".into(),
                    message: e.message().to_string(),
                },
            );
            self.wake_in(Duration::from_secs(10));
            return Ok(());
        }
        tracing::info!(container = %c.name, id = %id, restart_count, "container started");
        let (ns, name, _) = meta(&self.pod);
        if let Err(e) = crate::logs::link(
            &self.sh.cfg.container_log_links_dir,
            name,
            ns,
            &c.name,
            &id,
            &log_path,
        ) {
            tracing::warn!(container = %c.name, error = %e, "making the container log link");
        }
        let target = crate::prober::Target {
            runtime: self.cri.runtime.clone(),
            container_id: id.clone(),
            pod_ip: facts.pod_ip.clone(),
        };
        if let Err(msg) = crate::lifecycle::post_start(c, &target).await {
            tracing::warn!(container = %c.name, "FailedPostStartHook: {msg}");
            crate::lifecycle::kill_container(
                &self.cri.runtime,
                Some(c),
                &id,
                &c.name,
                &facts.pod_ip,
                self.grace(),
                ": FailedPostStartHook",
            )
            .await?;
            self.reasons.insert(
                c.name.clone(),
                Reason {
                    reason: "PostStartHookError".into(),
                    message: msg,
                },
            );
            return Ok(());
        }
        self.reasons.remove(&c.name);
        Ok(())
    }

    /// Upstream's syncPod step before the sandbox: the pod cgroup below its QoS class's
    /// cgroup, created once with the pod's resources (the Burstable class's shares updated
    /// first, to count the new pod).
    fn ensure_pod_cgroup(&self) -> SyncResult {
        let Some(q) = &self.sh.qos else {
            return Ok(());
        };
        let name = podconfig::cgroup_parent(&self.sh.cfg, &self.pod);
        if q.exists(&name) {
            return Ok(());
        }
        let active =
            crate::qos::active_pods(&self.sh.pods.read().unwrap_or_else(|p| p.into_inner()));
        if let Err(e) = q.update(&active) {
            tracing::warn!(error = %e, "failed to update QoS cgroups while syncing pod");
        }
        let res = crate::qos::pod_resources(&self.sh.cfg, &self.pod);
        q.create(&name, &res).map_err(|e| {
            tonic::Status::internal(format!(
                "failed to ensure that the pod: {} cgroups exist and are correctly applied: {e}",
                self.uid
            ))
        })?;
        tracing::debug!(cgroup = %name, resources = ?res, "pod cgroup created");
        Ok(())
    }

    /// Kills what is left in the pod's cgroup and removes it (found by UID, so an orphan
    /// without a spec loses its cgroup too).
    async fn destroy_pod_cgroup(&self) {
        if self.sh.qos.is_none() {
            return;
        }
        let sh = self.sh.clone();
        let uid = self.uid.clone();
        let r = tokio::task::spawn_blocking(move || {
            let q = sh.qos.as_ref()?;
            let name = q.pod_cgroup(&uid)?;
            Some(q.destroy(&name).map(|()| name))
        })
        .await;
        match r {
            Ok(Some(Ok(name))) => tracing::debug!(cgroup = %name, "pod cgroup removed"),
            Ok(Some(Err(e))) => tracing::warn!(error = %e, "removing the pod cgroup"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "removing the pod cgroup"),
        }
    }

    fn grace(&self) -> i64 {
        spec(&self.pod)
            .termination_grace_period_seconds
            .unwrap_or(30)
            .max(0)
    }

    async fn remove_container(&mut self, id: &str) -> SyncResult {
        self.actions += 1;
        self.cri
            .runtime
            .remove_container(pb::RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await?;
        Ok(())
    }

    /// Stops every running container of the pod (preStop hooks, grace period, sidecars
    /// last in reverse order).
    async fn kill_containers(&mut self, rt: &PodRuntime, grace: i64) -> SyncResult {
        self.actions += 1;
        let ip = rt
            .ready_sandbox()
            .map(|s| self.facts(s).pod_ip)
            .unwrap_or_default();
        crate::lifecycle::kill_pod(&self.cri.runtime, &self.pod, rt, &ip, grace).await
    }

    /// Tears the pod down: containers stopped with the grace period, sandboxes stopped and
    /// removed (and with them the containers).
    async fn terminate(&mut self) -> SyncResult {
        let rt = self.cri.pod(&self.uid).await?;
        let grace = if self.pod.spec.is_some() {
            self.grace()
        } else {
            rt.containers
                .iter()
                .find_map(|c| c.annotations.get(cri::ANN_POD_GRACE))
                .and_then(|g| g.parse().ok())
                .unwrap_or(30)
        };
        self.kill_containers(&rt, grace).await?;
        for s in &rt.sandboxes {
            self.cri
                .runtime
                .stop_pod_sandbox(pb::StopPodSandboxRequest {
                    pod_sandbox_id: s.id.clone(),
                })
                .await?;
            self.cri
                .runtime
                .remove_pod_sandbox(pb::RemovePodSandboxRequest {
                    pod_sandbox_id: s.id.clone(),
                })
                .await?;
        }
        // Containers without a sandbox the runtime still lists.
        let rt = self.cri.pod(&self.uid).await?;
        for c in &rt.containers {
            self.remove_container(&c.id).await?;
        }
        // The termination message files, then the volumes and the pod directory.
        let dir = crate::termination::containers_dir(&self.sh.cfg.root_dir, &self.uid);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "removing the termination message files");
        }
        crate::volumes::cleanup_pod(&self.sh.cfg.root_dir, &self.uid)
            .map_err(tonic::Status::internal)?;
        self.destroy_pod_cgroup().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::default();
        let s = 1_000_000_000i64;
        assert!(b.remaining("k", 0, 0).is_none());
        b.next("k", 0, 0);
        assert_eq!(
            b.remaining("k", 0, 5 * s).map(|r| r.0),
            Some(BACKOFF_INITIAL)
        );
        assert!(b.remaining("k", 0, 11 * s).is_none());
        b.next("k", 11 * s, 11 * s);
        assert_eq!(
            b.remaining("k", 11 * s, 12 * s).map(|r| r.0),
            Some(Duration::from_secs(20))
        );
        for i in 0..10 {
            b.next("k", (12 + i) * s, (12 + i) * s);
        }
        assert_eq!(
            b.remaining("k", 30 * s, 30 * s).map(|r| r.0),
            Some(BACKOFF_MAX)
        );
        // Idle for more than twice the maximum: starts over.
        assert!(b.remaining("k", 0, 10_000 * s).is_none());
        b.next("k", 10_000 * s, 10_000 * s);
        assert_eq!(
            b.remaining("k", 10_000 * s, 10_000 * s).map(|r| r.0),
            Some(BACKOFF_INITIAL)
        );
    }
}
