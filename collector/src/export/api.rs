//! The HTTP listener: `/metrics` (Prometheus), `/api/v1/peers`, `/api/v1/interfaces`,
//! `/api/v1/events`, `/api/v1/alerts` and `/api/v1/checks` (JSON), `/healthz`. It serves the latest snapshot; it never reaches into a source.
//! `/probe` ([`super::probe`]) runs an outside-in probe per request.

use std::{
    collections::BTreeMap,
    future::Future,
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use bytes::{BufMut as _, Bytes, BytesMut};
use collector_common::latency::LatencyKind;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    export::{listener::Security, otlp::ExportStats, prometheus},
    model::{
        CollectionHealth, Diagnosis, Directional, LatencySnapshot, PublishedHealth,
        STALE_AFTER_INTERVALS, Snapshot, Unavailable,
    },
    rules::Alert,
    webhook::WebhookStats,
};

/// What the handlers read: the latest snapshot and the collection's health.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The latest snapshot.
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// Whether collection works, and when the latest snapshot was published.
    pub health: watch::Receiver<PublishedHealth>,
    /// The collection period: a snapshot older than three of them is stale.
    pub interval: Duration,
    /// The OTLP exporter's record, when OTLP export is on.
    pub otlp: Option<Arc<ExportStats>>,
    /// The alert webhook's record, when a webhook is configured.
    pub webhook: Option<Arc<WebhookStats>>,
    /// What `/probe` runs with, when `[probe]` is configured.
    pub prober: Option<Arc<crate::probe::Prober>>,
}

/// A latency distribution in milliseconds (percentiles `null` without samples).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Samples.
    pub count: u64,
    /// Standard deviation of the last interval's samples; `null` below two samples.
    pub jitter: Option<f64>,
    /// Round trips never answered.
    pub lost: u64,
}

impl LatencySummary {
    fn from_snapshot(latency: &LatencySnapshot) -> Self {
        let ms = |seconds: Option<f64>| seconds.map(|s| s * 1e3);
        Self {
            p50: ms(latency.p50),
            p90: ms(latency.p90),
            p99: ms(latency.p99),
            count: latency.count,
            jitter: ms(latency.jitter),
            lost: latency.lost,
        }
    }
}

/// One peer in `/api/v1/peers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiPeer {
    /// WireGuard interface.
    pub interface: String,
    /// The interface's network namespace (`wireguard.netns`); absent in the start one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Public key, base64.
    pub public_key: String,
    /// Friendly name, when configured.
    pub name: Option<String>,
    /// Current endpoint, when known.
    pub endpoint: Option<String>,
    /// AllowedIPs, `address/cidr`.
    pub allowed_ips: Vec<String>,
    /// Persistent keepalive interval in seconds; `null` when off.
    pub persistent_keepalive: Option<u16>,
    /// Seconds since the last handshake, when the daemon read it; `null` when never.
    pub last_handshake_seconds_ago: Option<f64>,
    /// The last handshake, seconds since the Unix epoch (`wg show dump`'s latest-handshake,
    /// with the fraction); `null` when never.
    #[serde(default)]
    pub last_handshake_unix: Option<f64>,
    /// Bytes received (WireGuard's counter).
    pub rx_bytes: u64,
    /// Bytes sent (WireGuard's counter).
    pub tx_bytes: u64,
    /// Inner packets received (eBPF).
    pub rx_packets: u64,
    /// Inner packets sent (eBPF).
    pub tx_packets: u64,
    /// Receive rate over the last interval, bytes per second.
    pub rx_bytes_per_second: f64,
    /// Transmit rate over the last interval, bytes per second.
    pub tx_bytes_per_second: f64,
    /// Kernel drops tied to this peer, by reason (`unknown` on a kernel without reasons);
    /// `null` when the kernel's drops are not counted (`kernel_drops` in the interface's
    /// `unavailable`): unknown, not zero.
    pub drops: Option<BTreeMap<String, u64>>,
    /// Outer IP fragments of this peer's datagrams on the underlay.
    pub fragments: Directional,
    /// WireGuard messages on the underlay by type (`handshake_initiation`, ...).
    pub messages: BTreeMap<String, Directional>,
    /// Handshake initiations sent that no response answered.
    pub unanswered_initiations: u64,
    /// ICMP fragmentation-needed / packet-too-big about this peer's datagrams.
    pub icmp_too_big: Directional,
    /// ICMP destination unreachable about this peer's datagrams.
    pub icmp_unreachable: Directional,
    /// The MTU the latest too-big message reported; `null` when none came.
    pub path_mtu: Option<u32>,
    /// Handshake initiation to response; `null` until measured.
    pub handshake_rtt_ms: Option<LatencySummary>,
    /// The peer's initiation to this host's response; `null` until measured.
    pub handshake_response_ms: Option<LatencySummary>,
    /// Inner ICMP echo request to reply; `null` until measured.
    pub icmp_rtt_ms: Option<LatencySummary>,
    /// Inner SYN from the peer to this host's SYN-ACK; `null` until measured.
    pub tcp_response_ms: Option<LatencySummary>,
    /// Inner TCP SYN to SYN-ACK; `null` until measured.
    pub tcp_rtt_ms: Option<LatencySummary>,
    /// `active`, `idle` (no fresh handshake, nothing sent), `broken` (sending without a fresh
    /// handshake) or `never`.
    pub health: String,
    /// The rules firing for this peer (`handshake_stale`, ...); `/api/v1/alerts` has each
    /// with its value and since when.
    #[serde(default)]
    pub alerts: Vec<String>,
    /// The diagnosis codes holding for this peer, first code first (empty when nothing is
    /// wrong): `{code, since, evidence, counters}`.
    #[serde(default)]
    pub diagnosis: Vec<Diagnosis>,
}

impl ApiPeer {
    /// Every peer of `snapshot`, interfaces by name, peers in WireGuard's order.
    pub fn all(snapshot: &Snapshot) -> impl Iterator<Item = Self> + '_ {
        snapshot.peers().map(|(interface, peer)| Self {
            interface: interface.name.clone(),
            netns: interface.netns.clone(),
            public_key: peer.public_key.to_string(),
            name: peer.name.clone(),
            endpoint: peer.endpoint.map(|endpoint| endpoint.to_string()),
            allowed_ips: peer.allowed_ips.iter().map(ToString::to_string).collect(),
            persistent_keepalive: peer.persistent_keepalive,
            last_handshake_seconds_ago: peer.last_handshake_seconds_ago,
            last_handshake_unix: peer.last_handshake_unix,
            rx_bytes: peer.rx_bytes,
            tx_bytes: peer.tx_bytes,
            rx_packets: peer.rx_packets,
            tx_packets: peer.tx_packets,
            rx_bytes_per_second: peer.rx_bytes_per_second,
            tx_bytes_per_second: peer.tx_bytes_per_second,
            drops: peer.drops.clone(),
            fragments: peer.underlay.fragments,
            messages: peer
                .underlay
                .messages
                .iter()
                .map(|(_, name, count)| (name.to_owned(), count))
                .collect(),
            unanswered_initiations: peer.underlay.unanswered_initiations,
            icmp_too_big: peer.underlay.icmp_too_big,
            icmp_unreachable: peer.underlay.icmp_unreachable,
            path_mtu: peer.underlay.path_mtu,
            handshake_rtt_ms: summary(peer, LatencyKind::HandshakeInitiator),
            handshake_response_ms: summary(peer, LatencyKind::HandshakeResponder),
            icmp_rtt_ms: summary(peer, LatencyKind::IcmpRoundTrip),
            tcp_rtt_ms: summary(peer, LatencyKind::TcpRoundTrip),
            tcp_response_ms: summary(peer, LatencyKind::TcpResponse),
            health: peer.health.as_str().to_owned(),
            alerts: peer_alerts(snapshot, &interface.name, &peer.public_key.to_string()),
            diagnosis: snapshot.diagnosis(&interface.name, Some(&peer.public_key)),
        })
    }
}

/// `/api/v1/peers` pieces are handed over once they reach this many bytes.
const PEERS_PIECE: usize = 64 * 1024;

/// Writes `/api/v1/peers` of `snapshot` (a JSON array) one peer at a time, handing `send` a
/// piece whenever [`PEERS_PIECE`] bytes are written; stops when `send` answers `false`. The
/// whole array (9 MB at 10,000 peers) is never held.
fn peers_json(snapshot: &Snapshot, send: &mut dyn FnMut(io::Result<Bytes>) -> bool) {
    let mut piece = BytesMut::with_capacity(2 * PEERS_PIECE);
    piece.put_u8(b'[');
    for (index, peer) in ApiPeer::all(snapshot).enumerate() {
        if index > 0 {
            piece.put_u8(b',');
        }
        if let Err(error) = serde_json::to_writer((&mut piece).writer(), &peer) {
            send(Err(io::Error::other(error)));
            return;
        }
        if piece.len() >= PEERS_PIECE && !send(Ok(piece.split().freeze())) {
            return;
        }
    }
    piece.put_u8(b']');
    send(Ok(piece.freeze()));
}

/// The rules firing for the peer `key` on `interface` (an expected peer bound to no interface
/// counts on every one).
fn peer_alerts(snapshot: &Snapshot, interface: &str, key: &str) -> Vec<String> {
    snapshot
        .alerts
        .iter()
        .filter(|alert| alert.peer.as_deref() == Some(key))
        .filter(|alert| alert.interface.as_deref().is_none_or(|name| name == interface))
        .map(|alert| alert.rule.as_str().to_owned())
        .collect()
}

fn summary(peer: &crate::model::PeerSnapshot, kind: LatencyKind) -> Option<LatencySummary> {
    peer.latency.get(kind.as_str()).map(LatencySummary::from_snapshot)
}

/// One interface in `/api/v1/interfaces`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiInterface {
    /// Name.
    pub name: String,
    /// Kernel interface index, in its network namespace.
    pub ifindex: u32,
    /// Its network namespace (`wireguard.netns`); absent in the start one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// `kernel`, `wireguard-go`, `boringtun`, or `userspace` (a UAPI implementation not
    /// identified).
    pub implementation: String,
    /// UDP listen port.
    pub listen_port: Option<u16>,
    /// Its own public key (never its private key); `null` without a private key.
    pub public_key: Option<String>,
    /// How many peers it has.
    pub peers: usize,
    /// Drops not tied to a peer, by reason: `no_peer` on every kernel, the kernel's reasons
    /// when they are counted.
    pub drops: BTreeMap<String, u64>,
    /// Entries it holds in the kernel's AllowedIPs trie.
    pub allowed_ip_entries: usize,
    /// Datagrams to its listen port from no known peer endpoint or session.
    pub underlay_unknown_source: u64,
    /// What the running kernel cannot give for it (`tcx`, `drop_reasons`, `kernel_drops`),
    /// each with the reason; empty when nothing is missing.
    #[serde(default)]
    pub unavailable: Vec<Unavailable>,
    /// The interface-level diagnosis codes holding (`no_peer_route`, ...), first code first.
    #[serde(default)]
    pub diagnosis: Vec<Diagnosis>,
}

impl ApiInterface {
    /// Every interface of `snapshot`.
    pub fn from_snapshot(snapshot: &Snapshot) -> Vec<Self> {
        snapshot
            .interfaces
            .iter()
            .map(|interface| Self {
                name: interface.name.clone(),
                ifindex: interface.ifindex,
                netns: interface.netns.clone(),
                implementation: interface.implementation.as_str().into(),
                listen_port: interface.listen_port,
                public_key: interface.public_key.map(|key| key.to_string()),
                peers: interface.peers.len(),
                drops: interface.drops.clone(),
                allowed_ip_entries: interface.allowed_ip_entries,
                underlay_unknown_source: interface.underlay_unknown_source,
                unavailable: snapshot.unavailable.clone(),
                diagnosis: snapshot.diagnosis(&interface.name, None),
            })
            .collect()
    }
}

/// Serves the API on `listener` until `shutdown` completes, over TLS and behind a bearer
/// token when `security` says so, within the limits of [`listener`](super::listener).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    security: Security,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    super::listener::serve(listener, router(state), security, shutdown).await
}

fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/interfaces", get(interfaces))
        .route("/api/v1/events", get(events))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/checks", get(checks))
        .route("/healthz", get(healthz))
        .route("/probe", get(super::probe::probe))
        .with_state(state)
}

/// `/metrics`, streamed: a blocking thread renders the exposition piece by piece (off the
/// runtime that serves the API) and the response sends each piece as it comes; a client that
/// goes away stops the rendering.
async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let snapshot = state.snapshot.borrow().clone();
    let mut tail = String::new();
    prometheus::render_runtime(
        &mut tail,
        tokio::runtime::Handle::current().metrics().num_alive_tasks(),
    );
    if let Some(otlp) = &state.otlp {
        prometheus::render_otlp_stats(&mut tail, otlp);
    }
    if let Some(webhook) = &state.webhook {
        prometheus::render_webhook_stats(&mut tail, webhook);
    }
    let (chunks, body) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(2);
    drop(tokio::task::spawn_blocking(move || {
        prometheus::render_chunks(&snapshot, &tail, &mut |chunk| {
            chunks.blocking_send(Ok(chunk)).is_ok()
        });
    }));
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(body));
    ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], body)
}

/// Every peer, streamed as `/metrics` is: a blocking thread serializes one peer at a time
/// (off the runtime that serves the API) and the response sends each piece as it comes; a
/// client that goes away stops the serializing.
async fn peers(State(state): State<ApiState>) -> impl IntoResponse {
    let snapshot = state.snapshot.borrow().clone();
    let (chunks, body) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(2);
    drop(tokio::task::spawn_blocking(move || {
        peers_json(&snapshot, &mut |chunk| chunks.blocking_send(chunk).is_ok());
    }));
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(body));
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn interfaces(State(state): State<ApiState>) -> Json<Vec<ApiInterface>> {
    let snapshot = state.snapshot.borrow().clone();
    Json(ApiInterface::from_snapshot(&snapshot))
}

/// `?limit=N` of `/api/v1/events`.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    limit: Option<usize>,
}

/// The latest events, newest first (`limit`, default 100).
async fn events(
    State(state): State<ApiState>,
    axum::extract::Query(query): axum::extract::Query<EventsQuery>,
) -> Json<Vec<crate::events::Event>> {
    let snapshot = state.snapshot.borrow().clone();
    Json(snapshot.events.iter().take(query.limit.unwrap_or(100)).cloned().collect())
}

/// Every alert firing: per peer and host-wide.
async fn alerts(State(state): State<ApiState>) -> Json<Vec<Alert>> {
    let snapshot = state.snapshot.borrow().clone();
    Json(snapshot.alerts.clone())
}

/// Every synthetic check's latest result, in configuration order.
async fn checks(State(state): State<ApiState>) -> Json<Vec<crate::checks::CheckResult>> {
    let snapshot = state.snapshot.borrow().clone();
    Json(snapshot.checks.clone())
}

async fn healthz(State(state): State<ApiState>) -> (StatusCode, String) {
    let published = state.health.borrow().clone();
    health_answer(&published, state.interval, Instant::now())
}

/// `/healthz` at `now`: 200 while the latest collection worked and its snapshot is younger than
/// [`STALE_AFTER_INTERVALS`] intervals, else 503 and why (a stuck collector leaves the last
/// snapshot in place: its age tells).
fn health_answer(
    published: &PublishedHealth,
    interval: Duration,
    now: Instant,
) -> (StatusCode, String) {
    let age = now.saturating_duration_since(published.at);
    let limit = interval * STALE_AFTER_INTERVALS;
    match &published.health {
        CollectionHealth::Starting => {
            (StatusCode::SERVICE_UNAVAILABLE, "starting: no collection finished yet\n".into())
        }
        _ if age > limit => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stale: the newest snapshot is {:.1} s old, more than {STALE_AFTER_INTERVALS} \
                 intervals ({}): collection is stuck\n",
                age.as_secs_f64(),
                humantime::format_duration(limit)
            ),
        ),
        CollectionHealth::Healthy => (StatusCode::OK, "ok\n".into()),
        CollectionHealth::Failing { reason } => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;
    use crate::export::prometheus::tests::snapshot as test_snapshot;

    fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(address).expect("connecting");
        write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").expect("writing");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("reading");
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status");
        (status, body.to_owned())
    }

    /// `/api/v1/peers` of [`test_snapshot`], written out by hand.
    const PEERS_JSON: &str = r#"[
      {"interface": "wg0", "public_key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
       "name": "al\"ice\\", "endpoint": "198.18.1.10:51820", "allowed_ips": [],
       "persistent_keepalive": null, "last_handshake_seconds_ago": 12.5,
       "last_handshake_unix": 1795999987.5, "diagnosis": [],
       "rx_bytes": 1000, "tx_bytes": 2000, "rx_packets": 50, "tx_packets": 51,
       "rx_bytes_per_second": 10.0, "tx_bytes_per_second": 20.5, "drops": {},
       "fragments": {"receive": 0, "transmit": 0}, "messages": {
         "cookie_reply": {"receive": 0, "transmit": 0},
         "handshake_initiation": {"receive": 0, "transmit": 0},
         "handshake_response": {"receive": 0, "transmit": 0},
         "invalid": {"receive": 0, "transmit": 0}, "keepalive": {"receive": 0, "transmit": 0},
         "transport_data": {"receive": 0, "transmit": 0}}, "unanswered_initiations": 0,
       "icmp_too_big": {"receive": 0, "transmit": 0},
       "icmp_unreachable": {"receive": 0, "transmit": 0}, "path_mtu": null,
       "handshake_rtt_ms": null, "handshake_response_ms": null, "icmp_rtt_ms": null,
       "tcp_response_ms": null, "tcp_rtt_ms": null, "health": "active", "alerts": []},
      {"interface": "wg0", "public_key": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
       "name": null, "endpoint": "198.18.1.10:51820", "allowed_ips": [],
       "persistent_keepalive": null, "last_handshake_seconds_ago": null,
       "last_handshake_unix": null, "diagnosis": [],
       "rx_bytes": 1000, "tx_bytes": 2000, "rx_packets": 50, "tx_packets": 51,
       "rx_bytes_per_second": 10.0, "tx_bytes_per_second": 20.5, "drops": {},
       "fragments": {"receive": 0, "transmit": 0}, "messages": {
         "cookie_reply": {"receive": 0, "transmit": 0},
         "handshake_initiation": {"receive": 0, "transmit": 0},
         "handshake_response": {"receive": 0, "transmit": 0},
         "invalid": {"receive": 0, "transmit": 0}, "keepalive": {"receive": 0, "transmit": 0},
         "transport_data": {"receive": 0, "transmit": 0}}, "unanswered_initiations": 0,
       "icmp_too_big": {"receive": 0, "transmit": 0},
       "icmp_unreachable": {"receive": 0, "transmit": 0}, "path_mtu": null,
       "handshake_rtt_ms": null, "handshake_response_ms": null, "icmp_rtt_ms": null,
       "tcp_response_ms": null, "tcp_rtt_ms": null, "health": "never", "alerts": []}
    ]"#;

    /// `/api/v1/interfaces` of [`test_snapshot`], written out by hand.
    const INTERFACES_JSON: &str = r#"[
      {"name": "wg0", "ifindex": 7, "implementation": "wireguard-go", "listen_port": 51820,
       "public_key": "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=", "peers": 2,
       "drops": {"no_peer": 3}, "allowed_ip_entries": 2, "underlay_unknown_source": 0,
       "unavailable": [], "diagnosis": []}
    ]"#;

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).expect("JSON")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_route_answers_from_the_latest_snapshot() {
        let (_snapshots, snapshot) = watch::channel(Arc::new(test_snapshot()));
        let started = Instant::now();
        let (health_tx, health) =
            watch::channel(PublishedHealth { health: CollectionHealth::Starting, at: started });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let address = listener.local_addr().expect("an address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = ApiState {
            snapshot,
            health,
            interval: Duration::from_secs(3600),
            otlp: None,
            webhook: None,
            prober: None,
        };
        let server = tokio::spawn(serve(listener, state, Security::default(), async move {
            let _closed = stopped.await;
        }));

        let results = tokio::task::spawn_blocking(move || {
            let starting = get(address, "/healthz");
            let failing = CollectionHealth::Failing { reason: "interface wg1: gone".into() };
            health_tx.send_replace(PublishedHealth { health: failing, at: Instant::now() });
            let failing = get(address, "/healthz");
            health_tx
                .send_replace(PublishedHealth { health: CollectionHealth::Healthy, at: started });
            let healthy = get(address, "/healthz");
            let peers = get(address, "/api/v1/peers");
            let interfaces = get(address, "/api/v1/interfaces");
            let metrics = get(address, "/metrics");
            let missing = get(address, "/nope");
            let probe_off = get(address, "/probe?endpoint=198.18.0.1:51820");
            (starting, failing, healthy, peers, interfaces, metrics, missing, probe_off)
        })
        .await
        .expect("the client ran");
        let (starting, failing, healthy, peers, interfaces, metrics, missing, probe_off) = results;
        assert_eq!(starting, (503, "starting: no collection finished yet\n".into()));
        assert_eq!(failing, (503, "interface wg1: gone\n".into()));
        assert_eq!(healthy, (200, "ok\n".into()));
        assert_eq!(peers.0, 200);
        assert_eq!(json(&peers.1), json(PEERS_JSON));
        assert_eq!(interfaces.0, 200);
        assert_eq!(json(&interfaces.1), json(INTERFACES_JSON));
        assert_eq!(metrics.0, 200);
        assert!(
            metrics.1.contains(
                "\nwireguard_interface_drops_total{wireguard_interface=\"wg0\",\
                 wireguard_drop_reason=\"no_peer\"} 3\n"
            ),
            "{}",
            metrics.1
        );
        assert_eq!(missing.0, 404);
        let off = "404: /probe is off: set [probe] private-key-file in the configuration\n";
        assert_eq!(probe_off, (404, off.into()));

        let _stopped = stop.send(());
        server.await.expect("the server task").expect("the server");
    }

    #[test]
    fn the_peers_array_comes_in_pieces_and_stops_for_a_gone_reader() {
        let gateway = prometheus::tests::gateway_of(2_000);
        let mut pieces = Vec::new();
        peers_json(&gateway, &mut |piece| {
            pieces.push(piece.expect("a piece"));
            true
        });
        assert!(pieces.len() > 5, "{} pieces", pieces.len());
        assert!(pieces.iter().all(|piece| piece.len() < 2 * PEERS_PIECE));
        let whole: Vec<u8> = pieces.concat();
        let peers: Vec<ApiPeer> = serde_json::from_slice(&whole).expect("one JSON array");
        assert_eq!(peers.len(), 2_000);
        assert_eq!(peers, ApiPeer::all(&gateway).collect::<Vec<_>>());
        let mut sent = 0;
        peers_json(&gateway, &mut |_| {
            sent += 1;
            false
        });
        assert_eq!(sent, 1, "nothing more after the reader left");
    }
    #[test]
    fn a_snapshot_older_than_three_intervals_is_stale_whatever_its_health() {
        let at = Instant::now();
        let interval = Duration::from_millis(200);
        let answer = |health: CollectionHealth, age_ms: u64| {
            let published = PublishedHealth { health, at };
            let (status, body) =
                health_answer(&published, interval, at + Duration::from_millis(age_ms));
            (status.as_u16(), body)
        };
        assert_eq!(answer(CollectionHealth::Healthy, 600), (200, "ok\n".into()));
        let stale = "stale: the newest snapshot is 0.7 s old, more than 3 intervals (600ms): \
                     collection is stuck\n";
        assert_eq!(answer(CollectionHealth::Healthy, 650), (503, stale.into()));
        let failing = CollectionHealth::Failing { reason: "interface wg0: timed out".into() };
        assert_eq!(answer(failing.clone(), 100), (503, "interface wg0: timed out\n".into()));
        assert_eq!(answer(failing, 650), (503, stale.into()));
        assert_eq!(
            answer(CollectionHealth::Starting, 5000),
            (503, "starting: no collection finished yet\n".into())
        );
    }
}
