//! `keepalive_needed`: the peer's endpoint port changes after a silence, and it sends no
//! persistent keepalive: a NAT between it and this host forgot its mapping.

use std::{net::SocketAddr, time::SystemTime};

use super::Finding;
use crate::model::{Code, PeerSnapshot};

/// A silence at least this long before a new endpoint port is a NAT mapping that expired:
/// NATs forget UDP mappings after 30 s to a few minutes; a peer that roams sends as it moves.
pub(super) const IDLE_SECONDS: f64 = 25.0;

/// How long the code holds after the latest rebinding (unless a keepalive is set meanwhile):
/// the next silence will lose traffic again, so the evidence stays until someone acts on it.
pub(super) const HOLD_SECONDS: f64 = 600.0;

/// The latest NAT rebinding seen.
#[derive(Clone, Copy, Debug)]
struct Rebinding {
    at: SystemTime,
    from: SocketAddr,
    to: SocketAddr,
    idle_seconds: f64,
}

/// What the rule remembers of one peer.
#[derive(Debug, Default)]
pub(super) struct KeepaliveState {
    endpoint: Option<SocketAddr>,
    rx_bytes: u64,
    /// When the peer last sent anything (its received bytes grew).
    heard_at: Option<SystemTime>,
    rebinding: Option<Rebinding>,
}

impl KeepaliveState {
    /// Reads the peer at `at`; the code while its evidence holds.
    ///
    /// Signals: the peer's endpoint as WireGuard reports it, and WireGuard's received bytes
    /// (which grow with every message from the peer, keepalives included). A new port on the
    /// same address after at least [`IDLE_SECONDS`] of silence is a NAT that forgot the
    /// mapping and made a new one: until the peer sends again, this host's packets go to the
    /// old port and are lost. Holds for [`HOLD_SECONDS`] after the latest such rebinding, and
    /// never while the peer has a persistent keepalive (which keeps the mapping alive).
    pub(super) fn observe(&mut self, peer: &PeerSnapshot, at: SystemTime) -> Option<Finding> {
        let silent_for =
            |since: SystemTime| at.duration_since(since).map_or(0.0, |d| d.as_secs_f64());
        if let (Some(before), Some(now)) = (self.endpoint, peer.endpoint)
            && before.ip() == now.ip()
            && before.port() != now.port()
        {
            let idle_seconds = self.heard_at.map_or(0.0, silent_for);
            if idle_seconds >= IDLE_SECONDS {
                self.rebinding = Some(Rebinding { at, from: before, to: now, idle_seconds });
            }
        }
        if peer.rx_bytes != self.rx_bytes || self.heard_at.is_none() {
            self.heard_at = Some(at);
        }
        self.rx_bytes = peer.rx_bytes;
        self.endpoint = peer.endpoint;
        let rebinding = self.rebinding.filter(|r| silent_for(r.at) < HOLD_SECONDS)?;
        if peer.persistent_keepalive.is_some() {
            return None;
        }
        let evidence = format!(
            "the endpoint moved from {} to {} after {:.0} s without a message from the peer, \
             which sends no persistent keepalive: a NAT on the way forgot its mapping, and what \
             this host sends in such a gap is lost; set PersistentKeepalive = 25 on the peer",
            rebinding.from, rebinding.to, rebinding.idle_seconds
        );
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "whole seconds"
        )]
        let idle = rebinding.idle_seconds as u64;
        let counters = [
            ("idle_seconds", idle),
            ("port.before", u64::from(rebinding.from.port())),
            ("port.after", u64::from(rebinding.to.port())),
        ];
        Some(Finding::new(Code::KeepaliveNeeded, evidence, &counters))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::wg::PublicKey;

    fn peer(port: u16, rx_bytes: u64, keepalive: Option<u16>) -> PeerSnapshot {
        PeerSnapshot {
            endpoint: Some(SocketAddr::from(([198, 18, 1, 10], port))),
            rx_bytes,
            persistent_keepalive: keepalive,
            ..PeerSnapshot::zero(PublicKey([1; 32]))
        }
    }

    #[test]
    fn a_new_port_after_a_silence_needs_a_keepalive_and_a_roam_in_traffic_does_not() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut state = KeepaliveState::default();
        assert_eq!(state.observe(&peer(51820, 100, None), at(0)), None);
        // Traffic, then a new port 10 s later: a roam, not a NAT that forgot.
        assert_eq!(state.observe(&peer(51820, 200, None), at(10)), None);
        assert_eq!(state.observe(&peer(40000, 300, None), at(20)), None);
        // 30 s of silence, then another port: the NAT forgot.
        assert_eq!(state.observe(&peer(40000, 300, None), at(40)), None);
        let found = state.observe(&peer(40001, 400, None), at(50)).unwrap();
        assert_eq!(found.code, Code::KeepaliveNeeded);
        assert!(found.evidence.starts_with(
            "the endpoint moved from 198.18.1.10:40000 to 198.18.1.10:40001 after 30 s without"
        ));
        assert_eq!(found.counters["idle_seconds"], 30.0);
        // It holds on while traffic flows, clears with a keepalive, and after ten minutes.
        assert!(state.observe(&peer(40001, 500, None), at(60)).is_some());
        assert_eq!(state.observe(&peer(40001, 600, Some(25)), at(70)), None);
        assert_eq!(state.observe(&peer(40001, 700, None), at(50 + 600)), None);
    }
}
