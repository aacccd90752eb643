//! The probe manager of one pod (upstream's `prober.Manager` + `worker`): one task per running
//! container and probe (startup, liveness, readiness), started when the pod worker sees the
//! container running and stopped when it no longer runs. Results are kept per container ID,
//! so a restarted container starts over. A changed result wakes the pod worker, which reads
//! `started`/`ready` for the status and kills a container whose liveness or startup probe
//! failed.

use crate::cri::PodRuntime;
use crate::now_ns;
use crate::prober::{self, Outcome, Target};
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use keelson_proto::runtime::v1 as pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// A container the pod worker must kill because a probe failed.
#[derive(Clone, Debug)]
pub struct Kill {
    pub container_id: String,
    pub name: String,
    /// "Container <name> failed liveness probe" (upstream's message).
    pub message: String,
    /// The probe's terminationGracePeriodSeconds, when set.
    pub grace: Option<i64>,
}

/// What the probes say about one container instance. `None`: no result yet.
#[derive(Clone, Debug, Default)]
pub struct Results {
    pub startup: Option<bool>,
    pub readiness: Option<bool>,
    pub liveness: Option<bool>,
}

#[derive(Default)]
struct State {
    results: HashMap<String, Results>,
    kills: Vec<Kill>,
}

/// Probe results for the status: (started, ready) of a running container, given whether the
/// container has startup/readiness probes. Upstream's `UpdatePodStatus`: no startup probe
/// means started once running; ready needs started, and the readiness probe's success when
/// there is one.
pub fn started_ready(c: &Container, r: Option<&Results>) -> (bool, bool) {
    let started = match (&c.startup_probe, r) {
        (None, _) => true,
        (Some(_), Some(r)) => r.startup == Some(true),
        (Some(_), None) => false,
    };
    let ready = started
        && match (&c.readiness_probe, r) {
            (None, _) => true,
            (Some(_), Some(r)) => r.readiness == Some(true),
            (Some(_), None) => false,
        };
    (started, ready)
}

/// The probe workers of one pod.
pub struct PodProbes {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    /// (container ID, kind) → task.
    workers: HashMap<(String, Kind), JoinHandle<()>>,
}

impl Default for PodProbes {
    fn default() -> Self {
        PodProbes {
            state: Arc::new(Mutex::new(State::default())),
            wake: Arc::new(Notify::new()),
            workers: HashMap::new(),
        }
    }
}

impl Drop for PodProbes {
    fn drop(&mut self) {
        for (_, h) in self.workers.drain() {
            h.abort();
        }
    }
}

impl PodProbes {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when a probe result changed.
    pub async fn changed(&self) {
        self.wake.notified().await
    }

    /// A copy of the results by container ID.
    pub fn results(&self) -> HashMap<String, Results> {
        self.lock().results.clone()
    }

    /// Containers to kill for failed probes (each reported once).
    pub fn take_kills(&self) -> Vec<Kill> {
        std::mem::take(&mut self.lock().kills)
    }

    /// Whether the container (by ID) counts as started: see [`started_ready`].
    pub fn started(&self, c: &Container, container_id: &str) -> bool {
        started_ready(c, self.lock().results.get(container_id)).0
    }

    /// Starts workers for running containers of `pod` (those in `sandbox_id`) that have
    /// probes, stops the workers (and forgets the results) of containers no longer running.
    pub fn sync(
        &mut self,
        pod: &Pod,
        rt: &PodRuntime,
        sandbox_id: Option<&str>,
        runtime: &crate::cri::RuntimeClient,
        pod_ip: &str,
    ) {
        let spec = crate::podconfig::spec(pod);
        let specs: Vec<&Container> = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| crate::lifecycle::is_sidecar(c))
            .chain(spec.containers.iter())
            .collect();
        let mut live: Vec<(String, Kind)> = Vec::new();
        for c in &specs {
            let Some(inst) = rt.latest(&c.name).filter(|i| {
                i.state == pb::ContainerState::ContainerRunning
                    && sandbox_id.is_some_and(|s| s == i.sandbox_id)
            }) else {
                continue;
            };
            for (kind, probe) in [
                (Kind::Startup, &c.startup_probe),
                (Kind::Liveness, &c.liveness_probe),
                (Kind::Readiness, &c.readiness_probe),
            ] {
                let Some(probe) = probe else { continue };
                let key = (inst.id.clone(), kind);
                live.push(key.clone());
                if self.workers.contains_key(&key) {
                    continue;
                }
                self.lock().results.entry(inst.id.clone()).or_default();
                let w = ProbeWorker {
                    kind,
                    probe: probe.clone(),
                    container: (*c).clone(),
                    target: Target {
                        runtime: runtime.clone(),
                        container_id: inst.id.clone(),
                        pod_ip: pod_ip.to_string(),
                    },
                    started_at: inst.started_at,
                    state: self.state.clone(),
                    wake: self.wake.clone(),
                };
                tracing::debug!(container = %c.name, id = %inst.id, probe = kind.name(), "starting probe worker");
                self.workers.insert(key, tokio::spawn(w.run()));
            }
        }
        self.workers.retain(|k, h| {
            let keep = live.contains(k);
            if !keep {
                h.abort();
            }
            keep
        });
        let ids: Vec<&String> = live.iter().map(|(id, _)| id).collect();
        self.lock().results.retain(|id, _| ids.contains(&id));
    }
}

/// Kills the containers whose liveness or startup probe failed (the pod worker then restarts
/// them per restartPolicy; sidecars always), with the probe's terminationGracePeriodSeconds
/// or the pod's; true when one was killed.
pub async fn kill_failed(
    kills: Vec<Kill>,
    runtime: &crate::cri::RuntimeClient,
    pod: &Pod,
    rt: &PodRuntime,
    pod_ip: &str,
    policy: &str,
) -> Result<bool, tonic::Status> {
    let spec = crate::podconfig::spec(pod);
    let mut killed = false;
    for k in kills {
        if !rt
            .containers
            .iter()
            .any(|c| c.id == k.container_id && c.state == pb::ContainerState::ContainerRunning)
        {
            continue;
        }
        let spec_c = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .find(|c| c.name == k.name);
        let restart = policy != "Never" || spec_c.is_some_and(crate::lifecycle::is_sidecar);
        let why = format!(
            ": {}{}",
            k.message,
            if restart { ", will be restarted" } else { "" }
        );
        let grace = k
            .grace
            .or(spec.termination_grace_period_seconds)
            .unwrap_or(30);
        crate::lifecycle::kill_container(
            runtime,
            spec_c,
            &k.container_id,
            &k.name,
            pod_ip,
            grace,
            &why,
        )
        .await?;
        killed = true;
    }
    Ok(killed)
}

struct ProbeWorker {
    kind: Kind,
    probe: Probe,
    container: Container,
    target: Target,
    started_at: i64,
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
}

impl ProbeWorker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn started(&self) -> bool {
        started_ready(
            &self.container,
            self.lock().results.get(&self.target.container_id),
        )
        .0
    }

    fn set(&self, v: bool) {
        let mut st = self.lock();
        let r = st
            .results
            .entry(self.target.container_id.clone())
            .or_default();
        let slot = match self.kind {
            Kind::Startup => &mut r.startup,
            Kind::Liveness => &mut r.liveness,
            Kind::Readiness => &mut r.readiness,
        };
        if *slot != Some(v) {
            *slot = Some(v);
            drop(st);
            self.wake.notify_one();
        }
    }

    /// Upstream's worker loop: (right after a kubelet start, a random part of the period, then)
    /// wait out initialDelaySeconds (from the container's start),
    /// probe every periodSeconds; a result counts once it repeats successThreshold /
    /// failureThreshold times; liveness and readiness wait for the startup probe; a failed
    /// liveness or startup probe asks for the kill and ends the worker (the restarted
    /// container gets a new one).
    async fn run(self) {
        let p = &self.probe;
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
        let success_threshold = p.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = p.failure_threshold.unwrap_or(3).max(1);
        // Upstream: a kubelet that started less than a period ago (a restart, with every
        // container's workers starting at once) waits a random part of the period first.
        if crate::STARTED.elapsed() < period {
            tokio::time::sleep(period.mul_f64(jitter_fraction(&self.target.container_id))).await;
        }
        let delay_ns = i64::from(p.initial_delay_seconds.unwrap_or(0).max(0)) * 1_000_000_000;
        let wait = self.started_at + delay_ns - now_ns();
        if wait > 0 {
            tokio::time::sleep(Duration::from_nanos(wait as u64)).await;
        }
        let (mut last, mut run): (Option<bool>, i32) = (None, 0);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let started = self.started();
            match self.kind {
                Kind::Startup if started => return,
                Kind::Liveness | Kind::Readiness if !started => continue,
                _ => {}
            }
            let outcome = self.probe_once(timeout).await;
            let ok = match &outcome {
                Outcome::Success(_) => true,
                Outcome::Failure(m) => {
                    tracing::info!(container = %self.container.name, probe = self.kind.name(), "Unhealthy: {} probe failed: {m}", self.kind.name());
                    false
                }
                Outcome::Unknown(m) => {
                    tracing::warn!(container = %self.container.name, probe = self.kind.name(), "Unhealthy: {} probe errored: {m}", self.kind.name());
                    continue;
                }
            };
            if last == Some(ok) {
                run = run.saturating_add(1);
            } else {
                last = Some(ok);
                run = 1;
            }
            if (ok && run < success_threshold) || (!ok && run < failure_threshold) {
                continue;
            }
            self.set(ok);
            if !ok && matches!(self.kind, Kind::Liveness | Kind::Startup) {
                let what = if self.kind == Kind::Liveness {
                    "liveness"
                } else {
                    "startup"
                };
                self.lock().kills.push(Kill {
                    container_id: self.target.container_id.clone(),
                    name: self.container.name.clone(),
                    message: format!("Container {} failed {what} probe", self.container.name),
                    grace: p.termination_grace_period_seconds,
                });
                self.wake.notify_one();
                return;
            }
        }
    }

    async fn probe_once(&self, timeout: Duration) -> Outcome {
        let p = &self.probe;
        let c = &self.container;
        let t = &self.target;
        let secs = timeout.as_secs() as i64;
        if let Some(e) = &p.exec {
            return prober::exec(t, e.command.as_deref().unwrap_or(&[]), secs).await;
        }
        if let Some(h) = &p.http_get {
            let port = match prober::resolve_port(&h.port, c) {
                Ok(p) => p,
                Err(e) => return Outcome::Unknown(e),
            };
            let host = h
                .host
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or(&t.pod_ip);
            let g = prober::HttpGet {
                https: h.scheme.as_deref() == Some("HTTPS"),
                host,
                port,
                path: h.path.as_deref().unwrap_or("/"),
                headers: h.http_headers.as_deref().unwrap_or(&[]),
            };
            return prober::http(&g, timeout).await;
        }
        if let Some(s) = &p.tcp_socket {
            let port = match prober::resolve_port(&s.port, c) {
                Ok(p) => p,
                Err(e) => return Outcome::Unknown(e),
            };
            let host = s
                .host
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or(&t.pod_ip);
            return prober::tcp(host, port, timeout).await;
        }
        if let Some(g) = &p.grpc {
            let Ok(port) = u16::try_from(g.port) else {
                return Outcome::Unknown(format!("invalid port number: {}", g.port));
            };
            return prober::grpc(&t.pod_ip, port, g.service.as_deref().unwrap_or(""), timeout)
                .await;
        }
        Outcome::Unknown("missing probe handler".into())
    }
}

/// A random number in [0, 1) (std's per-process random hash keys, the time and `salt`).
fn jitter_fraction(salt: &str) -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(salt.as_bytes());
    h.write_i64(now_ns());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_a_fraction() {
        for i in 0..100 {
            let f = jitter_fraction(&i.to_string());
            assert!((0.0..1.0).contains(&f), "{f}");
        }
    }

    #[test]
    fn started_and_ready_follow_the_probes() {
        let plain = Container::default();
        assert_eq!(started_ready(&plain, None), (true, true));
        let with = Container {
            startup_probe: Some(Probe::default()),
            readiness_probe: Some(Probe::default()),
            ..Default::default()
        };
        assert_eq!(started_ready(&with, None), (false, false));
        let mut r = Results {
            startup: Some(true),
            ..Default::default()
        };
        assert_eq!(started_ready(&with, Some(&r)), (true, false));
        r.readiness = Some(true);
        assert_eq!(started_ready(&with, Some(&r)), (true, true));
        r.startup = Some(false);
        assert_eq!(started_ready(&with, Some(&r)), (false, false));
    }
}
