//! Handshakes, and who may make them: `handshake_unanswered`, `handshake_rejected`,
//! `endpoint_unreachable`, `handshake_stale`, `unexpected_peer`.
//!
//! WireGuard retries an unanswered initiation every 5 s (`REKEY_TIMEOUT`, plus up to a third
//! of a second of jitter) for 90 s, and a working pair never sends two initiations within 5 s
//! without an answer in between. So two initiations one way and no answer the other way,
//! within a window of [`WINDOW_SECONDS`], prove that the first was not answered: a single
//! initiation read just before its response arrives proves nothing.

use super::{DiagnosisConfig, Finding, SpanSample, Window, peer_label, seconds};
use crate::model::{Code, PeerSnapshot, PeerState};

/// The handshake codes look back at least this far: two retries 5 s apart fit.
pub(super) const WINDOW_SECONDS: f64 = 12.0;

/// Initiations one way, without an answer the other way, that prove a handshake fails.
const UNANSWERED_INITIATIONS: u64 = 2;

fn last_handshake(peer: &PeerSnapshot) -> String {
    peer.last_handshake_seconds_ago.map_or_else(
        || "never a handshake".to_owned(),
        |age| format!("last handshake {age:.0} s ago"),
    )
}

/// `handshake_unanswered`: this host sends handshake initiations to the peer and neither a
/// response nor a cookie reply comes back.
///
/// Signals: underlay `handshake_initiation` transmitted, `handshake_response` and
/// `cookie_reply` received, over the window. Holds when at least two initiations went out and
/// nothing answered: the peer is down, UDP is blocked on the way, or the peer lacks this
/// host's key (it cannot tell whom the initiation is from and drops it).
pub(super) fn unanswered(peer: &PeerSnapshot, window: &Window<'_, SpanSample>) -> Option<Finding> {
    let sent = window.growth(|s| s.initiations_sent);
    let answered = window.growth(|s| s.responses_received) + window.growth(|s| s.cookies_received);
    if sent < UNANSWERED_INITIATIONS || answered > 0 {
        return None;
    }
    let endpoint = peer.endpoint.map_or_else(|| "its endpoint".to_owned(), |e| e.to_string());
    let evidence = format!(
        "{sent} handshake initiations sent to {endpoint} in the last {}, none answered ({}, {} \
         unanswered in all): the peer is down, UDP is blocked on the way, or the peer lacks \
         this host's public key",
        seconds(window.seconds),
        last_handshake(peer),
        peer.underlay.unanswered_initiations,
    );
    Some(Finding::new(
        Code::HandshakeUnanswered,
        evidence,
        &[
            ("handshake_initiation.transmit", sent),
            ("handshake_response.receive", window.growth(|s| s.responses_received)),
            ("cookie_reply.receive", window.growth(|s| s.cookies_received)),
            ("unanswered_initiations", peer.underlay.unanswered_initiations),
        ],
    ))
}

/// `endpoint_unreachable`: ICMP destination unreachable comes back for the datagrams this
/// host sends to the peer's endpoint.
///
/// Signals: the underlay programs' ICMP port / host / network unreachable and administratively
/// prohibited messages that quote a datagram from this interface's port to the peer's
/// endpoint, received, grown over the window. One is enough: a host that answers "port
/// unreachable" runs no WireGuard on that port (the peer's WireGuard is down or listens
/// elsewhere), and "prohibited" names a firewall that rejects.
pub(super) fn endpoint_unreachable(
    peer: &PeerSnapshot,
    window: &Window<'_, SpanSample>,
) -> Option<Finding> {
    let unreachable = window.growth(|s| s.unreachable_received);
    if unreachable == 0 {
        return None;
    }
    let endpoint = peer.endpoint.map_or_else(|| "its endpoint".to_owned(), |e| e.to_string());
    let evidence = format!(
        "{unreachable} ICMP destination unreachable came back for datagrams to {endpoint} in the last {} ({} since wgtel started, {}): nothing listens on the peer's WireGuard port, or a firewall on the way rejects it",
        seconds(window.seconds),
        peer.underlay.icmp_unreachable.receive,
        last_handshake(peer),
    );
    Some(Finding::new(
        Code::EndpointUnreachable,
        evidence,
        &[
            ("icmp_unreachable.receive", unreachable),
            ("icmp_unreachable.receive.total", peer.underlay.icmp_unreachable.receive),
            ("handshake_initiation.transmit", window.growth(|s| s.initiations_sent)),
        ],
    ))
}

/// `handshake_stale`: the peer had a handshake once, none for longer than `handshake-stale`,
/// and traffic still goes into the tunnel to it.
///
/// Signals: the handshake's age from WireGuard, and the tunnel egress program's packets to
/// the peer, grown over the window. WireGuard renews a session every 2 minutes while traffic
/// flows and gives a session up after 3, so an old handshake with traffic sent means the
/// traffic goes nowhere; an idle peer with an old handshake is not broken.
pub(super) fn stale(
    config: &DiagnosisConfig,
    peer: &PeerSnapshot,
    window: &Window<'_, SpanSample>,
) -> Option<Finding> {
    let age = peer.last_handshake_seconds_ago?;
    let threshold = config.handshake_stale.as_secs_f64();
    let sent = window.growth(|s| s.tunnel_sent);
    if age <= threshold || sent == 0 {
        return None;
    }
    let evidence = format!(
        "last handshake {age:.0} s ago, more than the {threshold:.0} s allowed, while {sent} packets went into the tunnel to the peer in the last {}: they are not delivered",
        seconds(window.seconds),
    );
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "an age in whole seconds"
    )]
    let age_seconds = age as u64;
    Some(Finding::new(
        Code::HandshakeStale,
        evidence,
        &[("handshake_age_seconds", age_seconds), ("tunnel_packets.transmit", sent)],
    ))
}

/// `handshake_rejected`: the peer's handshake initiations reach this host and it never
/// answers them.
///
/// Signals: underlay `handshake_initiation` received from the peer's endpoint, and
/// `handshake_response` / `cookie_reply` transmitted, over the window. A responder that
/// cannot decrypt an initiation (the peer encrypted it to a public key that is not this
/// interface's, or this interface does not know the peer's key) drops it without a word; at
/// least two initiations and no answer tell this key drift from a peer that is merely down
/// (which sends nothing at all).
pub(super) fn rejected(peer: &PeerSnapshot, window: &Window<'_, SpanSample>) -> Option<Finding> {
    let received = window.growth(|s| s.initiations_received);
    let answered = window.growth(|s| s.responses_sent) + window.growth(|s| s.cookies_sent);
    if received < UNANSWERED_INITIATIONS || answered > 0 {
        return None;
    }
    let endpoint = peer.endpoint.map_or_else(|| "the peer".to_owned(), |e| e.to_string());
    let evidence = format!(
        "{received} handshake initiations received from {endpoint} in the last {}, none \
         answered ({}): the peer holds a wrong public key for this interface",
        seconds(window.seconds),
        last_handshake(peer),
    );
    Some(Finding::new(
        Code::HandshakeRejected,
        evidence,
        &[
            ("handshake_initiation.receive", received),
            ("handshake_response.transmit", window.growth(|s| s.responses_sent)),
            ("cookie_reply.transmit", window.growth(|s| s.cookies_sent)),
        ],
    ))
}

/// `unexpected_peer`: `expected-peers` is set, and a peer that is not in it has a fresh
/// handshake.
///
/// Signals: the configuration, the peer's state (`active`: a handshake within 180 s). A peer
/// that was never expected and can talk through the tunnel is configuration drift or worse;
/// one that only sits in the configuration without a handshake is not (yet) a risk.
pub(super) fn unexpected_peer(
    config: &DiagnosisConfig,
    interface: &crate::model::InterfaceSnapshot,
    peer: &PeerSnapshot,
) -> Option<Finding> {
    if config.expected_peers.is_empty() || peer.state != PeerState::Active {
        return None;
    }
    let expected = config.expected_peers.iter().any(|expected| {
        expected.public_key == peer.public_key
            && expected.interface.as_ref().is_none_or(|name| *name == interface.name)
    });
    if expected {
        return None;
    }
    let age = peer.last_handshake_seconds_ago.unwrap_or_default();
    let evidence = format!(
        "{} completed a handshake {age:.0} s ago on {} and is not among the {} expected-peers",
        peer_label(peer),
        interface.name,
        config.expected_peers.len()
    );
    Some(Finding::new(
        Code::UnexpectedPeer,
        evidence,
        &[("expected_peers", config.expected_peers.len() as u64)],
    ))
}
