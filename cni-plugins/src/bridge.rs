//! `bridge`: a Linux bridge on the host, a veth pair per container with the peer moved into the
//! container's netns as `CNI_IFNAME`, addresses from the IPAM plugin.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use ipnet::IpNet;
use netlink_packet_route::link::{BridgeVlanInfoFlags, InfoKind};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{CniError, Code, Result};
use crate::ipam;
use crate::netlink::{Handle, Link, NetlinkError};
use crate::ns;
use crate::skel::{Args, Plugin};
use crate::sysctl;
use crate::types::{self, CniResult, Interface, Route};

const OWN_KEYS: [&str; 19] = [
    "bridge",
    "isGateway",
    "isDefaultGateway",
    "forceAddress",
    "ipMasq",
    "ipMasqBackend",
    "mtu",
    "hairpinMode",
    "promiscMode",
    "vlan",
    "vlanTrunk",
    "preserveDefaultVlan",
    "macspoofchk",
    "enabledad",
    "disableContainerInterface",
    "portIsolation",
    "ipam",
    "dns",
    "mac",
];

/// Linux's IFNAMSIZ minus the terminating NUL.
const MAX_IFNAME: usize = 15;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BridgeConf {
    #[serde(default = "default_bridge")]
    bridge: String,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    force_address: bool,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    ip_masq_backend: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    #[serde(default)]
    vlan: i64,
    #[serde(default)]
    vlan_trunk: Option<Vec<VlanTrunk>>,
    #[serde(default = "yes")]
    preserve_default_vlan: bool,
    /// The trunk's vlans, collected from `vlan_trunk` (sorted, each once).
    #[serde(skip)]
    trunk: Vec<u16>,
    #[serde(default)]
    macspoofchk: bool,
    #[serde(default)]
    enabledad: bool,
    #[serde(default)]
    disable_container_interface: bool,
    #[serde(default)]
    port_isolation: bool,
    #[serde(default)]
    mac: Option<String>,
}

fn default_bridge() -> String {
    "cni0".to_string()
}

fn yes() -> bool {
    true
}

/// One `vlanTrunk` item: a single `id`, or a `minID`..=`maxID` range (or both).
#[derive(Debug, Clone, Deserialize)]
struct VlanTrunk {
    #[serde(default, rename = "minID")]
    min_id: Option<i64>,
    #[serde(default, rename = "maxID")]
    max_id: Option<i64>,
    #[serde(default)]
    id: Option<i64>,
}

/// The trunk's vlans with upstream's (v1.2+) validation and messages.
fn collect_trunk(items: &[VlanTrunk]) -> Result<Vec<u16>> {
    let ok = |v: i64| (1..=4094).contains(&v);
    let mut vlans = std::collections::BTreeSet::new();
    for item in items {
        match (item.min_id, item.max_id) {
            (Some(min), Some(max)) => {
                if !ok(min) {
                    return Err(CniError::config("incorrect trunk minID parameter"));
                }
                if !ok(max) {
                    return Err(CniError::config("incorrect trunk maxID parameter"));
                }
                if max < min {
                    return Err(CniError::config(
                        "minID is greater than maxID in trunk parameter",
                    ));
                }
                vlans.extend((min..=max).filter_map(|v| u16::try_from(v).ok()));
            }
            (None, Some(_)) => {
                return Err(CniError::config(
                    "minID and maxID should be configured simultaneously, minID is missing",
                ));
            }
            (Some(_), None) => {
                return Err(CniError::config(
                    "minID and maxID should be configured simultaneously, maxID is missing",
                ));
            }
            (None, None) => {}
        }
        if let Some(id) = item.id {
            let id = u16::try_from(id)
                .ok()
                .filter(|v| ok(i64::from(*v)))
                .ok_or_else(|| CniError::config("incorrect trunk id parameter"))?;
            vlans.insert(id);
        }
    }
    Ok(vlans.into_iter().collect())
}

fn nl(e: NetlinkError) -> CniError {
    CniError::plugin(e.to_string())
}

fn valid_ifname(name: &str, what: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_IFNAME {
        return Err(CniError::config(format!(
            "{what} name {name:?} must be 1 to {MAX_IFNAME} bytes long"
        )));
    }
    if name == "." || name == ".." || name.contains(['/', ':', ' ', '\t', '\n']) {
        return Err(CniError::config(format!("{what} name {name:?} is invalid")));
    }
    Ok(())
}

fn parse(conf: &Value) -> Result<BridgeConf> {
    types::check_keys(conf, &OWN_KEYS, "bridge config")?;
    let mut c: BridgeConf = types::typed(conf, "bridge config")?;
    valid_ifname(&c.bridge, "bridge")?;
    if c.is_default_gateway {
        c.is_gateway = true;
    }
    if !(0..=4094).contains(&c.vlan) {
        return Err(CniError::config(format!(
            "invalid VLAN ID {} (must be between 0 and 4094)",
            c.vlan
        )));
    }
    if let Some(items) = &c.vlan_trunk {
        c.trunk = collect_trunk(items)?;
    }
    // An access port (untagged) or a trunk port (tagged), not both.
    if c.vlan > 0 && !c.trunk.is_empty() {
        return Err(CniError::config(
            "cannot set vlan and vlanTrunk at the same time",
        ));
    }
    if c.is_gateway && c.vlan > 0 {
        valid_ifname(&vlan_gateway_name(&c), "vlan gateway interface")?;
    }
    if let Some(b) = &c.ip_masq_backend
        && b != "iptables"
        && b != "nftables"
    {
        return Err(CniError::config(format!(
            "unknown ipMasqBackend {b:?} (want \"iptables\" or \"nftables\")"
        )));
    }
    if let Some(mtu) = c.mtu
        && !(68..=65535).contains(&mtu)
    {
        return Err(CniError::config(format!("invalid MTU {mtu}")));
    }
    Ok(c)
}

impl BridgeConf {
    /// The access vlan (`vlan`), 0 for none.
    fn access_vlan(&self) -> u16 {
        u16::try_from(self.vlan).unwrap_or(0)
    }

    /// As upstream: a bridge created for a `vlan` or a `vlanTrunk` (even an empty one) filters
    /// vlans.
    fn vlan_filtering(&self) -> bool {
        self.vlan != 0 || self.vlan_trunk.is_some()
    }
}

/// The host interface that carries the gateway address of a vlan: `<bridge>.<vlan>`, the peer
/// of a veth whose other end is an access port of that vlan on the bridge (as the reference).
fn vlan_gateway_name(c: &BridgeConf) -> String {
    format!("{}.{}", c.bridge, c.vlan)
}

/// A kernel without CONFIG_BRIDGE_VLAN_FILTERING answers EOPNOTSUPP to every vlan request.
fn vlan_err(e: NetlinkError) -> CniError {
    if e.errno() == Some(libc::EOPNOTSUPP) {
        CniError::with_details(
            Code::Plugin,
            "bridge vlan filtering is not supported by this kernel \
             (CONFIG_BRIDGE_VLAN_FILTERING): cannot use \"vlan\" or \"vlanTrunk\"",
            e,
        )
    } else {
        nl(e)
    }
}

/// A new port's vlans as upstream sets them: without `preserveDefaultVlan` the port's existing
/// vlans (the bridge's default PVID) go first; the access vlan is the PVID, egress untagged;
/// trunk vlans are tagged.
fn setup_port_vlans(h: &mut Handle, port: u32, c: &BridgeConf) -> Result<()> {
    let access = c.access_vlan();
    if access == 0 && c.trunk.is_empty() {
        return Ok(());
    }
    if !c.preserve_default_vlan {
        for v in h.bridge_vlans(port).map_err(vlan_err)? {
            h.bridge_vlan_del(port, v.vid).map_err(vlan_err)?;
        }
    }
    if access != 0 {
        h.bridge_vlan_add(port, access, true, true)
            .map_err(vlan_err)?;
    }
    for v in &c.trunk {
        h.bridge_vlan_add(port, *v, false, false)
            .map_err(vlan_err)?;
    }
    Ok(())
}

/// CHECK: the port carries the access vlan as PVID, egress untagged, and every trunk vlan
/// tagged.
fn check_port_vlans(h: &mut Handle, port: &Link, c: &BridgeConf) -> Result<()> {
    let access = c.access_vlan();
    if access == 0 && c.trunk.is_empty() {
        return Ok(());
    }
    let have = h.bridge_vlans(port.index).map_err(vlan_err)?;
    let find = |vid: u16| have.iter().find(|v| v.vid == vid);
    if access != 0 {
        let ok = find(access).is_some_and(|v| {
            v.flags.contains(BridgeVlanInfoFlags::Pvid)
                && v.flags.contains(BridgeVlanInfoFlags::Untagged)
        });
        if !ok {
            return Err(CniError::plugin(format!(
                "interface {}: vlan {access} is not its untagged PVID",
                port.name
            )));
        }
    }
    for vid in &c.trunk {
        let ok = find(*vid).is_some_and(|v| !v.flags.contains(BridgeVlanInfoFlags::Untagged));
        if !ok {
            return Err(CniError::plugin(format!(
                "interface {}: trunk vlan {vid} is not tagged on it",
                port.name
            )));
        }
    }
    Ok(())
}

/// `<bridge>.<vlan>` for the gateway address of an access vlan, created when missing (a veth
/// pair in the host netns, its other end an access port of the vlan on the bridge, both up);
/// `created` tells whether this call made it.
fn ensure_vlan_gateway(h: &mut Handle, br: &Link, c: &BridgeConf) -> Result<(Link, bool)> {
    let name = vlan_gateway_name(c);
    if let Some(l) = h.link_by_name(&name).map_err(nl)? {
        return Ok((l, false));
    }
    let here = File::open("/proc/thread-self/ns/net")
        .map_err(|e| CniError::io("failed to open the host netns", e))?;
    let port_name = random_veth_name()?;
    let mtu = (br.mtu != 0).then_some(br.mtu);
    h.add_veth(&port_name, &name, mtu, None, here.as_raw_fd())
        .map_err(|e| CniError::plugin(format!("failed to create vlan gateway {name:?}: {e}")))?;
    let gw = h
        .link_by_name(&name)
        .map_err(nl)?
        .ok_or_else(|| CniError::plugin(format!("{name} vanished after creation")))?;
    let res = (|| -> Result<Link> {
        let port = h
            .link_by_name(&port_name)
            .map_err(nl)?
            .ok_or_else(|| CniError::plugin(format!("{port_name} vanished after creation")))?;
        h.set_master(port.index, br.index).map_err(nl)?;
        setup_port_vlans(h, port.index, c)?;
        h.set_flags(port.index, true, None).map_err(nl)?;
        h.set_flags(gw.index, true, None).map_err(nl)?;
        Ok(gw.clone())
    })();
    match res {
        Ok(gw) => Ok((gw, true)),
        Err(e) => {
            let _ = h.del_link(gw.index);
            Err(e)
        }
    }
}

/// Whether `ipMasq` uses nftables: asked for, or no iptables installed (as upstream).
fn masq_nftables(c: &BridgeConf) -> bool {
    match c.ip_masq_backend.as_deref() {
        Some("nftables") => true,
        Some("iptables") => false,
        _ => !crate::ipt::available(),
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(CniError::config(format!("invalid MAC address {s:?}")));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .ok_or_else(|| CniError::config(format!("invalid MAC address {s:?}")))?;
    }
    if mac[0] & 1 == 1 {
        return Err(CniError::config(format!(
            "MAC address {s:?} is a multicast address"
        )));
    }
    Ok(mac)
}

/// The container interface's MAC when one is asked for, as the reference reads it: `mac` in
/// the config (lowest), `MAC` in `CNI_ARGS`, `args.cni.mac`, `runtimeConfig.mac` (highest).
fn requested_mac(c: &BridgeConf, cni_args: Option<&str>, conf: &Value) -> Result<Option<[u8; 6]>> {
    let mut mac = c.mac.clone().filter(|m| !m.is_empty());
    if let Some(m) = cni_args.filter(|m| !m.is_empty()) {
        mac = Some(m.to_string());
    }
    for ptr in ["/args/cni/mac", "/runtimeConfig/mac"] {
        match conf.pointer(ptr) {
            None | Some(Value::Null) => {}
            Some(Value::String(m)) if m.is_empty() => {}
            Some(Value::String(m)) => mac = Some(m.clone()),
            Some(other) => {
                return Err(CniError::config(format!(
                    "invalid MAC address {other} in {ptr}"
                )));
            }
        }
    }
    mac.as_deref().map(parse_mac).transpose()
}

fn random_veth_name() -> Result<String> {
    let mut b = [0u8; 4];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map_err(|e| CniError::io("failed to read random bytes", e))?;
    Ok(format!("veth{:08x}", u32::from_be_bytes(b)))
}

/// The bridge, created (and brought up) when missing; true when this call created it.
fn ensure_bridge(h: &mut Handle, c: &BridgeConf) -> Result<(Link, bool)> {
    let mut created = false;
    let existing = h.link_by_name(&c.bridge).map_err(nl)?;
    let br = match existing {
        Some(l) => {
            if l.kind != Some(InfoKind::Bridge) {
                return Err(CniError::plugin(format!(
                    "{:?} already exists but is not a bridge",
                    c.bridge
                )));
            }
            l
        }
        None => {
            match h.add_bridge(&c.bridge, c.mtu, c.vlan_filtering()) {
                Ok(()) => created = true,
                // A concurrent ADD created it first.
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) if c.vlan_filtering() => return Err(vlan_err(e)),
                Err(e) => return Err(nl(e)),
            }
            h.link_by_name(&c.bridge)
                .map_err(nl)?
                .ok_or_else(|| CniError::plugin("bridge vanished after creation"))?
        }
    };
    if !br.is_up() || (c.promisc_mode && !br.promisc) {
        h.set_flags(br.index, true, c.promisc_mode.then_some(true))
            .map_err(nl)?;
    }
    Ok((br, created))
}

struct ContainerSide {
    mac: String,
}

/// Inside the container netns, before the IPAM result is known: the netlink socket, the
/// interface, `arp_notify`.
fn prepare_container(ifname: &str) -> Result<(Handle, Link)> {
    let mut h = Handle::new().map_err(nl)?;
    let link = h
        .link_by_name(ifname)
        .map_err(nl)?
        .ok_or_else(|| CniError::plugin(format!("{ifname} not found in container netns")))?;
    let _ = sysctl::set(&format!("net.ipv4.conf.{ifname}.arp_notify"), "1");
    Ok((h, link))
}

/// Inside the container netns: IPv6 sysctls, link up, addresses, routes.
fn configure_container(
    h: &mut Handle,
    link: &Link,
    c: &BridgeConf,
    ifname: &str,
    result: &CniResult,
) -> Result<ContainerSide> {
    let has_v6 = result.ips.iter().any(|i| i.address.addr().is_ipv6());
    if has_v6 {
        // Duplicate address detection only delays a fresh veth's addresses.
        let dad = if c.enabledad { "1" } else { "0" };
        let _ = sysctl::set(&format!("net.ipv6.conf.{ifname}.accept_dad"), dad);
        let _ = sysctl::set(&format!("net.ipv6.conf.{ifname}.disable_ipv6"), "0");
    }
    if !c.disable_container_interface {
        h.set_flags(link.index, true, None).map_err(nl)?;
    }
    for ip in &result.ips {
        h.add_addr(link.index, &ip.address).map_err(nl)?;
    }
    for r in &result.routes {
        let gw =
            r.gw.or_else(|| family_gateway(result, r.dst.addr().is_ipv4()));
        match h.add_route(link.index, &r.dst, gw) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(nl(e)),
        }
    }
    Ok(ContainerSide {
        mac: link.mac_string(),
    })
}

fn is_link_local(a: &IpNet) -> bool {
    match a.addr() {
        IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(v) => v.is_link_local(),
    }
}

fn family_gateway(result: &CniResult, v4: bool) -> Option<IpAddr> {
    result
        .ips
        .iter()
        .filter(|i| i.address.addr().is_ipv4() == v4)
        .find_map(|i| i.gateway)
}

/// Takes the container's interface (and so the veth pair) away. It is set down and renamed
/// to `kdel<index>` at once, which stops its traffic and frees its name for a new ADD; the
/// deletion itself, whose cost is the kernel's wait for RCU grace periods (most of a DEL's
/// time, see `Handle::del_link_detached`), finishes in a detached process after the DEL
/// returns, as a deleted network namespace's links do. Where that cannot be done, the link is
/// deleted here.
fn remove_container_link(h: &mut Handle, l: &Link) -> Result<()> {
    let gone = |e: &NetlinkError| e.errno() == Some(libc::ENODEV);
    let detached = h
        .set_flags(l.index, false, None)
        .and_then(|()| h.set_name(l.index, &format!("kdel{:x}", l.index)))
        .and_then(|()| h.del_link_detached(l.index));
    match detached {
        Ok(()) => return Ok(()),
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => tracing::debug!("deleting {} in place: {e}", l.name),
    }
    match h.del_link(l.index) {
        Ok(()) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(nl(e)),
    }
}

/// The container side of a DEL: its interface (and so the veth pair), MAC spoof check and
/// masquerade rules.
fn del_links(args: &Args, conf: &Value, c: &BridgeConf) -> Result<()> {
    // The container's addresses, for ipMasq: read from its interface, else from prevResult.
    let mut addrs: Vec<IpNet> = types::prev_result(conf)
        .ok()
        .flatten()
        .map(|r| r.ips.iter().map(|i| i.address).collect())
        .unwrap_or_default();
    let netns = args.netns.as_ref().and_then(|p| File::open(p).ok());
    if let Some(netns) = netns {
        let found = ns::run_in(&netns, || {
            let mut h = Handle::new().map_err(nl)?;
            let mut found = Vec::new();
            if let Some(l) = h.link_by_name(&args.ifname).map_err(nl)? {
                if c.ip_masq {
                    found = h
                        .addrs(Some(l.index))
                        .map_err(nl)?
                        .into_iter()
                        .map(|(_, a)| a)
                        .filter(|a| !a.addr().is_loopback() && !is_link_local(a))
                        .collect();
                }
                remove_container_link(&mut h, &l)?;
            }
            Ok(found)
        })?;
        if !found.is_empty() {
            addrs = found;
        }
    }
    if c.macspoofchk {
        crate::nft::delete_tagged("bridge", SPOOF_TABLE, &spoof_tag(conf, args))?;
    }
    if c.ip_masq {
        let name = conf.get("name").and_then(Value::as_str).unwrap_or_default();
        // Without any address known (vanished netns, no prevResult) both families are looked at.
        let v6 = addrs.is_empty() || addrs.iter().any(|a| a.addr().is_ipv6());
        let v4 = addrs.is_empty() || addrs.iter().any(|a| a.addr().is_ipv4());
        // Both backends: the ADD may have used the other one (another config or implementation).
        if crate::ipt::available() {
            crate::ipmasq::teardown(name, &args.container_id, v4, v6)?;
        }
        crate::ipmasq::nft::teardown(name, &args.ifname, &args.container_id)?;
    }
    Ok(())
}

pub struct Bridge;

/// What a failed ADD must remove again.
#[derive(Default)]
struct Undo {
    host_veth: Option<u32>,
    bridge: Option<u32>,
    vlan_gateway: Option<u32>,
    masq: Vec<IpNet>,
    macspoofchk: bool,
}

const SPOOF_TABLE: &str = "keelson_macspoofchk";

/// The comment on one attachment's MAC spoof check rule.
fn spoof_tag(conf: &Value, args: &Args) -> String {
    let name = conf.get("name").and_then(Value::as_str).unwrap_or_default();
    let id: String = args.container_id.chars().take(12).collect();
    format!(
        "macspoofchk {id} {:016x}",
        crate::nft::fnv(&format!("{name}\n{}\n{}", args.container_id, args.ifname))
    )
}

/// Frames entering the bridge from the host veth must carry the container interface's MAC.
fn macspoofchk_script(tag: &str, host_veth: &str, mac: &str) -> String {
    let t = format!("bridge {SPOOF_TABLE}");
    format!(
        "add table {t}\n\
         add chain {t} prerouting {{ type filter hook prerouting priority -300; policy accept; }}\n\
         add rule {t} prerouting iifname \"{host_veth}\" ether saddr != {mac} drop comment \"{tag}\"\n"
    )
}

/// The host side of an ADD: the bridge, the veth pair (peer in the container netns), the host
/// end enslaved and up.
fn make_links(
    args: &Args,
    c: &BridgeConf,
    h: &mut Handle,
    netns: &File,
    mac: Option<[u8; 6]>,
    undo: &mut Undo,
) -> Result<(Link, Link)> {
    let (br, created) = ensure_bridge(h, c)?;
    if created {
        undo.bridge = Some(br.index);
    }
    let mtu = c.mtu.or((br.mtu != 0 && br.mtu != 1500).then_some(br.mtu));

    let mut name = random_veth_name()?;
    let mut tries = 0;
    loop {
        match h.add_veth(&name, &args.ifname, mtu, mac, netns.as_raw_fd()) {
            Ok(()) => break,
            // EEXIST: either the random host name is taken (try another) or the
            // container already has CNI_IFNAME.
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                if tries >= 5 || h.link_by_name(&name).map_err(nl)?.is_none() {
                    return Err(CniError::plugin(format!(
                        "container veth name provided ({}) already exists",
                        args.ifname
                    )));
                }
                tries += 1;
                name = random_veth_name()?;
            }
            Err(e) => return Err(nl(e)),
        }
    }
    let veth = h
        .link_by_name(&name)
        .map_err(nl)?
        .ok_or_else(|| CniError::plugin("host veth vanished after creation"))?;
    undo.host_veth = Some(veth.index);
    h.set_master(veth.index, br.index).map_err(nl)?;
    if c.hairpin_mode || c.port_isolation {
        h.set_bridge_port(veth.index, c.hairpin_mode, c.port_isolation)
            .map_err(nl)?;
    }
    setup_port_vlans(h, veth.index, c)?;
    h.set_flags(veth.index, true, None).map_err(nl)?;
    Ok((br, veth))
}

impl Bridge {
    fn add_inner(
        &self,
        args: &Args,
        conf: &Value,
        c: &BridgeConf,
        h: &mut Handle,
        netns: &File,
        undo: &mut Undo,
    ) -> Result<CniResult> {
        let mac = requested_mac(c, args.arg("MAC"), conf)?;
        // The IPAM plugin runs while the links are made.
        let pending = match conf.get("ipam") {
            Some(_) => Some(ipam::spawn(args, conf, "ADD")?),
            None => None,
        };
        let links = make_links(args, c, h, netns, mac, undo);
        let (tx, rx) = std::sync::mpsc::channel::<CniResult>();
        let (br, veth, mut result, side) = std::thread::scope(|s| {
            // The container side starts as soon as its interface exists (its netlink socket,
            // the interface, a sysctl) while the IPAM plugin still runs; it gets the result
            // through the channel, or gives up when the sender is dropped.
            let worker = links.is_ok().then(|| {
                s.spawn(move || -> Result<ContainerSide> {
                    ns::enter(netns)?;
                    let (mut ch, link) = prepare_container(&args.ifname)?;
                    let result = rx
                        .recv()
                        .map_err(|_| CniError::plugin("ADD aborted before the IPAM result"))?;
                    configure_container(&mut ch, &link, c, &args.ifname, &result)
                })
            });
            let inner = || -> Result<(Link, Link, CniResult)> {
                // Wait for the plugin even when the links failed: the undo must not race its ADD.
                let ipam_result = pending.map(ipam::Pending::result);
                let (br, veth) = links?;
                let mut result = match ipam_result {
                    Some(r) => {
                        let r = r?;
                        if r.ips.is_empty() {
                            return Err(CniError::plugin("IPAM plugin returned missing IP config"));
                        }
                        r
                    }
                    None => CniResult::default(),
                };
                for ip in &mut result.ips {
                    ip.interface = Some(2);
                }
                if c.is_default_gateway {
                    for v4 in [true, false] {
                        let Some(gw) = family_gateway(&result, v4) else {
                            continue;
                        };
                        let dst: IpNet = if v4 {
                            IpNet::new(IpAddr::from([0u8; 4]), 0)
                        } else {
                            IpNet::new(IpAddr::from([0u16; 8]), 0)
                        }
                        .map_err(|e| CniError::plugin(e.to_string()))?;
                        if !result.routes.iter().any(|r| r.dst == dst) {
                            result.routes.push(Route::new(dst, Some(gw)));
                        }
                    }
                }
                Ok((br, veth, result))
            };
            let out = inner();
            let joined = |w: Option<std::thread::ScopedJoinHandle<'_, Result<ContainerSide>>>| {
                w.map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(CniError::plugin("netns worker thread panicked")))
                })
            };
            match out {
                Ok((br, veth, result)) => {
                    let _ = tx.send(result.clone());
                    let side = joined(worker)
                        .unwrap_or_else(|| Err(CniError::plugin("no container worker")))?;
                    Ok((br, veth, result, side))
                }
                Err(e) => {
                    drop(tx);
                    let _ = joined(worker);
                    Err(e)
                }
            }
        })?;

        let mut vlan_gateway = None;
        if c.is_gateway {
            // With an access vlan the gateway addresses go on `<bridge>.<vlan>`, else on the
            // bridge.
            let gw_link = if c.access_vlan() != 0 && result.ips.iter().any(|i| i.gateway.is_some())
            {
                let (l, created) = ensure_vlan_gateway(h, &br, c)?;
                if created {
                    undo.vlan_gateway = Some(l.index);
                }
                vlan_gateway = Some(l.clone());
                l
            } else {
                br.clone()
            };
            let existing = h.addrs(Some(gw_link.index)).map_err(nl)?;
            for ip in &result.ips {
                let Some(gw) = ip.gateway else { continue };
                let gw_net = IpNet::new(gw, ip.address.prefix_len())
                    .map_err(|e| CniError::plugin(e.to_string()))?;
                if existing.iter().any(|(_, a)| *a == gw_net) {
                    continue;
                }
                if !c.force_address
                    && let Some((_, other)) = existing.iter().find(|(_, a)| {
                        a.addr().is_ipv4() == gw.is_ipv4() && a.contains(&gw) && a.addr() != gw
                    })
                {
                    return Err(CniError::plugin(format!(
                        "{:?} already has an IP address different from {gw_net}: {other}",
                        gw_link.name
                    )));
                }
                match h.add_addr(gw_link.index, &gw_net) {
                    Ok(()) => {}
                    Err(e) if e.errno() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(nl(e)),
                }
            }
            if result.ips.iter().any(|i| i.address.addr().is_ipv4()) {
                sysctl::set("net.ipv4.ip_forward", "1")?;
            }
            if result.ips.iter().any(|i| i.address.addr().is_ipv6()) {
                sysctl::set("net.ipv6.conf.all.forwarding", "1")?;
            }
        }

        if c.macspoofchk {
            undo.macspoofchk = true;
            crate::nft::run(&macspoofchk_script(
                &spoof_tag(conf, args),
                &veth.name,
                &side.mac,
            ))?;
        }

        if c.ip_masq {
            let name = conf.get("name").and_then(Value::as_str).unwrap_or_default();
            let addrs: Vec<IpNet> = result.ips.iter().map(|i| i.address).collect();
            undo.masq = addrs.clone();
            if masq_nftables(c) {
                crate::ipmasq::nft::setup(&addrs, name, &args.ifname, &args.container_id)?;
            } else {
                crate::ipmasq::setup(&addrs, name, &args.container_id)?;
            }
        }

        // Re-read the bridge: its MAC follows its first port.
        let br = h.link_by_index(br.index).map_err(nl)?.unwrap_or(br);
        let sandbox = args
            .netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        result.interfaces = vec![
            Interface {
                name: br.name.clone(),
                mac: br.mac_string(),
                ..Default::default()
            },
            Interface {
                name: veth.name.clone(),
                mac: veth.mac_string(),
                ..Default::default()
            },
            Interface {
                name: args.ifname.clone(),
                mac: side.mac,
                sandbox,
                ..Default::default()
            },
        ];
        if let Some(gw) = vlan_gateway
            && let Some(gw) = h.link_by_index(gw.index).map_err(nl)?
        {
            result.interfaces.push(Interface {
                name: gw.name.clone(),
                mac: gw.mac_string(),
                ..Default::default()
            });
        }
        if let Some(dns) = conf.get("dns")
            && let Ok(d) = serde_json::from_value(dns.clone())
            && result.dns == Default::default()
        {
            result.dns = d;
        }
        Ok(result)
    }
}

impl Plugin for Bridge {
    fn validate(&self, conf: &Value) -> Result<()> {
        let c = parse(conf)?;
        requested_mac(&c, None, conf)?;
        // host-local is ours too: refuse its bad config before anything is created.
        if conf.pointer("/ipam/type").and_then(Value::as_str) == Some("host-local") {
            crate::hostlocal::Config::parse(conf)?;
        }
        Ok(())
    }

    fn add(&self, args: &Args, conf: &Value) -> Result<CniResult> {
        args.refuse_unknown(&["MAC"])?;
        let c = parse(conf)?;
        valid_ifname(&args.ifname, "interface")
            .map_err(|e| CniError::new(Code::InvalidEnv, e.msg))?;
        let path = args
            .netns
            .as_ref()
            .ok_or_else(|| CniError::new(Code::InvalidEnv, "CNI_NETNS missing"))?;
        let netns = ns::open(path)?;
        let mut h = Handle::new().map_err(nl)?;
        let mut undo = Undo::default();
        let res = self.add_inner(args, conf, &c, &mut h, &netns, &mut undo);
        let (host_veth, created_bridge) = (undo.host_veth, undo.bridge);
        if res.is_err() {
            if let Some(idx) = undo.vlan_gateway {
                let _ = h.del_link(idx);
            }
            if undo.macspoofchk {
                let _ = crate::nft::delete_tagged("bridge", SPOOF_TABLE, &spoof_tag(conf, args));
            }
            let name = conf.get("name").and_then(Value::as_str).unwrap_or_default();
            if !undo.masq.is_empty() {
                if masq_nftables(&c) {
                    let _ = crate::ipmasq::nft::teardown(name, &args.ifname, &args.container_id);
                } else {
                    let v6 = undo.masq.iter().any(|a| a.addr().is_ipv6());
                    let v4 = undo.masq.iter().any(|a| a.addr().is_ipv4());
                    let _ = crate::ipmasq::teardown(name, &args.container_id, v4, v6);
                }
            }
            // A bridge this ADD created goes too, unless another container joined it meanwhile.
            if let Some(br) = created_bridge
                && let Ok(links) = h.links()
                && !links
                    .iter()
                    .any(|l| l.master == Some(br) && Some(l.index) != host_veth)
            {
                let _ = h.del_link(br);
            }
            // Undo: the veth pair (both ends) and any address the IPAM plugin handed out.
            if let Some(idx) = host_veth {
                let _ = h.del_link(idx);
            }
            if conf.get("ipam").is_some() {
                let _ = ipam::del(args, conf);
            }
        }
        res
    }

    fn del(&self, args: &Args, conf: &Value) -> Result<()> {
        args.refuse_unknown(&["MAC"])?;
        let c = parse(conf)?;
        // The container side (its interface, MAC spoof check and masquerade rules) and the
        // IPAM plugin's release of the addresses run side by side.
        std::thread::scope(|s| {
            let links = s.spawn(|| del_links(args, conf, &c));
            let pending = conf.get("ipam").map(|_| ipam::spawn(args, conf, "DEL"));
            let res = links
                .join()
                .unwrap_or_else(|_| Err(CniError::plugin("DEL worker thread panicked")));
            if let Some(p) = pending {
                p?.wait()?;
            }
            res
        })
    }

    fn check(&self, args: &Args, conf: &Value) -> Result<()> {
        args.refuse_unknown(&["MAC"])?;
        let c = parse(conf)?;
        let prev = types::prev_result(conf)?
            .ok_or_else(|| CniError::config("Required prevResult missing"))?;
        let path = args
            .netns
            .as_ref()
            .ok_or_else(|| CniError::new(Code::InvalidEnv, "CNI_NETNS missing"))?;
        // A container whose namespace is gone is unknown (code 3).
        let netns = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CniError::with_details(
                    Code::UnknownContainer,
                    format!("netns {:?} does not exist", path.display()),
                    e,
                ));
            }
            Err(_) => ns::open(path)?,
        };
        if conf.get("ipam").is_some() {
            ipam::check(args, conf)?;
        }
        let mut h = Handle::new().map_err(nl)?;
        let br = h
            .link_by_name(&c.bridge)
            .map_err(nl)?
            .ok_or_else(|| CniError::plugin(format!("bridge {:?} not found", c.bridge)))?;
        if br.kind != Some(InfoKind::Bridge) {
            return Err(CniError::plugin(format!("{:?} is not a bridge", c.bridge)));
        }
        if c.promisc_mode && !br.promisc {
            return Err(CniError::plugin(format!(
                "bridge {:?} is not in promiscuous mode",
                c.bridge
            )));
        }
        if c.is_gateway {
            let v4 = prev.ips.iter().any(|i| i.address.addr().is_ipv4());
            let v6 = prev.ips.iter().any(|i| i.address.addr().is_ipv6());
            for (want, key) in [
                (v4, "net.ipv4.ip_forward"),
                (v6, "net.ipv6.conf.all.forwarding"),
            ] {
                if want && sysctl::get(key)? != "1" {
                    return Err(CniError::plugin(format!("sysctl {key} is not 1")));
                }
            }
        }
        let cont = prev
            .interfaces
            .iter()
            .find(|i| i.name == args.ifname && !i.sandbox.is_empty())
            .ok_or_else(|| {
                CniError::plugin(format!("interface {} not in prevResult", args.ifname))
            })?;
        for i in prev.interfaces.iter().filter(|i| i.sandbox.is_empty()) {
            if i.name == c.bridge {
                continue;
            }
            if c.is_gateway && c.access_vlan() != 0 && i.name == vlan_gateway_name(&c) {
                if h.link_by_name(&i.name).map_err(nl)?.is_none() {
                    return Err(CniError::plugin(format!(
                        "vlan gateway interface {} not found",
                        i.name
                    )));
                }
                continue;
            }
            let l = h
                .link_by_name(&i.name)
                .map_err(nl)?
                .ok_or_else(|| CniError::plugin(format!("host veth {} not found", i.name)))?;
            if l.master != Some(br.index) {
                return Err(CniError::plugin(format!(
                    "interface {} is not attached to bridge {}",
                    i.name, c.bridge
                )));
            }
            if l.hairpin.is_some_and(|hp| hp != c.hairpin_mode) {
                return Err(CniError::plugin(format!(
                    "interface {}: hairpin mode is not {}",
                    i.name, c.hairpin_mode
                )));
            }
            if l.isolated.is_some_and(|iso| iso != c.port_isolation) {
                return Err(CniError::plugin(format!(
                    "interface {}: port isolation is not {}",
                    i.name, c.port_isolation
                )));
            }
            if let Some(mtu) = c.mtu
                && l.mtu != mtu
            {
                return Err(CniError::plugin(format!(
                    "interface {}: MTU {} is not {mtu}",
                    i.name, l.mtu
                )));
            }
            check_port_vlans(&mut h, &l, &c)?;
        }
        let cont_mac = cont.mac.clone();
        let has_v6 = prev.ips.iter().any(|i| i.address.addr().is_ipv6());
        ns::run_in(&netns, || {
            let mut ch = Handle::new().map_err(nl)?;
            let l = ch
                .link_by_name(&args.ifname)
                .map_err(nl)?
                .ok_or_else(|| CniError::plugin(format!("{} not found", args.ifname)))?;
            if l.kind != Some(InfoKind::Veth) {
                return Err(CniError::plugin(format!("{} is not a veth", args.ifname)));
            }
            if !cont_mac.is_empty() && !l.mac_string().eq_ignore_ascii_case(&cont_mac) {
                return Err(CniError::plugin(format!(
                    "interface {} MAC {} does not match {}",
                    args.ifname,
                    l.mac_string(),
                    cont_mac
                )));
            }
            if let Some(mtu) = c.mtu
                && l.mtu != mtu
            {
                return Err(CniError::plugin(format!(
                    "interface {}: MTU {} is not {mtu}",
                    args.ifname, l.mtu
                )));
            }
            if !c.disable_container_interface && !l.is_up() {
                return Err(CniError::plugin(format!(
                    "interface {} is down",
                    args.ifname
                )));
            }
            let mut want = vec![(format!("net.ipv4.conf.{}.arp_notify", args.ifname), "1")];
            if has_v6 {
                let dad = if c.enabledad { "1" } else { "0" };
                want.push((format!("net.ipv6.conf.{}.accept_dad", args.ifname), dad));
            }
            for (key, value) in want {
                if sysctl::get(&key)? != value {
                    return Err(CniError::plugin(format!("sysctl {key} is not {value}")));
                }
            }
            let addrs = ch.addrs(Some(l.index)).map_err(nl)?;
            for ip in &prev.ips {
                if !addrs.iter().any(|(_, a)| *a == ip.address) {
                    return Err(CniError::plugin(format!(
                        "address {} not found on {}",
                        ip.address, args.ifname
                    )));
                }
            }
            let routes = ch.routes().map_err(nl)?;
            for r in &prev.routes {
                // A route without gw matches on destination alone (as upstream since v1.3.0).
                let ok = routes.iter().any(|x| {
                    x.dst == r.dst && x.oif == Some(l.index) && (r.gw.is_none() || x.gw == r.gw)
                });
                if !ok {
                    return Err(CniError::plugin(format!(
                        "route {} not found in container",
                        r.dst
                    )));
                }
            }
            Ok(())
        })
    }

    fn status(&self, args: &Args, conf: &Value) -> Result<()> {
        if conf.get("ipam").is_some() {
            ipam::exec(args, conf, "STATUS")?;
        }
        Ok(())
    }

    fn gc(&self, args: &Args, conf: &Value) -> Result<()> {
        if conf.get("ipam").is_some() {
            ipam::exec(args, conf, "GC")?;
        }
        Ok(())
    }
}
