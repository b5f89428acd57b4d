//! ICMP echo over IPv4, built and read by hand: the probe sends these through the tunnel
//! (there is no TUN device and no kernel stack on the probe's side to do it).

use std::net::Ipv4Addr;

/// Bytes of the IPv4 header the probe writes (no options).
const IPV4_HEADER: usize = 20;
/// Bytes of the ICMP echo header.
const ICMP_HEADER: usize = 8;
/// IP protocol number of ICMP.
const PROTOCOL_ICMP: u8 = 1;
/// ICMP type of an echo request.
const ECHO_REQUEST: u8 = 8;
/// ICMP type of an echo reply.
const ECHO_REPLY: u8 = 0;
/// TTL of the requests: the gateway answers them itself or forwards them a few hops.
const TTL: u8 = 64;

/// One echo: who asks whom, and which request it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echo {
    /// The probe's tunnel address (the monitoring peer's AllowedIPs must cover it).
    pub source: Ipv4Addr,
    /// The address asked to answer.
    pub target: Ipv4Addr,
    /// ICMP identifier.
    pub id: u16,
    /// ICMP sequence number.
    pub seq: u16,
}

/// The RFC 1071 Internet checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// An IPv4 packet carrying the echo request `echo` with `payload`.
pub fn echo_request(echo: Echo, payload: &[u8]) -> Vec<u8> {
    let total = IPV4_HEADER + ICMP_HEADER + payload.len();
    let mut packet = vec![0u8; total];
    let total = u16::try_from(total).unwrap_or(u16::MAX);
    packet[0] = 0x45; // version 4, header of 5 words
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    packet[4..6].copy_from_slice(&echo.seq.to_be_bytes()); // identification
    packet[6] = 0x40; // don't fragment
    packet[8] = TTL;
    packet[9] = PROTOCOL_ICMP;
    packet[12..16].copy_from_slice(&echo.source.octets());
    packet[16..20].copy_from_slice(&echo.target.octets());
    let header_sum = checksum(&packet[..IPV4_HEADER]);
    packet[10..12].copy_from_slice(&header_sum.to_be_bytes());
    let icmp = &mut packet[IPV4_HEADER..];
    icmp[0] = ECHO_REQUEST;
    icmp[4..6].copy_from_slice(&echo.id.to_be_bytes());
    icmp[6..8].copy_from_slice(&echo.seq.to_be_bytes());
    icmp[ICMP_HEADER..].copy_from_slice(payload);
    let icmp_sum = checksum(icmp);
    icmp[2..4].copy_from_slice(&icmp_sum.to_be_bytes());
    packet
}

/// The echo `packet` answers, when it is an intact IPv4 ICMP echo reply (its `source` is the
/// address that answered, its `target` the address the reply went to); `None` for anything
/// else.
pub fn echo_reply(packet: &[u8]) -> Option<Echo> {
    let version_and_length = *packet.first()?;
    let header = usize::from(version_and_length & 0x0f) * 4;
    if version_and_length >> 4 != 4 || header < IPV4_HEADER || packet.len() < header {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if packet[9] != PROTOCOL_ICMP || total < header + ICMP_HEADER || total > packet.len() {
        return None;
    }
    if checksum(&packet[..header]) != 0 {
        return None;
    }
    let icmp = &packet[header..total];
    if icmp[0] != ECHO_REPLY || icmp[1] != 0 || checksum(icmp) != 0 {
        return None;
    }
    let address =
        |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    Some(Echo {
        source: address(12),
        target: address(16),
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
    })
}

/// The reply a stack makes of the echo request `request`: addresses swapped, type 0,
/// checksums redone (the tests' gateway stand-in answers with it).
#[cfg(test)]
pub(crate) fn reply_to(request: &[u8]) -> Option<Vec<u8>> {
    if request.len() < IPV4_HEADER + ICMP_HEADER || request[IPV4_HEADER] != ECHO_REQUEST {
        return None;
    }
    let mut reply = request.to_vec();
    reply[12..16].copy_from_slice(&request[16..20]);
    reply[16..20].copy_from_slice(&request[12..16]);
    reply[10..12].fill(0);
    let header_sum = checksum(&reply[..IPV4_HEADER]);
    reply[10..12].copy_from_slice(&header_sum.to_be_bytes());
    reply[IPV4_HEADER] = ECHO_REPLY;
    reply[IPV4_HEADER + 2..IPV4_HEADER + 4].fill(0);
    let icmp_sum = checksum(&reply[IPV4_HEADER..]);
    reply[IPV4_HEADER + 2..IPV4_HEADER + 4].copy_from_slice(&icmp_sum.to_be_bytes());
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECHO: Echo = Echo {
        source: Ipv4Addr::new(198, 19, 3, 60),
        target: Ipv4Addr::new(198, 19, 3, 1),
        id: 0x1234,
        seq: 7,
    };

    #[test]
    fn a_request_is_the_packet_ping_would_send() {
        let packet = echo_request(ECHO, b"wgtel");
        // Header and ICMP bytes written out by hand; the two checksums computed apart from
        // this code (a few lines of Python over the same bytes).
        let expected: [u8; 33] = [
            0x45, 0x00, 0x00, 0x21, 0x00, 0x07, 0x40, 0x00, 0x40, 0x01, 0xa8, 0x71, 198, 19, 3, 60,
            198, 19, 3, 1, // IPv4
            0x08, 0x00, 0x8d, 0xf7, 0x12, 0x34, 0x00, 0x07, b'w', b'g', b't', b'e', b'l',
        ];
        assert_eq!(packet, expected);
        assert_eq!(checksum(&packet[..20]), 0);
        assert_eq!(checksum(&packet[20..]), 0);
    }

    #[test]
    fn a_reply_names_its_request_and_anything_else_is_refused() {
        let request = echo_request(ECHO, b"payload");
        let reply = reply_to(&request).expect("a request");
        let answered =
            Echo { source: ECHO.target, target: ECHO.source, id: ECHO.id, seq: ECHO.seq };
        assert_eq!(echo_reply(&reply), Some(answered));
        assert_eq!(echo_reply(&request), None, "a request is not a reply");
        let mut corrupt = reply.clone();
        corrupt[30] ^= 1;
        assert_eq!(echo_reply(&corrupt), None, "a bad ICMP checksum");
        assert_eq!(echo_reply(&reply[..25]), None, "a truncated packet");
        let mut v6 = reply;
        v6[0] = 0x60;
        assert_eq!(echo_reply(&v6), None, "not IPv4");
        assert_eq!(echo_reply(&[]), None);
    }
}
