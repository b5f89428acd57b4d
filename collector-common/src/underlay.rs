//! Parsing of packets on the underlay NICs: Ethernet (with one VLAN tag), IPv4 and IPv6
//! (fragments included), UDP to or from a WireGuard listen port, the WireGuard message in it,
//! and ICMP fragmentation-needed / ICMPv6 packet-too-big about such a datagram.
//!
//! Offsets start at the Ethernet header (`skb->data` on a tc hook of an Ethernet device).

use crate::{maps::ipv4_mapped, packet::Packet};

/// Length of an Ethernet header without VLAN tags.
pub const ETHERNET_HEADER_LEN: usize = 14;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;

/// IP protocol numbers wgtel looks at.
pub const IPPROTO_ICMP: u8 = 1;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 fragment extension header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = 8;

/// A WireGuard message as the underlay sees it. The discriminants index counter arrays.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// Type 1, 148 bytes.
    HandshakeInitiation = 0,
    /// Type 2, 92 bytes.
    HandshakeResponse = 1,
    /// Type 3, 64 bytes.
    CookieReply = 2,
    /// Type 4 with a payload: 32 bytes of header and tag around the inner packet, padded to a
    /// multiple of 16 bytes only up to the MTU (a full-size packet is not padded).
    TransportData = 3,
    /// Type 4 with nothing inside (32 bytes: header and authentication tag).
    Keepalive = 4,
    /// Anything else sent to or from a WireGuard port: wrong type, reserved bytes or size.
    Invalid = 5,
}

/// How many [`MessageType`]s there are.
pub const MESSAGE_TYPES: usize = 6;

impl MessageType {
    /// Every type, in discriminant order.
    pub const ALL: [Self; MESSAGE_TYPES] = [
        Self::HandshakeInitiation,
        Self::HandshakeResponse,
        Self::CookieReply,
        Self::TransportData,
        Self::Keepalive,
        Self::Invalid,
    ];

    /// The `wireguard.message.type` attribute value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HandshakeInitiation => "handshake_initiation",
            Self::HandshakeResponse => "handshake_response",
            Self::CookieReply => "cookie_reply",
            Self::TransportData => "transport_data",
            Self::Keepalive => "keepalive",
            Self::Invalid => "invalid",
        }
    }

    /// Classifies a UDP payload of `length` bytes whose first four bytes are `header`
    /// (type, then three reserved zero bytes), as the WireGuard protocol sizes them.
    ///
    /// Transport data may have any length above 32: the sender pads the inner packet to a
    /// multiple of 16 only while that stays within the interface MTU (the kernel's
    /// `calculate_skb_padding`, wireguard-go's and boringtun's alike), so at the default MTU of
    /// 1420 a full-size packet is a 1,452-byte message.
    #[inline(always)]
    pub fn classify(header: [u8; 4], length: usize) -> Self {
        if header[1] != 0 || header[2] != 0 || header[3] != 0 {
            return Self::Invalid;
        }
        match (header[0], length) {
            (1, 148) => Self::HandshakeInitiation,
            (2, 92) => Self::HandshakeResponse,
            (3, 64) => Self::CookieReply,
            (4, 32) => Self::Keepalive,
            (4, length) if length > 32 => Self::TransportData,
            _ => Self::Invalid,
        }
    }
}

/// The WireGuard messages of one UDP skb on the underlay.
///
/// A UDP GSO packet (wireguard-go since v0.0.20230223 sends with `UDP_SEGMENT`) or a GRO
/// packet (received for a socket that asked for `UDP_GRO`) is one skb at the tc hook holding
/// many datagrams: segments of `gso_size` payload bytes each, the last one possibly shorter,
/// each one WireGuard message. Every segment but the last has the same size, so it has the
/// type of the first; the last is classified by its own header and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpMessages {
    /// Messages of `size` bytes before the last one (0 for a plain datagram).
    pub leading: u32,
    /// Payload bytes of each leading message (`gso_size`).
    pub size: usize,
    /// Offset of the last message from the start of the UDP payload.
    pub last_offset: usize,
    /// Its length.
    pub last_length: usize,
}

impl UdpMessages {
    /// The messages of a UDP payload of `length` bytes with the skb's `gso_size` and
    /// `gso_segs` (both 0 for a plain datagram; `gso_segs` 0 with a `gso_size` means the count
    /// is left to the segmentation, and is the length divided by `gso_size`, rounded up).
    #[inline(always)]
    pub const fn new(length: usize, gso_size: usize, gso_segs: u32) -> Self {
        if gso_size == 0 || length <= gso_size {
            return Self { leading: 0, size: 0, last_offset: 0, last_length: length };
        }
        let by_size = length.div_ceil(gso_size);
        // A count that does not fit the length is not trusted.
        let segments = if gso_segs != 0 && (gso_segs as usize) == by_size {
            gso_segs as usize
        } else {
            by_size
        };
        let last_offset = (segments - 1) * gso_size;
        Self {
            leading: (segments - 1) as u32,
            size: gso_size,
            last_offset,
            last_length: length - last_offset,
        }
    }

    /// The length of the first message: what its type is classified by.
    #[inline(always)]
    pub const fn first_length(&self) -> usize {
        if self.leading == 0 { self.last_length } else { self.size }
    }
}

/// Where an IP packet is in the fragmentation of its datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    Whole,
    /// The first fragment: it carries the transport header.
    First {
        /// The fragment identification (IPv4: 16 bits, IPv6: 32 bits).
        id: u32,
    },
    /// A later fragment: no transport header; tie it to the first by `id` and addresses.
    Later {
        /// The fragment identification.
        id: u32,
    },
}

/// The IP header of an underlay packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpHeader {
    /// IPv4 (else IPv6).
    pub ipv4: bool,
    /// Offset of the transport header (after IPv6's fragment header, when there is one).
    pub transport_offset: usize,
    /// Transport protocol (the fragment header's next header for IPv6 fragments).
    pub protocol: u8,
    /// Source address, IPv4-mapped for IPv4.
    pub source: [u8; 16],
    /// Destination address, IPv4-mapped for IPv4.
    pub destination: [u8; 16],
    /// Bytes from the transport header to the end of the IP payload (of this fragment).
    pub payload_length: usize,
    /// Fragmentation.
    pub fragment: Fragment,
}

/// Offset of the network header behind the Ethernet header (and one VLAN tag) and its
/// ethertype, or `None` for a packet that is neither IPv4 nor IPv6.
#[inline(always)]
pub fn network_offset<P: Packet + ?Sized>(packet: &P) -> Option<usize> {
    // One read for the ethertype and, behind a VLAN tag, the inner one: on the tc hot path
    // every read is a bounds check.
    let bytes = packet.read::<6>(12)?;
    let (ethertype, offset) = match u16::from_be_bytes([bytes[0], bytes[1]]) {
        ETHERTYPE_VLAN | ETHERTYPE_QINQ => {
            (u16::from_be_bytes([bytes[4], bytes[5]]), ETHERNET_HEADER_LEN + 4)
        }
        ethertype => (ethertype, ETHERNET_HEADER_LEN),
    };
    match ethertype {
        ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => Some(offset),
        _ => None,
    }
}

/// Bytes of the fixed IPv4 header, and of every IP header at the least.
pub const IP_HEADER_MIN_LEN: usize = 20;

/// Parses the IPv4 or IPv6 header at `offset`.
#[inline(always)]
pub fn ip_header<P: Packet + ?Sized>(packet: &P, offset: usize) -> Option<IpHeader> {
    // The 20 bytes every IP header has (all of IPv4's fixed header) in one read, the version
    // among them: no separate read for the version nibble.
    let first = packet.read::<IP_HEADER_MIN_LEN>(offset)?;
    match first[0] >> 4 {
        4 => ipv4_header(&first, offset),
        6 => ipv6_header(packet, offset),
        _ => None,
    }
}

/// Parses the IPv4 header at `offset`, given its first 20 bytes `header`.
#[inline(always)]
pub fn ipv4_header(header: &[u8; IP_HEADER_MIN_LEN], offset: usize) -> Option<IpHeader> {
    let header_length = usize::from(header[0] & 0x0f) * 4;
    if header_length < IP_HEADER_MIN_LEN {
        return None;
    }
    let total_length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let id = u16::from_be_bytes([header[4], header[5]]);
    let flags_offset = u16::from_be_bytes([header[6], header[7]]);
    let more_fragments = flags_offset & 0x2000 != 0;
    let fragment = match (flags_offset & 0x1fff, more_fragments) {
        (0, false) => Fragment::Whole,
        (0, true) => Fragment::First { id: id.into() },
        _ => Fragment::Later { id: id.into() },
    };
    Some(IpHeader {
        ipv4: true,
        transport_offset: offset + header_length,
        protocol: header[9],
        source: ipv4_mapped([header[12], header[13], header[14], header[15]]),
        destination: ipv4_mapped([header[16], header[17], header[18], header[19]]),
        payload_length: total_length.saturating_sub(header_length),
        fragment,
    })
}

/// Parses the IPv6 header at `offset`, and its fragment header when one follows.
#[inline(always)]
pub fn ipv6_header<P: Packet + ?Sized>(packet: &P, offset: usize) -> Option<IpHeader> {
    let header = packet.read::<40>(offset)?;
    let payload_length = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let mut source = [0u8; 16];
    source.copy_from_slice(&header[8..24]);
    let mut destination = [0u8; 16];
    destination.copy_from_slice(&header[24..40]);
    let transport_offset = offset + 40;
    if header[6] != IPPROTO_FRAGMENT {
        return Some(IpHeader {
            ipv4: false,
            transport_offset,
            protocol: header[6],
            source,
            destination,
            payload_length,
            fragment: Fragment::Whole,
        });
    }
    // RFC 8200 4.5: next header, reserved, offset (13 bits) | res | M, identification.
    let fragment_header = packet.read::<8>(transport_offset)?;
    let offset_flags = u16::from_be_bytes([fragment_header[2], fragment_header[3]]);
    let id = u32::from_be_bytes([
        fragment_header[4],
        fragment_header[5],
        fragment_header[6],
        fragment_header[7],
    ]);
    let fragment = match (offset_flags >> 3, offset_flags & 1 != 0) {
        (0, false) => Fragment::Whole,
        (0, true) => Fragment::First { id },
        _ => Fragment::Later { id },
    };
    Some(IpHeader {
        ipv4: false,
        transport_offset: transport_offset + 8,
        protocol: fragment_header[0],
        source,
        destination,
        payload_length: payload_length.saturating_sub(8),
        fragment,
    })
}

/// A UDP datagram's ports and the length of its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpHeader {
    /// Source port.
    pub source_port: u16,
    /// Destination port.
    pub destination_port: u16,
    /// Payload length from the UDP length field (the whole datagram, also when fragmented).
    pub payload_length: usize,
}

/// Parses the UDP header at `offset`.
#[inline(always)]
pub fn udp_header<P: Packet + ?Sized>(packet: &P, offset: usize) -> Option<UdpHeader> {
    let header = packet.read::<8>(offset)?;
    let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
    Some(UdpHeader {
        source_port: u16::from_be_bytes([header[0], header[1]]),
        destination_port: u16::from_be_bytes([header[2], header[3]]),
        payload_length: length.checked_sub(UDP_HEADER_LEN)?,
    })
}

/// The session index that ties a message to a peer when its endpoint does not: the
/// receiver index of a response, cookie reply or transport data (the index this host chose),
/// the sender index of an initiation or response (the index the sender chose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionIndices {
    /// Index chosen by the message's sender; 0 when the message carries none.
    pub sender: u32,
    /// Index chosen by the message's receiver; 0 when the message carries none.
    pub receiver: u32,
}

/// Reads the session indices of a message of `kind` whose payload starts at `offset`
/// (little endian on the wire).
#[inline(always)]
pub fn session_indices<P: Packet + ?Sized>(
    packet: &P,
    offset: usize,
    kind: MessageType,
) -> Option<SessionIndices> {
    let index = |at: usize| packet.read::<4>(offset + at).map(u32::from_le_bytes);
    Some(match kind {
        MessageType::HandshakeInitiation => SessionIndices { sender: index(4)?, receiver: 0 },
        MessageType::HandshakeResponse => SessionIndices { sender: index(4)?, receiver: index(8)? },
        MessageType::CookieReply | MessageType::TransportData | MessageType::Keepalive => {
            SessionIndices { sender: 0, receiver: index(4)? }
        }
        MessageType::Invalid => SessionIndices { sender: 0, receiver: 0 },
    })
}

/// An ICMP error about a UDP datagram: fragmentation needed / packet too big, or destination
/// unreachable (port, host, network, administratively prohibited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpError {
    /// The offending datagram is IPv4 (else IPv6).
    pub ipv4: bool,
    /// The MTU a too-big message reports; `None` for destination unreachable.
    pub mtu: Option<u32>,
    /// The offending datagram's source address (IPv4-mapped for IPv4).
    pub source: [u8; 16],
    /// Its destination address.
    pub destination: [u8; 16],
    /// Its UDP source port.
    pub source_port: u16,
    /// Its UDP destination port.
    pub destination_port: u16,
}

/// Parses an ICMP error whose ICMP header is at `offset` and whose quoted packet is a UDP
/// datagram: ICMP type 3 code 4 (RFC 1191) or ICMPv6 type 2 (RFC 4443), too big; any other
/// ICMP type 3 code or ICMPv6 type 1, destination unreachable (RFC 792, RFC 4443).
#[inline(always)]
pub fn icmp_error<P: Packet + ?Sized>(
    packet: &P,
    offset: usize,
    protocol: u8,
) -> Option<IcmpError> {
    let header = packet.read::<8>(offset)?;
    let mtu = match (protocol, header[0], header[1]) {
        // Next-hop MTU in the low 16 bits of the second word.
        (IPPROTO_ICMP, 3, 4) => Some(u32::from(u16::from_be_bytes([header[6], header[7]]))),
        (IPPROTO_ICMPV6, 2, 0) => {
            Some(u32::from_be_bytes([header[4], header[5], header[6], header[7]]))
        }
        (IPPROTO_ICMP, 3, _) | (IPPROTO_ICMPV6, 1, _) => None,
        _ => return None,
    };
    let quoted = ip_header(packet, offset + 8)?;
    if quoted.protocol != IPPROTO_UDP || matches!(quoted.fragment, Fragment::Later { .. }) {
        return None;
    }
    let ports = packet.read::<4>(quoted.transport_offset)?;
    Some(IcmpError {
        ipv4: quoted.ipv4,
        mtu,
        source: quoted.source,
        destination: quoted.destination,
        source_port: u16::from_be_bytes([ports[0], ports[1]]),
        destination_port: u16::from_be_bytes([ports[2], ports[3]]),
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn ethernet(ethertype: u16) -> Vec<u8> {
        let mut frame = std::vec![0u8; 12];
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame
    }

    fn ipv4(protocol: u8, payload: &[u8], id: u16, flags_offset: u16) -> Vec<u8> {
        let total = u16::try_from(20 + payload.len()).unwrap();
        let mut packet = std::vec![0x45, 0];
        packet.extend_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&id.to_be_bytes());
        packet.extend_from_slice(&flags_offset.to_be_bytes());
        packet.extend_from_slice(&[64, protocol, 0, 0, 198, 18, 1, 10, 198, 18, 1, 1]);
        packet.extend_from_slice(payload);
        packet
    }

    fn udp(source_port: u16, destination_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut datagram = Vec::new();
        datagram.extend_from_slice(&source_port.to_be_bytes());
        datagram.extend_from_slice(&destination_port.to_be_bytes());
        datagram.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
        datagram.extend_from_slice(&[0, 0]);
        datagram.extend_from_slice(payload);
        datagram
    }

    fn message(kind: u8, length: usize) -> Vec<u8> {
        let mut payload = std::vec![0u8; length];
        payload[0] = kind;
        payload[4..8].copy_from_slice(&0x1122_3344u32.to_le_bytes());
        if length >= 12 {
            payload[8..12].copy_from_slice(&0x5566_7788u32.to_le_bytes());
        }
        payload
    }

    #[test]
    fn message_types_by_type_and_size() {
        assert_eq!(MessageType::classify([1, 0, 0, 0], 148), MessageType::HandshakeInitiation);
        assert_eq!(MessageType::classify([2, 0, 0, 0], 92), MessageType::HandshakeResponse);
        assert_eq!(MessageType::classify([3, 0, 0, 0], 64), MessageType::CookieReply);
        assert_eq!(MessageType::classify([4, 0, 0, 0], 32), MessageType::Keepalive);
        assert_eq!(MessageType::classify([4, 0, 0, 0], 32 + 16 * 5), MessageType::TransportData);
        // Not padded at the MTU: a full-size packet under a 1420-byte tunnel MTU.
        assert_eq!(MessageType::classify([4, 0, 0, 0], 1452), MessageType::TransportData);
        assert_eq!(MessageType::classify([4, 0, 0, 0], 31), MessageType::Invalid);
        assert_eq!(MessageType::classify([4, 0, 1, 0], 1452), MessageType::Invalid);
        assert_eq!(MessageType::classify([1, 0, 0, 0], 149), MessageType::Invalid);
        assert_eq!(MessageType::classify([1, 1, 0, 0], 148), MessageType::Invalid);
        assert_eq!(MessageType::classify([5, 0, 0, 0], 64), MessageType::Invalid);
    }

    #[test]
    fn gso_packets_are_many_messages() {
        // A plain datagram: one message, the whole payload.
        let plain = UdpMessages::new(1452, 0, 0);
        assert_eq!(plain, UdpMessages { leading: 0, size: 0, last_offset: 0, last_length: 1452 });
        assert_eq!(plain.first_length(), 1452);
        // 10 full-size messages and a keepalive, as the stack counted them.
        let batch = UdpMessages::new(10 * 1452 + 32, 1452, 11);
        assert_eq!(
            batch,
            UdpMessages { leading: 10, size: 1452, last_offset: 14_520, last_length: 32 }
        );
        assert_eq!(batch.first_length(), 1452);
        // gso_segs 0 (left to the segmentation): from the length.
        assert_eq!(UdpMessages::new(3 * 1452, 1452, 0).leading, 2);
        assert_eq!(UdpMessages::new(3 * 1452, 1452, 0).last_length, 1452);
        // A count that contradicts the length is replaced by the length's.
        assert_eq!(UdpMessages::new(2 * 1452, 1452, 7).leading, 1);
        // A GRO packet of one segment is one message.
        assert_eq!(UdpMessages::new(800, 1452, 1).leading, 0);
    }

    #[test]
    fn an_initiation_over_ipv4_with_its_indices() {
        let mut frame = ethernet(ETHERTYPE_IPV4);
        frame.extend(ipv4(IPPROTO_UDP, &udp(51820, 51821, &message(1, 148)), 7, 0x4000));
        let packet: &[u8] = &frame;
        let offset = network_offset(packet).unwrap();
        let ip = ip_header(packet, offset).unwrap();
        assert_eq!(ip.fragment, Fragment::Whole);
        assert!(ip.ipv4);
        assert_eq!(ip.source, ipv4_mapped([198, 18, 1, 10]));
        assert_eq!(ip.destination, ipv4_mapped([198, 18, 1, 1]));
        let udp = udp_header(packet, ip.transport_offset).unwrap();
        assert_eq!(
            (udp.source_port, udp.destination_port, udp.payload_length),
            (51820, 51821, 148)
        );
        let payload = ip.transport_offset + UDP_HEADER_LEN;
        let kind = MessageType::classify(packet.read::<4>(payload).unwrap(), udp.payload_length);
        assert_eq!(kind, MessageType::HandshakeInitiation);
        let indices = session_indices(packet, payload, kind).unwrap();
        assert_eq!(indices, SessionIndices { sender: 0x1122_3344, receiver: 0 });
    }

    #[test]
    fn ipv4_fragments_first_and_later() {
        let frame = ipv4(IPPROTO_UDP, &udp(51820, 51820, &message(4, 1472)), 0x1234, 0x2000);
        assert_eq!(ip_header(&frame[..], 0).unwrap().fragment, Fragment::First { id: 0x1234 });
        let frame = ipv4(IPPROTO_UDP, &[0u8; 100], 0x1234, 185);
        assert_eq!(ip_header(&frame[..], 0).unwrap().fragment, Fragment::Later { id: 0x1234 });
    }

    #[test]
    fn ipv6_fragment_header_and_vlan() {
        let mut frame = ethernet(ETHERTYPE_VLAN);
        frame.extend_from_slice(&[0, 5]);
        frame.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let datagram = udp(51820, 40000, &message(2, 92));
        let mut ipv6 = std::vec![0x60, 0, 0, 0];
        ipv6.extend_from_slice(&u16::try_from(8 + datagram.len()).unwrap().to_be_bytes());
        ipv6.extend_from_slice(&[IPPROTO_FRAGMENT, 64]);
        ipv6.extend_from_slice(&[0xfd, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ipv6.extend_from_slice(&[0xfd, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        // Fragment header: next header UDP, offset 0, M set, id 0xdeadbeef.
        ipv6.extend_from_slice(&[IPPROTO_UDP, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef]);
        ipv6.extend(datagram);
        frame.extend(ipv6);
        let packet: &[u8] = &frame;
        let offset = network_offset(packet).unwrap();
        assert_eq!(offset, 18);
        let ip = ip_header(packet, offset).unwrap();
        assert_eq!(ip.protocol, IPPROTO_UDP);
        assert!(!ip.ipv4);
        assert_eq!(ip.fragment, Fragment::First { id: 0xdead_beef });
        let udp = udp_header(packet, ip.transport_offset).unwrap();
        assert_eq!(udp.payload_length, 92);
        let kind = MessageType::classify(packet.read::<4>(ip.transport_offset + 8).unwrap(), 92);
        assert_eq!(kind, MessageType::HandshakeResponse);
        let indices = session_indices(packet, ip.transport_offset + 8, kind).unwrap();
        assert_eq!(indices, SessionIndices { sender: 0x1122_3344, receiver: 0x5566_7788 });
    }

    #[test]
    fn icmp_fragmentation_needed_quotes_the_datagram() {
        let quoted = ipv4(IPPROTO_UDP, &udp(51820, 51821, &message(4, 64))[..8], 9, 0x4000);
        let mut icmp = std::vec![3, 4, 0, 0, 0, 0, 0x05, 0x00];
        icmp.extend(quoted);
        let frame = ipv4(IPPROTO_ICMP, &icmp, 1, 0);
        let ip = ip_header(&frame[..], 0).unwrap();
        let report = icmp_error(&frame[..], ip.transport_offset, ip.protocol).unwrap();
        assert_eq!(report.mtu, Some(1280));
        assert!(report.ipv4);
        assert_eq!((report.source_port, report.destination_port), (51820, 51821));
        assert_eq!(report.destination, ipv4_mapped([198, 18, 1, 1]));
        // An echo reply is not a too-big message.
        let mut echo = icmp_echo();
        echo.truncate(8);
        assert_eq!(icmp_error(&echo[..], 0, IPPROTO_ICMP), None);
    }

    #[test]
    fn icmp_port_unreachable_quotes_the_datagram_without_an_mtu() {
        let quoted = ipv4(IPPROTO_UDP, &udp(51820, 51821, &message(1, 148))[..8], 9, 0x4000);
        let mut icmp = std::vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend(quoted);
        let frame = ipv4(IPPROTO_ICMP, &icmp, 1, 0);
        let ip = ip_header(&frame[..], 0).unwrap();
        let report = icmp_error(&frame[..], ip.transport_offset, ip.protocol).unwrap();
        assert_eq!(report.mtu, None);
        assert_eq!((report.source_port, report.destination_port), (51820, 51821));
        // ICMP time exceeded (type 11) is neither.
        let mut exceeded = icmp.clone();
        exceeded[0] = 11;
        let frame = ipv4(IPPROTO_ICMP, &exceeded, 1, 0);
        assert_eq!(icmp_error(&frame[..], ip.transport_offset, IPPROTO_ICMP), None);
    }

    fn icmp_echo() -> Vec<u8> {
        std::vec![0, 0, 0, 0, 0, 1, 0, 1]
    }

    #[test]
    fn non_ip_and_short_packets_are_rejected() {
        assert_eq!(network_offset(&ethernet(0x0806)[..]), None);
        assert_eq!(network_offset(&[0u8; 10][..]), None);
        assert_eq!(ip_header(&[0x45u8, 0, 0][..], 0), None);
        assert_eq!(udp_header(&[0u8; 7][..], 0), None);
    }
}
