//! The per-attachment parameters of an ADD/DEL/CHECK: container id, netns, interface name,
//! CNI_ARGS and capability arguments, with the pod labels containerd passes.

use serde::Serialize;
use serde_json::{Map, Value};

use super::config::valid_name;
use super::error::CniError;

/// Capability names of the CNI conventions that a runtime fills in `runtimeConfig`.
pub mod capability {
    pub const PORT_MAPPINGS: &str = "portMappings";
    pub const BANDWIDTH: &str = "bandwidth";
    pub const IP_RANGES: &str = "ipRanges";
    pub const DNS: &str = "dns";
    pub const CGROUP_PATH: &str = "cgroupPath";
    pub const POD_ANNOTATIONS: &str = "io.kubernetes.cri.pod-annotations";
}

/// One attachment of a container to a network, identified by `(container_id, ifname)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`: the sandbox id.
    pub container_id: String,
    /// `CNI_NETNS`: the netns path. May be empty or gone at DEL.
    pub netns: String,
    /// `CNI_IFNAME`, e.g. `eth0` (or `lo` for the loopback network).
    pub ifname: String,
    /// `CNI_ARGS`, joined as `K=V;K=V` in this order.
    pub args: Vec<(String, String)>,
    /// Capability arguments; each goes into `runtimeConfig` only of the plugins that declare the
    /// capability.
    pub capability_args: Map<String, Value>,
}

/// The pod a sandbox belongs to, for the `K8S_POD_*` CNI_ARGS.
#[derive(Debug, Clone, Copy)]
pub struct PodRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

/// One `portMappings` entry (`{"hostPort", "containerPort", "protocol", "hostIP"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: i32,
    #[serde(rename = "containerPort")]
    pub container_port: i32,
    /// Lower case: "tcp", "udp" or "sctp".
    pub protocol: String,
    #[serde(rename = "hostIP")]
    pub host_ip: String,
}

/// The `bandwidth` capability (bits per second and bits of burst).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Bandwidth {
    #[serde(rename = "ingressRate")]
    pub ingress_rate: u64,
    #[serde(rename = "ingressBurst")]
    pub ingress_burst: u64,
    #[serde(rename = "egressRate")]
    pub egress_rate: u64,
    #[serde(rename = "egressBurst")]
    pub egress_burst: u64,
}

/// The `dns` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DnsCapability {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// libcni's interface-name rule: 1..=15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
fn check_ifname(ifname: &str) -> Result<(), String> {
    if ifname.is_empty() {
        return Err("interface name is empty".into());
    }
    if ifname.len() > 15 {
        return Err(format!("interface name {ifname:?} is longer than 15 bytes"));
    }
    if ifname == "." || ifname == ".." {
        return Err(format!("interface name {ifname:?} is . or .."));
    }
    if ifname
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!(
            "interface name {ifname:?} contains / or : or whitespace"
        ));
    }
    Ok(())
}

impl Attachment {
    pub fn new(
        container_id: impl Into<String>,
        netns: impl Into<String>,
        ifname: impl Into<String>,
    ) -> Self {
        Attachment {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            ..Default::default()
        }
    }

    /// A pod sandbox's attachment with the CNI_ARGS containerd's CRI passes:
    /// `IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=<sandbox
    /// id>;K8S_POD_UID=..`.
    pub fn for_pod(
        sandbox_id: impl Into<String>,
        netns: impl Into<String>,
        ifname: impl Into<String>,
        pod: PodRef<'_>,
    ) -> Self {
        let mut a = Attachment::new(sandbox_id, netns, ifname);
        let id = a.container_id.clone();
        a.args = vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), pod.namespace.into()),
            ("K8S_POD_NAME".into(), pod.name.into()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), id),
            ("K8S_POD_UID".into(), pod.uid.into()),
        ];
        a
    }

    pub fn with_arg(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.args.push((key.into(), value.into()));
        self
    }

    pub fn with_capability(mut self, name: impl Into<String>, value: Value) -> Self {
        self.capability_args.insert(name.into(), value);
        self
    }

    pub fn with_port_mappings(self, mappings: &[PortMapping]) -> Self {
        let v = serde_json::to_value(mappings).unwrap_or(Value::Array(Vec::new()));
        self.with_capability(capability::PORT_MAPPINGS, v)
    }

    pub fn with_bandwidth(self, bandwidth: Bandwidth) -> Self {
        let v = serde_json::to_value(bandwidth).unwrap_or(Value::Null);
        self.with_capability(capability::BANDWIDTH, v)
    }

    pub fn with_dns(self, dns: &DnsCapability) -> Self {
        let v = serde_json::to_value(dns).unwrap_or(Value::Null);
        self.with_capability(capability::DNS, v)
    }

    /// `CNI_ARGS`.
    pub fn args_string(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Checks what goes into file names and the environment: the container id (spec rule), the
    /// interface name (libcni's rule) and CNI_ARGS (no `;` anywhere, no `=` in keys).
    pub fn validate(&self) -> Result<(), CniError> {
        if !valid_name(&self.container_id) {
            return Err(CniError::InvalidAttachment(format!(
                "container id {:?} must start with an alphanumeric character, followed by alphanumerics, '_', '.' or '-'",
                self.container_id
            )));
        }
        check_ifname(&self.ifname).map_err(CniError::InvalidAttachment)?;
        for (k, v) in &self.args {
            if k.is_empty() || k.contains(['=', ';']) || v.contains(';') {
                return Err(CniError::InvalidAttachment(format!(
                    "CNI_ARGS entry {k:?}={v:?}: keys must be non-empty without '=' or ';', values without ';'"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn pod_args_are_containerd_s() {
        let a = Attachment::for_pod(
            "sb1",
            "/run/netns/x",
            "eth0",
            PodRef {
                namespace: "default",
                name: "web",
                uid: "u-1",
            },
        )
        .with_port_mappings(&[PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }]);
        assert_eq!(
            a.args_string(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=u-1"
        );
        assert_eq!(
            a.capability_args["portMappings"],
            serde_json::json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}])
        );
        a.validate().unwrap();
    }

    #[test]
    fn bad_parameters_are_refused() {
        for (id, ifname) in [
            ("", "eth0"),
            ("../x", "eth0"),
            ("ok", ""),
            ("ok", "a/b"),
            ("ok", "sixteen-chars-xx"),
            ("ok", ".."),
            ("ok", "e th0"),
        ] {
            assert!(
                Attachment::new(id, "", ifname).validate().is_err(),
                "{id:?} {ifname:?}"
            );
        }
        assert!(
            Attachment::new("ok", "", "eth0")
                .with_arg("A", "b;c")
                .validate()
                .is_err()
        );
        assert!(
            Attachment::new("ok", "", "eth0")
                .with_arg("A=B", "c")
                .validate()
                .is_err()
        );
    }
}
