//! Attaches to: every watched underlay NIC (the interfaces that route to the peers'
//! endpoints), tcx or clsact, ingress (`underlay_ingress`) and egress (`underlay_egress`);
//! on an underlay device without a link-layer header (a tunnel, a TUN device, a WireGuard
//! interface carrying another WireGuard: `skb->data` is the IP header), `underlay_l3_ingress`
//! and `underlay_l3_egress` instead.
//!
//! Looks at UDP to or from a watched WireGuard listen port: counts each WireGuard message by
//! type on the peer it belongs to (by endpoint, else by the session index this host chose),
//! every segment of a UDP GSO or GRO packet as the message it is,
//! outer IP fragments (later fragments tied to their first one), and ICMP
//! fragmentation-needed / packet-too-big about such datagrams with the MTU they report.
//! Datagrams from no known endpoint or session count as the interface's unknown source.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::classifier, programs::TcContext};
use collector_common::{
    latency::LatencyKind,
    maps::{
        EndpointKey, FragmentKey, InnerAddress, Ipv4EndpointKey, MapId, PeerAddress, PeerUnderlay,
        SessionKey,
    },
    packet::{Direction, Packet},
    underlay::{
        Fragment, IP_HEADER_MIN_LEN, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP, IpHeader,
        MESSAGE_TYPES, MessageType, SessionIndices, UDP_HEADER_LEN, UdpMessages, icmp_error,
        ipv4_header, ipv6_header, network_offset, session_indices, udp_header,
    },
};

use crate::{
    latency::{record, start},
    map_errors::map_error,
    maps::{
        ENDPOINTS_V4, ENDPOINTS_V6, FRAGMENTS, INITIATION_SOURCES, INTERFACE_TRAFFIC, LISTEN_PORTS,
        PEER_COUNTERS, PENDING_HANDSHAKES, SESSIONS,
    },
    skb::{PASS_ON, Skb},
};

#[classifier]
pub fn underlay_ingress(ctx: TcContext) -> i32 {
    observe(&Skb::new(&ctx), Direction::Receive);
    PASS_ON
}

#[classifier]
pub fn underlay_egress(ctx: TcContext) -> i32 {
    observe(&Skb::new(&ctx), Direction::Transmit);
    PASS_ON
}

#[classifier]
pub fn underlay_l3_ingress(ctx: TcContext) -> i32 {
    observe_ip_at(&Skb::new(&ctx), Direction::Receive, 0);
    PASS_ON
}

#[classifier]
pub fn underlay_l3_egress(ctx: TcContext) -> i32 {
    observe_ip_at(&Skb::new(&ctx), Direction::Transmit, 0);
    PASS_ON
}

/// A packet on an Ethernet device: the IP header follows the Ethernet header (and a VLAN tag).
#[inline(always)]
fn observe(skb: &Skb<'_>, direction: Direction) -> Option<()> {
    observe_ip_at(skb, direction, network_offset(skb)?)
}

/// A packet whose IP header is at `offset`.
#[inline(always)]
fn observe_ip_at(skb: &Skb<'_>, direction: Direction, offset: usize) -> Option<()> {
    // `ip_header`, with the code after the header inlined once per family: the IPv4 copy
    // knows `ipv4` and the 12 constant bytes of its mapped addresses, where one copy for both
    // would carry 32 address bytes of either family through registers and stack slots.
    let first = skb.read::<IP_HEADER_MIN_LEN>(offset)?;
    match first[0] >> 4 {
        4 => observe_ip(skb, direction, &ipv4_header(&first, offset)?),
        6 => observe_ip(skb, direction, &ipv6_header(skb, offset)?),
        _ => None,
    }
}

#[inline(always)]
fn observe_ip(skb: &Skb<'_>, direction: Direction, ip: &IpHeader) -> Option<()> {
    if let Fragment::Later { id } = ip.fragment {
        let key = FragmentKey {
            id,
            direction: direction as u32,
            source: ip.source,
            destination: ip.destination,
        };
        // SAFETY: the value is copied out at once.
        let peer = *unsafe { FRAGMENTS.get(&key) }?;
        let counters = peer_counters(peer)?;
        counters.fragments[direction as usize & 1] += 1;
        return Some(());
    }
    match ip.protocol {
        IPPROTO_UDP => datagram(skb, direction, ip),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => icmp(skb, direction, ip),
        _ => None,
    }
}

#[inline(always)]
fn datagram(skb: &Skb<'_>, direction: Direction, ip: &IpHeader) -> Option<()> {
    let udp = udp_header(skb, ip.transport_offset)?;
    let (local_port, remote_port, remote) = match direction {
        Direction::Receive => (udp.destination_port, udp.source_port, &ip.source),
        Direction::Transmit => (udp.source_port, udp.destination_port, &ip.destination),
    };
    let wireguard = listener(local_port)?;
    let payload = ip.transport_offset + UDP_HEADER_LEN;
    let messages = messages(skb, payload, udp.payload_length);
    let kind = skb.read::<4>(payload).map_or(MessageType::Invalid, |header| {
        MessageType::classify(header, messages.first_length())
    });
    if matches!(kind, MessageType::Invalid) {
        let received = direction == Direction::Receive;
        crate::debug::not_a_message(skb.context(), received, local_port, messages.first_length());
    }
    if direction == Direction::Receive && matches!(kind, MessageType::HandshakeInitiation) {
        count_initiation_source(wireguard, ip);
    }
    let peer = match endpoint_peer(wireguard, remote_port, remote, ip.ipv4) {
        Some(peer) => Some(peer),
        // The session indices are read only when they are needed: most datagrams are
        // transport data from a known endpoint, which needs none.
        None => match (direction, session_indices(skb, payload, kind)) {
            (Direction::Receive, Some(indices)) if indices.receiver != 0 => {
                let session = SessionKey { ifindex: wireguard, index: indices.receiver };
                // SAFETY: the value is copied out at once.
                unsafe { SESSIONS.get(&session) }.copied()
            }
            _ => None,
        },
    };
    let Some(peer) = peer else {
        if direction == Direction::Receive
            && let Some(counters) = INTERFACE_TRAFFIC.get_ptr_mut(wireguard)
        {
            // SAFETY: per-CPU value of this CPU; BPF programs are not preempted on it.
            unsafe { (*counters).underlay_unknown_source += 1 + u64::from(messages.leading) };
        }
        return Some(());
    };
    if messages.leading == 0
        && matches!(kind, MessageType::HandshakeInitiation | MessageType::HandshakeResponse)
        && let Some(indices) = session_indices(skb, payload, kind)
    {
        // The index this host chooses travels in its own handshake messages; the peer's
        // replies and its transport data carry it back as their receiver index.
        if direction == Direction::Transmit {
            let session = SessionKey { ifindex: wireguard, index: indices.sender };
            if SESSIONS.insert(&session, &peer, 0).is_err() {
                map_error(MapId::Sessions);
            }
        }
        time_handshake(wireguard, peer, direction, kind, indices);
    }
    let counters = peer_counters(peer)?;
    let by_type = &mut counters.messages[direction as usize & 1];
    if messages.leading == 0 {
        count_message(by_type, kind, 1);
    } else {
        count_message(by_type, kind, u64::from(messages.leading));
        let last =
            skb.load::<4>(payload + messages.last_offset).map_or(MessageType::Invalid, |header| {
                MessageType::classify(header, messages.last_length)
            });
        count_message(by_type, last, 1);
    }
    if let Fragment::First { id } = ip.fragment {
        counters.fragments[direction as usize & 1] += 1;
        let key = FragmentKey {
            id,
            direction: direction as u32,
            source: ip.source,
            destination: ip.destination,
        };
        if FRAGMENTS.insert(&key, &peer, 0).is_err() {
            map_error(MapId::Fragments);
        }
    }
    Some(())
}

/// Adds a handshake initiation received on `wireguard` to its source address's count (an LRU
/// map: a full one forgets the source seen least recently, so an insert does not fail for
/// room). A peer sends one at most every 5 s; a flood sends thousands.
#[inline(always)]
fn count_initiation_source(wireguard: u32, ip: &IpHeader) {
    let source = if ip.ipv4 {
        let [.., a, b, c, d] = ip.source;
        InnerAddress::ipv4([a, b, c, d])
    } else {
        InnerAddress::ipv6(ip.source)
    };
    let key = PeerAddress::new(wireguard, source);
    match INITIATION_SOURCES.get_ptr_mut(&key) {
        // SAFETY: per-CPU value of this CPU; BPF programs are not preempted on it.
        Some(count) => unsafe { *count += 1 },
        None => {
            let _evicts_the_oldest = INITIATION_SOURCES.insert(&key, &1, 0);
        }
    }
}

/// The WireGuard messages of the UDP payload at `payload`, whose UDP header says it is
/// `udp_length` bytes: a GSO/GRO packet's header holds the length of all its segments only
/// while they fit 16 bits, so its length comes from the skb.
#[inline(always)]
fn messages(skb: &Skb<'_>, payload: usize, udp_length: usize) -> UdpMessages {
    let (gso_size, gso_segs) = skb.gso();
    if gso_size == 0 {
        return UdpMessages::new(udp_length, 0, 0);
    }
    let length = (skb.len() as usize).saturating_sub(payload);
    UdpMessages::new(length, gso_size as usize, gso_segs)
}

#[inline(always)]
fn count_message(by_type: &mut [u64; MESSAGE_TYPES], kind: MessageType, count: u64) {
    if let Some(slot) = by_type.get_mut(kind as usize) {
        *slot += count;
    }
}

/// Times handshakes both ways: an initiation opens, the response that carries its sender
/// index as receiver index closes. Initiator: out, then in; responder: in, then out.
#[inline(always)]
fn time_handshake(
    wireguard: u32,
    peer: u32,
    direction: Direction,
    kind: MessageType,
    indices: SessionIndices,
) {
    match kind {
        MessageType::HandshakeInitiation => {
            let role = match direction {
                Direction::Transmit => LatencyKind::HandshakeInitiator,
                Direction::Receive => LatencyKind::HandshakeResponder,
            };
            let key = SessionKey { ifindex: wireguard, index: indices.sender };
            if PENDING_HANDSHAKES.insert(&key, &start(peer, role as u32), 0).is_err() {
                map_error(MapId::PendingHandshakes);
            }
        }
        MessageType::HandshakeResponse => {
            let expected = match direction {
                Direction::Receive => LatencyKind::HandshakeInitiator,
                Direction::Transmit => LatencyKind::HandshakeResponder,
            };
            let key = SessionKey { ifindex: wireguard, index: indices.receiver };
            // SAFETY: the value is copied out at once.
            if let Some(started) = unsafe { PENDING_HANDSHAKES.get(&key) }.copied()
                && started.kind == expected as u32
            {
                record(&started);
                let _gone = PENDING_HANDSHAKES.remove(&key);
            }
        }
        _ => {}
    }
}

/// ICMP too-big or destination unreachable about a WireGuard datagram: one this host sent
/// when it comes in, one this host received when it goes out.
#[inline(always)]
fn icmp(skb: &Skb<'_>, direction: Direction, ip: &IpHeader) -> Option<()> {
    let report = icmp_error(skb, ip.transport_offset, ip.protocol)?;
    let (local_port, remote_port, remote) = match direction {
        Direction::Receive => (report.source_port, report.destination_port, &report.destination),
        Direction::Transmit => (report.destination_port, report.source_port, &report.source),
    };
    let wireguard = listener(local_port)?;
    let peer = endpoint_peer(wireguard, remote_port, remote, report.ipv4)?;
    let counters = peer_counters(peer)?;
    let Some(mtu) = report.mtu else {
        counters.unreachable[direction as usize & 1] += 1;
        return Some(());
    };
    counters.too_big[direction as usize & 1] += 1;
    // SAFETY: a helper without arguments.
    counters.too_big_at = unsafe { bpf_ktime_get_ns() };
    counters.too_big_mtu = u64::from(mtu);
    Some(())
}

/// The peer whose current endpoint is `address` (IPv4-mapped when `ipv4`), `port`, on WireGuard
/// interface `wireguard`.
#[inline(always)]
fn endpoint_peer(wireguard: u32, port: u16, address: &[u8; 16], ipv4: bool) -> Option<u32> {
    let port = u32::from(port);
    if ipv4 {
        let [.., a, b, c, d] = *address;
        let key = Ipv4EndpointKey { ifindex: wireguard, port, address: [a, b, c, d] };
        // SAFETY: the value is copied out at once.
        unsafe { ENDPOINTS_V4.get(&key) }.copied()
    } else {
        let key = EndpointKey { ifindex: wireguard, port, address: *address };
        // SAFETY: the value is copied out at once.
        unsafe { ENDPOINTS_V6.get(&key) }.copied()
    }
}

/// The ifindex of the WireGuard interface listening on UDP port `port`, if one does.
#[inline(always)]
fn listener(port: u16) -> Option<u32> {
    LISTEN_PORTS.get(u32::from(port)).copied().filter(|&ifindex| ifindex != 0)
}

#[inline(always)]
fn peer_counters(peer: u32) -> Option<&'static mut PeerUnderlay> {
    let counters = PEER_COUNTERS.get_ptr_mut(peer)?;
    // SAFETY: per-CPU value of this CPU; BPF programs are not preempted on it.
    Some(unsafe { &mut (*counters).underlay })
}
