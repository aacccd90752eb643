//! Connection tracking over ctnetlink (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_CTNETLINK`):
//! dump the entries of one address family and delete the UDP ones whose original direction went
//! to given destination ports, what the reference portmap does after mapping UDP host ports (an
//! entry made before the DNAT rule existed would keep steering that flow past it).
//!
//! Messages come from `netlink-packet-netfilter`; the socket is a plain synchronous
//! `netlink-sys` one in the calling thread's network namespace, like `src/netlink.rs`.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// Errors of conntrack requests.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("ctnetlink socket: {0}")]
    Socket(io::Error),
    #[error("ctnetlink {op}: {source}")]
    Kernel { op: &'static str, source: io::Error },
    #[error("ctnetlink decode: {0}")]
    Decode(String),
}

/// The address family of a conntrack table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn nfproto(self) -> NetfilterProtoFamily {
        match self {
            Family::V4 => NetfilterProtoFamily::IPv4,
            Family::V6 => NetfilterProtoFamily::IPv6,
        }
    }
}

struct Conn {
    sock: Socket,
    seq: u32,
}

impl Conn {
    fn new() -> Result<Conn, ConntrackError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
        sock.bind_auto().map_err(ConntrackError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(ConntrackError::Socket)?;
        Ok(Conn { sock, seq: 0 })
    }

    /// Sends one request and collects the conntrack messages of its answer until the ack (or
    /// the end of a dump). Messages the crate cannot decode are skipped: they are never UDP
    /// entries we would delete.
    fn request(
        &mut self,
        family: Family,
        msg: ConntrackMessage,
        flags: u16,
        op: &'static str,
    ) -> Result<Vec<ConntrackMessage>, ConntrackError> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(family.nfproto(), 0, 0),
                msg,
            )),
        );
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(ConntrackError::Socket)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(ConntrackError::Socket)?;
            let mut off = 0;
            while off + 16 <= data.len() {
                let len =
                    u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
                        as usize;
                if len < 16 || off + len > data.len() {
                    return Err(ConntrackError::Decode("malformed netlink message".into()));
                }
                let raw = &data[off..off + len];
                off += (len + 3) & !3;
                let seq = u32::from_ne_bytes([raw[8], raw[9], raw[10], raw[11]]);
                if seq != self.seq {
                    continue;
                }
                let m = match NetlinkMessage::<NetfilterMessage>::deserialize(raw) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!("ctnetlink: skipping a message: {e}");
                        continue;
                    }
                };
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(ConntrackError::Kernel {
                                op,
                                source: e.to_io(),
                            }),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(c),
                        ..
                    }) => out.push(c),
                    _ => {}
                }
            }
        }
    }
}

/// The original-direction tuple of a dumped entry, when it is a UDP flow to one of `ports`.
fn udp_orig_tuple_to(msg: &ConntrackMessage, ports: &[u16]) -> Option<Vec<Tuple>> {
    let ConntrackMessage::New(attrs) = msg else {
        return None;
    };
    let orig = attrs.iter().find_map(|a| match a {
        ConntrackAttribute::CtaTupleOrig(t) => Some(t),
        _ => None,
    })?;
    let proto = orig.iter().find_map(|t| match t {
        Tuple::Proto(p) => Some(p),
        _ => None,
    })?;
    let udp = proto
        .iter()
        .any(|p| matches!(p, ProtoTuple::Protocol(Protocol::Udp)));
    let dport = proto.iter().find_map(|p| match p {
        ProtoTuple::DestinationPort(d) => Some(*d),
        _ => None,
    });
    (udp && dport.is_some_and(|d| ports.contains(&d))).then(|| orig.clone())
}

/// Deletes the conntrack entries of `family` (in the calling thread's network namespace) of
/// UDP flows whose original destination port is one of `ports`; returns how many went.
pub fn delete_udp_to_ports(family: Family, ports: &[u16]) -> Result<usize, ConntrackError> {
    if ports.is_empty() {
        return Ok(0);
    }
    let mut conn = Conn::new()?;
    let entries = conn.request(
        family,
        ConntrackMessage::Get(Vec::new()),
        NLM_F_DUMP,
        "dump",
    )?;
    let mut deleted = 0;
    for orig in entries.iter().filter_map(|m| udp_orig_tuple_to(m, ports)) {
        let del = ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(orig)]);
        match conn.request(family, del, NLM_F_ACK, "delete") {
            Ok(_) => deleted += 1,
            // Gone meanwhile (expired, or deleted by someone else).
            Err(ConntrackError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}
