//! Latency measured from the packets themselves: the packets that open a round trip (a TCP
//! SYN, an ICMP echo request, a WireGuard handshake initiation) and those that close it, the
//! keys that match one to the other, and the log2 buckets the kernel counts them in.

use crate::{maps::ipv4_mapped, packet::Direction, packet::Packet};

/// What a latency sample measures. The discriminants index the kernel's histograms.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LatencyKind {
    /// This host's handshake initiation to the peer's response (underlay).
    HandshakeInitiator = 0,
    /// The peer's initiation to this host's response: how long this host takes to answer.
    HandshakeResponder = 1,
    /// A TCP SYN into the tunnel to the peer's SYN-ACK: the round trip through the tunnel.
    TcpRoundTrip = 2,
    /// A SYN out of the tunnel to this host's SYN-ACK: how long this host takes to answer.
    TcpResponse = 3,
    /// An ICMP echo request into the tunnel to the peer's reply.
    IcmpRoundTrip = 4,
}

impl LatencyKind {
    /// Every kind, in discriminant order.
    pub const ALL: [Self; 5] = [
        Self::HandshakeInitiator,
        Self::HandshakeResponder,
        Self::TcpRoundTrip,
        Self::TcpResponse,
        Self::IcmpRoundTrip,
    ];

    /// Its name in wgtel's API and exports.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HandshakeInitiator => "handshake_initiator",
            Self::HandshakeResponder => "handshake_responder",
            Self::TcpRoundTrip => "tcp_round_trip",
            Self::TcpResponse => "tcp_response",
            Self::IcmpRoundTrip => "icmp_round_trip",
        }
    }

    /// The kind with discriminant `value`.
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            0 => Some(Self::HandshakeInitiator),
            1 => Some(Self::HandshakeResponder),
            2 => Some(Self::TcpRoundTrip),
            3 => Some(Self::TcpResponse),
            4 => Some(Self::IcmpRoundTrip),
            _ => None,
        }
    }
}

/// Histogram buckets: bucket `b` counts samples of `[2^b, 2^(b+1))` nanoseconds, so 1 ms
/// (bucket 19) and 2 ms (bucket 20) never share one; OTLP's exponential histogram at scale 0
/// has the same boundaries.
pub const LATENCY_BUCKETS: u32 = 40;

/// The bucket index of the histogram key that holds the sum of the samples, in nanoseconds.
pub const SUM_BUCKET: u32 = 255;

/// The log2 bucket of `nanoseconds` (samples of 0 ns go to bucket 0; anything from 2^39 ns,
/// about 9 minutes, to the last one).
#[inline(always)]
pub const fn bucket(nanoseconds: u64) -> u32 {
    let log2 = 63 - (nanoseconds | 1).leading_zeros();
    if log2 < LATENCY_BUCKETS { log2 } else { LATENCY_BUCKETS - 1 }
}

/// A packet that opens or closes a round trip inside the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// TCP SYN without ACK: opens, answered by `ack = seq + 1`.
    Syn {
        /// Its sequence number.
        seq: u32,
    },
    /// TCP SYN-ACK: closes the SYN whose `seq + 1` it acknowledges.
    SynAck {
        /// Its acknowledgement number.
        ack: u32,
    },
    /// ICMP or ICMPv6 echo request: opens.
    EchoRequest {
        /// Identifier.
        id: u16,
        /// Sequence number.
        seq: u16,
    },
    /// ICMP or ICMPv6 echo reply: closes the request with the same identifier and sequence.
    EchoReply {
        /// Identifier.
        id: u16,
        /// Sequence number.
        seq: u16,
    },
}

/// A probe packet with its addresses and ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InnerProbe {
    /// What it is.
    pub probe: Probe,
    /// Source address, IPv4-mapped for IPv4.
    pub source: [u8; 16],
    /// Destination address, IPv4-mapped for IPv4.
    pub destination: [u8; 16],
    /// TCP source port; 0 for ICMP.
    pub source_port: u16,
    /// TCP destination port; 0 for ICMP.
    pub destination_port: u16,
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The probe in an inner packet (IP header at offset 0, as on a WireGuard interface), or
/// `None` for every other packet: the common case, decided from the first bytes.
#[inline(always)]
pub fn inner_probe<P: Packet + ?Sized>(packet: &P) -> Option<InnerProbe> {
    // The fixed IP header in one read: every read is a bounds check on the tc hot path.
    let [first] = packet.read::<1>(0)?;
    let (protocol, transport, source, destination) = match first >> 4 {
        4 => {
            let header = packet.read::<20>(0)?;
            if u16::from_be_bytes([header[6], header[7]]) & 0x1fff != 0 {
                return None;
            }
            let source = ipv4_mapped([header[12], header[13], header[14], header[15]]);
            let destination = ipv4_mapped([header[16], header[17], header[18], header[19]]);
            (header[9], usize::from(first & 0x0f) * 4, source, destination)
        }
        6 => {
            let header = packet.read::<40>(0)?;
            let mut source = [0u8; 16];
            source.copy_from_slice(&header[8..24]);
            let mut destination = [0u8; 16];
            destination.copy_from_slice(&header[24..40]);
            (header[6], 40, source, destination)
        }
        _ => return None,
    };
    if protocol != 6 && protocol != 1 && protocol != 58 {
        return None;
    }
    let probe = match protocol {
        6 => {
            let header = packet.read::<14>(transport)?;
            let flags = header[13];
            let seq = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
            let ack = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
            let ports = (
                u16::from_be_bytes([header[0], header[1]]),
                u16::from_be_bytes([header[2], header[3]]),
            );
            let probe = match (flags & TCP_SYN != 0, flags & TCP_ACK != 0) {
                (true, false) => Probe::Syn { seq },
                (true, true) => Probe::SynAck { ack },
                _ => return None,
            };
            return Some(InnerProbe {
                probe,
                source,
                destination,
                source_port: ports.0,
                destination_port: ports.1,
            });
        }
        1 | 58 => {
            let header = packet.read::<8>(transport)?;
            let id = u16::from_be_bytes([header[4], header[5]]);
            let seq = u16::from_be_bytes([header[6], header[7]]);
            match (protocol, header[0]) {
                (1, 8) | (58, 128) => Probe::EchoRequest { id, seq },
                (1, 0) | (58, 129) => Probe::EchoReply { id, seq },
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(InnerProbe { probe, source, destination, source_port: 0, destination_port: 0 })
}

/// Key of a round trip waiting for its answer, the same for the packet that opens it and
/// the one that closes it: addresses and ports as seen from this host (local, remote).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PendingProbe {
    /// The WireGuard interface.
    pub ifindex: u32,
    /// 6 for TCP, 1 for ICMP echo (both families).
    pub protocol: u32,
    /// This host's inner address.
    pub local: [u8; 16],
    /// The far end's inner address.
    pub remote: [u8; 16],
    /// This host's TCP port, or the echo identifier.
    pub local_port: u32,
    /// The far end's TCP port; 0 for echo.
    pub remote_port: u32,
    /// The acknowledgement number that closes a SYN (`seq + 1`), or the echo sequence.
    pub sequence: u32,
}

/// What a pending round trip remembers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingStart {
    /// `bpf_ktime_get_ns` when it opened.
    pub started_ns: u64,
    /// Peer id of the far end.
    pub peer: u32,
    /// `LatencyKind` of the sample it becomes.
    pub kind: u32,
}

/// Whether `probe` crossing the interface in `direction` opens a round trip (and what it
/// measures) or closes one; and its pending key on interface `ifindex`.
#[inline(always)]
pub fn pending_key(
    probe: &InnerProbe,
    direction: Direction,
    ifindex: u32,
) -> (Option<LatencyKind>, PendingProbe) {
    // This host is the source of what it sends and the destination of what it receives.
    let (local, remote, local_port, remote_port) = match direction {
        Direction::Transmit => {
            (probe.source, probe.destination, probe.source_port, probe.destination_port)
        }
        Direction::Receive => {
            (probe.destination, probe.source, probe.destination_port, probe.source_port)
        }
    };
    let (protocol, local_port, sequence, opens) = match (probe.probe, direction) {
        (Probe::Syn { seq }, Direction::Transmit) => {
            (6, local_port, seq.wrapping_add(1), Some(LatencyKind::TcpRoundTrip))
        }
        (Probe::Syn { seq }, Direction::Receive) => {
            (6, local_port, seq.wrapping_add(1), Some(LatencyKind::TcpResponse))
        }
        (Probe::SynAck { ack }, _) => (6, local_port, ack, None),
        (Probe::EchoRequest { id, seq }, Direction::Transmit) => {
            (1, id, u32::from(seq), Some(LatencyKind::IcmpRoundTrip))
        }
        // An echo request to this host is answered by its kernel at once: not measured.
        (Probe::EchoRequest { id, seq }, Direction::Receive) => (1, id, u32::from(seq), None),
        (Probe::EchoReply { id, seq }, _) => (1, id, u32::from(seq), None),
    };
    let key = PendingProbe {
        ifindex,
        protocol,
        local,
        remote,
        local_port: u32::from(local_port),
        remote_port: if protocol == 1 { 0 } else { u32::from(remote_port) },
        sequence,
    };
    (opens, key)
}

/// Whether `probe` closes a round trip when it crosses in `direction`: an answer goes the
/// other way from the packet that opened the round trip.
#[inline(always)]
pub fn closes(probe: &InnerProbe, direction: Direction) -> bool {
    match probe.probe {
        Probe::SynAck { .. } => true,
        Probe::EchoReply { .. } => direction == Direction::Receive,
        Probe::Syn { .. } | Probe::EchoRequest { .. } => false,
    }
}

/// Key of a histogram bucket: one peer, one kind, one bucket (or [`SUM_BUCKET`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LatencyKey {
    /// Peer id.
    pub peer: u32,
    /// `LatencyKind`.
    pub kind: u32,
    /// Bucket index, or [`SUM_BUCKET`].
    pub bucket: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_tcp(
        flags: u8,
        seq: u32,
        ack: u32,
        source: [u8; 4],
        destination: [u8; 4],
        ports: (u16, u16),
    ) -> [u8; 40] {
        let mut packet = [0u8; 40];
        packet[0] = 0x45;
        packet[9] = 6;
        packet[12..16].copy_from_slice(&source);
        packet[16..20].copy_from_slice(&destination);
        packet[20..22].copy_from_slice(&ports.0.to_be_bytes());
        packet[22..24].copy_from_slice(&ports.1.to_be_bytes());
        packet[24..28].copy_from_slice(&seq.to_be_bytes());
        packet[28..32].copy_from_slice(&ack.to_be_bytes());
        packet[33] = flags;
        packet
    }

    #[test]
    fn buckets_tell_one_millisecond_from_two() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(1_000_000), 19);
        assert_eq!(bucket(2_000_000), 20);
        assert_eq!(bucket(20_000_000), 24);
        assert_eq!(bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn a_syn_out_and_its_syn_ack_back_share_a_key() {
        let gateway = [198, 19, 1, 1];
        let peer = [198, 19, 1, 10];
        let syn = ipv4_tcp(TCP_SYN, 1000, 0, gateway, peer, (40000, 5201));
        let syn_ack = ipv4_tcp(TCP_SYN | TCP_ACK, 7, 1001, peer, gateway, (5201, 40000));
        let out = inner_probe(&syn[..]).expect("a SYN");
        let back = inner_probe(&syn_ack[..]).expect("a SYN-ACK");
        let (opens, open_key) = pending_key(&out, Direction::Transmit, 3);
        let (none, close_key) = pending_key(&back, Direction::Receive, 3);
        assert_eq!(opens, Some(LatencyKind::TcpRoundTrip));
        assert_eq!(none, None);
        assert!(closes(&back, Direction::Receive));
        assert_eq!(open_key, close_key);
        // A plain ACK is no probe.
        assert_eq!(inner_probe(&ipv4_tcp(TCP_ACK, 1, 1, gateway, peer, (1, 2))[..]), None);
    }

    #[test]
    fn an_echo_request_out_and_its_reply_back_share_a_key() {
        let mut request = [0u8; 28];
        request[0] = 0x45;
        request[9] = 1;
        request[12..16].copy_from_slice(&[198, 19, 1, 1]);
        request[16..20].copy_from_slice(&[198, 19, 1, 10]);
        request[20] = 8;
        request[24..26].copy_from_slice(&77u16.to_be_bytes());
        request[26..28].copy_from_slice(&3u16.to_be_bytes());
        let mut reply = request;
        reply[12..16].copy_from_slice(&[198, 19, 1, 10]);
        reply[16..20].copy_from_slice(&[198, 19, 1, 1]);
        reply[20] = 0;
        let (opens, open_key) =
            pending_key(&inner_probe(&request[..]).expect("a request"), Direction::Transmit, 3);
        let reply = inner_probe(&reply[..]).expect("a reply");
        let (_, close_key) = pending_key(&reply, Direction::Receive, 3);
        assert_eq!(opens, Some(LatencyKind::IcmpRoundTrip));
        assert!(closes(&reply, Direction::Receive));
        assert!(!closes(&reply, Direction::Transmit));
        assert_eq!(open_key, close_key);
    }

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<PendingProbe>(), 52);
        assert_eq!(size_of::<PendingStart>(), 16);
        assert_eq!(size_of::<LatencyKey>(), 12);
    }
}
