//! Attaches to: every watched WireGuard interface, tcx (kernel 6.6+) or clsact ingress
//! (`tunnel_ingress`) and egress (`tunnel_egress`).
//!
//! Ties each inner packet to its peer by longest-prefix match over the interface's AllowedIPs
//! and adds it to that peer's per-CPU counters; a packet routed into the tunnel that no peer
//! accepts is a `no_peer` drop of the interface. Nothing but map lookups and additions: the
//! programs never write to the packet and always pass it on.

use aya_ebpf::{macros::classifier, programs::TcContext};
use collector_common::{
    latency::{closes, inner_probe, pending_key},
    maps::{InnerAddress, MapId, PeerAddress},
    packet::{Direction, gso_segments, segment_headers_length, tunnel_peer_address},
};

use crate::{
    latency::{record, start},
    map_errors::map_error,
    maps::{INTERFACE_TRAFFIC, NO_PEER_DESTINATIONS, PEER_COUNTERS, PENDING_PROBES},
    peers::peer_of,
    skb::{PASS_ON, Skb},
};

#[classifier]
pub fn tunnel_ingress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Receive);
    PASS_ON
}

#[classifier]
pub fn tunnel_egress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Transmit);
    PASS_ON
}

#[inline(always)]
fn count(ctx: &TcContext, direction: Direction) {
    let skb = Skb::new(ctx);
    // SAFETY: the context pointer is the kernel's `__sk_buff` for this invocation.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // A GSO packet (TCP through a TUN device with offloads, or the stack's TSO into a kernel
    // WireGuard interface) stands for several packets on the wire, each with its own copy of
    // the headers.
    let (gso_size, gso_segs) = skb.gso();
    let (packets, bytes) = if gso_size == 0 {
        (1, u64::from(skb.len()))
    } else {
        let headers = segment_headers_length(&skb).unwrap_or(0) as u32;
        let (segments, bytes) = gso_segments(skb.len(), headers, gso_size, gso_segs);
        (u64::from(segments), bytes)
    };
    let Some(address) = tunnel_peer_address(&skb, direction) else {
        crate::debug::no_ip_header(ctx, ifindex, skb.len());
        if let Some(counters) = INTERFACE_TRAFFIC.get_ptr_mut(ifindex) {
            // SAFETY: per-CPU value of this CPU; BPF programs are not preempted on it.
            unsafe { (*counters).not_ip_packets += packets };
        }
        return;
    };
    if let Some(peer_id) = peer_of(ifindex, address) {
        time_round_trips(ctx, direction, ifindex, peer_id);
        if let Some(counters) = PEER_COUNTERS.get_ptr_mut(peer_id) {
            // SAFETY: as above.
            let counters = unsafe { &mut (*counters).traffic };
            match direction {
                Direction::Receive => {
                    counters.rx_packets += packets;
                    counters.rx_bytes += bytes;
                }
                Direction::Transmit => {
                    counters.tx_packets += packets;
                    counters.tx_bytes += bytes;
                }
            }
        }
    } else if let Some(counters) = INTERFACE_TRAFFIC.get_ptr_mut(ifindex) {
        // SAFETY: as above.
        let counters = unsafe { &mut *counters };
        match direction {
            Direction::Receive => counters.unknown_source_packets += packets,
            Direction::Transmit => {
                counters.no_peer_packets += packets;
                counters.no_peer_bytes += bytes;
                count_destination(ifindex, address, packets);
            }
        }
    }
}

/// Adds `packets` to the no-peer count of `destination` on `ifindex`. The map is an LRU: a
/// full one forgets the destination seen least recently, so an insert does not fail for room.
#[inline(always)]
fn count_destination(ifindex: u32, destination: InnerAddress, packets: u64) {
    let key = PeerAddress::new(ifindex, destination);
    match NO_PEER_DESTINATIONS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value of this CPU; BPF programs are not preempted on it.
        Some(count) => unsafe { *count += packets },
        None => {
            let _evicts_the_oldest = NO_PEER_DESTINATIONS.insert(&key, &packets, 0);
        }
    }
}

/// Opens a round trip on a TCP SYN or an echo request, closes one on a SYN-ACK or an echo
/// reply; every other packet leaves after reading its transport header's first bytes.
#[inline(always)]
fn time_round_trips(ctx: &TcContext, direction: Direction, ifindex: u32, peer: u32) {
    let Some(probe) = inner_probe(&Skb::new(ctx)) else { return };
    let (opens, key) = pending_key(&probe, direction, ifindex);
    if closes(&probe, direction) {
        // SAFETY: the value is copied out at once.
        if let Some(started) = unsafe { PENDING_PROBES.get(&key) }.copied() {
            record(&started);
            let _gone = PENDING_PROBES.remove(&key);
        }
    } else if let Some(kind) = opens {
        if PENDING_PROBES.insert(&key, &start(peer, kind as u32), 0).is_err() {
            map_error(MapId::PendingProbes);
        }
    }
}
