//! The kubelet-managed `/etc/hosts` of a pod: `<root-dir>/pods/<uid>/etc-hosts`, written before
//! each container is created and bind-mounted at `/etc/hosts` (upstream's `makeHostsMount`).
//! The runtime's own sandbox hosts file is then not used: the container's mount list already has
//! `/etc/hosts`.

use crate::config::Config;
use crate::podconfig::{meta, spec};
use k8s_openapi::api::core::v1::{HostAlias, Pod};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const MANAGED_HEADER: &str = "# Kubernetes-managed hosts file.\n";
const MANAGED_HEADER_HOST_NETWORK: &str = "# Kubernetes-managed hosts file (host network).\n";

/// Upstream's `GeneratePodHostNameAndDomain`: the hostname (spec.hostname or the pod name, at
/// most 63 characters) and, with spec.subdomain, `<subdomain>.<namespace>.svc.<clusterDomain>`.
pub fn hostname_and_domain(cfg: &Config, pod: &Pod) -> (String, String) {
    let (ns, name, _) = meta(pod);
    let s = spec(pod);
    let mut hostname = s
        .hostname
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| name.to_string());
    if hostname.len() > 63 {
        hostname.truncate(63);
        hostname = hostname.trim_end_matches(['-', '.']).to_string();
    }
    let domain = match s.subdomain.as_deref().filter(|d| !d.is_empty()) {
        Some(sub) => format!("{sub}.{ns}.svc.{}", cfg.cluster_domain),
        None => String::new(),
    };
    (hostname, domain)
}

fn alias_entries(aliases: &[HostAlias]) -> String {
    if aliases.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n# Entries added by HostAliases.\n");
    for a in aliases {
        let names = a.hostnames.clone().unwrap_or_default().join("\t");
        out.push_str(&format!("{}\t{names}\n", a.ip));
    }
    out
}

/// The managed hosts file of a pod on the pod network.
pub fn managed_content(
    pod_ips: &[String],
    hostname: &str,
    domain: &str,
    aliases: &[HostAlias],
) -> String {
    let mut out = String::from(MANAGED_HEADER);
    out.push_str("127.0.0.1\tlocalhost\n");
    out.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    out.push_str("fe00::0\tip6-localnet\n");
    out.push_str("fe00::0\tip6-mcastprefix\n");
    out.push_str("fe00::1\tip6-allnodes\n");
    out.push_str("fe00::2\tip6-allrouters\n");
    for ip in pod_ips {
        if domain.is_empty() {
            out.push_str(&format!("{ip}\t{hostname}\n"));
        } else {
            out.push_str(&format!("{ip}\t{hostname}.{domain}\t{hostname}\n"));
        }
    }
    out.push_str(&alias_entries(aliases));
    out
}

/// A host-network pod's hosts file: the node's, with its own header and the aliases.
pub fn host_network_content(node_hosts: &str, aliases: &[HostAlias]) -> String {
    format!(
        "{MANAGED_HEADER_HOST_NETWORK}{node_hosts}{}",
        alias_entries(aliases)
    )
}

/// Writes the pod's hosts file at `file` (mode 0644), as upstream's `ensureHostsFile`.
pub fn ensure(cfg: &Config, pod: &Pod, pod_ips: &[String], file: &Path) -> std::io::Result<()> {
    let s = spec(pod);
    let aliases = s.host_aliases.clone().unwrap_or_default();
    let content = if s.host_network.unwrap_or(false) {
        let node = std::fs::read_to_string("/etc/hosts")?;
        host_network_content(&node, &aliases)
    } else {
        let (hostname, domain) = hostname_and_domain(cfg, pod);
        managed_content(pod_ips, &hostname, &domain, &aliases)
    };
    std::fs::write(file, content)?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_file_has_upstreams_layout() {
        let aliases = vec![
            HostAlias {
                ip: "10.1.2.3".into(),
                hostnames: Some(vec!["foo.local".into(), "bar.local".into()]),
            },
            HostAlias {
                ip: "10.1.2.4".into(),
                hostnames: Some(vec!["baz".into()]),
            },
        ];
        let got = managed_content(
            &["10.0.0.5".into()],
            "web",
            "sub.default.svc.cluster.local",
            &aliases,
        );
        assert_eq!(
            got,
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
             10.0.0.5\tweb.sub.default.svc.cluster.local\tweb\n\n# Entries added by HostAliases.\n\
             10.1.2.3\tfoo.local\tbar.local\n10.1.2.4\tbaz\n"
        );
        let plain = managed_content(&["10.0.0.5".into()], "web", "", &[]);
        assert!(
            plain.ends_with("fe00::2\tip6-allrouters\n10.0.0.5\tweb\n"),
            "{plain}"
        );
        assert_eq!(
            host_network_content("127.0.0.1 localhost\n", &aliases[1..]),
            "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n\n# Entries added by HostAliases.\n10.1.2.4\tbaz\n"
        );
    }
}
