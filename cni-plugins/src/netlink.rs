//! A small synchronous rtnetlink client: one `NETLINK_ROUTE` socket in the calling thread's
//! network namespace, messages built with `netlink-packet-route`.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecBridge, BridgeFlag, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge, InfoBridgePort,
    InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute, LinkExtentMask,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Errors of netlink requests; `Kernel` carries the errno the kernel answered with.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    #[error("{op}: {source}")]
    Kernel { op: String, source: io::Error },
    #[error("netlink decode: {0}")]
    Decode(String),
}

impl NetlinkError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// A link as the plugins need it.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub flags: LinkFlags,
    pub master: Option<u32>,
    pub kind: Option<InfoKind>,
    pub hairpin: Option<bool>,
    pub isolated: Option<bool>,
    pub promisc: bool,
}

impl Link {
    fn from_msg(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            flags: m.header.flags,
            master: None,
            kind: None,
            hairpin: None,
            isolated: None,
            promisc: m.header.flags.contains(LinkFlags::Promisc),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(a) => l.mac = a.clone(),
                LinkAttribute::Mtu(v) => l.mtu = *v,
                LinkAttribute::Controller(v) => l.master = Some(*v),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => l.kind = Some(k.clone()),
                            LinkInfo::PortData(InfoPortData::BridgePort(ps)) => {
                                for p in ps {
                                    match p {
                                        InfoBridgePort::HairpinMode(h) => l.hairpin = Some(*h),
                                        InfoBridgePort::Isolated(i) => l.isolated = Some(*i),
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }

    pub fn is_up(&self) -> bool {
        self.flags.contains(LinkFlags::Up)
    }

    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A route of the main table, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
}

/// The forked side of [`Handle::del_link_detached`]: becomes a grandchild of no one's, keeps
/// only `fd`, sends `buf` on it and exits.
///
/// # Safety
/// Only to be called in a child of fork(2); it makes async-signal-safe syscalls only and never
/// returns.
unsafe fn detached_send(fd: RawFd, buf: &[u8]) -> ! {
    // SAFETY: async-signal-safe syscalls in a forked child; `buf` was allocated before the fork
    // and is only read; every path ends in _exit.
    unsafe {
        libc::setsid();
        match libc::fork() {
            0 => {}
            -1 => {
                // No grandchild: do it here (the parent waits for it, which is only slower).
            }
            _ => libc::_exit(0),
        }
        // Every descriptor but the socket.
        let max = libc::c_uint::MAX;
        let fd_u = fd as libc::c_uint;
        let ranges = [(0, fd_u.saturating_sub(1)), (fd_u + 1, max)];
        for (lo, hi) in ranges {
            if lo > hi || (lo == 0 && fd_u == 0) {
                continue;
            }
            if libc::syscall(libc::SYS_close_range, lo, hi, 0) != 0 {
                for f in lo..hi.min(1024) + 1 {
                    libc::close(f as libc::c_int);
                }
            }
        }
        libc::send(fd, buf.as_ptr().cast(), buf.len(), 0);
        libc::_exit(0)
    }
}

/// One rtnetlink socket of the calling thread's network namespace.
pub struct Handle {
    sock: Socket,
    seq: u32,
}

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

impl Handle {
    /// Opens a socket in the current thread's network namespace.
    pub fn new() -> Result<Handle> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        Ok(Handle { sock, seq: 1 })
    }

    /// `msg` as request bytes with the next sequence number.
    fn encode(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        buf
    }

    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let buf = self.encode(msg, flags);
        self.sock.send(&buf, 0).map_err(NetlinkError::Socket)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(NetlinkError::Socket)?;
            let mut off = 0;
            while off < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| NetlinkError::Decode(e.to_string()))?;
                let len = m.header.length as usize;
                if len == 0 {
                    return Err(NetlinkError::Decode("zero-length message".into()));
                }
                off += (len + 3) & !3;
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        if e.code.is_none() {
                            return Ok(out);
                        }
                        return Err(NetlinkError::Kernel {
                            op: op.to_string(),
                            source: e.to_io(),
                        });
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The link named `name`, or None.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0, "get link") {
            Ok(msgs) => Ok(msgs.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_msg(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link with `index`, or None.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.request(RouteNetlinkMessage::GetLink(m), 0, "get link") {
            Ok(msgs) => Ok(msgs.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_msg(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All links of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let m = LinkMessage::default();
        let msgs = self.request(RouteNetlinkMessage::GetLink(m), NLM_F_DUMP, "dump links")?;
        Ok(msgs
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_msg(l)),
                _ => None,
            })
            .collect())
    }

    fn new_link(&mut self, m: LinkMessage, op: &str) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            op,
        )
        .map(|_| ())
    }

    /// Creates a bridge (`vlan_filtering` for the `vlan` option).
    pub fn add_bridge(&mut self, name: &str, mtu: Option<u32>, vlan_filtering: bool) -> Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        if vlan_filtering {
            info.push(LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::VlanFiltering(true),
            ])));
        }
        m.attributes.push(LinkAttribute::LinkInfo(info));
        self.new_link(m, &format!("create bridge {name}"))
    }

    /// Creates a veth pair: `name` here, `peer` in the namespace of `peer_netns`.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
        peer_netns: RawFd,
    ) -> Result<()> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        if let Some(mac) = peer_mac {
            p.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        p.attributes.push(LinkAttribute::NetNsFd(peer_netns));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
            p.attributes.push(LinkAttribute::Mtu(mtu));
        }
        // One queue each way, as the kernel would leave it: a veth created without these gets
        // one queue per possible CPU and is cut down to one right after registration, which
        // waits for an expedited RCU grace period with the RTNL held, once for each end. With
        // many pods starting, every other RTNL user (namespace creation, the other plugins)
        // queued behind those waits.
        for l in [&mut m, &mut p] {
            l.attributes.push(LinkAttribute::NumTxQueues(1));
            l.attributes.push(LinkAttribute::NumRxQueues(1));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.new_link(m, &format!("create veth {name}/{peer}"))
    }

    fn set_link(&mut self, m: LinkMessage, op: &str) -> Result<()> {
        self.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK, op)
            .map(|_| ())
    }

    /// Sets or clears IFF_UP (and IFF_PROMISC when `promisc` is given).
    pub fn set_flags(&mut self, index: u32, up: bool, promisc: Option<bool>) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.change_mask = LinkFlags::Up;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        if let Some(p) = promisc {
            m.header.change_mask |= LinkFlags::Promisc;
            if p {
                m.header.flags |= LinkFlags::Promisc;
            }
        }
        self.set_link(m, "set link flags")
    }

    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Controller(master));
        self.set_link(m, "set link master")
    }

    /// Bridge port options (hairpin mode, isolation) of `index`.
    pub fn set_bridge_port(&mut self, index: u32, hairpin: bool, isolated: bool) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![
                InfoBridgePort::HairpinMode(hairpin),
                InfoBridgePort::Isolated(isolated),
            ])),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_ACK,
            "set bridge port options",
        )
        .map(|_| ())
    }

    /// `bridge vlan add vid <vid> dev <index> master [pvid] [untagged]`: AF_BRIDGE RTM_SETLINK
    /// with IFLA_AF_SPEC { IFLA_BRIDGE_FLAGS master, IFLA_BRIDGE_VLAN_INFO }.
    pub fn bridge_vlan_add(
        &mut self,
        index: u32,
        vid: u16,
        pvid: bool,
        untagged: bool,
    ) -> Result<()> {
        let mut flags = BridgeVlanInfoFlags::empty();
        if pvid {
            flags |= BridgeVlanInfoFlags::Pvid;
        }
        if untagged {
            flags |= BridgeVlanInfoFlags::Untagged;
        }
        let m = bridge_vlan_msg(index, vid, flags);
        self.set_link(m, &format!("add vlan {vid} to bridge port {index}"))
    }

    /// `bridge vlan del vid <vid> dev <index> master` (AF_BRIDGE RTM_DELLINK: removes the vlan,
    /// not the link).
    pub fn bridge_vlan_del(&mut self, index: u32, vid: u16) -> Result<()> {
        let m = bridge_vlan_msg(index, vid, BridgeVlanInfoFlags::empty());
        self.request(
            RouteNetlinkMessage::DelLink(m),
            NLM_F_ACK,
            &format!("delete vlan {vid} from bridge port {index}"),
        )
        .map(|_| ())
    }

    /// The vlans of bridge port (or bridge) `index`: AF_BRIDGE RTM_GETLINK dump with
    /// RTEXT_FILTER_BRVLAN, one entry per vid.
    pub fn bridge_vlans(&mut self, index: u32) -> Result<Vec<BridgeVlanInfo>> {
        let mut m = LinkMessage::default();
        m.header.interface_family = AddressFamily::Bridge;
        m.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Brvlan]));
        let msgs = self.request(
            RouteNetlinkMessage::GetLink(m),
            NLM_F_DUMP,
            "dump bridge vlans",
        )?;
        let mut out = Vec::new();
        for r in msgs {
            let RouteNetlinkMessage::NewLink(l) = r else {
                continue;
            };
            if l.header.index != index {
                continue;
            }
            for a in &l.attributes {
                if let LinkAttribute::AfSpecBridge(spec) = a {
                    out.extend(spec.iter().filter_map(|s| match s {
                        AfSpecBridge::VlanInfo(v) => Some(*v),
                        _ => None,
                    }));
                }
            }
        }
        Ok(out)
    }

    pub fn del_link(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(m), NLM_F_ACK, "delete link")
            .map(|_| ())
    }

    /// Renames link `index` (the kernel refuses to rename a link that is up: EBUSY).
    pub fn set_name(&mut self, index: u32, name: &str) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.set_link(m, &format!("rename link {index} to {name}"))
    }

    /// Deletes link `index` from a detached process and returns without waiting for it.
    ///
    /// Unregistering a network device waits for RCU grace periods after the kernel's own work
    /// is done (about 18 ms for a veth pair on the 2-core test machine, nearly all of it
    /// sleeping); the request is executed within the `send` of the process that sends it. So
    /// this process forks, the child forks again and exits (the grandchild is nobody's child
    /// to wait for), and the grandchild closes every descriptor but the socket (a caller
    /// waiting for EOF on our stdout must not wait for it), sends the prepared RTM_DELLINK on
    /// the inherited socket (it stays in the socket's network namespace whatever the thread
    /// that forked was in) and exits. A failure there goes unreported: the caller has the link
    /// down and renamed (see the bridge's DEL), and a link of a deleted namespace goes with it.
    pub fn del_link_detached(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        let buf = self.encode(RouteNetlinkMessage::DelLink(m), 0);
        let fd = self.sock.as_raw_fd();
        // SAFETY: fork(2) of a possibly multi-threaded process; the child only calls
        // async-signal-safe syscalls (setsid, fork, close_range/close, send, _exit) on memory
        // prepared before the fork (`buf`), and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(NetlinkError::Socket(io::Error::last_os_error())),
            0 => {
                // SAFETY: see above; this is the child, which ends in _exit.
                unsafe { detached_send(fd, &buf) }
            }
            pid => {
                // The first child exits right after its fork; reap it.
                let mut status = 0;
                // SAFETY: waitpid on our own child with a valid status pointer.
                while unsafe { libc::waitpid(pid, &mut status, 0) } == -1
                    && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                {
                }
                Ok(())
            }
        }
    }

    /// Adds `addr` to `index` (with the IPv4 broadcast address, as iproute2 and the reference do).
    pub fn add_addr(&mut self, index: u32, addr: &IpNet) -> Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(&addr.addr());
        m.header.prefix_len = addr.prefix_len();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Address(addr.addr()));
        if let IpNet::V4(v4) = addr {
            m.attributes.push(AddressAttribute::Local(addr.addr()));
            if v4.prefix_len() < 31 {
                m.attributes
                    .push(AddressAttribute::Broadcast(v4.broadcast()));
            }
        }
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &format!("add address {addr}"),
        )
        .map(|_| ())
    }

    /// Addresses of `index` (all links when None).
    pub fn addrs(&mut self, index: Option<u32>) -> Result<Vec<(u32, IpNet)>> {
        let m = AddressMessage::default();
        let msgs = self.request(
            RouteNetlinkMessage::GetAddress(m),
            NLM_F_DUMP,
            "dump addresses",
        )?;
        let mut out = Vec::new();
        for r in msgs {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            if index.is_some_and(|i| i != a.header.index) {
                continue;
            }
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = ip
                && let Ok(net) = IpNet::new(ip, a.header.prefix_len)
            {
                out.push((a.header.index, net));
            }
        }
        Ok(out)
    }

    /// Adds a route to the main table; a route without gateway gets link scope.
    pub fn add_route(&mut self, oif: u32, dst: &IpNet, gw: Option<IpAddr>) -> Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(&dst.addr());
        m.header.destination_prefix_length = dst.prefix_len();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = if gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        m.header.kind = RouteType::Unicast;
        if dst.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    dst.network(),
                )));
        }
        if let Some(gw) = gw {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(oif));
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &format!("add route {dst} via {gw:?}"),
        )
        .map(|_| ())
    }

    /// Routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<RouteEntry>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = fam;
            let msgs = self.request(RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP, "dump routes")?;
            for r in msgs {
                let RouteNetlinkMessage::NewRoute(r) = r else {
                    continue;
                };
                if r.header.table != RouteHeader::RT_TABLE_MAIN {
                    continue;
                }
                let mut dst = None;
                let mut gw = None;
                let mut oif = None;
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Destination(d) => dst = route_ip(d),
                        RouteAttribute::Gateway(g) => gw = route_ip(g),
                        RouteAttribute::Oif(o) => oif = Some(*o),
                        _ => {}
                    }
                }
                let dst = match dst {
                    Some(ip) => IpNet::new(ip, r.header.destination_prefix_length).ok(),
                    None if fam == AddressFamily::Inet => {
                        IpNet::new(IpAddr::from([0u8, 0, 0, 0]), 0).ok()
                    }
                    None => IpNet::new(IpAddr::from([0u16; 8]), 0).ok(),
                };
                if let Some(dst) = dst {
                    out.push(RouteEntry { dst, gw, oif });
                }
            }
        }
        Ok(out)
    }
}

fn bridge_vlan_msg(index: u32, vid: u16, flags: BridgeVlanInfoFlags) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.interface_family = AddressFamily::Bridge;
    m.header.index = index;
    m.attributes.push(LinkAttribute::AfSpecBridge(vec![
        AfSpecBridge::Flags(BridgeFlag::Controller),
        AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid }),
    ]));
    m
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}
