//! Entry points of the cargo-fuzz targets in `fuzz/`: each takes the fuzzer's bytes and runs
//! one reader over them the way the daemon does, keeping its result alive with
//! [`black_box`] so the optimizer cannot drop the code under test. Not an API: the internals
//! stay private, and this module only lends them to the fuzzer (and to the unit test that runs
//! every committed corpus input through them).
//!
//! The readers must never panic, whatever the bytes: an `Err` is a correct answer to garbage.

use std::{hint::black_box, time::SystemTime};

use collector_common::{
    latency::{closes, inner_probe, pending_key},
    packet::{Direction, gso_segments, segment_headers_length, tunnel_peer_address},
    underlay::{
        Fragment, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP, MessageType, UDP_HEADER_LEN,
        UdpMessages, icmp_error, ip_header, network_offset, session_indices, udp_header,
    },
};

use crate::{
    config::{self, PeerNames},
    wg::{Implementation, netlink, uapi},
};

/// The fixed "now" of the UAPI target (boringtun's handshake ages count back from it).
const NOW_SECONDS: u64 = 1_700_000_000;

/// The UAPI `get=1` reply parser; the first byte picks the implementation that answers.
pub fn uapi_get_reply(data: &[u8]) {
    let Some((&selector, reply)) = data.split_first() else { return };
    let Ok(reply) = std::str::from_utf8(reply) else { return };
    let process = match selector % 3 {
        0 => Implementation::WireguardGo,
        1 => Implementation::Boringtun,
        _ => Implementation::Userspace,
    };
    let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(NOW_SECONDS);
    drop(black_box(uapi::parse_get_reply("wg0", reply, process, now)));
}

/// One datagram of a `WG_CMD_GET_DEVICE` dump: secrets wiped and checked as received, decoded
/// message by message, merged into the interface state.
pub fn netlink_dump(data: &[u8]) {
    let mut datagram = data.to_vec();
    drop(black_box(netlink::parse_device_datagram("wg0", &mut datagram)));
}

/// The wg-quick names file reader.
pub fn names_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut names = PeerNames::default();
    black_box(names.parse_wg_quick(text).is_ok());
    black_box(names);
}

/// The TOML configuration reader, with every setting checked as `wgtel run --config` does
/// (names files named in it are not opened: the fuzzer's paths are not files to read).
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    drop(black_box(config::from_toml_text(text)));
}

/// The first byte of a packet input: which way it crosses, whether the IP header comes first
/// (a layer-3 device) and, in the next four bytes, the skb's `gso_size` and `gso_segs`.
struct PacketInput<'a> {
    direction: Direction,
    layer3: bool,
    gso_size: u16,
    gso_segs: u16,
    packet: &'a [u8],
}

impl<'a> PacketInput<'a> {
    fn split(data: &'a [u8]) -> Option<Self> {
        let (header, packet) = data.split_at_checked(5)?;
        let [flags, size_high, size_low, segs_high, segs_low] = header else { return None };
        Some(Self {
            direction: if flags & 1 == 0 { Direction::Receive } else { Direction::Transmit },
            layer3: flags & 2 != 0,
            gso_size: u16::from_be_bytes([*size_high, *size_low]),
            gso_segs: u16::from_be_bytes([*segs_high, *segs_low]),
            packet,
        })
    }
}

/// collector-common's underlay parsers, chained as the underlay tc program chains them:
/// Ethernet (or none), IP with fragments, UDP and the WireGuard messages in it (GSO
/// segments included), or the ICMP error (too big, unreachable) about a datagram.
pub fn underlay_packet(data: &[u8]) {
    let Some(input) = PacketInput::split(data) else { return };
    let packet = input.packet;
    let offset = if input.layer3 { Some(0) } else { network_offset(packet) };
    let Some(ip) = offset.and_then(|offset| ip_header(packet, offset)) else { return };
    black_box(ip);
    if matches!(ip.fragment, Fragment::Later { .. }) {
        return;
    }
    match ip.protocol {
        IPPROTO_UDP => {
            let Some(udp) = udp_header(packet, ip.transport_offset) else { return };
            let payload = ip.transport_offset + UDP_HEADER_LEN;
            let messages = if input.gso_size == 0 {
                UdpMessages::new(udp.payload_length, 0, 0)
            } else {
                let length = packet.len().saturating_sub(payload);
                UdpMessages::new(length, input.gso_size.into(), input.gso_segs.into())
            };
            let kind = packet
                .get(payload..payload.saturating_add(4))
                .and_then(|header| header.try_into().ok())
                .map_or(MessageType::Invalid, |header| {
                    MessageType::classify(header, messages.first_length())
                });
            black_box((kind.as_str(), session_indices(packet, payload, kind)));
            let last = payload.checked_add(messages.last_offset).and_then(|at| {
                packet.get(at..at.checked_add(4)?).and_then(|header| header.try_into().ok())
            });
            black_box(last.map(|header| MessageType::classify(header, messages.last_length)));
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            black_box(icmp_error(packet, ip.transport_offset, ip.protocol));
        }
        _ => {}
    }
}

/// collector-common's tunnel parsers, as the tunnel tc program runs them: the segments and
/// bytes of a GSO packet, the peer address, and the latency probe with its pending key.
pub fn tunnel_packet(data: &[u8]) {
    let Some(input) = PacketInput::split(data) else { return };
    let packet = input.packet;
    let length = u32::try_from(packet.len()).unwrap_or(u32::MAX);
    let headers = segment_headers_length(packet).unwrap_or(0);
    let headers = u32::try_from(headers).unwrap_or(u32::MAX);
    black_box(gso_segments(length, headers, input.gso_size.into(), input.gso_segs.into()));
    black_box(tunnel_peer_address(packet, input.direction));
    if let Some(probe) = inner_probe(packet) {
        black_box((pending_key(&probe, input.direction, 7), closes(&probe, input.direction)));
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use super::*;

    /// A target's entry point.
    type EntryPoint = fn(&[u8]);

    /// Every committed corpus input of every target runs through its entry point without a
    /// panic: the crash inputs kept there stay fixed.
    #[test]
    fn every_corpus_input_runs() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let targets: [(&str, EntryPoint); 6] = [
            ("uapi_get_reply", uapi_get_reply),
            ("netlink_dump", netlink_dump),
            ("underlay_packet", underlay_packet),
            ("tunnel_packet", tunnel_packet),
            ("names_file", names_file),
            ("config_toml", config_toml),
        ];
        for (target, run) in targets {
            let dir = corpus.join(target);
            let mut inputs = 0;
            for entry in fs::read_dir(&dir).unwrap_or_else(|error| panic!("{dir:?}: {error}")) {
                let path = entry.expect("corpus entry").path();
                run(&fs::read(&path).unwrap_or_else(|error| panic!("{path:?}: {error}")));
                inputs += 1;
            }
            assert!(inputs >= 2, "{target}: {inputs} corpus inputs, expected at least 2");
        }
    }
}
