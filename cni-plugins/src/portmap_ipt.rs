//! portmap's iptables backend, in the reference plugin's layout (`nat` table):
//!
//! - `PREROUTING`, `OUTPUT`: `-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT`
//! - `CNI-HOSTPORT-DNAT`: per container and protocol, `-m multiport --destination-ports …`
//!   (15 ports per rule at most) with the comment `dnat name: "<net>" id: "<id>"`, jumping to
//! - `CNI-DN-<sha512(net+id)>`: per mapping, the hairpin mark (`-s <container net>`), the
//!   localhost mark (`-s 127.0.0.1`, IPv4) and the DNAT;
//! - `CNI-HOSTPORT-SETMARK` sets the masquerade mark bit, `CNI-HOSTPORT-MASQ` (first in
//!   `POSTROUTING`) masquerades marked packets.
//!
//! The same names and rules as the reference make an ADD by either and a DEL by the other
//! leave a clean host. A new container's jumps go first in `CNI-HOSTPORT-DNAT`, so the most
//! recent container mapping a host port wins (as upstream since v1.5).

use ipnet::IpNet;

use crate::error::{CniError, Result};
use crate::ipmasq::chain_name_with_prefix;
use crate::ipt::{self, Saved};

pub const DNAT_CHAIN: &str = "CNI-HOSTPORT-DNAT";
pub const SETMARK_CHAIN: &str = "CNI-HOSTPORT-SETMARK";
pub const MASQ_CHAIN: &str = "CNI-HOSTPORT-MASQ";
const OLD_SNAT_CHAIN: &str = "CNI-HOSTPORT-SNAT";

/// One mapping as the iptables rules need it.
pub struct Entry {
    pub host_port: u16,
    pub container_port: u16,
    pub proto: &'static str,
    pub host_ip: Option<std::net::IpAddr>,
}

/// What the rules of one container depend on.
pub struct Spec<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub snat: bool,
    pub masq_all: bool,
    pub mark: u32,
    pub set_mark_chain: &'a str,
    pub conditions_v4: &'a [String],
    pub conditions_v6: &'a [String],
    pub entries: &'a [Entry],
}

pub fn dnat_chain(network: &str, container_id: &str) -> String {
    chain_name_with_prefix("DN-", network, container_id)
}

/// The reference's comment, cut to iptables' 255 bytes as the reference does.
fn dnat_comment(network: &str, container_id: &str) -> String {
    let c = format!(
        "dnat name: {} id: {}",
        ipt::go_quote(network),
        ipt::go_quote(container_id)
    );
    if c.len() <= 255 {
        return c;
    }
    let mut cut = 253;
    while !c.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &c[..cut])
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The rules of `CNI-HOSTPORT-DNAT` that lead to the container's chain (with the jump).
pub fn entry_rules(s: &Spec, ip: &IpNet) -> Vec<Vec<String>> {
    let v6 = ip.addr().is_ipv6();
    let chain = dnat_chain(s.network, s.container_id);
    let comment = dnat_comment(s.network, s.container_id);
    let mut protos: Vec<&str> = s.entries.iter().map(|e| e.proto).collect();
    protos.sort_unstable();
    protos.dedup();
    let mut out = Vec::new();
    for proto in protos {
        let ports: Vec<String> = s
            .entries
            .iter()
            .filter(|e| e.proto == proto)
            .map(|e| e.host_port.to_string())
            .collect();
        for chunk in ports.chunks(15) {
            let mut r = strings(&["-m", "comment", "--comment", &comment]);
            r.extend(strings(&["-m", "multiport", "-p", proto]));
            r.extend(strings(&["--destination-ports", &chunk.join(",")]));
            let conds = if v6 { s.conditions_v6 } else { s.conditions_v4 };
            r.extend(conds.iter().cloned());
            r.extend(strings(&["-j", &chain]));
            out.push(r);
        }
    }
    out
}

/// The rules of the container's own chain.
pub fn dnat_rules(s: &Spec, ip: &IpNet) -> Vec<Vec<String>> {
    let v6 = ip.addr().is_ipv6();
    let mut out = Vec::new();
    for e in s.entries {
        let mut base = strings(&["-p", e.proto, "--dport", &e.host_port.to_string()]);
        if let Some(h) = e.host_ip {
            if h.is_ipv6() != v6 {
                continue;
            }
            base.extend(strings(&["-d", &h.to_string()]));
        }
        if s.snat {
            let masq_cidr = match (s.masq_all, v6) {
                (true, false) => "0.0.0.0/0".to_string(),
                (true, true) => "::/0".to_string(),
                (false, _) => ip.to_string(),
            };
            let mut hp = base.clone();
            hp.extend(strings(&["-s", &masq_cidr, "-j", s.set_mark_chain]));
            out.push(hp);
            if !v6 && !s.masq_all {
                let mut lo = base.clone();
                lo.extend(strings(&["-s", "127.0.0.1", "-j", s.set_mark_chain]));
                out.push(lo);
            }
        }
        let to = if v6 {
            format!("[{}]:{}", ip.addr(), e.container_port)
        } else {
            format!("{}:{}", ip.addr(), e.container_port)
        };
        let mut d = base.clone();
        d.extend(strings(&["-j", "DNAT", "--to-destination", &to]));
        out.push(d);
    }
    out
}

fn mark_def(mark: u32) -> String {
    format!("{mark:#x}/{mark:#x}")
}

fn setmark_line(mark: u32) -> String {
    format!(
        "-A {SETMARK_CHAIN} -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark {}",
        mark_def(mark)
    )
}

fn masq_line(mark: u32) -> String {
    format!(
        "-A {MASQ_CHAIN} -m mark --mark {} -j MASQUERADE",
        mark_def(mark)
    )
}

const MASQ_ENTRY: &str =
    "-A POSTROUTING -m comment --comment \"CNI portfwd requiring masquerade\" -j CNI-HOSTPORT-MASQ";

fn top_entry(chain: &str) -> String {
    format!("-A {chain} -m addrtype --dst-type LOCAL -j {DNAT_CHAIN}")
}

/// The restore script that maps the container's ports for `ip`, given the table as it is.
pub fn add_script(s: &Spec, ip: &IpNet, saved: &Saved) -> String {
    let mut body = String::new();
    if s.snat && s.set_mark_chain == SETMARK_CHAIN {
        for (chain, rule) in [
            (SETMARK_CHAIN, setmark_line(s.mark)),
            (MASQ_CHAIN, masq_line(s.mark)),
        ] {
            if !saved.has_chain(chain) {
                body.push_str(&format!(":{chain} - [0:0]\n"));
            }
            if !saved.has_rule(&rule) {
                body.push_str(&rule);
                body.push('\n');
            }
        }
        if !saved.has_rule(MASQ_ENTRY) {
            body.push_str(&MASQ_ENTRY.replacen("-A POSTROUTING", "-I POSTROUTING 1", 1));
            body.push('\n');
        }
    }
    if !saved.has_chain(DNAT_CHAIN) {
        body.push_str(&format!(":{DNAT_CHAIN} - [0:0]\n"));
    }
    for top in ["PREROUTING", "OUTPUT"] {
        let rule = top_entry(top);
        if !saved.has_rule(&rule) {
            body.push_str(&rule);
            body.push('\n');
        }
    }
    let chain = dnat_chain(s.network, s.container_id);
    // Declaring the chain creates or flushes it: a repeated ADD leaves one copy of each rule.
    body.push_str(&format!(":{chain} - [0:0]\n"));
    for r in dnat_rules(s, ip) {
        body.push_str(&ipt::line("-A", &chain, &r));
    }
    for l in saved.jumps_to(DNAT_CHAIN, &chain) {
        body.push_str(&ipt::delete_line(l));
    }
    for r in entry_rules(s, ip).iter().rev() {
        body.push_str(&ipt::line("-I", &format!("{DNAT_CHAIN} 1"), r));
    }
    body
}

/// The restore script that removes the container's chain and the jumps to it (also the chain
/// of old reference versions, `CNI-SN-…` from `CNI-HOSTPORT-SNAT`); empty when nothing is left.
pub fn del_script(network: &str, container_id: &str, saved: &Saved) -> String {
    let mut body = String::new();
    for (top, chain) in [
        (DNAT_CHAIN, dnat_chain(network, container_id)),
        (
            OLD_SNAT_CHAIN,
            chain_name_with_prefix("SN-", network, container_id),
        ),
    ] {
        for l in saved.jumps_to(top, &chain) {
            body.push_str(&ipt::delete_line(l));
        }
        if saved.has_chain(&chain) {
            body.push_str(&format!("-F {chain}\n-X {chain}\n"));
        }
    }
    body
}

/// Maps the ports for each container address: one `iptables-save` per family (run at once) and
/// one `iptables-restore`.
pub fn add(s: &Spec, ips: &[IpNet]) -> Result<()> {
    let saves: Vec<_> = ips
        .iter()
        .map(|ip| ipt::spawn_save(ip.addr().is_ipv6()))
        .collect();
    for (ip, save) in ips.iter().zip(saves) {
        let v6 = ip.addr().is_ipv6();
        let saved = save.wait().ok_or_else(|| {
            CniError::plugin(format!(
                "failed to open iptables: {} unusable",
                ipt::tool(v6, "")
            ))
        })?;
        ipt::restore(v6, &add_script(s, ip, &saved))?;
    }
    Ok(())
}

/// Removes the container's rules in the families asked for (`v4`, `v6`); Ok(false) when none
/// of them is usable.
pub fn del(network: &str, container_id: &str, v4: bool, v6: bool) -> Result<bool> {
    let fams: Vec<bool> = [(v4, false), (v6, true)]
        .into_iter()
        .filter(|(want, _)| *want)
        .map(|(_, f)| f)
        .collect();
    let saves: Vec<_> = fams.iter().map(|f| ipt::spawn_save(*f)).collect();
    let mut usable = false;
    for (v6, save) in fams.into_iter().zip(saves) {
        let Some(saved) = save.wait() else { continue };
        usable = true;
        let body = del_script(network, container_id, &saved);
        if !body.is_empty() {
            ipt::restore(v6, &body)?;
        }
    }
    Ok(usable)
}

/// Checks that the container's chain, its rules and the jumps to it exist.
pub fn check(s: &Spec, ips: &[IpNet]) -> Result<()> {
    let chain = dnat_chain(s.network, s.container_id);
    for ip in ips {
        let v6 = ip.addr().is_ipv6();
        for (c, rules) in [
            (chain.as_str(), dnat_rules(s, ip)),
            (DNAT_CHAIN, entry_rules(s, ip)),
        ] {
            for r in rules {
                if !ipt::exists(v6, c, &r)? {
                    return Err(CniError::plugin(format!(
                        "portmap: rule {:?} in chain {c} not found in table nat",
                        r.join(" ")
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_layout() {
        let entries = [
            Entry {
                host_port: 18080,
                container_port: 80,
                proto: "tcp",
                host_ip: None,
            },
            Entry {
                host_port: 18443,
                container_port: 443,
                proto: "udp",
                host_ip: None,
            },
        ];
        let s = Spec {
            network: "expnet",
            container_id: "abc123",
            snat: true,
            masq_all: false,
            mark: 1 << 13,
            set_mark_chain: SETMARK_CHAIN,
            conditions_v4: &[],
            conditions_v6: &[],
            entries: &entries,
        };
        let ip: IpNet = "10.99.3.2/24".parse().unwrap();
        let script = add_script(&s, &ip, &Saved::default());
        assert!(script.contains(":CNI-DN-b7126cfc870b5e09e898a - [0:0]\n"));
        assert!(script.contains(
            "-A CNI-DN-b7126cfc870b5e09e898a -p tcp --dport 18080 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK\n"
        ));
        assert!(script.contains("--set-xmark 0x2000/0x2000\n"));
        assert!(script.contains(
            "-I CNI-HOSTPORT-DNAT 1 -m comment --comment \"dnat name: \\\"expnet\\\" id: \\\"abc123\\\"\" -m multiport -p udp --destination-ports 18443 -j CNI-DN-b7126cfc870b5e09e898a\n"
        ));
    }
}
