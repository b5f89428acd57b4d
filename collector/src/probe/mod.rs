//! The outside-in probe: a real WireGuard handshake with a gateway, from user space (no TUN
//! device, no root), as a monitoring peer the gateway has configured; then, when asked, ICMP
//! echoes through the tunnel to an address the gateway answers for.
//!
//! WireGuard answers nothing to a stranger, so only a completed handshake tells a working
//! gateway from a dead one. The Noise handshake and the transport encryption are boringtun's
//! ([`boringtun::noise::Tunn`]); the echo packets are built by hand ([`icmp`]).
//!
//! - [`cli`]: `wgtel probe`, its output and exit codes.
//! - [`Prober`]: the key and the concurrency limit behind `/probe` on `wgtel run`'s listener.
//!
//! The private key is read from a file, held in buffers wiped when dropped, and never
//! printed: not in errors, not in `Debug`.

pub mod cli;
pub mod icmp;
#[cfg(test)]
mod tests;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use boringtun::{
    noise::{Tunn, TunnResult},
    x25519,
};
use serde::Serialize;
use tokio::net::UdpSocket;
use zeroize::Zeroizing;

use crate::wg::{InvalidPublicKey, PublicKey};

/// When an unanswered handshake initiation is first sent again; the wait doubles up to
/// [`MAX_RESEND`]. A lost datagram, or an initiation the gateway drops (wireguard-go takes at
/// most one initiation per peer every 20 ms), costs a fraction of the timeout, and boringtun
/// still accepts the response to the initiation before the latest, so a round trip up to
/// twice the wait completes.
const FIRST_RESEND: Duration = Duration::from_millis(200);
/// The longest wait before an unanswered initiation is sent again.
const MAX_RESEND: Duration = Duration::from_secs(1);
/// WireGuard's message type of a handshake response.
const HANDSHAKE_RESPONSE: u8 = 2;
/// The largest datagram read: WireGuard messages are far smaller.
const BUFFER: usize = 64 * 1024;
/// Bytes after the ICMP header of each echo request.
const ECHO_PAYLOAD: &[u8] = b"wgtel probe echo 0123456789abcdefghijklmnopqrstuvwxyz";
/// Most echoes one probe sends.
pub const MAX_COUNT: u16 = 1000;

/// Why a probe could not be run at all: bad input, or this host's own sockets.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The private key file could not be read.
    #[error("reading the private key file {path}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The private key file holds no key (what it holds is never quoted).
    #[error(
        "{0} holds no WireGuard private key (a line of 44 characters of base64, as `wg genkey` \
         writes)"
    )]
    MalformedKey(PathBuf),
    /// The gateway's public key is not a key.
    #[error("the gateway's public key")]
    PeerKey(#[source] InvalidPublicKey),
    /// The endpoint is not `HOST:PORT`.
    #[error(
        "endpoint {0:?} is not HOST:PORT (e.g. 198.18.0.1:51820, [fd00::1]:51820, vpn.example:51820)"
    )]
    Endpoint(String),
    /// The echo count is out of range.
    #[error("the echo count must be between 1 and {MAX_COUNT}, not {0}")]
    Count(u64),
    /// The async runtime of `wgtel probe` could not start.
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    /// A socket of this host could not be opened.
    #[error("opening a UDP socket towards {address}")]
    Socket {
        /// The gateway's address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ProbeError {
    /// Whether the input was bad (exit 2) rather than the host failing (exit 1).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Socket { .. } | Self::Runtime(_))
    }
}

/// A WireGuard private key: wiped when dropped, never shown.
pub struct PrivateKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

impl PrivateKey {
    /// The key in `path`: its first line, base64 as `wg genkey` writes it.
    pub fn read(path: &Path) -> Result<Self, ProbeError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|source| ProbeError::KeyFile { path: path.to_owned(), source })?,
        );
        Self::parse(&text).ok_or_else(|| ProbeError::MalformedKey(path.to_owned()))
    }

    /// The key of the base64 `text` (surrounding white space allowed); `None` when it is not
    /// one.
    fn parse(text: &str) -> Option<Self> {
        let bytes = Zeroizing::new(STANDARD.decode(text.trim()).ok()?);
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != key.len() {
            return None;
        }
        key.copy_from_slice(&bytes);
        Some(Self(key))
    }

    fn secret(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(*self.0)
    }

    /// The public key of this private key: what the gateway lists for the monitoring peer.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.secret()).to_bytes())
    }
}

/// What to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The gateway's `HOST:PORT`, as given.
    pub endpoint: String,
    /// The gateway's public key.
    pub peer: PublicKey,
    /// Echoes through the tunnel, when asked for.
    pub echo: Option<EchoTarget>,
    /// How long the handshake, and then each echo, may take.
    pub timeout: Duration,
}

/// Echoes through the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoTarget {
    /// The address asked to answer (the gateway's tunnel address, or one behind it).
    pub target: Ipv4Addr,
    /// The monitoring peer's tunnel address, inside its AllowedIPs on the gateway.
    pub source: Ipv4Addr,
    /// How many echo requests, one after the other.
    pub count: u16,
}

impl ProbeTarget {
    /// Checks `endpoint` (`HOST:PORT`), `peer_public_key` and the echo count.
    pub fn new(
        endpoint: &str,
        peer_public_key: &str,
        echo: Option<EchoTarget>,
        timeout: Duration,
    ) -> Result<Self, ProbeError> {
        let well_formed = endpoint.parse::<SocketAddr>().is_ok()
            || endpoint.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok()
            });
        if !well_formed {
            return Err(ProbeError::Endpoint(endpoint.to_owned()));
        }
        let peer = peer_public_key.parse().map_err(ProbeError::PeerKey)?;
        if let Some(echo) = echo
            && !(1..=MAX_COUNT).contains(&echo.count)
        {
            return Err(ProbeError::Count(echo.count.into()));
        }
        Ok(Self { endpoint: endpoint.to_owned(), peer, echo, timeout })
    }
}

/// One echo's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EchoResult {
    /// Its ICMP sequence number (1, 2, ...).
    pub seq: u16,
    /// Request to reply; `null` when no reply came within the timeout.
    pub rtt_seconds: Option<f64>,
}

/// What a probe found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeReport {
    /// The endpoint as given.
    pub endpoint: String,
    /// The address it resolved to; `null` when it did not resolve.
    pub address: Option<SocketAddr>,
    /// Whether the handshake completed: the gateway runs, the path carries UDP both ways,
    /// the gateway knows this key and holds the key the probe was given for it.
    pub reachable: bool,
    /// Handshake initiation to response; `null` without a response.
    pub handshake_seconds: Option<f64>,
    /// The echoes' target, when echoes were asked for.
    pub inner_target: Option<Ipv4Addr>,
    /// Each echo in order (empty when none were sent).
    pub echoes: Vec<EchoResult>,
    /// Echo requests sent.
    pub sent: u16,
    /// Echo replies received.
    pub received: u16,
    /// The share of echoes unanswered (0 to 1); `null` when none were asked for.
    pub loss: Option<f64>,
    /// Whether the handshake and every echo asked for succeeded.
    pub success: bool,
    /// Why the probe failed; `null` on success.
    pub error: Option<String>,
}

impl ProbeReport {
    /// The report of `target` before anything was tried: nothing reached, nothing sent.
    pub fn new(target: &ProbeTarget) -> Self {
        Self {
            endpoint: target.endpoint.clone(),
            address: None,
            reachable: false,
            handshake_seconds: None,
            inner_target: target.echo.map(|echo| echo.target),
            echoes: Vec::new(),
            sent: 0,
            received: 0,
            loss: None,
            success: false,
            error: None,
        }
    }
}

/// Runs the probe of `target` as the peer of `key`. Every failure on the way (no answer,
/// closed port, lost echoes) is in the report; errors are only this host's own.
pub async fn probe(key: &PrivateKey, target: &ProbeTarget) -> Result<ProbeReport, ProbeError> {
    let mut report = ProbeReport::new(target);
    let Some(address) = resolve(&target.endpoint, target.timeout).await else {
        report.error = Some(format!(
            "{} does not resolve to an address within {}",
            target.endpoint,
            humantime::format_duration(target.timeout)
        ));
        return Ok(report);
    };
    report.address = Some(address);
    let local: SocketAddr = match address {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket_error = |source| ProbeError::Socket { address, source };
    let socket = UdpSocket::bind(local).await.map_err(socket_error)?;
    socket.connect(address).await.map_err(socket_error)?;
    let mut session = Session {
        socket,
        address,
        tunn: Tunn::new(
            key.secret(),
            x25519::PublicKey::from(target.peer.0),
            None,
            None,
            index(),
            None,
        ),
        received: vec![0; BUFFER],
        out: vec![0; BUFFER],
    };
    match session.handshake(target.timeout).await {
        Ok(round_trip) => {
            report.reachable = true;
            report.handshake_seconds = Some(round_trip.as_secs_f64());
        }
        Err(failure) => {
            report.error = Some(failure);
            return Ok(report);
        }
    }
    if let Some(echo) = target.echo {
        session.echoes(echo, target.timeout, &mut report).await;
    }
    // Every echo failure (a send refused, a reply missing) leaves its reason.
    report.success = report.error.is_none();
    Ok(report)
}

/// The first address of `endpoint`, resolved within `timeout`.
async fn resolve(endpoint: &str, timeout: Duration) -> Option<SocketAddr> {
    if let Ok(address) = endpoint.parse() {
        return Some(address);
    }
    tokio::time::timeout(timeout, tokio::net::lookup_host(endpoint)).await.ok()?.ok()?.next()
}

/// This probe's session index (24 bits: boringtun adds 8 of its own).
fn index() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    (nanos ^ std::process::id().rotate_left(12)) & 0x00ff_ffff
}

/// One tunnel with the gateway over a connected UDP socket.
struct Session {
    socket: UdpSocket,
    address: SocketAddr,
    tunn: Tunn,
    received: Vec<u8>,
    out: Vec<u8>,
}

/// What one datagram from the gateway brought.
enum Incoming {
    /// An inner IPv4 packet.
    Packet(Vec<u8>),
    /// A handshake response the tunnel accepted, to the initiation with this sender index.
    Response(u32),
    /// Nothing for the caller (a handshake message, a keepalive, a packet refused).
    Nothing,
}

impl Session {
    /// Sends initiations (again after [`FIRST_RESEND`], doubling up to [`MAX_RESEND`]) until a
    /// response completes the handshake; the round trip from the initiation it answers, or
    /// why none came.
    async fn handshake(&mut self, timeout: Duration) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        // Each initiation's sender index (bytes 4..8, little-endian) and when it left.
        let mut sent: Vec<(u32, Instant)> = Vec::new();
        let mut wait = FIRST_RESEND;
        let mut resend_at = Instant::now();
        loop {
            if Instant::now() >= resend_at {
                if let TunnResult::WriteToNetwork(packet) =
                    self.tunn.format_handshake_initiation(&mut self.out, true)
                {
                    let index = packet.get(4..8).and_then(|bytes| bytes.try_into().ok());
                    self.socket.send(packet).await.map_err(|e| self.send_failure(&e))?;
                    if let Some(index) = index {
                        sent.push((u32::from_le_bytes(index), Instant::now()));
                    }
                }
                resend_at = Instant::now() + wait;
                wait = (wait * 2).min(MAX_RESEND);
            }
            match self.receive(deadline.min(resend_at)).await? {
                Some(Incoming::Response(index)) => {
                    let answered = sent.iter().rev().find(|(sender, _)| *sender == index);
                    if let Some((_, at)) = answered {
                        return Ok(at.elapsed());
                    }
                }
                Some(_) => {}
                None if Instant::now() >= deadline => {
                    return Err(format!(
                        "no handshake response within {}: the gateway is down, the path drops \
                         its UDP, or the gateway does not know this key or has another key \
                         than the one given for it",
                        humantime::format_duration(timeout)
                    ));
                }
                None => {}
            }
        }
    }

    /// Sends `echo.count` echo requests one after the other, each waiting for its reply at
    /// most `timeout`; fills the report's echoes, counts and loss.
    async fn echoes(&mut self, echo: EchoTarget, timeout: Duration, report: &mut ProbeReport) {
        let id = u16::try_from(std::process::id() & 0xffff).unwrap_or_default();
        for seq in 1..=echo.count {
            let request = icmp::Echo { source: echo.source, target: echo.target, id, seq };
            let packet = icmp::echo_request(request, ECHO_PAYLOAD);
            let sent_at = Instant::now();
            if let TunnResult::WriteToNetwork(datagram) =
                self.tunn.encapsulate(&packet, &mut self.out)
                && let Err(error) = self.socket.send(datagram).await
            {
                report.error = Some(self.send_failure(&error));
                break;
            }
            report.sent += 1;
            let rtt = self.await_reply(request, sent_at, sent_at + timeout).await;
            report.received += u16::from(rtt.is_some());
            report.echoes.push(EchoResult { seq, rtt_seconds: rtt.map(|rtt| rtt.as_secs_f64()) });
        }
        let lost = report.sent - report.received;
        report.loss =
            Some(if report.sent == 0 { 1.0 } else { f64::from(lost) / f64::from(report.sent) });
        if lost > 0 && report.error.is_none() {
            report.error = Some(format!(
                "{lost} of {} echoes to {} unanswered within {}",
                report.sent,
                echo.target,
                humantime::format_duration(timeout)
            ));
        }
    }

    /// The round trip of `request` (sent at `sent_at`), when its reply comes before `deadline`.
    async fn await_reply(
        &mut self,
        request: icmp::Echo,
        sent_at: Instant,
        deadline: Instant,
    ) -> Option<Duration> {
        loop {
            let Ok(Some(Incoming::Packet(packet))) = self.receive(deadline).await else {
                if Instant::now() >= deadline {
                    return None;
                }
                continue;
            };
            let answers = icmp::echo_reply(&packet).is_some_and(|reply| {
                reply.id == request.id && reply.seq == request.seq && reply.source == request.target
            });
            if answers {
                return Some(sent_at.elapsed());
            }
        }
    }

    /// Waits for one datagram until `deadline` and hands it to the tunnel, sending whatever
    /// the tunnel answers (the keepalive that confirms a new session, queued packets).
    /// `Ok(None)` at the deadline; `Err` when the socket reports a failure (ICMP port
    /// unreachable comes back as a refused receive on a connected socket).
    async fn receive(&mut self, deadline: Instant) -> Result<Option<Incoming>, String> {
        let length =
            match tokio::time::timeout_at(deadline.into(), self.socket.recv(&mut self.received))
                .await
            {
                Err(_elapsed) => return Ok(None),
                Ok(Ok(length)) => length,
                Ok(Err(error)) => return Err(self.receive_failure(&error)),
            };
        let from = Some(self.address.ip());
        let mut incoming = Incoming::Nothing;
        let mut datagram = &self.received[..length];
        // A response's receiver index (bytes 8..12): the sender index of its initiation.
        let response = match datagram {
            [HANDSHAKE_RESPONSE, _, _, _, _, _, _, _, a, b, c, d, ..] => {
                Some(u32::from_le_bytes([*a, *b, *c, *d]))
            }
            _ => None,
        };
        loop {
            match self.tunn.decapsulate(from, datagram, &mut self.out) {
                TunnResult::WriteToNetwork(packet) => {
                    // An accepted response makes the tunnel send a keepalive to confirm it.
                    if let Some(index) = response.filter(|_| !datagram.is_empty()) {
                        incoming = Incoming::Response(index);
                    }
                    self.socket.send(packet).await.map_err(|e| self.send_failure(&e))?;
                    // Whatever the tunnel queued goes out too.
                    datagram = &[];
                    continue;
                }
                TunnResult::WriteToTunnelV4(packet, _source) => {
                    incoming = Incoming::Packet(packet.to_vec());
                }
                TunnResult::Err(error) => log::debug!("probe: a datagram refused: {error:?}"),
                TunnResult::Done | TunnResult::WriteToTunnelV6(..) => {}
            }
            break;
        }
        Ok(Some(incoming))
    }

    fn send_failure(&self, error: &std::io::Error) -> String {
        format!("sending to {}: {error}", self.address)
    }

    fn receive_failure(&self, error: &std::io::Error) -> String {
        if error.kind() == std::io::ErrorKind::ConnectionRefused {
            format!(
                "{} answered ICMP port unreachable: nothing listens on that UDP port",
                self.address
            )
        } else {
            format!("receiving from {}: {error}", self.address)
        }
    }
}

/// The key and limits behind `/probe`: the key comes from the configuration, never from the
/// request; at most [`Prober::MAX_RUNNING`] probes run at once.
#[derive(Debug)]
pub struct Prober {
    key: PrivateKey,
    slots: tokio::sync::Semaphore,
    /// How long the handshake, and each echo, may take.
    pub timeout: Duration,
    /// Echoes per probe when the request asks for them.
    pub count: u16,
}

impl Prober {
    /// Probes running at once; more wait for a slot (at most their timeout).
    pub const MAX_RUNNING: usize = 8;

    /// A prober with the key of `private_key_file`.
    pub fn load(
        private_key_file: &Path,
        timeout: Duration,
        count: u16,
    ) -> Result<Self, ProbeError> {
        Ok(Self {
            key: PrivateKey::read(private_key_file)?,
            slots: tokio::sync::Semaphore::new(Self::MAX_RUNNING),
            timeout,
            count,
        })
    }

    /// Runs `target` once a slot is free; `None` when none frees up within the timeout.
    pub async fn run(&self, target: &ProbeTarget) -> Option<Result<ProbeReport, ProbeError>> {
        let _slot = tokio::time::timeout(self.timeout, self.slots.acquire()).await.ok()?.ok()?;
        Some(probe(&self.key, target).await)
    }
}
