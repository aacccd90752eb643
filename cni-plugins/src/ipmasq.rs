//! `ipMasq` of the bridge plugin with the iptables backend, in the reference plugin's layout:
//! a `nat` chain `CNI-<24 hex of sha512(name+id)>` that accepts traffic to the container's own
//! subnet and masquerades the rest (multicast excepted), jumped to from POSTROUTING for the
//! container's source address; rules carry the comment `name: "<name>" id: "<id>"`. The same
//! names make an ADD by one implementation and a DEL by the other work together.
//!
//! Each family costs one `iptables-save` and one `iptables-restore` (the reference runs one
//! `iptables` process per rule).

use ipnet::IpNet;
use sha2::{Digest, Sha512};

use crate::error::Result;
use crate::ipt;

/// The reference's per-container chain name.
pub fn chain_name(network: &str, container_id: &str) -> String {
    chain_name_with_prefix("", network, container_id)
}

/// `CNI-<prefix><hex of sha512(name+id)>`, cut to iptables' 28 characters (the reference's).
pub fn chain_name_with_prefix(prefix: &str, network: &str, container_id: &str) -> String {
    let sum = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    let mut name = format!("CNI-{prefix}{hex}");
    name.truncate(28);
    name
}

/// The reference's rule comment (Go's %q of both strings).
pub fn comment(network: &str, container_id: &str) -> String {
    format!(
        "name: {} id: {}",
        ipt::go_quote(network),
        ipt::go_quote(container_id)
    )
}

fn families(addrs: &[IpNet]) -> Vec<bool> {
    let mut f: Vec<bool> = addrs.iter().map(|a| a.addr().is_ipv6()).collect();
    f.sort_unstable();
    f.dedup();
    f
}

/// Sets up masquerading for the container addresses `addrs` (with their prefixes).
pub fn setup(addrs: &[IpNet], network: &str, container_id: &str) -> Result<()> {
    let chain = chain_name(network, container_id);
    let c = ipt::quote(&comment(network, container_id));
    let fams = families(addrs);
    let saves: Vec<_> = fams.iter().map(|v6| ipt::spawn_save(*v6)).collect();
    for (v6, save) in fams.into_iter().zip(saves) {
        let saved = save.wait().unwrap_or_default();
        let multicast = if v6 { "ff00::/8" } else { "224.0.0.0/4" };
        // Declaring the chain flushes it, so a repeated ADD leaves exactly one copy of its rules.
        let mut body = format!(":{chain} - [0:0]\n");
        let mut masq = false;
        let mut accepted: Vec<IpNet> = Vec::new();
        for a in addrs.iter().filter(|a| a.addr().is_ipv6() == v6) {
            // Each rule once, as the reference's AppendUnique.
            if !accepted.contains(&a.trunc()) {
                accepted.push(a.trunc());
                body.push_str(&format!(
                    "-A {chain} -d {} -m comment --comment {c} -j ACCEPT\n",
                    a.trunc()
                ));
            }
            if !masq {
                body.push_str(&format!(
                    "-A {chain} ! -d {multicast} -m comment --comment {c} -j MASQUERADE\n"
                ));
                masq = true;
            }
        }
        for a in addrs.iter().filter(|a| a.addr().is_ipv6() == v6) {
            let host = if v6 { 128 } else { 32 };
            let jump = format!(
                "-A POSTROUTING -s {}/{host} -m comment --comment {c} -j {chain}",
                a.addr()
            );
            if !saved.has_rule(&jump) {
                body.push_str(&jump);
                body.push('\n');
            }
        }
        ipt::restore(v6, &body)?;
    }
    Ok(())
}

/// Removes what [`setup`] (ours or the reference's) made for the container; missing rules and
/// chains are fine. `families` are the families to look at (IPv4 when false).
pub fn teardown(network: &str, container_id: &str, v4: bool, v6: bool) -> Result<()> {
    let chain = chain_name(network, container_id);
    let fams: Vec<bool> = [(v4, false), (v6, true)]
        .into_iter()
        .filter(|(want, _)| *want)
        .map(|(_, f)| f)
        .collect();
    let saves: Vec<_> = fams.iter().map(|v6| ipt::spawn_save(*v6)).collect();
    for (v6, save) in fams.into_iter().zip(saves) {
        let Some(saved) = save.wait() else { continue };
        let mut body = String::new();
        for l in saved.jumps_to("POSTROUTING", &chain) {
            body.push_str(&ipt::delete_line(l));
        }
        if saved.has_chain(&chain) {
            body.push_str(&format!("-F {chain}\n-X {chain}\n"));
        }
        if !body.is_empty() {
            ipt::restore(v6, &body)?;
        }
    }
    Ok(())
}

/// The nftables backend (`ipMasqBackend: "nftables"`), in upstream's layout: table
/// `inet cni_plugins_masquerade`, a `postrouting` base chain that skips multicast and jumps to
/// `masq_checks`, which holds one rule per container address with a comment that starts with a
/// hash of the network and one of `ifname:containerID`.
pub mod nft {
    use ipnet::IpNet;
    use sha2::{Digest, Sha512};

    use crate::error::Result;

    pub const TABLE: &str = "cni_plugins_masquerade";
    const CHAIN: &str = "masq_checks";
    /// knftables' limit on comments.
    const COMMENT_MAX: usize = 128;

    fn hash16(s: &str) -> String {
        let sum = Sha512::digest(s.as_bytes());
        sum.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// The comment prefix that identifies one attachment's rules.
    pub fn instance_hash(network: &str, ifname: &str, container_id: &str) -> String {
        format!(
            "{}-{}",
            hash16(network),
            hash16(&format!("{ifname}:{container_id}"))
        )
    }

    fn comment(network: &str, ifname: &str, container_id: &str) -> String {
        let strip = |s: &str| s.replace('"', "");
        let mut c = format!(
            "{}, net: {}, if: {}, id: {}",
            instance_hash(network, ifname, container_id),
            strip(network),
            strip(ifname),
            strip(container_id)
        );
        if c.len() > COMMENT_MAX {
            let mut cut = COMMENT_MAX;
            while !c.is_char_boundary(cut) {
                cut -= 1;
            }
            c.truncate(cut);
        }
        c
    }

    fn stale_deletes(network: &str, ifname: &str, container_id: &str) -> Result<String> {
        let prefix = instance_hash(network, ifname, container_id);
        Ok(
            crate::nft::rules_with_comment_prefix("inet", TABLE, &prefix)?
                .into_iter()
                .filter(|(chain, _)| chain == CHAIN)
                .map(|(chain, h)| format!("delete rule inet {TABLE} {chain} handle {h}\n"))
                .collect(),
        )
    }

    pub fn setup(addrs: &[IpNet], network: &str, ifname: &str, container_id: &str) -> Result<()> {
        let t = format!("inet {TABLE}");
        let mut s = format!(
            "add table {t} {{ comment \"Masquerading for plugins from github.com/containernetworking/plugins\"; }}\n\
             add chain {t} {CHAIN} {{ comment \"Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet\"; }}\n\
             add chain {t} postrouting {{ type nat hook postrouting priority srcnat; }}\n\
             flush chain {t} postrouting\n\
             add rule {t} postrouting ip daddr == 224.0.0.0/4 return\n\
             add rule {t} postrouting ip6 daddr == ff00::/8 return\n\
             add rule {t} postrouting goto {CHAIN}\n"
        );
        s.push_str(&stale_deletes(network, ifname, container_id)?);
        let c = comment(network, ifname, container_id).replace('"', "");
        for a in addrs {
            let fam = if a.addr().is_ipv6() { "ip6" } else { "ip" };
            s.push_str(&format!(
                "add rule {t} {CHAIN} {fam} saddr == {} {fam} daddr != {} masquerade comment \"{c}\"\n",
                a.addr(),
                a.trunc()
            ));
        }
        crate::nft::run(&s)
    }

    pub fn teardown(network: &str, ifname: &str, container_id: &str) -> Result<()> {
        let s = stale_deletes(network, ifname, container_id)?;
        if s.is_empty() {
            return Ok(());
        }
        crate::nft::run(&s)
    }
}
