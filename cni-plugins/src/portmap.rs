//! `portmap`: host ports forwarded to a container (`runtimeConfig.portMappings`), with nftables.
//!
//! Everything lives in one table, `inet keelson_hostport`: base chains hooked at prerouting and
//! output send traffic to local addresses through `hostports`, which holds each container's
//! DNAT rules (and the rules that mark hairpin and localhost traffic for masquerading); the
//! `masquerading` chain, hooked at postrouting, masquerades marked packets. Every rule carries a
//! comment naming its container, so DEL removes exactly that container's rules.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{CniError, Result};
use crate::netlink::Handle;
use crate::nft;
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

struct Parsed {
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
    if let Some(b) = &c.backend
        && b != "nftables"
    {
        return Err(CniError::config(format!(
            "unimplemented: portmap backend {b:?} (only \"nftables\" is implemented)"
        )));
    }
    if c.external_set_mark_chain.is_some() {
        if c.mark_masq_bit.is_some() {
            return Err(CniError::config(
                "Cannot specify externalSetMarkChain and markMasqBit",
            ));
        }
        return Err(CniError::config(
            "unimplemented: externalSetMarkChain needs the iptables backend",
        ));
    }
    let bit = c.mark_masq_bit.unwrap_or(13);
    if !(0..=31).contains(&bit) {
        return Err(CniError::config(format!(
            "MasqMarkBit must be between 0 and 31, got {bit}"
        )));
    }
    for cond in c.conditions_v4.iter().chain(&c.conditions_v6) {
        if cond.contains([';', '\n', '{', '}', '#']) {
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

/// The container addresses the mappings forward to.
fn container_ips(prev: &CniResult) -> Vec<IpNet> {
    prev.ips
        .iter()
        .filter(|ip| {
            ip.interface
                .and_then(|i| prev.interfaces.get(i))
                .is_none_or(|i| !i.sandbox.is_empty())
        })
        .map(|ip| ip.address)
        .collect()
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

/// Removes what the reference portmap's iptables backend made for this container (its
/// `CNI-DN-<sha512(name+id)>` chain and the jumps to it from `CNI-HOSTPORT-DNAT`), so a pod
/// mapped by the reference is unmapped by our DEL too.
fn remove_reference_rules(v6: bool, network: &str, container_id: &str) -> Result<()> {
    let bin = if v6 { "ip6tables" } else { "iptables" };
    let ipt = |args: &[&str]| {
        std::process::Command::new(bin)
            .arg("-w")
            .args(["-t", "nat"])
            .args(args)
            .output()
    };
    let list = match ipt(&["-L", "CNI-HOSTPORT-DNAT", "-n", "--line-numbers"]) {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        // No reference chain (or no iptables at all): nothing of the reference's to remove.
        _ => return Ok(()),
    };
    let chain = crate::ipmasq::chain_name_with_prefix("DN-", network, container_id);
    let mut numbers: Vec<u32> = list
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let n = f.next()?.parse().ok()?;
            (f.next()? == chain).then_some(n)
        })
        .collect();
    numbers.sort_unstable_by(|a, b| b.cmp(a));
    for n in numbers {
        let out = ipt(&["-D", "CNI-HOSTPORT-DNAT", &n.to_string()])
            .map_err(|e| CniError::io(format!("failed to run {bin}"), e))?;
        if !out.status.success() {
            return Err(CniError::plugin(format!(
                "{bin}: failed to delete jump to {chain}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    let _ = ipt(&["-F", &chain]);
    let _ = ipt(&["-X", &chain]);
    Ok(())
}

pub struct Portmap;

impl Plugin for Portmap {
    fn validate(&self, conf: &Value) -> Result<()> {
        parse(conf).map(|_| ())
    }

    fn add(&self, args: &Args, conf: &Value) -> Result<CniResult> {
        let p = parse(conf)?;
        let prev = types::prev_result(conf)?
            .ok_or_else(|| CniError::config("must be called as chained plugin"))?;
        if p.mappings.is_empty() {
            return Ok(prev);
        }
        let ips = container_ips(&prev);
        let tag = tag(conf, args);
        // An ADD repeated for the same attachment replaces its rules.
        nft::delete_tagged("inet", TABLE, &tag)?;
        nft::run(&add_script(&p, &ips, &tag))?;
        if p.snat
            && let Err(e) = enable_localnet(&ips)
        {
            let _ = nft::delete_tagged("inet", TABLE, &tag);
            return Err(e);
        }
        Ok(prev)
    }

    fn del(&self, args: &Args, conf: &Value) -> Result<()> {
        parse(conf)?;
        nft::delete_tagged("inet", TABLE, &tag(conf, args))?;
        let name = conf.get("name").and_then(Value::as_str).unwrap_or_default();
        for v6 in [false, true] {
            remove_reference_rules(v6, name, &args.container_id)?;
        }
        Ok(())
    }

    fn check(&self, args: &Args, conf: &Value) -> Result<()> {
        let p = parse(conf)?;
        let prev = types::prev_result(conf)?
            .ok_or_else(|| CniError::config("must be called as chained plugin"))?;
        if p.mappings.is_empty() {
            return Ok(());
        }
        let ips = container_ips(&prev);
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
