//! Pod admission, as upstream's predicate admit handler does it before a pod gets a worker:
//! node resources (pods, cpu, memory, ephemeral-storage requests against node allocatable
//! minus what the admitted pods request), then node affinity (`nodeSelector` and required
//! node affinity against the node's labels), then host ports. A rejected pod fails with
//! upstream's reason (`OutOfpods`, `OutOfcpu`, `OutOfmemory`, `OutOfephemeral-storage`,
//! `NodeAffinity`, `NodePorts`) and the message `Pod was rejected: <why>`.

use crate::quantity;
use k8s_openapi::api::core::v1::{
    Container, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec,
};
use std::collections::{BTreeMap, HashSet};

/// Why a pod was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

/// What the node offers pods.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub pods: i64,
    pub cpu_milli: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
}

/// The labels the kubelet gives its node (upstream's initial node labels).
pub fn node_labels(node: &str) -> BTreeMap<String, String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), node.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch.to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch.to_string()),
    ])
}

/// Requests of one container: (cpu milli, memory bytes, ephemeral-storage bytes).
fn container_requests(c: &Container) -> (i64, i64, i64) {
    let Some(r) = c.resources.as_ref() else {
        return (0, 0, 0);
    };
    // API defaulting: a limit without a request is the request.
    let get = |name: &str| {
        r.requests
            .as_ref()
            .and_then(|m| m.get(name))
            .or_else(|| r.limits.as_ref().and_then(|m| m.get(name)))
            .map(|q| q.0.clone())
    };
    let cpu = get("cpu")
        .and_then(|q| quantity::milli_cpu(&q).ok())
        .unwrap_or(0);
    let mem = get("memory")
        .and_then(|q| quantity::bytes(&q).ok())
        .unwrap_or(0);
    let eph = get("ephemeral-storage")
        .and_then(|q| quantity::bytes(&q).ok())
        .unwrap_or(0);
    (cpu, mem, eph)
}

fn add(a: (i64, i64, i64), b: (i64, i64, i64)) -> (i64, i64, i64) {
    (a.0 + b.0, a.1 + b.1, a.2 + b.2)
}

fn max(a: (i64, i64, i64), b: (i64, i64, i64)) -> (i64, i64, i64) {
    (a.0.max(b.0), a.1.max(b.1), a.2.max(b.2))
}

/// Sums a per-container figure over a pod as upstream's `PodRequests`/`PodLimits` do: the
/// app containers plus the sidecars (init containers with `restartPolicy: Always`), or the
/// largest regular init container plus the sidecars started before it, whichever is larger.
fn aggregate(spec: &PodSpec, per: impl Fn(&Container) -> (i64, i64, i64)) -> (i64, i64, i64) {
    let mut sidecars = (0, 0, 0);
    let mut init_peak = (0, 0, 0);
    for c in spec.init_containers.iter().flatten() {
        let r = per(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars = add(sidecars, r);
            init_peak = max(init_peak, sidecars);
        } else {
            init_peak = max(init_peak, add(sidecars, r));
        }
    }
    let app = spec.containers.iter().map(&per).fold((0, 0, 0), add);
    max(add(app, sidecars), init_peak)
}

/// The pod overhead (RuntimeClass): (cpu milli, memory, ephemeral-storage).
fn overhead(spec: &PodSpec) -> (i64, i64, i64) {
    let Some(o) = spec.overhead.as_ref() else {
        return (0, 0, 0);
    };
    let q = |name: &str| o.get(name).map(|q| q.0.clone());
    (
        q("cpu")
            .and_then(|v| quantity::milli_cpu(&v).ok())
            .unwrap_or(0),
        q("memory")
            .and_then(|v| quantity::bytes(&v).ok())
            .unwrap_or(0),
        q("ephemeral-storage")
            .and_then(|v| quantity::bytes(&v).ok())
            .unwrap_or(0),
    )
}

/// A pod's effective requests, as upstream's `PodRequests` (see [`aggregate`]), plus the
/// overhead.
pub fn pod_requests(pod: &Pod) -> (i64, i64, i64) {
    let Some(spec) = pod.spec.as_ref() else {
        return (0, 0, 0);
    };
    add(aggregate(spec, container_requests), overhead(spec))
}

/// A pod's limits as upstream's `PodLimits`: (cpu milli, memory bytes) summed like the
/// requests, the overhead added to the limits that are set; and whether every container
/// (init containers included) declares a cpu and a memory limit.
pub fn pod_limits(pod: &Pod) -> PodLimits {
    let Some(spec) = pod.spec.as_ref() else {
        return PodLimits::default();
    };
    let limit = |c: &Container, name: &str| -> i64 {
        let q = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|m| m.get(name));
        q.and_then(|q| {
            if name == "cpu" {
                quantity::milli_cpu(&q.0).ok()
            } else {
                quantity::bytes(&q.0).ok()
            }
        })
        .unwrap_or(0)
    };
    let all = || {
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
    };
    let (cpu, memory, _) = aggregate(spec, |c| (limit(c, "cpu"), limit(c, "memory"), 0));
    let o = overhead(spec);
    PodLimits {
        cpu_milli: if cpu > 0 { cpu + o.0 } else { 0 },
        memory: if memory > 0 { memory + o.1 } else { 0 },
        cpu_declared: all().all(|c| limit(c, "cpu") > 0),
        memory_declared: all().all(|c| limit(c, "memory") > 0),
    }
}

/// See [`pod_limits`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PodLimits {
    pub cpu_milli: i64,
    pub memory: i64,
    pub cpu_declared: bool,
    pub memory_declared: bool,
}

fn insufficient(resource: &str, requested: i64, used: i64, capacity: i64) -> Rejection {
    Rejection {
        reason: format!("OutOf{resource}"),
        message: format!(
            "Pod was rejected: Node didn't have enough resource: {resource}, requested: \
             {requested}, used: {used}, capacity: {capacity}"
        ),
    }
}

fn predicate(name: &str) -> Rejection {
    Rejection {
        reason: name.to_string(),
        message: format!("Pod was rejected: Predicate {name} failed"),
    }
}

/// Whether one node selector requirement holds for `labels`.
fn requirement_holds(req: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let value = labels.get(&req.key);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value.and_then(|v| v.parse::<i64>().ok()), values) else {
                return false;
            };
            let Ok(bound) = bound.parse::<i64>() else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// A term holds when all its expressions and fields hold (an empty term matches nothing).
fn term_holds(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, node: &str) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let name_label = BTreeMap::from([("metadata.name".to_string(), node.to_string())]);
    exprs.iter().all(|r| requirement_holds(r, labels))
        && fields.iter().all(|r| requirement_holds(r, &name_label))
}

fn affinity_holds(pod: &Pod, labels: &BTreeMap<String, String>, node: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok = required.is_none_or(|sel| {
        sel.node_selector_terms
            .iter()
            .any(|t| term_holds(t, labels, node))
    });
    selector_ok && affinity_ok
}

/// The host ports (protocol, ip, port) a pod asks for.
fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|h| *h > 0)?;
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                port,
            ))
        })
        .collect()
}

fn ports_conflict(a: &(String, String, i32), b: &(String, String, i32)) -> bool {
    let any = |ip: &str| ip == "0.0.0.0" || ip.is_empty() || ip == "::";
    a.0 == b.0 && a.2 == b.2 && (a.1 == b.1 || any(&a.1) || any(&b.1))
}

/// Admits `pod` next to the already admitted `others`, or says why not.
pub fn admit(pod: &Pod, others: &[&Pod], node: &str, cap: Capacity) -> Result<(), Rejection> {
    let used_pods = others.len() as i64;
    if used_pods + 1 > cap.pods {
        return Err(insufficient("pods", 1, used_pods, cap.pods));
    }
    let want = pod_requests(pod);
    let used = others.iter().map(|p| pod_requests(p)).fold((0, 0, 0), add);
    // Like upstream, a resource the pod does not request is not checked.
    for (name, req, used, cap) in [
        ("cpu", want.0, used.0, cap.cpu_milli),
        ("memory", want.1, used.1, cap.memory),
        ("ephemeral-storage", want.2, used.2, cap.ephemeral_storage),
    ] {
        if req > 0 && req + used > cap {
            return Err(insufficient(name, req, used, cap));
        }
    }
    if !affinity_holds(pod, &node_labels(node), node) {
        return Err(predicate("NodeAffinity"));
    }
    let taken: HashSet<(String, String, i32)> = others.iter().flat_map(|p| host_ports(p)).collect();
    let mine = host_ports(pod);
    if mine
        .iter()
        .any(|m| taken.iter().any(|t| ports_conflict(m, t)))
    {
        return Err(predicate("NodePorts"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_norway::from_str(yaml).expect("pod")
    }

    const CAP: Capacity = Capacity {
        pods: 3,
        cpu_milli: 2000,
        memory: 1 << 30,
        ephemeral_storage: 10 << 30,
    };

    #[test]
    fn requests_count_sidecars_and_the_largest_init_container() {
        let p = pod(r#"
spec:
  initContainers:
  - {name: side, restartPolicy: Always, resources: {requests: {cpu: 100m}}}
  - {name: init, resources: {requests: {cpu: "1", memory: 10Mi}}}
  containers:
  - {name: a, resources: {requests: {cpu: 200m}, limits: {memory: 20Mi}}}
  - {name: b, resources: {requests: {cpu: 300m}}}
"#);
        // init peak: 100m + 1000m = 1100m > app 500m + sidecar 100m; memory: app's limit.
        assert_eq!(pod_requests(&p), (1100, 20 << 20, 0));
    }

    #[test]
    fn resources_affinity_and_ports_are_checked_in_order() {
        let big = pod("spec: {containers: [{name: a, resources: {requests: {cpu: '3'}}}]}");
        let e = admit(&big, &[], "n1", CAP).expect_err("too much cpu");
        assert_eq!(e.reason, "OutOfcpu");
        assert_eq!(
            e.message,
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 3000, used: 0, capacity: 2000"
        );
        let half = pod("spec: {containers: [{name: a, resources: {requests: {memory: 600Mi}}}]}");
        assert!(admit(&half, &[], "n1", CAP).is_ok());
        assert_eq!(
            admit(&half, &[&half], "n1", CAP)
                .expect_err("memory")
                .reason,
            "OutOfmemory"
        );
        let e = admit(&half, &[&half, &half, &half], "n1", CAP).expect_err("pods");
        assert_eq!(e.reason, "OutOfpods");
        let sel =
            pod("spec: {nodeSelector: {kubernetes.io/hostname: other}, containers: [{name: a}]}");
        assert_eq!(
            admit(&sel, &[], "n1", CAP).expect_err("selector"),
            Rejection {
                reason: "NodeAffinity".into(),
                message: "Pod was rejected: Predicate NodeAffinity failed".into()
            }
        );
        let ok = pod("spec: {nodeSelector: {kubernetes.io/os: linux}, containers: [{name: a}]}");
        assert!(admit(&ok, &[], "n1", CAP).is_ok());
        let aff = pod(r#"
spec:
  containers: [{name: a}]
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [n3]}]
        - matchFields: [{key: metadata.name, operator: In, values: [n1]}]
"#);
        assert!(
            admit(&aff, &[], "n1", CAP).is_ok(),
            "the second term matches"
        );
        assert!(
            admit(&aff, &[], "n3", CAP).is_ok(),
            "the first term matches"
        );
        assert!(admit(&aff, &[], "n2", CAP).is_err());
        let web =
            pod("spec: {containers: [{name: a, ports: [{containerPort: 80, hostPort: 8080}]}]}");
        assert!(admit(&web, &[], "n1", CAP).is_ok());
        assert_eq!(
            admit(&web, &[&web], "n1", CAP).expect_err("port").reason,
            "NodePorts"
        );
    }
}
