//! Which peer an inner address belongs to on a WireGuard interface, shared by the tunnel and
//! drop programs.

use aya_ebpf::maps::lpm_trie::Key;
use collector_common::maps::{FULL_PREFIX_BITS, InnerAddress, PeerAddress};

use crate::maps::{ALLOWED_IPS, HOST_ALLOWED_IPS};

/// The peer whose AllowedIPs hold `address` on interface `ifindex`, by longest prefix within
/// its family (as WireGuard matches: one trie per family): a host
/// entry (/32, /128) is the longest there can be, so the hash of host entries answers first
/// (most AllowedIPs are host entries, and a hash lookup does not grow with the peer count as
/// the trie walk does); the trie, which holds only the shorter prefixes, answers the rest.
#[inline(always)]
pub(crate) fn peer_of(ifindex: u32, address: InnerAddress) -> Option<u32> {
    let key = PeerAddress::new(ifindex, address);
    // SAFETY: the value is copied out at once.
    if let Some(&peer) = unsafe { HOST_ALLOWED_IPS.get(&key) } {
        return Some(peer);
    }
    ALLOWED_IPS.get(&Key::new(FULL_PREFIX_BITS, key)).copied()
}
