//! What happens to a peer's packets: `firewall_drops`, `inner_drops`, `mtu_fragmentation`,
//! `high_loss`.

use super::{Finding, PeerSample, SpanSample, Window, drop_count, history::Counter, seconds};
use crate::model::{Code, PeerSnapshot, PeerState};

/// The kernel's drop reason for a packet a netfilter rule dropped.
pub(super) const NETFILTER_DROP: &str = "NETFILTER_DROP";

/// `high_loss` looks back at least this far: a round trip is lost only after 3 s unanswered,
/// so a shorter window would see a burst of losses come and go.
pub(super) const LOSS_WINDOW_SECONDS: f64 = 10.0;

/// Fewest lost round trips in the window for `high_loss`.
const LOSS_MIN: u64 = 3;

/// `high_loss` holds from this share of lost round trips on (percent).
const LOSS_PERCENT: u64 = 20;

/// What WireGuard adds to an inner packet on an IPv4 underlay: IPv4 20, UDP 8, the transport
/// header 16 and the tag 16.
const OVERHEAD_V4: u32 = 60;
/// ... on an IPv6 underlay (IPv6 40).
const OVERHEAD_V6: u32 = 80;

/// `firewall_drops`: the kernel dropped packets of the peer with reason `NETFILTER_DROP`.
///
/// Signals: the `skb:kfree_skb` drops tied to the peer (by the inner address WireGuard goes
/// by), reason `NETFILTER_DROP`, grown over the window. Any growth holds: a firewall rule
/// that drops tunnel traffic is never an accident worth hiding.
pub(super) fn firewall_drops(
    peer: &PeerSnapshot,
    window: &Window<'_, PeerSample>,
) -> Option<Finding> {
    let dropped = window.growth(|s| s.netfilter_drops);
    if dropped == 0 {
        return None;
    }
    let total = drop_count(peer, NETFILTER_DROP);
    let evidence = format!(
        "{dropped} of the peer's packets dropped by a firewall rule (kernel drop reason \
         {NETFILTER_DROP}) in the last {}, {total} since wgtel started",
        seconds(window.seconds)
    );
    let counters = [("drops.NETFILTER_DROP", dropped), ("drops.NETFILTER_DROP.total", total)];
    Some(Finding::new(Code::FirewallDrops, evidence, &counters))
}

/// Fewest transport data messages lost inside WireGuard in the window for `inner_drops`.
const INNER_DROPS_MIN: u64 = 3;

/// ... and at least this share of the messages received in the window (per mille): the
/// messages decrypted but not yet delivered when the counters are read differ from one
/// snapshot to the next under bulk traffic, by far less than this.
const INNER_DROPS_PER_MILLE: u64 = 10;

/// `inner_drops`: packet conservation on receive. Transport data messages from the peer that
/// reached this host's underlay and never came out of the tunnel were dropped by WireGuard.
///
/// Signals: the underlay programs' `transport_data` received from the peer (keepalives are
/// counted apart: they carry no packet) and the tunnel ingress program's packets from the
/// peer. Messages still being decrypted when the counters are read are not lost, and under
/// bulk traffic there are dozens: so the rule counts only the messages received up to the
/// snapshot before the newest (`previous`), which had a whole interval to come out, against
/// every packet that came out up to the newest. That difference is a lower bound of what was
/// lost (a message takes far less than an interval through WireGuard). Less what the
/// interface's UDP sockets dropped before WireGuard could read it (all of it charged to this
/// peer: the kernel does not say whose datagrams it dropped; those are `udp_receive_errors`),
/// it must be at least [`INNER_DROPS_MIN`] and [`INNER_DROPS_PER_MILLE`] per mille of the
/// messages. WireGuard decrypts a message and then drops the packet inside when its inner
/// source address is outside the peer's AllowedIPs, or when the message is a replay or
/// arrives after its session ended. Without the sockets' drop count (no such socket found)
/// the rule says nothing: a full receive buffer would look the same.
pub(super) fn inner_drops(
    window: &Window<'_, PeerSample>,
    previous: &PeerSample,
) -> Option<Finding> {
    let (Some(then), Some(now)) = (window.then.socket_drops, window.now.socket_drops) else {
        return None;
    };
    let messages = previous.transport_received.since(window.then.transport_received);
    let delivered = window.growth(|s| s.tunnel_received);
    let lost = messages.saturating_sub(delivered).saturating_sub(now.since(then));
    if lost < INNER_DROPS_MIN.max(messages * INNER_DROPS_PER_MILLE / 1000) {
        return None;
    }
    let evidence = format!(
        "{lost} of {messages} transport data messages from the peer in the last {} never came \
         out of the tunnel: WireGuard dropped them inside, for an inner source address outside \
         the peer's AllowedIPs, or as replays",
        seconds(window.seconds)
    );
    let counters = [
        ("transport_data.receive", messages),
        ("tunnel_packets.receive", delivered),
        ("inner_drops", lost),
    ];
    Some(Finding::new(Code::InnerDrops, evidence, &counters))
}

/// `mtu_fragmentation`: the peer's outer datagrams are fragmented on the underlay, or ICMP
/// fragmentation-needed / packet-too-big comes back for them.
///
/// Signals: outer IP fragments of the peer's datagrams (both directions) and ICMP too-big
/// messages about them, grown over the window; the path MTU from the latest too-big message,
/// else the MTU of the route to the endpoint. A tunnel MTU that fits the path never
/// fragments: the MTU to set is the path MTU less WireGuard's overhead (60 bytes over IPv4,
/// 80 over IPv6).
pub(super) fn mtu_fragmentation(
    peer: &PeerSnapshot,
    window: &Window<'_, PeerSample>,
) -> Option<Finding> {
    let received = window.growth(|s| s.fragments_received);
    let sent = window.growth(|s| s.fragments_sent);
    let too_big = window.growth(|s| s.too_big);
    if received + sent + too_big == 0 {
        return None;
    }
    let overhead = match peer.endpoint {
        Some(endpoint) if endpoint.is_ipv6() => OVERHEAD_V6,
        _ => OVERHEAD_V4,
    };
    let path = match (peer.underlay.path_mtu, peer.underlay.route_mtu) {
        (Some(mtu), _) => Some((mtu, "reported by ICMP too-big")),
        (None, Some(mtu)) => Some((mtu, "of the route to the endpoint")),
        (None, None) => None,
    };
    let advice = path.map_or_else(
        || format!("set the tunnel MTU to the path MTU less {overhead}"),
        |(mtu, source)| {
            format!(
                "path MTU {mtu} ({source}): set the tunnel MTU to {} or less",
                mtu.saturating_sub(overhead)
            )
        },
    );
    let evidence = format!(
        "{} outer fragments ({received} received, {sent} sent) and {too_big} ICMP too-big in \
         the last {}; {advice}",
        received + sent,
        seconds(window.seconds)
    );
    let mut counters = vec![
        ("fragments.receive", received),
        ("fragments.transmit", sent),
        ("icmp_too_big", too_big),
    ];
    if let Some((mtu, _)) = path {
        counters.push(("path_mtu", u64::from(mtu)));
        counters.push(("mtu_to_set", u64::from(mtu.saturating_sub(overhead))));
    }
    Some(Finding::new(Code::MtuFragmentation, evidence, &counters))
}

/// `high_loss`: inner round trips this host opens to the peer (ICMP echo requests, TCP SYNs)
/// go unanswered, at least [`LOSS_MIN`] of them and [`LOSS_PERCENT`] % or more.
///
/// Signals: the lost and answered round trips (`icmp_round_trip`, `tcp_round_trip`) grown
/// over the window. Only while the peer has a fresh handshake: without one, every probe is
/// lost and the handshake codes say why.
pub(super) fn high_loss(peer: &PeerSnapshot, window: &Window<'_, SpanSample>) -> Option<Finding> {
    if peer.state != PeerState::Active {
        return None;
    }
    let lost = window.growth(|s| s.round_trips_lost);
    let answered = window.growth(|s| s.round_trips);
    let total = lost + answered;
    if lost < LOSS_MIN || lost * 100 < total * LOSS_PERCENT {
        return None;
    }
    let evidence = format!(
        "{lost} of {total} inner round trips (echo, TCP SYN) to the peer unanswered in the last \
         {} ({}%)",
        seconds(window.seconds),
        lost * 100 / total
    );
    let counters = [("probes.lost", lost), ("probes.answered", answered)];
    Some(Finding::new(Code::HighLoss, evidence, &counters))
}
