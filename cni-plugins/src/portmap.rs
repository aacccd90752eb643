//! `portmap`: host ports forwarded to a container (`runtimeConfig.portMappings`).
//!
//! Two backends, chosen by `backend` (default: iptables when `iptables` is installed, else
//! nftables, as upstream):
//!
//! - iptables (`src/portmap_ipt.rs`): the reference plugin's chains and rules, so ADD and DEL
//!   mix with the reference;
//! - nftables: one table, `inet keelson_hostport`: base chains hooked at prerouting and output
//!   send traffic to local addresses through `hostports`, which holds each container's DNAT
//!   rules (and the rules that mark hairpin and localhost traffic for masquerading); the
//!   `masquerading` chain, hooked at postrouting, masquerades marked packets. Every rule carries
//!   a comment naming its container, so DEL removes exactly that container's rules.
//!
//! DEL cleans both backends.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::conntrack;
use crate::error::{CniError, Code, Result};
use crate::ipt;
use crate::netlink::Handle;
use crate::nft;
use crate::portmap_ipt;
use crate::skel::{Args, Plugin};
use crate::sysctl;
use crate::types::{self, CniResult};

const TABLE: &str = "keelson_hostport";
const OWN_KEYS: [&str; 7] = [
    "snat",
    "masqAll",
    "markMasqBit",
    "externalSetMarkChain",
    "conditionsV4",
    "conditionsV6",
    "backend",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortMapping {
    #[serde(rename = "hostPort")]
    host_port: i64,
    #[serde(rename = "containerPort")]
    container_port: i64,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(rename = "hostIP", default)]
    host_ip: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conf {
    #[serde(default)]
    snat: Option<bool>,
    #[serde(default)]
    masq_all: bool,
    #[serde(default)]
    mark_masq_bit: Option<i64>,
    #[serde(default)]
    external_set_mark_chain: Option<String>,
    #[serde(default, rename = "conditionsV4")]
    conditions_v4: Vec<String>,
    #[serde(default, rename = "conditionsV6")]
    conditions_v6: Vec<String>,
    #[serde(default)]
    backend: Option<String>,
}

/// A checked mapping.
#[derive(Debug, Clone)]
struct Mapping {
    host_port: u16,
    container_port: u16,
    proto: &'static str,
    host_ip: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Iptables,
    Nftables,
}

struct Parsed {
    backend: Backend,
    external_set_mark_chain: Option<String>,
    snat: bool,
    masq_all: bool,
    mark: u32,
    conditions_v4: Vec<String>,
    conditions_v6: Vec<String>,
    mappings: Vec<Mapping>,
}

fn parse(conf: &Value) -> Result<Parsed> {
    types::check_keys(conf, &OWN_KEYS, "portmap config")?;
    let c: Conf = types::typed(conf, "portmap config")?;
    let backend = match c.backend.as_deref() {
        Some("iptables") => Backend::Iptables,
        Some("nftables") => Backend::Nftables,
        // As upstream: iptables when it is there, else nftables.
        None | Some("") if ipt::available() => Backend::Iptables,
        None | Some("") => Backend::Nftables,
        Some(other) => {
            return Err(CniError::config(format!(
                "unknown portmap backend {other:?} (want \"iptables\" or \"nftables\")"
            )));
        }
    };
    if let Some(chain) = &c.external_set_mark_chain {
        if c.mark_masq_bit.is_some() {
            return Err(CniError::config(
                "Cannot specify externalSetMarkChain and markMasqBit",
            ));
        }
        if backend == Backend::Nftables {
            return Err(CniError::config(
                "externalSetMarkChain is only supported with the iptables backend",
            ));
        }
        if chain.is_empty() || chain.len() > 28 || chain.contains(char::is_whitespace) {
            return Err(CniError::config(format!(
                "invalid externalSetMarkChain {chain:?}"
            )));
        }
        ipt::check_arg(chain)?;
    }
    let bit = c.mark_masq_bit.unwrap_or(13);
    if !(0..=31).contains(&bit) {
        return Err(CniError::config(format!(
            "MasqMarkBit must be between 0 and 31, got {bit}"
        )));
    }
    for cond in c.conditions_v4.iter().chain(&c.conditions_v6) {
        // nftables: match expressions; iptables: arguments of one rule.
        if backend == Backend::Iptables {
            ipt::check_arg(cond)?;
        } else if cond.contains([';', '\n', '{', '}', '#']) {
            return Err(CniError::config(format!("invalid condition {cond:?}")));
        }
    }
    let raw = conf
        .pointer("/runtimeConfig/portMappings")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    let raw: Vec<PortMapping> = types::typed(&raw, "runtimeConfig.portMappings")?;
    let mut mappings = Vec::new();
    for m in raw {
        let port = |p: i64, what: &str| -> Result<u16> {
            u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| CniError::config(format!("Invalid {what} port number: {p}")))
        };
        let proto = match m
            .protocol
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("") | Some("tcp") => "tcp",
            Some("udp") => "udp",
            Some("sctp") => "sctp",
            Some(other) => {
                return Err(CniError::config(format!(
                    "unknown portmap protocol {other:?}"
                )));
            }
        };
        let host_ip = match m.host_ip.as_deref() {
            None | Some("") => None,
            Some(s) => {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| CniError::config(format!("invalid hostIP {s:?}")))?;
                (!ip.is_unspecified()).then_some(ip)
            }
        };
        mappings.push(Mapping {
            host_port: port(m.host_port, "host")?,
            container_port: port(m.container_port, "container")?,
            proto,
            host_ip,
        });
    }
    Ok(Parsed {
        backend,
        external_set_mark_chain: c.external_set_mark_chain,
        snat: c.snat.unwrap_or(true),
        masq_all: c.masq_all,
        mark: 1u32 << bit,
        conditions_v4: c.conditions_v4,
        conditions_v6: c.conditions_v6,
        mappings,
    })
}

/// The comment that marks one attachment's rules.
fn tag(conf: &Value, args: &Args) -> String {
    let name = conf.get("name").and_then(Value::as_str).unwrap_or_default();
    let id: String = args.container_id.chars().take(12).collect();
    format!(
        "portmap {id} {:016x}",
        nft::fnv(&format!("{name}\n{}\n{}", args.container_id, args.ifname))
    )
}

/// The container addresses the mappings forward to: the first IPv4 and the first IPv6 address
/// of the container's interface `ifname` (addresses of host-side interfaces are skipped), as the
/// reference picks them.
fn container_ips(prev: &CniResult, ifname: &str) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    for ip in &prev.ips {
        let on_container = ip
            .interface
            .and_then(|i| prev.interfaces.get(i))
            .is_none_or(|i| i.name == ifname && !i.sandbox.is_empty());
        let v6 = ip.address.addr().is_ipv6();
        if on_container && !out.iter().any(|a| a.addr().is_ipv6() == v6) {
            out.push(ip.address);
        }
    }
    out
}

impl Parsed {
    fn ipt_entries(&self) -> Vec<portmap_ipt::Entry> {
        self.mappings
            .iter()
            .map(|m| portmap_ipt::Entry {
                host_port: m.host_port,
                container_port: m.container_port,
                proto: m.proto,
                host_ip: m.host_ip,
            })
            .collect()
    }

    fn ipt_spec<'a>(
        &'a self,
        network: &'a str,
        container_id: &'a str,
        entries: &'a [portmap_ipt::Entry],
    ) -> portmap_ipt::Spec<'a> {
        portmap_ipt::Spec {
            network,
            container_id,
            snat: self.snat,
            masq_all: self.masq_all,
            mark: self.mark,
            set_mark_chain: self
                .external_set_mark_chain
                .as_deref()
                .unwrap_or(portmap_ipt::SETMARK_CHAIN),
            conditions_v4: &self.conditions_v4,
            conditions_v6: &self.conditions_v6,
            entries,
        }
    }
}

fn add_script(p: &Parsed, ips: &[IpNet], tag: &str) -> String {
    let t = format!("inet {TABLE}");
    let mut s = format!(
        "add table {t}\n\
         add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         add chain {t} output {{ type nat hook output priority -100; policy accept; }}\n\
         add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         add chain {t} hostports\n\
         add chain {t} masquerading\n\
         flush chain {t} prerouting\n\
         add rule {t} prerouting fib daddr type local jump hostports\n\
         flush chain {t} output\n\
         add rule {t} output fib daddr type local jump hostports\n\
         flush chain {t} postrouting\n\
         add rule {t} postrouting jump masquerading\n"
    );
    let mark = format!("0x{:x}", p.mark);
    let comment = format!("comment \"{tag}\"");
    let mut any = false;
    for ip in ips {
        let v4 = ip.addr().is_ipv4();
        let (fam, nfproto, conds) = if v4 {
            ("ip", "ipv4", &p.conditions_v4)
        } else {
            ("ip6", "ipv6", &p.conditions_v6)
        };
        let target = if v4 {
            format!("{}", ip.addr())
        } else {
            format!("[{}]", ip.addr())
        };
        for m in &p.mappings {
            if m.host_ip.is_some_and(|h| h.is_ipv4() != v4) {
                continue;
            }
            any = true;
            let mut prefix = format!("meta nfproto {nfproto}");
            for c in conds.iter() {
                prefix.push(' ');
                prefix.push_str(c);
            }
            if let Some(h) = m.host_ip {
                prefix.push_str(&format!(" {fam} daddr {h}"));
            }
            let port = format!("{} dport {}", m.proto, m.host_port);
            let set_mark = format!("meta mark set meta mark or {mark}");
            if p.snat {
                if p.masq_all {
                    s.push_str(&format!(
                        "add rule {t} hostports {prefix} {port} {set_mark} {comment}\n"
                    ));
                } else {
                    // Hairpin: containers of the subnet reaching a host port on it.
                    s.push_str(&format!(
                        "add rule {t} hostports {prefix} {fam} saddr {} {port} {set_mark} {comment}\n",
                        ip.trunc()
                    ));
                    if v4 {
                        s.push_str(&format!(
                            "add rule {t} hostports {prefix} ip saddr 127.0.0.0/8 {port} {set_mark} {comment}\n"
                        ));
                    }
                }
            }
            s.push_str(&format!(
                "add rule {t} hostports {prefix} {port} dnat {fam} to {target}:{} {comment}\n",
                m.container_port
            ));
        }
    }
    if any && p.snat {
        s.push_str(&format!(
            "add rule {t} masquerading meta mark and {mark} == {mark} masquerade {comment}\n"
        ));
    }
    s
}

/// route_localnet on the host interface that reaches each IPv4 container address, so DNAT of
/// 127.0.0.1 can leave through it (as the reference does).
fn enable_localnet(ips: &[IpNet]) -> Result<()> {
    let mut h = Handle::new().map_err(|e| CniError::plugin(e.to_string()))?;
    let addrs = h.addrs(None).map_err(|e| CniError::plugin(e.to_string()))?;
    for ip in ips.iter().filter(|i| i.addr().is_ipv4()) {
        let Some((idx, _)) = addrs
            .iter()
            .find(|(_, a)| a.addr().is_ipv4() && a.contains(&ip.addr()))
        else {
            continue;
        };
        if let Some(link) = h
            .link_by_index(*idx)
            .map_err(|e| CniError::plugin(e.to_string()))?
        {
            sysctl::set(&format!("net.ipv4.conf.{}.route_localnet", link.name), "1")?;
        }
    }
    Ok(())
}

/// As the reference after mapping the ports: conntrack entries of UDP flows to the mapped host
/// ports, per family of the container's addresses, are deleted, so a flow that began before the
/// DNAT rule existed (and would stay un-NATed while packets keep coming) is tracked anew and
/// reaches the container. Failures are only logged, as upstream does.
fn delete_stale_udp(p: &Parsed, ips: &[IpNet]) {
    let ports: Vec<u16> = p
        .mappings
        .iter()
        .filter(|m| m.proto == "udp")
        .map(|m| m.host_port)
        .collect();
    if ports.is_empty() {
        return;
    }
    for (family, v4) in [
        (conntrack::Family::V4, true),
        (conntrack::Family::V6, false),
    ] {
        if !ips.iter().any(|a| a.addr().is_ipv4() == v4) {
            continue;
        }
        match conntrack::delete_udp_to_ports(family, &ports) {
            Ok(n) => tracing::debug!("deleted {n} stale UDP conntrack entries ({family:?})"),
            Err(e) => tracing::warn!("failed to delete stale UDP conntrack entries: {e}"),
        }
    }
}

pub struct Portmap;

impl Plugin for Portmap {
    fn validate(&self, conf: &Value) -> Result<()> {
        parse(conf).map(|_| ())
    }

    /// Not available (code 50) when the backend's tool is missing: no ADD could map a port.
    fn status(&self, _args: &Args, conf: &Value) -> Result<()> {
        let p = parse(conf)?;
        let (tool, found) = match p.backend {
            Backend::Iptables => ("iptables", ipt::available()),
            Backend::Nftables => ("nft", ipt::on_path("nft")),
        };
        if !found {
            return Err(CniError::new(
                Code::PluginNotAvailable,
                format!("portmap: {tool} is not installed"),
            ));
        }
        Ok(())
    }

    fn add(&self, args: &Args, conf: &Value) -> Result<CniResult> {
        let p = parse(conf)?;
        let prev = types::prev_result(conf)?
            .ok_or_else(|| CniError::config("must be called as chained plugin"))?;
        if p.mappings.is_empty() {
            return Ok(prev);
        }
        let ips = container_ips(&prev, &args.ifname);
        if ips.is_empty() {
            return Ok(prev);
        }
        let name = conf.get("name").and_then(Value::as_str).unwrap_or_default();
        if p.snat {
            enable_localnet(&ips)?;
        }
        match p.backend {
            Backend::Iptables => {
                let entries = p.ipt_entries();
                let spec = p.ipt_spec(name, &args.container_id, &entries);
                if let Err(e) = portmap_ipt::add(&spec, &ips) {
                    let v6 = ips.iter().any(|a| a.addr().is_ipv6());
                    let v4 = ips.iter().any(|a| a.addr().is_ipv4());
                    let _ = portmap_ipt::del(name, &args.container_id, v4, v6);
                    return Err(e);
                }
            }
            Backend::Nftables => {
                let tag = tag(conf, args);
                // An ADD repeated for the same attachment replaces its rules.
                nft::delete_tagged("inet", TABLE, &tag)?;
                nft::run(&add_script(&p, &ips, &tag))?;
            }
        }
        delete_stale_udp(&p, &ips);
        Ok(prev)
    }

    fn del(&self, args: &Args, conf: &Value) -> Result<()> {
        let p = parse(conf)?;
        // As the reference: without mappings there is nothing to unmap.
        if p.mappings.is_empty() {
            return Ok(());
        }
        let name = conf.get("name").and_then(Value::as_str).unwrap_or_default();
        // Both backends are cleaned: an ADD may have used the other one (another config, another
        // implementation).
        // The families of the container's addresses when prevResult tells them, else both.
        let ips = types::prev_result(conf)
            .ok()
            .flatten()
            .map(|prev| container_ips(&prev, &args.ifname))
            .unwrap_or_default();
        let v6 = ips.is_empty() || ips.iter().any(|a| a.addr().is_ipv6());
        let v4 = ips.is_empty() || ips.iter().any(|a| a.addr().is_ipv4());
        let usable = portmap_ipt::del(name, &args.container_id, v4, v6)?;
        if !usable && p.backend == Backend::Iptables {
            return Err(CniError::plugin("neither iptables nor ip6tables usable"));
        }
        nft::delete_tagged("inet", TABLE, &tag(conf, args))?;
        Ok(())
    }

    fn check(&self, args: &Args, conf: &Value) -> Result<()> {
        let p = parse(conf)?;
        let prev = types::prev_result(conf)?
            .ok_or_else(|| CniError::config("Required prevResult missing"))?;
        if p.mappings.is_empty() {
            return Ok(());
        }
        let ips = container_ips(&prev, &args.ifname);
        match p.backend {
            Backend::Iptables => {
                let name = conf.get("name").and_then(Value::as_str).unwrap_or_default();
                let entries = p.ipt_entries();
                portmap_ipt::check(&p.ipt_spec(name, &args.container_id, &entries), &ips)
            }
            Backend::Nftables => {
                let want = add_script(&p, &ips, "x")
                    .lines()
                    .filter(|l| l.contains("comment"))
                    .count();
                let have = nft::tagged_rules("inet", TABLE, &tag(conf, args))?.len();
                if have != want {
                    return Err(CniError::plugin(format!(
                        "portmap: expected {want} rules for this container, found {have}"
                    )));
                }
                Ok(())
            }
        }
    }
}
