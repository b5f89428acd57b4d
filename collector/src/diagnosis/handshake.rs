//! Handshakes, and who may make them: `handshake_unanswered`, `handshake_rejected`,
//! `unexpected_peer`.
//!
//! WireGuard retries an unanswered initiation every 5 s (`REKEY_TIMEOUT`, plus up to a third
//! of a second of jitter) for 90 s, and a working pair never sends two initiations within 5 s
//! without an answer in between. So two initiations one way and no answer the other way,
//! within a window of [`WINDOW_SECONDS`], prove that the first was not answered: a single
//! initiation read just before its response arrives proves nothing.

use super::{Finding, PeerSample, Window, peer_label, seconds};
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
pub(super) fn unanswered(peer: &PeerSnapshot, window: &Window<'_, PeerSample>) -> Option<Finding> {
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

/// `handshake_rejected`: the peer's handshake initiations reach this host and it never
/// answers them.
///
/// Signals: underlay `handshake_initiation` received from the peer's endpoint, and
/// `handshake_response` / `cookie_reply` transmitted, over the window. A responder that
/// cannot decrypt an initiation (the peer encrypted it to a public key that is not this
/// interface's, or this interface does not know the peer's key) drops it without a word; at
/// least two initiations and no answer tell this key drift from a peer that is merely down
/// (which sends nothing at all).
pub(super) fn rejected(peer: &PeerSnapshot, window: &Window<'_, PeerSample>) -> Option<Finding> {
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
    config: &super::DiagnosisConfig,
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
