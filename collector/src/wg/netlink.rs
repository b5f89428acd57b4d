//! Kernel WireGuard over generic netlink.
//!
//! One read resolves the `wireguard` generic netlink family, then dumps the device with
//! `WG_CMD_GET_DEVICE`. A dump spans several messages and one peer's allowed IPs can continue in
//! the next message: [`merge_device_messages`] puts them back together. Private and preshared
//! keys are dropped on sight.
//!
//! Every read opens its own socket, with a receive deadline and a bound on the bytes read, so a
//! hung kernel or a huge interface cannot block or exhaust the collector. The private and
//! preshared keys of a device dump are zeroed in the received datagram before it is parsed,
//! and the datagram is wiped as it is freed. The same walk refuses what the parsing crate
//! would panic on (an empty allowed-IP prefix length) before it sees it.
//!
//! Longer than most modules: over a third of it is the tests of dump merging and key wiping,
//! which need the wire format built here.

use std::{
    collections::HashMap,
    fmt::Debug,
    io,
    time::{Duration, Instant, SystemTime},
};

use netlink_packet_core::{
    DecodeError, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_NOOP, NLMSG_OVERRUN, NetlinkDeserializable, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use netlink_packet_generic::{
    GenlFamily as _, GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_packet_wireguard::{
    WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute, WireguardCmd, WireguardMessage,
    WireguardPeer, WireguardPeerAttribute, WireguardTimeSpec,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
use zeroize::Zeroizing;

use super::{AllowedIp, Implementation, InterfaceState, PeerSource, PeerState, PublicKey};

/// How long one request may wait for its whole reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// The most reply bytes read for one request. A 10 000-peer device dumps a few MB.
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// How many times a dump that the kernel reports as interrupted (peers changed meanwhile) is
/// tried before giving up.
const DUMP_ATTEMPTS: usize = 3;

/// Reads kernel WireGuard interfaces over generic netlink.
#[derive(Debug, Clone, Copy, Default)]
pub struct Netlink;

impl Netlink {
    /// A reader; sockets are opened per read.
    pub fn new() -> Self {
        Self
    }
}

impl PeerSource for Netlink {
    type Error = NetlinkError;

    fn read_interface(&self, name: &str) -> Result<InterfaceState, NetlinkError> {
        let family_id = resolve_family(WireguardMessage::family_name())?;
        let mut attempt = 1;
        loop {
            match dump_device(family_id, name) {
                Err(NetlinkError::Interrupted) if attempt < DUMP_ATTEMPTS => attempt += 1,
                Err(NetlinkError::Kernel { errno: libc::ENODEV }) => {
                    return Err(NetlinkError::NoSuchInterface { name: name.to_owned() });
                }
                Err(NetlinkError::Kernel { errno: libc::EOPNOTSUPP }) => {
                    return Err(NetlinkError::NotWireguard { name: name.to_owned() });
                }
                Err(error) => return Err(error),
                Ok(messages) => return merge_device_messages(name, messages),
            }
        }
    }
}

/// The id of the generic netlink family `family`.
fn resolve_family(family: &str) -> Result<u16, NetlinkError> {
    let mut request = NetlinkMessage::from(GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(family.to_owned())],
    }));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    request.finalize();
    let replies = match exchange(NETLINK_GENERIC, &request) {
        Err(NetlinkError::Kernel { errno: libc::ENOENT }) => {
            return Err(NetlinkError::FamilyNotFound { family: family.to_owned() });
        }
        other => other?,
    };
    replies
        .iter()
        .flat_map(|reply| &reply.payload.nlas)
        .find_map(|attribute| match attribute {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        })
        .ok_or_else(|| NetlinkError::FamilyNotFound { family: family.to_owned() })
}

/// The messages of one `WG_CMD_GET_DEVICE` dump of interface `name`.
fn dump_device(family_id: u16, name: &str) -> Result<Vec<WireguardMessage>, NetlinkError> {
    let mut message = GenlMessage::from_payload(WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(name.to_owned())],
    });
    message.set_resolved_family_id(family_id);
    let mut request = NetlinkMessage::from(message);
    request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.finalize();
    let replies = exchange_preparing(NETLINK_GENERIC, &request, prepare_device_datagram)?;
    Ok(replies.into_iter().map(|reply| reply.payload).collect())
}

/// Sends `request` on a fresh socket of `protocol` and collects the messages of the reply, up to
/// `NLMSG_DONE` or an acknowledgement. Shared with [`super::discovery`].
pub(super) fn exchange<I>(
    protocol: isize,
    request: &NetlinkMessage<I>,
) -> Result<Vec<I>, NetlinkError>
where
    I: NetlinkSerializable + NetlinkDeserializable + Debug,
{
    exchange_preparing(protocol, request, |_| Ok(()))
}

/// [`exchange`], with `prepare` run over every datagram received before it is parsed (it wipes
/// secrets and refuses what the parser must not see); datagrams are wiped as they are freed.
fn exchange_preparing<I>(
    protocol: isize,
    request: &NetlinkMessage<I>,
    prepare: fn(&mut [u8]) -> Result<(), NetlinkError>,
) -> Result<Vec<I>, NetlinkError>
where
    I: NetlinkSerializable + NetlinkDeserializable + Debug,
{
    let socket_error = |source: io::Error| NetlinkError::Socket { source };
    let mut socket = Socket::new(protocol).map_err(socket_error)?;
    socket.bind_auto().map_err(socket_error)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(socket_error)?;
    let mut bytes = vec![0u8; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0).map_err(socket_error)?;

    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut received = 0usize;
    let mut interrupted = false;
    let mut replies = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(NetlinkError::Timeout { timeout: REPLY_TIMEOUT });
        }
        set_receive_timeout(&socket, remaining).map_err(socket_error)?;
        let (datagram, _) = socket.recv_from_full().map_err(|source| {
            if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                NetlinkError::Timeout { timeout: REPLY_TIMEOUT }
            } else {
                NetlinkError::Socket { source }
            }
        })?;
        let mut datagram = Zeroizing::new(datagram);
        prepare(&mut datagram)?;
        received += datagram.len();
        if received > MAX_REPLY_BYTES {
            return Err(NetlinkError::TooLarge { limit: MAX_REPLY_BYTES });
        }
        if decode_datagram(&datagram, &mut replies, &mut interrupted)? == Reply::Complete {
            return if interrupted { Err(NetlinkError::Interrupted) } else { Ok(replies) };
        }
    }
}

/// Whether a reply goes on after a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    /// More datagrams follow.
    Continues,
    /// `NLMSG_DONE` or an acknowledgement ended it.
    Complete,
}

/// Decodes the messages of one received datagram into `replies`, noting in `interrupted`
/// whether the kernel flagged the dump as interrupted.
fn decode_datagram<I>(
    datagram: &[u8],
    replies: &mut Vec<I>,
    interrupted: &mut bool,
) -> Result<Reply, NetlinkError>
where
    I: NetlinkDeserializable + Debug,
{
    let mut rest = datagram;
    while !rest.is_empty() {
        let message = NetlinkMessage::<I>::deserialize(rest)
            .map_err(|source| NetlinkError::Decode { source })?;
        *interrupted |= message.header.flags & NLM_F_DUMP_INTR != 0;
        match message.payload {
            NetlinkPayload::Done(_)
            | NetlinkPayload::Error(netlink_packet_core::ErrorMessage { code: None, .. }) => {
                return Ok(Reply::Complete);
            }
            NetlinkPayload::Error(error) => {
                return Err(NetlinkError::Kernel { errno: error.raw_code().saturating_abs() });
            }
            NetlinkPayload::InnerMessage(reply) => replies.push(reply),
            _ => {}
        }
        // Messages are 4-byte aligned; a length below a header's cannot have parsed.
        let length = usize::try_from(message.header.length).unwrap_or(usize::MAX);
        rest = rest.get(aligned(length)..).unwrap_or_default();
    }
    Ok(Reply::Continues)
}

/// The interface state in one datagram of a device dump, prepared, decoded and merged as
/// [`Netlink::read_interface`] does with a whole dump (the fuzzer's entry point).
pub(crate) fn parse_device_datagram(
    name: &str,
    datagram: &mut [u8],
) -> Result<InterfaceState, NetlinkError> {
    prepare_device_datagram(datagram)?;
    let mut replies = Vec::new();
    let mut interrupted = false;
    decode_datagram::<GenlMessage<WireguardMessage>>(datagram, &mut replies, &mut interrupted)?;
    merge_device_messages(name, replies.into_iter().map(|reply| reply.payload))
}

/// `WGDEVICE_A_PRIVATE_KEY`, `WGDEVICE_A_PEERS`, `WGPEER_A_PRESHARED_KEY`,
/// `WGPEER_A_ALLOWEDIPS` and `WGALLOWEDIP_A_CIDR_MASK` of the kernel's `wireguard.h`.
const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
const WGDEVICE_A_PEERS: u16 = 8;
const WGPEER_A_PRESHARED_KEY: u16 = 2;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;
/// The type bits of a netlink attribute's type (without `NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;
/// Netlink message header and generic netlink header.
const NLMSG_HEADER_LEN: usize = 16;
const GENL_HEADER_LEN: usize = 4;

/// Zeroes the private key and every preshared key in the `WG_CMD_GET_DEVICE` messages of
/// `datagram` in place, before anything parses them: the parser's own copies (its vectors grow
/// and free their old buffers unwiped) then hold zeros, never a key. Nothing here needs them.
///
/// Refuses a datagram with an empty allowed-IP prefix length (`WGALLOWEDIP_A_CIDR_MASK`),
/// which netlink-packet-wireguard 0.5 indexes without a length check (a panic); the walk
/// reaches every attribute the parser would, since both stop at the first that does not fit.
fn prepare_device_datagram(datagram: &mut [u8]) -> Result<(), NetlinkError> {
    let mut empty_cidr = false;
    let mut rest = datagram;
    while rest.len() >= NLMSG_HEADER_LEN {
        let length = rest.get(..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_ne_bytes);
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        if length < NLMSG_HEADER_LEN || length > rest.len() {
            break;
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let (message, next) = rest.split_at_mut(length);
        // netlink's own messages aside, the parser takes every type for the family's (type 0
        // too, which a fuzzer found past a walk that began at the family types' 0x10).
        if ![NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN].contains(&kind)
            && let Some(attributes) = message.get_mut(NLMSG_HEADER_LEN + GENL_HEADER_LEN..)
        {
            for_each_attribute(attributes, &mut |kind, payload| match kind {
                WGDEVICE_A_PRIVATE_KEY => payload.fill(0),
                WGDEVICE_A_PEERS => for_each_attribute(payload, &mut |_, peer| {
                    for_each_attribute(peer, &mut |kind, value| match kind {
                        WGPEER_A_PRESHARED_KEY => value.fill(0),
                        WGPEER_A_ALLOWEDIPS => for_each_attribute(value, &mut |_, allowed| {
                            for_each_attribute(allowed, &mut |kind, value| {
                                empty_cidr |= kind == WGALLOWEDIP_A_CIDR_MASK && value.is_empty();
                            });
                        }),
                        _ => {}
                    });
                }),
                _ => {}
            });
        }
        rest = next.get_mut(aligned(length) - length..).unwrap_or_default();
    }
    if empty_cidr {
        return Err(NetlinkError::Malformed {
            reason: "allowed IP with an empty prefix length".to_owned(),
        });
    }
    Ok(())
}

/// Calls `f` with the type and payload of each netlink attribute in `bytes`; stops at the first
/// that does not fit.
fn for_each_attribute(bytes: &mut [u8], f: &mut dyn FnMut(u16, &mut [u8])) {
    let mut rest = bytes;
    while rest.len() >= 4 {
        let length = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if length < 4 || length > rest.len() {
            return;
        }
        let (attribute, next) = rest.split_at_mut(length);
        if let Some(payload) = attribute.get_mut(4..) {
            f(kind, payload);
        }
        rest = next.get_mut(aligned(length) - length..).unwrap_or_default();
    }
}

/// `length` rounded up to netlink's 4-byte alignment.
fn aligned(length: usize) -> usize {
    length.saturating_add(3) & !3
}

/// Makes receives on `socket` fail with `EAGAIN` after `timeout` (which must not be zero: the
/// kernel reads zero as never; below a microsecond it is one).
pub(crate) fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    rustix::net::sockopt::set_socket_timeout(
        socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(timeout),
    )
    .map_err(io::Error::from)
}

/// Merges the messages of one device dump into the state of interface `name`.
///
/// Peers are merged by public key, in the order first seen: a peer continued in a later message
/// gets its allowed IPs appended, and any other attribute present there replaces the earlier
/// value. Private and preshared keys are dropped.
fn merge_device_messages(
    name: &str,
    messages: impl IntoIterator<Item = WireguardMessage>,
) -> Result<InterfaceState, NetlinkError> {
    let mut interface = InterfaceState {
        name: name.to_owned(),
        implementation: Implementation::Kernel,
        public_key: None,
        listen_port: None,
        fwmark: None,
        peers: Vec::new(),
    };
    let mut peer_index: HashMap<PublicKey, usize> = HashMap::new();
    for message in messages {
        for attribute in message.attributes {
            match attribute {
                WireguardAttribute::PublicKey(key) => interface.public_key = Some(PublicKey(key)),
                WireguardAttribute::ListenPort(port) => {
                    interface.listen_port = (port != 0).then_some(port);
                }
                WireguardAttribute::Fwmark(mark) => interface.fwmark = (mark != 0).then_some(mark),
                WireguardAttribute::Peers(peers) => {
                    for peer in peers {
                        merge_peer(&mut interface.peers, &mut peer_index, peer)?;
                    }
                }
                // PrivateKey is dropped; IfIndex, IfName, Flags and newer attributes are unused.
                _ => {}
            }
        }
    }
    Ok(interface)
}

/// Adds `peer` to `peers`, or merges it into the entry with the same public key.
fn merge_peer(
    peers: &mut Vec<PeerState>,
    peer_index: &mut HashMap<PublicKey, usize>,
    peer: WireguardPeer,
) -> Result<(), NetlinkError> {
    let public_key = peer
        .iter()
        .find_map(|attribute| match attribute {
            WireguardPeerAttribute::PublicKey(key) => Some(PublicKey(*key)),
            _ => None,
        })
        .ok_or_else(|| NetlinkError::Malformed {
            reason: "peer without a public key".to_owned(),
        })?;
    let position = *peer_index.entry(public_key).or_insert_with(|| {
        peers.push(PeerState {
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: None,
        });
        peers.len() - 1
    });
    let Some(state) = peers.get_mut(position) else {
        return Err(NetlinkError::Malformed { reason: "peer index out of range".to_owned() });
    };
    for attribute in peer.0 {
        match attribute {
            WireguardPeerAttribute::Endpoint(endpoint) => state.endpoint = Some(endpoint),
            WireguardPeerAttribute::PersistentKeepalive(interval) => {
                state.persistent_keepalive = (interval != 0).then_some(interval);
            }
            WireguardPeerAttribute::LastHandshake(time) => {
                state.last_handshake = handshake_time(time)?;
            }
            WireguardPeerAttribute::RxBytes(bytes) => state.rx_bytes = bytes,
            WireguardPeerAttribute::TxBytes(bytes) => state.tx_bytes = bytes,
            WireguardPeerAttribute::AllowedIps(allowed_ips) => {
                for allowed_ip in &allowed_ips {
                    state.allowed_ips.push(convert_allowed_ip(allowed_ip)?);
                }
            }
            // PresharedKey is dropped; PublicKey is known; the rest is unused.
            _ => {}
        }
    }
    Ok(())
}

/// A last-handshake timespec as a time; `None` for 0/0, which means never.
fn handshake_time(time: WireguardTimeSpec) -> Result<Option<SystemTime>, NetlinkError> {
    if time.seconds == 0 && time.nano_seconds == 0 {
        return Ok(None);
    }
    let out_of_range = || NetlinkError::Malformed {
        reason: format!("last handshake {}.{:09} out of range", time.seconds, time.nano_seconds),
    };
    let seconds = u64::try_from(time.seconds).map_err(|_| out_of_range())?;
    let nanos = u32::try_from(time.nano_seconds)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .ok_or_else(out_of_range)?;
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::new(seconds, nanos))
        .map(Some)
        .ok_or_else(out_of_range)
}

/// One allowed-IP entry, its prefix length checked against its family.
fn convert_allowed_ip(entry: &WireguardAllowedIp) -> Result<AllowedIp, NetlinkError> {
    let mut address = None;
    let mut cidr = None;
    for attribute in entry.iter() {
        match attribute {
            WireguardAllowedIpAttr::IpAddr(value) => address = Some(*value),
            WireguardAllowedIpAttr::Cidr(value) => cidr = Some(*value),
            _ => {}
        }
    }
    let (Some(address), Some(cidr)) = (address, cidr) else {
        return Err(NetlinkError::Malformed {
            reason: "allowed IP without address or cidr".to_owned(),
        });
    };
    let max = if address.is_ipv4() { 32 } else { 128 };
    if cidr > max {
        return Err(NetlinkError::Malformed { reason: format!("allowed IP {address}/{cidr}") });
    }
    Ok(AllowedIp { address, cidr })
}

/// Why a kernel interface could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Opening, binding or using the netlink socket failed.
    #[error("netlink socket: {source}")]
    Socket {
        /// What failed.
        source: io::Error,
    },
    /// The generic netlink family does not exist: the wireguard module is not loaded.
    #[error("no generic netlink family {family:?}: is the wireguard kernel module loaded?")]
    FamilyNotFound {
        /// The family looked up.
        family: String,
    },
    /// No interface of that name in this network namespace.
    #[error("no interface {name:?}")]
    NoSuchInterface {
        /// The interface name.
        name: String,
    },
    /// The interface exists but is not a kernel WireGuard interface.
    #[error("interface {name:?} is not a kernel WireGuard interface")]
    NotWireguard {
        /// The interface name.
        name: String,
    },
    /// The kernel refused the request (e.g. `EPERM` without `CAP_NET_ADMIN`).
    #[error("kernel refused the netlink request: {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The positive errno.
        errno: i32,
    },
    /// A reply could not be decoded.
    #[error("undecodable netlink reply: {source}")]
    Decode {
        /// The decoder's complaint.
        source: DecodeError,
    },
    /// A reply decoded but says something impossible.
    #[error("malformed WireGuard netlink reply: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The kernel did not finish replying in time.
    #[error("no complete netlink reply within {timeout:?}")]
    Timeout {
        /// The time allowed.
        timeout: Duration,
    },
    /// The reply exceeded the size limit.
    #[error("netlink reply exceeds {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The peers changed during every dump attempt.
    #[error("WireGuard device dump interrupted by concurrent changes")]
    Interrupted,
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr as InetAddr};

    use netlink_packet_wireguard::WireguardAddressFamily;

    use super::*;

    const PRIVATE_KEY: [u8; 32] = [0xa1; 32];
    const PRESHARED_KEY: [u8; 32] = [0xb2; 32];
    const OWN_KEY: [u8; 32] = [0x01; 32];
    const PEER_A: [u8; 32] = [0x0a; 32];
    const PEER_B: [u8; 32] = [0x0b; 32];

    fn allowed(address: &str, cidr: u8) -> WireguardAllowedIp {
        let address: std::net::IpAddr = address.parse().expect("valid address");
        let family = if address.is_ipv4() {
            WireguardAddressFamily::Ipv4
        } else {
            WireguardAddressFamily::Ipv6
        };
        WireguardAllowedIp(vec![
            WireguardAllowedIpAttr::Family(family),
            WireguardAllowedIpAttr::IpAddr(address),
            WireguardAllowedIpAttr::Cidr(cidr),
        ])
    }

    /// A dump of two messages: peer B's allowed IPs continue in the second.
    fn split_dump() -> Vec<WireguardMessage> {
        let first = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![
                WireguardAttribute::IfIndex(7),
                WireguardAttribute::IfName("wg0".to_owned()),
                WireguardAttribute::PrivateKey(PRIVATE_KEY),
                WireguardAttribute::PublicKey(OWN_KEY),
                WireguardAttribute::ListenPort(51820),
                WireguardAttribute::Fwmark(0),
                WireguardAttribute::Peers(vec![
                    WireguardPeer(vec![
                        WireguardPeerAttribute::PublicKey(PEER_A),
                        WireguardPeerAttribute::PresharedKey(PRESHARED_KEY),
                        WireguardPeerAttribute::Endpoint(InetAddr::from((
                            Ipv4Addr::new(192, 0, 2, 1),
                            51820,
                        ))),
                        WireguardPeerAttribute::PersistentKeepalive(25),
                        WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                            seconds: 1_700_000_000,
                            nano_seconds: 5,
                        }),
                        WireguardPeerAttribute::RxBytes(2048),
                        WireguardPeerAttribute::TxBytes(1024),
                        WireguardPeerAttribute::AllowedIps(vec![allowed("10.0.0.2", 32)]),
                        WireguardPeerAttribute::ProtocolVersion(1),
                    ]),
                    WireguardPeer(vec![
                        WireguardPeerAttribute::PublicKey(PEER_B),
                        WireguardPeerAttribute::PresharedKey(PRESHARED_KEY),
                        WireguardPeerAttribute::Endpoint(InetAddr::from((
                            "fd00::1".parse::<Ipv6Addr>().expect("valid"),
                            51821,
                        ))),
                        WireguardPeerAttribute::PersistentKeepalive(0),
                        WireguardPeerAttribute::LastHandshake(WireguardTimeSpec::default()),
                        WireguardPeerAttribute::RxBytes(0),
                        WireguardPeerAttribute::TxBytes(0),
                        WireguardPeerAttribute::AllowedIps(vec![
                            allowed("10.0.0.3", 32),
                            allowed("fd00::3", 128),
                        ]),
                    ]),
                ]),
            ],
        };
        let second = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(PEER_B),
                WireguardPeerAttribute::AllowedIps(vec![
                    allowed("192.168.0.0", 16),
                    allowed("fd00:1::", 64),
                ]),
            ])])],
        };
        vec![first, second]
    }

    fn expected_state() -> InterfaceState {
        InterfaceState {
            name: "wg0".to_owned(),
            implementation: Implementation::Kernel,
            public_key: Some(PublicKey(OWN_KEY)),
            listen_port: Some(51820),
            fwmark: None,
            peers: vec![
                PeerState {
                    public_key: PublicKey(PEER_A),
                    endpoint: Some(InetAddr::from((Ipv4Addr::new(192, 0, 2, 1), 51820))),
                    allowed_ips: vec![AllowedIp {
                        address: Ipv4Addr::new(10, 0, 0, 2).into(),
                        cidr: 32,
                    }],
                    last_handshake: Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
                    rx_bytes: 2048,
                    tx_bytes: 1024,
                    persistent_keepalive: Some(25),
                },
                PeerState {
                    public_key: PublicKey(PEER_B),
                    endpoint: Some(InetAddr::from((
                        "fd00::1".parse::<Ipv6Addr>().expect("valid"),
                        51821,
                    ))),
                    allowed_ips: vec![
                        AllowedIp { address: Ipv4Addr::new(10, 0, 0, 3).into(), cidr: 32 },
                        AllowedIp { address: "fd00::3".parse().expect("valid"), cidr: 128 },
                        AllowedIp { address: Ipv4Addr::new(192, 168, 0, 0).into(), cidr: 16 },
                        AllowedIp { address: "fd00:1::".parse().expect("valid"), cidr: 64 },
                    ],
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: None,
                },
            ],
        }
    }

    fn assert_no_secret(debug: &str) {
        for secret in [PRIVATE_KEY, PRESHARED_KEY] {
            for form in
                [format!("{secret:?}"), PublicKey(secret).to_string(), PublicKey(secret).to_hex()]
            {
                assert!(!debug.contains(&form), "secret {form} leaked into {debug}");
            }
        }
    }

    #[test]
    fn merges_a_peer_split_across_messages() {
        let state = merge_device_messages("wg0", split_dump()).expect("valid dump");
        assert_eq!(state, expected_state());
        assert_no_secret(&format!("{state:?}"));
    }

    /// The dump of [`split_dump`] as the kernel sends it: one datagram.
    fn split_dump_datagram() -> Vec<u8> {
        datagram_of(split_dump())
    }

    /// The messages `dump` in one datagram, as the kernel sends them.
    fn datagram_of(dump: Vec<WireguardMessage>) -> Vec<u8> {
        let mut datagram = Vec::new();
        for (sequence, payload) in dump.into_iter().enumerate() {
            let mut message = GenlMessage::from_payload(payload);
            message.set_resolved_family_id(0x20);
            let mut message = NetlinkMessage::from(message);
            message.header.sequence_number = u32::try_from(sequence).expect("small");
            message.finalize();
            let mut bytes = vec![0u8; message.buffer_len()];
            message.serialize(&mut bytes);
            datagram.extend_from_slice(&bytes);
        }
        datagram
    }

    #[test]
    fn secrets_are_zeroed_in_the_datagram_and_nothing_else_changes() {
        let mut datagram = split_dump_datagram();
        prepare_device_datagram(&mut datagram).expect("a valid dump");
        let contains = |needle: &[u8]| datagram.windows(needle.len()).any(|w| w == needle);
        assert!(!contains(&PRIVATE_KEY), "the private key is still there");
        assert!(!contains(&PRESHARED_KEY), "a preshared key is still there");
        let messages = wireguard_messages(&datagram);
        let mut expected = split_dump();
        for attribute in &mut expected[0].attributes {
            match attribute {
                WireguardAttribute::PrivateKey(key) => *key = [0; 32],
                WireguardAttribute::Peers(peers) => {
                    for peer in peers {
                        for attribute in &mut peer.0 {
                            if let WireguardPeerAttribute::PresharedKey(key) = attribute {
                                *key = [0; 32];
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        assert_eq!(messages, expected);
        assert_eq!(merge_device_messages("wg0", messages).expect("valid dump"), expected_state());
    }

    /// The WireGuard messages of `datagram`, decoded one after the other.
    fn wireguard_messages(datagram: &[u8]) -> Vec<WireguardMessage> {
        let mut messages = Vec::new();
        let mut rest = datagram;
        while !rest.is_empty() {
            let message =
                NetlinkMessage::<GenlMessage<WireguardMessage>>::deserialize(rest).expect("parses");
            let length = usize::try_from(message.header.length).expect("fits");
            rest = rest.get(length..).expect("in bounds");
            let NetlinkPayload::InnerMessage(inner) = message.payload else {
                panic!("not a wireguard message: {:?}", message.payload);
            };
            messages.push(inner.payload);
        }
        messages
    }

    /// Committed fuzzer inputs that made netlink-packet-wireguard 0.5.0 panic (index out of
    /// bounds): dumps whose allowed IP carries a zero-length `WGALLOWEDIP_A_CIDR_MASK`, the
    /// second (the fuzzer's) in a message of type 0, which the parser takes for the family's.
    const EMPTY_CIDR_CRASHES: [&[u8]; 2] = [
        include_bytes!("../../../fuzz/corpus/netlink_dump/empty-cidr"),
        include_bytes!("../../../fuzz/corpus/netlink_dump/empty-cidr-in-a-type-0-message"),
    ];

    #[test]
    fn an_empty_prefix_length_is_refused_before_the_parser_sees_it() {
        let mut dump = split_dump();
        let WireguardAttribute::Peers(peers) = &mut dump[0].attributes[6] else {
            panic!("the seventh attribute of the first message holds the peers");
        };
        let WireguardPeerAttribute::AllowedIps(allowed_ips) = &mut peers[0].0[7] else {
            panic!("the eighth attribute of peer A holds its allowed IPs");
        };
        allowed_ips[0].0[2] = WireguardAllowedIpAttr::Other(netlink_packet_core::DefaultNla::new(
            WGALLOWEDIP_A_CIDR_MASK,
            Vec::new(),
        ));
        let crashes = EMPTY_CIDR_CRASHES.map(<[u8]>::to_vec);
        for mut datagram in [vec![datagram_of(dump)], crashes.to_vec()].concat() {
            let error = parse_device_datagram("wg0", &mut datagram).expect_err("empty cidr");
            assert_eq!(
                error.to_string(),
                "malformed WireGuard netlink reply: allowed IP with an empty prefix length"
            );
        }
        let mut datagram = split_dump_datagram();
        assert_eq!(parse_device_datagram("wg0", &mut datagram).expect("valid"), expected_state());
    }

    #[test]
    fn round_trips_through_bytes() {
        let datagram = split_dump_datagram();
        let messages = wireguard_messages(&datagram);
        assert_eq!(messages, split_dump());
        let state = merge_device_messages("wg0", messages).expect("valid dump");
        assert_eq!(state, expected_state());
    }

    #[test]
    fn rejects_bad_cidr_and_keyless_peer() {
        let bad_cidr = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(PEER_A),
                WireguardPeerAttribute::AllowedIps(vec![allowed("10.0.0.0", 33)]),
            ])])],
        };
        let error = merge_device_messages("wg0", [bad_cidr]).expect_err("cidr 33");
        assert!(matches!(error, NetlinkError::Malformed { .. }), "{error:?}");

        let keyless = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PresharedKey(PRESHARED_KEY),
                WireguardPeerAttribute::RxBytes(1),
            ])])],
        };
        let error = merge_device_messages("wg0", [keyless]).expect_err("no key");
        assert!(matches!(error, NetlinkError::Malformed { .. }), "{error:?}");
        assert_no_secret(&format!("{error:?}"));
    }

    #[test]
    fn negative_handshake_is_malformed() {
        let time = WireguardTimeSpec { seconds: -1, nano_seconds: 0 };
        assert!(matches!(handshake_time(time), Err(NetlinkError::Malformed { .. })));
        let time = WireguardTimeSpec { seconds: 1, nano_seconds: 1_000_000_000 };
        assert!(matches!(handshake_time(time), Err(NetlinkError::Malformed { .. })));
    }

    #[test]
    fn missing_wireguard_family_is_reported() {
        // This kernel has no wireguard module, so the family lookup must fail cleanly.
        let error = Netlink::new().read_interface("wg-nonexistent").expect_err("no module here");
        assert!(matches!(error, NetlinkError::FamilyNotFound { .. }), "{error:?}");
    }

    #[test]
    fn resolves_an_existing_family() {
        // nlctrl itself always exists, with the fixed id 0x10.
        assert_eq!(resolve_family("nlctrl").expect("nlctrl exists"), 0x10);
    }
}
