//! PodSpec → CRI: the sandbox config (`PodSandboxConfig`) and container configs
//! (`ContainerConfig`) the kubelet asks the runtime for, as upstream's kuberuntime builds them.

use crate::config::Config;
use crate::cri::*;
use crate::quantity;
use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, PodSpec};
use keelson_proto::runtime::v1 as pb;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// Why a container config could not be made: the pod's status shows
/// `CreateContainerConfigError` with this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

pub fn spec(pod: &Pod) -> &PodSpec {
    static EMPTY: std::sync::OnceLock<PodSpec> = std::sync::OnceLock::new();
    pod.spec
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(PodSpec::default))
}

pub fn meta(pod: &Pod) -> (&str, &str, &str) {
    (
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or(""),
    )
}

/// The hash of a container's spec, stored on the CRI container: a change means the container
/// is killed and created again.
pub fn container_hash(c: &Container) -> String {
    let data = serde_json::to_vec(c).unwrap_or_default();
    hex::encode(&Sha256::digest(&data)[..4])
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

fn res_of<'a>(c: &'a Container, which: &str, name: &str) -> Option<&'a str> {
    let r = c.resources.as_ref()?;
    let m = if which == "limits" {
        r.limits.as_ref()?
    } else {
        r.requests.as_ref()?
    };
    m.get(name).map(|q| q.0.as_str())
}

/// Upstream's QoS class: Guaranteed, Burstable or BestEffort.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in all_containers(spec) {
        for name in ["cpu", "memory"] {
            let req = res_of(c, "requests", name);
            let lim = res_of(c, "limits", name);
            if req.is_some() || lim.is_some() {
                any = true;
            }
            match (req, lim) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) => {
                    if quantity::parse(r).ok() != quantity::parse(l).ok() {
                        guaranteed = false;
                    }
                }
                (None, Some(_)) => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The pod's cgroup (see [`crate::qos`]), its sandbox's cgroup parent:
/// `<cgroupRoot>/kubepods[/burstable|/besteffort]/pod<uid>`; with cgroupsPerQOS off, as
/// upstream, cgroupRoot itself for every pod.
pub fn cgroup_parent(cfg: &Config, pod: &Pod) -> String {
    let (_, _, uid) = meta(pod);
    // "" and "/" are the root; a relative cgroupRoot (keelson's extension) is resolved by the
    // runtime below its own cgroup.
    let root = cfg.cgroup_root.trim_end_matches('/');
    if !cfg.cgroups_per_qos {
        return if root.is_empty() {
            "/".into()
        } else {
            root.into()
        };
    }
    let mut parts: Vec<String> = vec![crate::qos::KUBEPODS.into()];
    match qos_class(spec(pod)) {
        "Burstable" => parts.push(crate::qos::BURSTABLE.into()),
        "BestEffort" => parts.push(crate::qos::BESTEFFORT.into()),
        _ => {}
    }
    parts.push(format!("pod{uid}"));
    format!("{root}/{}", parts.join("/"))
}

/// Parses a resolv.conf into servers, searches and options.
pub fn parse_resolv_conf(text: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut servers, mut searches, mut options) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => servers.extend(f.next().map(String::from)),
            Some("search" | "domain") => searches = f.map(String::from).collect(),
            Some("options") => options.extend(f.map(String::from)),
            _ => {}
        }
    }
    (servers, searches, options)
}

/// dnsPolicy → the sandbox's DNS config, as upstream's `GetPodDNS`.
pub fn dns_config(cfg: &Config, pod: &Pod) -> Option<pb::DnsConfig> {
    let s = spec(pod);
    let host_net = s.host_network.unwrap_or(false);
    let mut policy = s.dns_policy.as_deref().unwrap_or("ClusterFirst");
    if policy == "ClusterFirst" && host_net {
        policy = "Default";
    }
    if policy == "ClusterFirstWithHostNet" {
        policy = "ClusterFirst";
    }
    if policy == "ClusterFirst" && cfg.cluster_dns.is_empty() {
        // Upstream: no cluster DNS configured → fall back to the host's resolv.conf.
        policy = "Default";
    }
    let mut out = pb::DnsConfig::default();
    match policy {
        "Default" => {
            let text = std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_default();
            let (sv, se, op) = parse_resolv_conf(&text);
            out.servers = sv;
            out.searches = se;
            out.options = op;
        }
        "ClusterFirst" => {
            let (ns, _, _) = meta(pod);
            let text = std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_default();
            let (_, host_search, _) = parse_resolv_conf(&text);
            out.servers = cfg.cluster_dns.clone();
            let d = &cfg.cluster_domain;
            out.searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
            out.searches.extend(host_search);
            out.options = vec!["ndots:5".into()];
        }
        _ => {}
    }
    if let Some(dc) = &s.dns_config {
        for n in dc.nameservers.iter().flatten() {
            if !out.servers.contains(n) {
                out.servers.push(n.clone());
            }
        }
        for n in dc.searches.iter().flatten() {
            if !out.searches.contains(n) {
                out.searches.push(n.clone());
            }
        }
        for o in dc.options.iter().flatten() {
            let opt = match &o.value {
                Some(v) => format!("{}:{v}", o.name.as_deref().unwrap_or("")),
                None => o.name.clone().unwrap_or_default(),
            };
            let key = opt.split(':').next().unwrap_or("").to_string();
            out.options
                .retain(|x| x.split(':').next().unwrap_or("") != key);
            out.options.push(opt);
        }
    }
    out.searches.truncate(32);
    out.servers.truncate(3);
    Some(out)
}

pub fn namespace_options(pod: &Pod) -> pb::NamespaceOption {
    let s = spec(pod);
    let mode = |node: bool, other: pb::NamespaceMode| {
        if node {
            pb::NamespaceMode::Node as i32
        } else {
            other as i32
        }
    };
    pb::NamespaceOption {
        network: mode(s.host_network.unwrap_or(false), pb::NamespaceMode::Pod),
        pid: mode(
            s.host_pid.unwrap_or(false),
            if s.share_process_namespace.unwrap_or(false) {
                pb::NamespaceMode::Pod
            } else {
                pb::NamespaceMode::Container
            },
        ),
        ipc: mode(s.host_ipc.unwrap_or(false), pb::NamespaceMode::Pod),
        target_id: String::new(),
        userns_options: None,
    }
}

fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    let (ns, name, uid) = meta(pod);
    let mut l: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    l.insert(LABEL_POD_NAME.into(), name.into());
    l.insert(LABEL_POD_NAMESPACE.into(), ns.into());
    l.insert(LABEL_POD_UID.into(), uid.into());
    l
}

/// The sandbox config for attempt `attempt` of the pod.
pub fn sandbox_config(cfg: &Config, pod: &Pod, attempt: u32) -> pb::PodSandboxConfig {
    let (ns, name, uid) = meta(pod);
    let s = spec(pod);
    let mut hostname = s.hostname.clone().unwrap_or_else(|| name.to_string());
    hostname.truncate(63);
    let hostname = hostname.trim_end_matches(['-', '.']).to_string();
    let mut port_mappings = Vec::new();
    for c in &s.containers {
        for p in c.ports.iter().flatten() {
            if p.host_port.unwrap_or(0) == 0 {
                continue;
            }
            let proto = match p.protocol.as_deref() {
                Some("UDP") => pb::Protocol::Udp,
                Some("SCTP") => pb::Protocol::Sctp,
                _ => pb::Protocol::Tcp,
            };
            port_mappings.push(pb::PortMapping {
                protocol: proto as i32,
                container_port: p.container_port,
                host_port: p.host_port.unwrap_or(0),
                host_ip: p.host_ip.clone().unwrap_or_default(),
            });
        }
    }
    let psc = s.security_context.clone().unwrap_or_default();
    let privileged = all_containers(s).any(|c| {
        c.security_context
            .as_ref()
            .and_then(|sc| sc.privileged)
            .unwrap_or(false)
    });
    let sysctls: HashMap<String, String> = psc
        .sysctls
        .iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    let mut annotations: HashMap<String, String> = pod
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    annotations.retain(|k, _| k != crate::source::CONFIG_SEEN);
    pb::PodSandboxConfig {
        metadata: Some(pb::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: ns.into(),
            attempt,
        }),
        hostname: if s.host_network.unwrap_or(false) {
            String::new()
        } else {
            hostname
        },
        log_directory: cfg.pod_log_dir(ns, name, uid).display().to_string(),
        dns_config: dns_config(cfg, pod),
        port_mappings,
        labels: pod_labels(pod),
        annotations,
        linux: Some(pb::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(cfg, pod),
            security_context: Some(pb::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(pod)),
                run_as_user: psc.run_as_user.map(|v| pb::Int64Value { value: v }),
                run_as_group: psc.run_as_group.map(|v| pb::Int64Value { value: v }),
                supplemental_groups: supplemental_groups(&psc),
                supplemental_groups_policy: supplemental_groups_policy(&psc),
                privileged,
                seccomp: seccomp(psc.seccomp_profile.as_ref()),
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        windows: None,
    }
}

/// The groups every process of the pod gets besides its own, as upstream orders them: the
/// `fsGroup` first, then `supplementalGroups`.
fn supplemental_groups(psc: &PodSecurityContext) -> Vec<i64> {
    psc.fs_group
        .into_iter()
        .chain(psc.supplemental_groups.iter().flatten().copied())
        .collect()
}

/// `supplementalGroupsPolicy` as the CRI's enum (validation refuses other values before).
fn supplemental_groups_policy(psc: &PodSecurityContext) -> i32 {
    match psc.supplemental_groups_policy.as_deref() {
        Some("Strict") => pb::SupplementalGroupsPolicy::Strict as i32,
        _ => pb::SupplementalGroupsPolicy::Merge as i32,
    }
}

fn seccomp(p: Option<&k8s_openapi::api::core::v1::SeccompProfile>) -> Option<pb::SecurityProfile> {
    let p = p?;
    let (t, path) = match p.type_.as_str() {
        "RuntimeDefault" => (pb::security_profile::ProfileType::RuntimeDefault, ""),
        "Localhost" => (
            pb::security_profile::ProfileType::Localhost,
            p.localhost_profile.as_deref().unwrap_or(""),
        ),
        _ => (pb::security_profile::ProfileType::Unconfined, ""),
    };
    Some(pb::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: path.into(),
    })
}

/// Expands `$(VAR)` references as upstream's `expansion.Expand`: `$$` escapes, unknown
/// references stay as written.
pub fn expand(input: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let b = input.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            match b[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(end) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + end];
                        match vars(name) {
                            Some(v) => out.push_str(&v),
                            None => out.push_str(&input[i..i + 3 + end]),
                        }
                        i += 3 + end;
                        continue;
                    }
                }
                _ => {}
            }
        }
        let ch = input[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Facts about the pod the downward API (env fieldRef) reads.
pub struct PodFacts {
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
}

fn field_ref(pod: &Pod, facts: &PodFacts, path: &str) -> Result<String, ConfigError> {
    let (ns, name, uid) = meta(pod);
    let s = spec(pod);
    let map_key = |prefix: &str, m: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            m.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    if let Some(v) = map_key("metadata.labels['", &pod.metadata.labels) {
        return Ok(v);
    }
    if let Some(v) = map_key("metadata.annotations['", &pod.metadata.annotations) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => name.into(),
        "metadata.namespace" => ns.into(),
        "metadata.uid" => uid.into(),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => s.service_account_name.clone().unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        other => {
            return Err(ConfigError(format!(
                "unsupported fieldRef {other:?} in an environment variable"
            )));
        }
    })
}

/// The container's environment in order, with `$(VAR)` expanded against earlier entries.
pub fn env(
    pod: &Pod,
    c: &Container,
    facts: &PodFacts,
) -> Result<Vec<(String, String)>, ConfigError> {
    if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(ConfigError(
            "envFrom (configMap/secret) needs the apiserver source, which this kubelet does not have yet".into(),
        ));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for e in c.env.iter().flatten() {
        let value = if let Some(vf) = &e.value_from {
            if let Some(fr) = &vf.field_ref {
                field_ref(pod, facts, &fr.field_path)?
            } else if let Some(rf) = &vf.resource_field_ref {
                crate::volumes::resource_value(
                    c,
                    &rf.resource,
                    rf.divisor.as_ref().map(|d| d.0.as_str()),
                )
                .map_err(ConfigError)?
            } else {
                return Err(ConfigError(format!(
                    "env {:?}: configMapKeyRef/secretKeyRef need the apiserver source, which this kubelet does not have yet",
                    e.name
                )));
            }
        } else {
            let raw = e.value.clone().unwrap_or_default();
            let lookup = |n: &str| {
                out.iter()
                    .rev()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
            };
            expand(&raw, &lookup)
        };
        out.retain(|(k, _)| k != &e.name);
        out.push((e.name.clone(), value));
    }
    Ok(out)
}

/// Resources → LinuxContainerResources (cpu shares from requests, quota from limits, memory
/// limit, OOM score as upstream's QoS policy).
pub fn linux_resources(
    cfg: &Config,
    pod: &Pod,
    c: &Container,
) -> Result<pb::LinuxContainerResources, ConfigError> {
    let q = |which, name| -> Result<Option<i64>, ConfigError> {
        res_of(c, which, name)
            .map(|s| {
                if name == "cpu" {
                    quantity::milli_cpu(s)
                } else {
                    quantity::bytes(s)
                }
            })
            .transpose()
            .map_err(ConfigError)
    };
    let cpu_req = q("requests", "cpu")?;
    let cpu_lim = q("limits", "cpu")?;
    let mem_req = q("requests", "memory")?;
    let mem_lim = q("limits", "memory")?;
    // Requests default to limits.
    let cpu_req = cpu_req.or(cpu_lim);
    let mem_req = mem_req.or(mem_lim);
    let mut r = pb::LinuxContainerResources {
        cpu_shares: crate::qos::milli_cpu_to_shares(cpu_req.unwrap_or(0)) as i64,
        ..Default::default()
    };
    if let Some(l) = cpu_lim
        && cfg.cpu_cfs_quota
    {
        r.cpu_period = cfg.cpu_cfs_period_us as i64;
        r.cpu_quota = crate::qos::milli_cpu_to_quota(l, cfg.cpu_cfs_period_us);
    }
    if let Some(l) = mem_lim {
        r.memory_limit_in_bytes = l;
    }
    r.oom_score_adj = match qos_class(spec(pod)) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            // Upstream: 1000 - (1000 * memoryRequest) / memoryCapacity, clamped to [3, 999].
            let cap = node_memory().max(1);
            let adj = 1000 - (1000 * mem_req.unwrap_or(0)) / cap;
            adj.clamp(3, 999)
        }
    };
    Ok(r)
}

fn node_memory() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<i64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn security_context(pod: &Pod, c: &Container) -> pb::LinuxContainerSecurityContext {
    let psc = spec(pod).security_context.clone().unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    pb::LinuxContainerSecurityContext {
        capabilities: Some(pb::Capability {
            add_capabilities: caps.add.clone().unwrap_or_default(),
            drop_capabilities: caps.drop.clone().unwrap_or_default(),
            add_ambient_capabilities: Vec::new(),
        }),
        privileged: sc.privileged.unwrap_or(false),
        namespace_options: Some(namespace_options(pod)),
        run_as_user: sc
            .run_as_user
            .or(psc.run_as_user)
            .map(|v| pb::Int64Value { value: v }),
        run_as_group: sc
            .run_as_group
            .or(psc.run_as_group)
            .map(|v| pb::Int64Value { value: v }),
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        supplemental_groups: supplemental_groups(&psc),
        supplemental_groups_policy: supplemental_groups_policy(&psc),
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        seccomp: seccomp(sc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref())),
        ..Default::default()
    }
}

/// What the runtime needs to create one container (attempt = restart count).
pub fn container_config(
    cfg: &Config,
    pod: &Pod,
    c: &Container,
    kind: &str,
    restart_count: i32,
    image: &str,
    facts: &PodFacts,
) -> Result<pb::ContainerConfig, ConfigError> {
    let (ns, name, uid) = meta(pod);
    if c.volume_devices.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(ConfigError(
            "volumeDevices (raw block volumes) need persistentVolumeClaim volumes, which are not supported without an apiserver".into(),
        ));
    }
    let envs = env(pod, c, facts)?;
    let lookup = |n: &str| {
        envs.iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    let command: Vec<String> = c
        .command
        .iter()
        .flatten()
        .map(|s| expand(s, &lookup))
        .collect();
    let args: Vec<String> = c
        .args
        .iter()
        .flatten()
        .map(|s| expand(s, &lookup))
        .collect();
    let mut labels = HashMap::from([
        (LABEL_CONTAINER_NAME.to_string(), c.name.clone()),
        (LABEL_POD_NAME.to_string(), name.to_string()),
        (LABEL_POD_NAMESPACE.to_string(), ns.to_string()),
        (LABEL_POD_UID.to_string(), uid.to_string()),
    ]);
    labels.insert(LABEL_CONTAINER_TYPE.into(), kind.into());
    let mut annotations = HashMap::from([
        (ANN_CONTAINER_HASH.to_string(), container_hash(c)),
        (ANN_RESTART_COUNT.to_string(), restart_count.to_string()),
        (
            ANN_TERMINATION_MESSAGE_PATH.to_string(),
            c.termination_message_path.clone().unwrap_or_default(),
        ),
        (
            ANN_TERMINATION_MESSAGE_POLICY.to_string(),
            c.termination_message_policy.clone().unwrap_or_default(),
        ),
        (
            ANN_POD_GRACE.to_string(),
            spec(pod)
                .termination_grace_period_seconds
                .unwrap_or(30)
                .to_string(),
        ),
    ]);
    if let Some(ports) = c.ports.as_ref().filter(|p| !p.is_empty()) {
        annotations.insert(
            ANN_CONTAINER_PORTS.into(),
            serde_json::to_string(ports).unwrap_or_default(),
        );
    }
    Ok(pb::ContainerConfig {
        metadata: Some(pb::ContainerMetadata {
            name: c.name.clone(),
            attempt: u32::try_from(restart_count).unwrap_or(0),
        }),
        image: Some(pb::ImageSpec {
            image: image.to_string(),
            user_specified_image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command,
        args,
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: envs
            .into_iter()
            .map(|(key, value)| pb::KeyValue { key, value })
            .collect(),
        labels,
        annotations,
        log_path: format!("{}/{restart_count}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(pb::LinuxContainerConfig {
            resources: Some(linux_resources(cfg, pod, c)?),
            security_context: Some(security_context(pod, c)),
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion() {
        let vars = |n: &str| match n {
            "A" => Some("1".to_string()),
            _ => None,
        };
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$(A", &vars), "$(A");
        assert_eq!(expand("é$", &vars), "é$");
    }

    #[test]
    fn resolv_conf() {
        let (s, se, o) = parse_resolv_conf(
            "nameserver 1.1.1.1\n# c\nsearch a b\noptions ndots:2 edns0\nnameserver 8.8.8.8\n",
        );
        assert_eq!(s, ["1.1.1.1", "8.8.8.8"]);
        assert_eq!(se, ["a", "b"]);
        assert_eq!(o, ["ndots:2", "edns0"]);
    }

    fn test_cfg() -> Config {
        Config::load(&crate::config::Flags {
            container_runtime_endpoint: Some("unix:///run/x.sock".into()),
            ..Default::default()
        })
        .expect("config")
    }

    fn pod(y: &str) -> Pod {
        crate::source::decode(y).expect("pod")
    }

    #[test]
    fn qos() {
        let be = pod(
            "kind: Pod\napiVersion: v1\nmetadata: {name: a}\nspec:\n  containers: [{name: c, image: i}]\n",
        );
        assert_eq!(qos_class(spec(&be)), "BestEffort");
        let g = pod(
            "kind: Pod\napiVersion: v1\nmetadata: {name: a}\nspec:\n  containers: [{name: c, image: i, resources: {limits: {cpu: 100m, memory: 10Mi}}}]\n",
        );
        assert_eq!(qos_class(spec(&g)), "Guaranteed");
        let b = pod(
            "kind: Pod\napiVersion: v1\nmetadata: {name: a}\nspec:\n  containers: [{name: c, image: i, resources: {requests: {cpu: 100m}}}]\n",
        );
        assert_eq!(qos_class(spec(&b)), "Burstable");
        let r = linux_resources(&test_cfg(), &g, &spec(&g).containers[0]).expect("res");
        assert_eq!(r.cpu_shares, 102);
        assert_eq!(r.cpu_quota, 10_000);
        assert_eq!(r.memory_limit_in_bytes, 10 << 20);
        assert_eq!(r.oom_score_adj, -997);
    }

    #[test]
    fn env_and_args() {
        let p = pod(
            "kind: Pod\napiVersion: v1\nmetadata: {name: a, uid: u1}\nspec:\n  containers:\n  - name: c\n    image: i\n    command: [sh, -c, 'echo $(B)']\n    env:\n    - {name: A, value: x}\n    - {name: B, value: '$(A)-y'}\n    - {name: N, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}\n",
        );
        let facts = PodFacts {
            pod_ip: "10.0.0.2".into(),
            host_ip: "192.0.2.1".into(),
            node_name: "n".into(),
        };
        let c = &spec(&p).containers[0];
        let cc = container_config(&test_cfg(), &p, c, "app", 2, "i", &facts).expect("cc");
        let env: Vec<_> = cc
            .envs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()))
            .collect();
        assert_eq!(env, [("A", "x"), ("B", "x-y"), ("N", "u1")]);
        assert_eq!(cc.command, ["sh", "-c", "echo x-y"]);
        assert_eq!(cc.log_path, "c/2.log");
        assert_eq!(cc.annotations[ANN_RESTART_COUNT], "2");
        assert_eq!(cc.labels[LABEL_POD_UID], "u1");
    }
}
