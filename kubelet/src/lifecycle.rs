//! Container lifecycle: postStart and preStop hooks (exec, httpGet, sleep; upstream's
//! `pkg/kubelet/lifecycle` handler runner) and killing containers the way upstream's
//! `killContainer` does: the preStop hook first, its time taken from the grace period, then
//! CRI StopContainer with what is left (at least 2 s). A pod's containers are killed with
//! sidecars last: the main containers together, then the sidecars in reverse order.

use crate::cri::{self, PodRuntime};
use crate::prober::{self, Outcome, Target};
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};
use keelson_proto::runtime::v1 as pb;
use std::time::{Duration, Instant};

/// Upstream's `minimumGracePeriodInSeconds`.
const MIN_GRACE: i64 = 2;

/// An init container with `restartPolicy: Always`: a sidecar.
pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

fn describe(h: &LifecycleHandler) -> String {
    if let Some(e) = &h.exec {
        format!(
            "Exec lifecycle hook ({:?})",
            e.command.as_deref().unwrap_or(&[])
        )
    } else if let Some(g) = &h.http_get {
        format!("HTTP lifecycle hook ({})", g.path.as_deref().unwrap_or("/"))
    } else if let Some(s) = &h.sleep {
        format!("Sleep lifecycle hook ({}s)", s.seconds)
    } else {
        "lifecycle hook".into()
    }
}

/// Runs one hook handler; `timeout` None waits as long as the hook runs (postStart).
pub async fn run_hook(
    h: &LifecycleHandler,
    c: &Container,
    t: &Target,
    timeout: Option<Duration>,
) -> Result<(), String> {
    let fut = async {
        if let Some(e) = &h.exec {
            let secs = timeout.map(|d| d.as_secs().max(1) as i64).unwrap_or(0);
            return match prober::exec(t, e.command.as_deref().unwrap_or(&[]), secs).await {
                Outcome::Success(_) => Ok(()),
                Outcome::Failure(m) | Outcome::Unknown(m) => Err(m),
            };
        }
        if let Some(g) = &h.http_get {
            let port = prober::resolve_port(&g.port, c)?;
            let host = g
                .host
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or(&t.pod_ip);
            let req = prober::HttpGet {
                https: g.scheme.as_deref() == Some("HTTPS"),
                host,
                port,
                path: g.path.as_deref().unwrap_or("/"),
                headers: g.http_headers.as_deref().unwrap_or(&[]),
            };
            // Upstream fails an HTTP hook only when the request itself fails.
            return prober::http_request(&req).await.map(|_| ());
        }
        if let Some(s) = &h.sleep {
            tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
            return Ok(());
        }
        if h.tcp_socket.is_some() {
            return Err("tcpSocket is not supported as a lifecycle hook handler".into());
        }
        Err("the lifecycle hook has no handler".into())
    };
    let r = match timeout {
        Some(d) => match tokio::time::timeout(d, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {d:?}")),
        },
        None => fut.await,
    };
    r.map_err(|e| {
        format!(
            "{} for Container {:?} failed - error: {e}",
            describe(h),
            c.name
        )
    })
}

/// Runs the postStart hook of `c` (started as `container_id`), if any.
pub async fn post_start(c: &Container, t: &Target) -> Result<(), String> {
    match c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
        Some(h) => {
            tracing::info!(container = %c.name, "running the postStart hook");
            run_hook(h, c, t, None).await
        }
        None => Ok(()),
    }
}

/// Kills one container as upstream's `killContainer`: preStop hook (bounded by the grace
/// period, its time taken from it), then StopContainer with the rest, at least 2 s (also for
/// a grace period of 0, like upstream without a deletion override).
pub async fn kill_container(
    runtime: &crate::cri::RuntimeClient,
    spec_c: Option<&Container>,
    container_id: &str,
    name: &str,
    pod_ip: &str,
    grace: i64,
    why: &str,
) -> Result<(), tonic::Status> {
    let k = Kill {
        runtime,
        spec_c,
        container_id,
        name,
        pod_ip,
        why,
    };
    kill_in_turn(&k, grace, None).await
}

/// One container to kill and what its hooks need.
struct Kill<'a> {
    runtime: &'a crate::cri::RuntimeClient,
    spec_c: Option<&'a Container>,
    container_id: &'a str,
    name: &'a str,
    pod_ip: &'a str,
    why: &'a str,
}

/// The order in which a pod's containers stop when it has sidecars (upstream's
/// `terminationOrdering`): a sidecar waits until every main container has stopped and every
/// sidecar after it in the spec has; a container not running counts as stopped.
struct Ordering {
    stopped: std::collections::HashMap<String, tokio::sync::watch::Sender<bool>>,
    prereqs: std::collections::HashMap<String, Vec<String>>,
}

impl Ordering {
    fn new(pod: &Pod, running: &[&str]) -> Ordering {
        let spec = crate::podconfig::spec(pod);
        let mut stopped = std::collections::HashMap::new();
        let mut prereqs: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        let mains: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
        let mut later_sidecar: Option<String> = None;
        let inits: Vec<&Container> = spec.init_containers.iter().flatten().collect();
        for c in spec.containers.iter().chain(inits.iter().copied()) {
            let (tx, _) = tokio::sync::watch::channel(!running.contains(&c.name.as_str()));
            stopped.insert(c.name.clone(), tx);
        }
        for ic in inits.iter().rev().filter(|c| is_sidecar(c)) {
            let mut waits = mains.clone();
            waits.extend(later_sidecar.replace(ic.name.clone()));
            prereqs.insert(ic.name.clone(), waits);
        }
        Ordering { stopped, prereqs }
    }

    /// Waits for `name`'s turn, at most `grace` seconds; returns the whole seconds waited.
    async fn wait_for_turn(&self, name: &str, grace: i64) -> i64 {
        if grace <= 0 {
            return 0;
        }
        let start = Instant::now();
        let waits = async {
            for p in self.prereqs.get(name).into_iter().flatten() {
                if let Some(tx) = self.stopped.get(p) {
                    let mut rx = tx.subscribe();
                    // The sender lives in `self`: wait_for only ends with the value.
                    let _ = rx.wait_for(|done| *done).await;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(grace as u64), waits).await;
        start.elapsed().as_secs() as i64
    }

    fn stopped(&self, name: &str) {
        if let Some(tx) = self.stopped.get(name) {
            tx.send_replace(true);
        }
    }
}

/// [`kill_container`] within a pod's termination: after its preStop hook a sidecar waits for
/// its turn (see [`Ordering`]) with what is left of the grace period.
async fn kill_in_turn(
    k: &Kill<'_>,
    grace: i64,
    ordering: Option<&Ordering>,
) -> Result<(), tonic::Status> {
    let Kill {
        runtime,
        spec_c,
        container_id,
        name,
        pod_ip,
        why,
    } = *k;
    let mut grace = grace.max(0);
    let started = Instant::now();
    if let Some(c) = spec_c
        && let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
        && grace > 0
    {
        tracing::info!(container = %name, grace, "running the preStop hook");
        let t = Target {
            runtime: runtime.clone(),
            container_id: container_id.to_string(),
            pod_ip: pod_ip.to_string(),
        };
        if let Err(e) = run_hook(h, c, &t, Some(Duration::from_secs(grace as u64))).await {
            tracing::warn!(container = %name, "FailedPreStopHook: {e}");
        }
        grace -= started.elapsed().as_secs() as i64;
    }
    if let Some(o) = ordering
        && grace > 0
    {
        grace -= o.wait_for_turn(name, grace).await;
    }
    // Upstream always leaves a container a minimal shutdown window.
    let grace = grace.max(MIN_GRACE);
    tracing::info!(container = %name, grace, "Killing: Stopping container {name}{why}");
    let mut rt = runtime.clone();
    rt.stop_container(pb::StopContainerRequest {
        container_id: container_id.to_string(),
        timeout: grace,
    })
    .await?;
    if let Some(o) = ordering {
        o.stopped(name);
    }
    Ok(())
}

/// Kills every running container of the pod with `grace` seconds, all at once as upstream's
/// `killContainersWithSyncResult`: every preStop hook starts right away; when the pod has
/// sidecars, each waits after its hook until the main containers and the sidecars after it
/// have stopped (reverse spec order), within what is left of the grace period.
pub async fn kill_pod(
    runtime: &crate::cri::RuntimeClient,
    pod: &Pod,
    rt: &PodRuntime,
    pod_ip: &str,
    grace: i64,
) -> Result<(), tonic::Status> {
    let spec = crate::podconfig::spec(pod);
    let spec_of = |name: &str| {
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .find(|c| c.name == name)
            .cloned()
    };
    let running: Vec<&cri::Container> = rt
        .containers
        .iter()
        .filter(|c| c.state == pb::ContainerState::ContainerRunning)
        .collect();
    let names: Vec<&str> = running.iter().map(|c| c.name.as_str()).collect();
    let ordering = spec
        .init_containers
        .iter()
        .flatten()
        .any(is_sidecar)
        .then(|| std::sync::Arc::new(Ordering::new(pod, &names)));
    let mut set = tokio::task::JoinSet::new();
    for c in &running {
        let runtime = runtime.clone();
        let spec_c = spec_of(&c.name);
        let (id, name, ip) = (c.id.clone(), c.name.clone(), pod_ip.to_string());
        let ordering = ordering.clone();
        set.spawn(async move {
            let k = Kill {
                runtime: &runtime,
                spec_c: spec_c.as_ref(),
                container_id: &id,
                name: &name,
                pod_ip: &ip,
                why: "",
            };
            kill_in_turn(&k, grace, ordering.as_deref()).await
        });
    }
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        let r = r
            .map_err(|e| tonic::Status::internal(e.to_string()))
            .and_then(|r| r);
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}
