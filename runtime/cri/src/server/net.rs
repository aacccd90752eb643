//! Pod networking through the CNI caller, as containerd's CRI plugin does it for `eth0`: the
//! conf dir's default network with the pod's port mappings and DNS as capability arguments;
//! DEL in reverse with the cached results. Unlike containerd, `lo` is not a CNI attachment:
//! the infra process sets it up when it creates the netns (`pause.rs`), which is all the
//! `loopback` plugin's ADD does, without a plugin process per sandbox. Sandboxes made when
//! `lo` still was one (a cached `lo` attachment) get their loopback DEL as before.

use super::{DResult, Daemon, DaemonError, blocking};
use crate::cni::{self, Attachment, Cni, CniOptions, PodRef, PortMapping};
use keelson_proto::runtime::v1 as pb;
use std::path::Path;
use std::sync::Arc;

const POD_IFNAME: &str = "eth0";

fn caller(d: &Daemon) -> Cni {
    Cni::new(CniOptions {
        conf_dir: d.cfg.cni_conf_dir.clone(),
        bin_dirs: d.cfg.cni_bin_dirs.clone(),
        cache_dir: d.cfg.cni_cache_dir.clone(),
        ..CniOptions::default()
    })
}

fn attachment(id: &str, netns: &Path, ifname: &str, cfg: &pb::PodSandboxConfig) -> Attachment {
    let meta = cfg.metadata.clone().unwrap_or_default();
    Attachment::for_pod(
        id,
        netns.display().to_string(),
        ifname,
        PodRef {
            namespace: &meta.namespace,
            name: &meta.name,
            uid: &meta.uid,
        },
    )
}

fn port_mappings(cfg: &pb::PodSandboxConfig) -> Vec<PortMapping> {
    cfg.port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| PortMapping {
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: match pb::Protocol::try_from(p.protocol).unwrap_or(pb::Protocol::Tcp) {
                pb::Protocol::Tcp => "tcp".into(),
                pb::Protocol::Udp => "udp".into(),
                pb::Protocol::Sctp => "sctp".into(),
            },
            host_ip: p.host_ip.clone(),
        })
        .collect()
}

/// Attaches a sandbox's pinned netns; returns its IPs (primary first) and the network's name.
/// A failure leaves nothing attached (the caller DELs what ADD did).
pub async fn setup(
    d: &Arc<Daemon>,
    id: &str,
    netns: &Path,
    cfg: &pb::PodSandboxConfig,
) -> DResult<(Vec<String>, Option<String>)> {
    let c = caller(d);
    let (id, netns, cfg) = (id.to_string(), netns.to_path_buf(), cfg.clone());
    blocking(move || {
        let net = c
            .load()
            .map_err(|e| DaemonError::Precondition(format!("network not ready: {e}")))?
            .network;
        // `lo` is already up: the infra process set it up when it made the netns (what the
        // CNI loopback plugin would do, without a process per sandbox).
        let mut att = attachment(&id, &netns, POD_IFNAME, &cfg);
        let ports = port_mappings(&cfg);
        if !ports.is_empty() {
            att = att.with_port_mappings(&ports);
        }
        if let Some(dns) = &cfg.dns_config {
            att = att.with_dns(&cni::DnsCapability {
                servers: dns.servers.clone(),
                searches: dns.searches.clone(),
                options: dns.options.clone(),
            });
        }
        let result = match net.add(&att) {
            Ok(r) => r,
            Err(e) => {
                return Err(DaemonError::Internal(format!(
                    "setting up the pod network \"{}\": {e}",
                    net.name()
                )));
            }
        };
        let ips: Vec<String> = result
            .pod_ips(POD_IFNAME, cni::IpPreference::Ipv4)
            .map(|p| {
                std::iter::once(p.primary)
                    .chain(p.additional)
                    .map(|ip| ip.to_string())
                    .collect()
            })
            .unwrap_or_default();
        Ok((ips, Some(net.name().to_string())))
    })
    .await
}

/// Detaches a sandbox: every attachment cached for it, in reverse order of setup, each with
/// the config it was added with. Idempotent.
pub async fn teardown(
    d: &Arc<Daemon>,
    id: &str,
    netns: &Path,
    cfg: &pb::PodSandboxConfig,
) -> DResult<()> {
    let c = caller(d);
    let (id, netns, cfg) = (id.to_string(), netns.to_path_buf(), cfg.clone());
    blocking(move || {
        let mut cached = c.cached_attachments(Some(&id));
        // eth0 (the pod network) before lo, as setup ran the other way round.
        cached.sort_by_key(|a| a.ifname == "lo");
        for entry in cached {
            let net = c.network_from_conflist(&entry.config).map_err(|e| {
                DaemonError::Internal(format!(
                    "cached network \"{}\" of sandbox {id}: {e}",
                    entry.network_name
                ))
            })?;
            // DEL gets what ADD got: the same CNI_ARGS and capability arguments (portmap
            // needs its mappings back to remove its rules).
            let mut att = attachment(&id, &netns, &entry.ifname, &cfg);
            if !entry.cni_args.is_empty() {
                att.args = entry
                    .cni_args
                    .iter()
                    .map(|[k, v]| (k.clone(), v.clone()))
                    .collect();
            }
            att.capability_args = entry.capability_args.clone();
            net.del(&att).map_err(|e| {
                DaemonError::Internal(format!(
                    "tearing down the pod network \"{}\": {e}",
                    entry.network_name
                ))
            })?;
        }
        Ok(())
    })
    .await
}

/// NetworkReady: whether the conf dir holds a usable network, and why not.
pub async fn ready(d: &Arc<Daemon>) -> (bool, String) {
    let c = caller(d);
    match tokio::task::spawn_blocking(move || c.status()).await {
        Ok(Ok(())) => (true, String::new()),
        Ok(Err(e)) => (false, format!("cni config load failed: {e}")),
        Err(e) => (false, e.to_string()),
    }
}
