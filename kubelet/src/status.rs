//! The status manager's computation: what the runtime reports for a pod, plus the reasons the
//! last sync left (image pull errors, back-offs), as a `v1.PodStatus` the way upstream's
//! `generateAPIPodStatus` builds it. Computed whether or not an apiserver receives it.

use crate::cri::{Container as RtContainer, PodRuntime};
use crate::lifecycle::is_sidecar;
use crate::podconfig::{qos_class, spec};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, ContainerUser, HostIP, LinuxContainerUser, Pod,
    PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use keelson_proto::runtime::v1 as pb;
use std::collections::HashMap;

pub const CONTAINER_CREATING: &str = "ContainerCreating";
pub const POD_INITIALIZING: &str = "PodInitializing";

/// A waiting reason the last sync left for a container (upstream's reason cache).
#[derive(Clone, Debug, PartialEq)]
pub struct Reason {
    pub reason: String,
    pub message: String,
}

/// Inputs besides the pod and the runtime view.
pub struct Context<'a> {
    pub reasons: &'a HashMap<String, Reason>,
    pub old: Option<&'a PodStatus>,
    /// "<runtime name>" for container IDs "<runtime name>://<id>".
    pub runtime_name: &'a str,
    pub host_ips: &'a [String],
    pub now: Timestamp,
    /// The pod's restartPolicy.
    pub policy: &'a str,
    /// Probe results by container ID.
    pub probes: &'a HashMap<String, crate::probes::Results>,
}

pub fn time_ns(ns: i64) -> Option<Time> {
    if ns <= 0 {
        return None;
    }
    // Seconds precision, as the API's Time.
    Timestamp::from_second(ns / 1_000_000_000).ok().map(Time)
}

fn terminated(c: &RtContainer, cid: String) -> ContainerState {
    let reason = if c.reason.is_empty() {
        if c.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .to_string()
    } else {
        c.reason.clone()
    };
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            container_id: Some(cid),
            exit_code: c.exit_code,
            reason: Some(reason),
            message: Some(c.message.clone()).filter(|m| !m.is_empty()),
            started_at: time_ns(c.started_at),
            finished_at: time_ns(c.finished_at),
            signal: None,
        }),
        ..Default::default()
    }
}

fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message: Some(message.to_string()).filter(|m| !m.is_empty()),
        }),
        ..Default::default()
    }
}

/// Whether an exited container is started again (upstream's `ShouldContainerBeRestarted`).
fn would_restart(c: &Container, is_init: bool, policy: &str, exit_code: i32) -> bool {
    if is_sidecar(c) {
        return true;
    }
    match policy {
        "Always" => !is_init || exit_code != 0,
        "OnFailure" => exit_code != 0,
        _ => false,
    }
}

fn container_statuses(
    containers: &[Container],
    rt: &PodRuntime,
    ctx: &Context,
    has_init: bool,
    is_init: bool,
) -> Vec<ContainerStatus> {
    let default_reason = if has_init {
        POD_INITIALIZING
    } else {
        CONTAINER_CREATING
    };
    let cid = |c: &RtContainer| format!("{}://{}", ctx.runtime_name, c.id);
    let policy = ctx.policy;
    containers
        .iter()
        .map(|spec_c| {
            let mut st = ContainerStatus {
                name: spec_c.name.clone(),
                image: spec_c.image.clone().unwrap_or_default(),
                state: Some(waiting(default_reason, "")),
                ..Default::default()
            };
            let mut inst = rt.instances(&spec_c.name);
            let latest = inst.next();
            let previous = inst.next();
            if let Some(l) = latest {
                st.container_id = Some(cid(l));
                st.image_id = l.image_ref.clone();
                st.user = l.user.as_ref().map(|u| ContainerUser {
                    linux: u.linux.as_ref().map(|l| LinuxContainerUser {
                        uid: l.uid,
                        gid: l.gid,
                        supplemental_groups: Some(l.supplemental_groups.clone())
                            .filter(|g| !g.is_empty()),
                    }),
                });
                st.restart_count = l.restart_count;
                st.started = Some(false);
                match l.state {
                    pb::ContainerState::ContainerRunning => {
                        st.state = Some(ContainerState {
                            running: Some(ContainerStateRunning {
                                started_at: time_ns(l.started_at),
                            }),
                            ..Default::default()
                        });
                        let (started, ready) =
                            crate::probes::started_ready(spec_c, ctx.probes.get(&l.id));
                        st.started = Some(started);
                        // A regular init container is ready only once it completed.
                        st.ready = ready && (!is_init || is_sidecar(spec_c));
                        if let Some(p) =
                            previous.filter(|p| p.state == pb::ContainerState::ContainerExited)
                        {
                            st.last_state = Some(terminated(p, cid(p)));
                        }
                    }
                    pb::ContainerState::ContainerExited => {
                        st.state = Some(terminated(l, cid(l)));
                        // A regular init container is ready once it completed.
                        st.ready = is_init && !is_sidecar(spec_c) && l.exit_code == 0;
                        if let Some(p) =
                            previous.filter(|p| p.state == pb::ContainerState::ContainerExited)
                        {
                            st.last_state = Some(terminated(p, cid(p)));
                        }
                    }
                    _ => st.state = Some(waiting(CONTAINER_CREATING, "")),
                }
            }
            let running = latest.is_some_and(|l| l.state == pb::ContainerState::ContainerRunning);
            // A container that exited for good stays terminated (upstream shows the reason
            // only for a container that will be started again).
            let done = latest.is_some_and(|l| {
                l.state == pb::ContainerState::ContainerExited
                    && !would_restart(spec_c, is_init, policy, l.exit_code)
            });
            if let Some(r) = ctx.reasons.get(&spec_c.name)
                && !running
                && !done
            {
                if let Some(l) = latest.filter(|l| l.state == pb::ContainerState::ContainerExited) {
                    st.last_state = Some(terminated(l, cid(l)));
                }
                st.state = Some(waiting(&r.reason, &r.message));
            }
            st
        })
        .collect()
}

fn is_running(s: &ContainerStatus) -> bool {
    s.state.as_ref().is_some_and(|s| s.running.is_some())
}

fn term(s: &Option<ContainerState>) -> Option<&ContainerStateTerminated> {
    s.as_ref().and_then(|s| s.terminated.as_ref())
}

/// Whether a container of the list ever ran (has a container ID).
fn any_started(app: &[ContainerStatus]) -> bool {
    app.iter().any(|st| st.container_id.is_some())
}

/// Upstream's `getPhase`, sidecars included: a running sidecar counts as running, a
/// terminated one does not count; sidecars still starting keep the pod Pending until a main
/// container has run.
pub fn phase(pod: &Pod, init: &[ContainerStatus], app: &[ContainerStatus]) -> &'static str {
    let s = spec(pod);
    let policy = s.restart_policy.as_deref().unwrap_or("Always");
    let (mut pending_init, mut failed_init) = (0, 0);
    let (mut pending_sidecars, mut running) = (0, 0);
    let init_specs = s.init_containers.as_deref().unwrap_or(&[]);
    for (st, c) in init.iter().zip(init_specs) {
        if is_sidecar(c) {
            if is_running(st) {
                if st.started != Some(true) {
                    pending_sidecars += 1;
                }
                running += 1;
            } else if term(&st.state).is_none() && term(&st.last_state).is_none() {
                pending_sidecars += 1;
            }
            continue;
        }
        if is_running(st) {
            pending_init += 1;
        } else if let Some(t) = term(&st.state) {
            if t.exit_code != 0 {
                failed_init += 1;
            }
        } else if let Some(t) = term(&st.last_state) {
            if t.exit_code != 0 {
                failed_init += 1;
            }
        } else {
            pending_init += 1;
        }
    }
    let (mut waiting, mut stopped, mut succeeded) = (0, 0, 0);
    for st in app {
        if is_running(st) {
            running += 1;
        } else if let Some(t) = term(&st.state) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if term(&st.last_state).is_some() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if failed_init > 0 && policy == "Never" {
        return "Failed";
    }
    if pending_init > 0 || waiting > 0 || (pending_sidecars > 0 && !any_started(app)) {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

fn condition(
    ctx: &Context,
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let old = ctx
        .old
        .and_then(|o| o.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    let since = match old {
        Some(o) if o.status == status => o.last_transition_time.clone(),
        _ => Some(Time(ctx.now)),
    };
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.map(String::from),
        message,
        last_transition_time: since,
        last_probe_time: None,
        observed_generation: None,
    }
}

fn names(v: &[&str]) -> String {
    format!("[{}]", v.join(" "))
}

/// The pod's status now.
pub fn compute(pod: &Pod, rt: &PodRuntime, ctx: &Context) -> PodStatus {
    let s = spec(pod);
    let init_specs = s.init_containers.clone().unwrap_or_default();
    let has_init = !init_specs.is_empty();
    let init = container_statuses(&init_specs, rt, ctx, has_init, true);
    let app = container_statuses(&s.containers, rt, ctx, has_init, false);
    let mut ph = phase(pod, &init, &app);
    if let Some(old) = ctx.old.and_then(|o| o.phase.as_deref())
        && (old == "Succeeded" || old == "Failed")
    {
        // A terminal phase never changes.
        ph = if old == "Succeeded" {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    let host_net = s.host_network.unwrap_or(false);
    let sandbox = rt.ready_sandbox();
    let pod_ips: Vec<String> = if host_net {
        ctx.host_ips.to_vec()
    } else {
        sandbox.map(|s| s.ips.clone()).unwrap_or_default()
    };
    let completed = ph == "Succeeded";
    // Regular init containers must have completed, sidecars must have started; once a main
    // container ran, the pod stays initialized.
    let incomplete: Vec<&str> = init
        .iter()
        .zip(&init_specs)
        .filter(|(st, c)| {
            if is_sidecar(c) {
                st.started != Some(true)
            } else {
                term(&st.state).is_none_or(|t| t.exit_code != 0)
            }
        })
        .map(|(st, _)| st.name.as_str())
        .collect();
    let initialized = incomplete.is_empty() || completed || any_started(&app);
    // The main containers and the sidecars must be ready.
    let unready: Vec<&str> = init
        .iter()
        .zip(&init_specs)
        .filter(|(st, c)| is_sidecar(c) && !st.ready)
        .map(|(st, _)| st.name.as_str())
        .chain(app.iter().filter(|st| !st.ready).map(|st| st.name.as_str()))
        .collect();
    let ready = unready.is_empty();
    let (ready_reason, ready_msg) = if ready {
        (None, None)
    } else if completed {
        (Some("PodCompleted"), None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: {}",
                names(&unready)
            )),
        )
    };
    let conditions = vec![
        condition(
            ctx,
            "PodReadyToStartContainers",
            sandbox.is_some() && (host_net || !pod_ips.is_empty()),
            None,
            None,
        ),
        condition(
            ctx,
            "Initialized",
            initialized,
            if initialized {
                completed.then_some("PodCompleted")
            } else {
                Some("ContainersNotInitialized")
            },
            (!initialized)
                .then(|| format!("containers with incomplete status: {}", names(&incomplete))),
        ),
        condition(ctx, "Ready", ready, ready_reason, ready_msg.clone()),
        condition(ctx, "ContainersReady", ready, ready_reason, ready_msg),
        condition(ctx, "PodScheduled", true, None, None),
    ];
    let start_time = ctx
        .old
        .and_then(|o| o.start_time.clone())
        .or_else(|| {
            rt.sandboxes
                .iter()
                .map(|s| s.created_at)
                .min()
                .and_then(time_ns)
        })
        .or(Some(Time(ctx.now)));
    PodStatus {
        phase: Some(ph.into()),
        conditions: Some(conditions),
        host_ip: ctx.host_ips.first().cloned(),
        host_ips: Some(
            ctx.host_ips
                .iter()
                .map(|ip| HostIP { ip: ip.clone() })
                .collect(),
        )
        .filter(|v: &Vec<HostIP>| !v.is_empty()),
        pod_ip: pod_ips.first().cloned(),
        pod_ips: Some(pod_ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect())
            .filter(|v: &Vec<PodIP>| !v.is_empty()),
        start_time,
        qos_class: Some(qos_class(s).into()),
        init_container_statuses: has_init.then_some(init),
        container_statuses: Some(app),
        ..Default::default()
    }
}
