//! WireGuard's own view of its interfaces and peers, from either implementation.
//!
//! - [`netlink`]: the kernel module, over generic netlink (`netlink-packet-wireguard`).
//! - [`uapi`]: userspace implementations (wireguard-go, boringtun) over their UAPI socket.
//! - [`discovery`]: which WireGuard interfaces exist in this network namespace, and of which kind.
//!
//! Both sources fill the same [`InterfaceState`] behind the [`PeerSource`] trait. Private and
//! preshared keys never leave a source: the parsers drop them on sight.

pub mod discovery;
pub mod netlink;
pub mod uapi;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::SystemTime,
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use zeroize::Zeroize as _;

/// Which implementation runs an interface.
///
/// The UAPI protocol is the same text for every userspace implementation, but its values do not
/// mean the same: boringtun writes the time since the last handshake where wireguard-go writes
/// its UNIX time (see [`uapi`]). The process behind the socket says which one answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Implementation {
    /// The Linux kernel module, read over generic netlink.
    #[serde(rename = "kernel")]
    Kernel,
    /// wireguard-go (any version, whatever its binary is called after `wireguard-go`).
    #[serde(rename = "wireguard-go")]
    WireguardGo,
    /// Cloudflare's boringtun (`boringtun`, `boringtun-cli`).
    #[serde(rename = "boringtun")]
    Boringtun,
    /// A UAPI socket whose implementation is not identified (yet): discovery sees only the
    /// socket; the process behind it, or the reply's own keys, name it when it is read.
    #[serde(rename = "userspace")]
    Userspace,
}

impl Implementation {
    /// The name in `/api/v1/interfaces` and `wgtel status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::WireguardGo => "wireguard-go",
            Self::Boringtun => "boringtun",
            Self::Userspace => "userspace",
        }
    }

    /// The userspace implementation a process name (`comm`, or the base name of `argv[0]`)
    /// belongs to: `wireguard-go…` (packagers rename it: `wireguard-go-current`) or
    /// `boringtun…` (`boringtun-cli`); `None` for any other process.
    pub fn of_process_name(name: &str) -> Option<Self> {
        if name.starts_with("wireguard-go") {
            Some(Self::WireguardGo)
        } else if name.starts_with("boringtun") {
            Some(Self::Boringtun)
        } else {
            None
        }
    }
}

impl fmt::Display for Implementation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WireGuard public key (32 bytes). Displayed and serialised as base64, like `wg` does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key from its lowercase hex form, as the UAPI protocol writes it.
    pub fn from_hex(hex: &str) -> Option<Self> {
        decode_hex_key(hex).map(Self)
    }

    /// The public key of the private key `hex` (as the UAPI protocol writes it: 64 hex
    /// digits), by X25519 as WireGuard derives it; `None` when `hex` is not a key. The private
    /// key's bytes are wiped before this returns.
    pub fn of_private_hex(hex: &str) -> Option<Self> {
        let mut private = decode_hex_key(hex)?;
        let secret = x25519_dalek::StaticSecret::from(private);
        private.zeroize();
        Some(Self(x25519_dalek::PublicKey::from(&secret).to_bytes()))
    }

    /// The key in its lowercase hex form, as the UAPI protocol writes it.
    pub fn to_hex(&self) -> String {
        const_hex::encode(self.0)
    }
}

/// The 32 bytes of a key written as 64 hex digits.
fn decode_hex_key(text: &str) -> Option<[u8; 32]> {
    // Exactly 64 digits: const-hex would take a `0x` before them.
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    const_hex::decode_to_slice(text, &mut key).ok()?;
    Some(key)
}

impl PublicKey {
    /// The key in base64 (44 characters), written into `buf`: the exporters write a key per
    /// point without allocating.
    pub fn base64<'a>(&self, buf: &'a mut [u8; 44]) -> &'a str {
        let written = STANDARD.encode_slice(self.0, buf).unwrap_or_default();
        std::str::from_utf8(&buf[..written]).unwrap_or_default()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base64(&mut [0; 44]))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A public key that is not 32 bytes of base64.
#[derive(Debug, thiserror::Error)]
#[error("not a WireGuard public key (44 characters of base64): {0:?}")]
pub struct InvalidPublicKey(String);

impl FromStr for PublicKey {
    type Err = InvalidPublicKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| InvalidPublicKey(s.to_owned()))?;
        let key = <[u8; 32]>::try_from(bytes).map_err(|_| InvalidPublicKey(s.to_owned()))?;
        Ok(Self(key))
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One AllowedIPs entry: an address and a prefix length valid for its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllowedIp {
    /// Network address (host bits may be set, as WireGuard accepts them).
    pub address: IpAddr,
    /// Prefix length: at most 32 for IPv4, 128 for IPv6.
    pub cidr: u8,
}

impl AllowedIp {
    /// Whether this entry covers `address`: the same family, the first `cidr` bits equal.
    pub fn contains(&self, address: IpAddr) -> bool {
        let (network, address, bits) = match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                (u128::from(network.to_bits()) << 96, u128::from(address.to_bits()) << 96, 32)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                (network.to_bits(), address.to_bits(), 128)
            }
            _ => return false,
        };
        let cidr = u32::from(self.cidr.min(bits));
        let mask = if cidr == 0 { 0 } else { u128::MAX << (128 - cidr) };
        network & mask == address & mask
    }
}

impl fmt::Display for AllowedIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.cidr)
    }
}

impl serde::Serialize for AllowedIp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What WireGuard reports about one peer. No key material but the public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    /// The peer's public key: its identity.
    pub public_key: PublicKey,
    /// Where WireGuard currently sends this peer's traffic; `None` until known.
    pub endpoint: Option<SocketAddr>,
    /// The inner addresses this peer may use, in the order WireGuard reports them.
    pub allowed_ips: Vec<AllowedIp>,
    /// The last completed handshake; `None` when there has never been one.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from this peer, as WireGuard counts them: whole WireGuard messages for
    /// the kernel and wireguard-go, decrypted inner packets only for boringtun.
    pub rx_bytes: u64,
    /// Bytes sent to this peer, as WireGuard counts them (see `rx_bytes`).
    pub tx_bytes: u64,
    /// Persistent keepalive interval in seconds; `None` when off.
    pub persistent_keepalive: Option<u16>,
}

/// What WireGuard reports about one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceState {
    /// Interface name, e.g. `wg0`.
    pub name: String,
    /// Which implementation answered.
    pub implementation: Implementation,
    /// The interface's own public key, when it has a private key.
    pub public_key: Option<PublicKey>,
    /// UDP port it listens on; `None` when not listening yet.
    pub listen_port: Option<u16>,
    /// Firewall mark on its outgoing packets; `None` when unset.
    pub fwmark: Option<u32>,
    /// Its peers, each exactly once.
    pub peers: Vec<PeerState>,
}

/// Reads the state of one WireGuard interface. Implemented once per implementation kind.
///
/// Blocking, with timeouts: the collector calls it from a blocking task once per interval.
pub trait PeerSource: Send + Sync {
    /// The error of this source.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The interface `name` as WireGuard sees it now.
    fn read_interface(&self, name: &str) -> Result<InterfaceState, Self::Error>;
}

#[cfg(test)]
mod tests {
    use super::PublicKey;

    #[test]
    fn a_hex_key_is_exactly_64_hex_digits() {
        let digits = "0f".repeat(32);
        assert_eq!(PublicKey::from_hex(&digits), Some(PublicKey([0x0f; 32])));
        assert_eq!(PublicKey([0x0f; 32]).to_hex(), digits);
        for bad in [
            format!("0x{digits}"),
            format!("0x{}", &digits[2..]),
            format!("+f{}", &digits[2..]),
            format!("g{}", &digits[1..]),
            digits[1..].to_owned(),
        ] {
            assert_eq!(PublicKey::from_hex(&bad), None, "{bad}");
        }
    }
}
