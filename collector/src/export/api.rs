//! The HTTP listener: `/metrics` (Prometheus), `/api/v1/peers` and `/api/v1/interfaces`
//! (JSON), `/healthz`. It serves the latest snapshot; it never reaches into a source.

use std::{collections::BTreeMap, future::Future, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use collector_common::latency::LatencyKind;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    export::{otlp::ExportStats, prometheus},
    model::{CollectionHealth, Diagnosis, Directional, LatencySnapshot, Snapshot},
    rules::Alert,
    webhook::WebhookStats,
};

/// What the handlers read: the latest snapshot and the collection's health.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The latest snapshot.
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// Whether collection works.
    pub health: watch::Receiver<CollectionHealth>,
    /// The OTLP exporter's record, when OTLP export is on.
    pub otlp: Option<Arc<ExportStats>>,
    /// The alert webhook's record, when a webhook is configured.
    pub webhook: Option<Arc<WebhookStats>>,
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
    /// Seconds since the last handshake; `null` when never.
    pub last_handshake_seconds_ago: Option<f64>,
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
    /// Drops tied to this peer, by reason.
    pub drops: BTreeMap<String, u64>,
    /// Outer IP fragments of this peer's datagrams on the underlay.
    pub fragments: Directional,
    /// WireGuard messages on the underlay by type (`handshake_initiation`, ...).
    pub messages: BTreeMap<String, Directional>,
    /// Handshake initiations sent that no response answered.
    pub unanswered_initiations: u64,
    /// ICMP fragmentation-needed / packet-too-big about this peer's datagrams.
    pub icmp_too_big: Directional,
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
    pub fn from_snapshot(snapshot: &Snapshot) -> Vec<Self> {
        snapshot
            .peers()
            .map(|(interface, peer)| Self {
                interface: interface.name.clone(),
                public_key: peer.public_key.to_string(),
                name: peer.name.clone(),
                endpoint: peer.endpoint.map(|endpoint| endpoint.to_string()),
                allowed_ips: peer.allowed_ips.iter().map(ToString::to_string).collect(),
                persistent_keepalive: peer.persistent_keepalive,
                last_handshake_seconds_ago: peer.last_handshake_seconds_ago,
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
                    .map(|(kind, count)| ((*kind).to_owned(), *count))
                    .collect(),
                unanswered_initiations: peer.underlay.unanswered_initiations,
                icmp_too_big: peer.underlay.icmp_too_big,
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
            .collect()
    }
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
    /// Kernel interface index.
    pub ifindex: u32,
    /// `kernel`, `wireguard-go`, `boringtun`, or `userspace` (a UAPI implementation not
    /// identified).
    pub implementation: String,
    /// UDP listen port.
    pub listen_port: Option<u16>,
    /// Its own public key (never its private key); `null` without a private key.
    pub public_key: Option<String>,
    /// How many peers it has.
    pub peers: usize,
    /// Drops not tied to a peer, by reason.
    pub drops: BTreeMap<String, u64>,
    /// Entries it holds in the kernel's AllowedIPs trie.
    pub allowed_ip_entries: usize,
    /// Datagrams to its listen port from no known peer endpoint or session.
    pub underlay_unknown_source: u64,
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
                implementation: interface.implementation.as_str().into(),
                listen_port: interface.listen_port,
                public_key: interface.public_key.map(|key| key.to_string()),
                peers: interface.peers.len(),
                drops: interface.drops.clone(),
                allowed_ip_entries: interface.allowed_ip_entries,
                underlay_unknown_source: interface.underlay_unknown_source,
                diagnosis: snapshot.diagnosis(&interface.name, None),
            })
            .collect()
    }
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/interfaces", get(interfaces))
        .route("/api/v1/events", get(events))
        .route("/api/v1/alerts", get(alerts))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let snapshot = state.snapshot.borrow().clone();
    let mut text = prometheus::render(&snapshot);
    if let Some(otlp) = &state.otlp {
        prometheus::render_otlp_stats(&mut text, otlp);
    }
    if let Some(webhook) = &state.webhook {
        prometheus::render_webhook_stats(&mut text, webhook);
    }
    ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], text)
}

async fn peers(State(state): State<ApiState>) -> Json<Vec<ApiPeer>> {
    let snapshot = state.snapshot.borrow().clone();
    Json(ApiPeer::from_snapshot(&snapshot))
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

async fn healthz(State(state): State<ApiState>) -> (StatusCode, String) {
    match &*state.health.borrow() {
        CollectionHealth::Healthy => (StatusCode::OK, "ok\n".into()),
        CollectionHealth::Starting => {
            (StatusCode::SERVICE_UNAVAILABLE, "starting: no collection finished yet\n".into())
        }
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_route_answers_from_the_latest_snapshot() {
        let (_snapshots, snapshot) = watch::channel(Arc::new(test_snapshot()));
        let (health_tx, health) = watch::channel(CollectionHealth::Starting);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let address = listener.local_addr().expect("an address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            ApiState { snapshot, health, otlp: None, webhook: None },
            async move {
                let _closed = stopped.await;
            },
        ));

        let results = tokio::task::spawn_blocking(move || {
            let starting = get(address, "/healthz");
            health_tx
                .send_replace(CollectionHealth::Failing { reason: "interface wg1: gone".into() });
            let failing = get(address, "/healthz");
            health_tx.send_replace(CollectionHealth::Healthy);
            let healthy = get(address, "/healthz");
            let peers = get(address, "/api/v1/peers");
            let interfaces = get(address, "/api/v1/interfaces");
            let metrics = get(address, "/metrics");
            let missing = get(address, "/nope");
            (starting, failing, healthy, peers, interfaces, metrics, missing)
        })
        .await
        .expect("the client ran");
        let (starting, failing, healthy, peers, interfaces, metrics, missing) = results;
        assert_eq!(starting, (503, "starting: no collection finished yet\n".into()));
        assert_eq!(failing, (503, "interface wg1: gone\n".into()));
        assert_eq!(healthy, (200, "ok\n".into()));
        assert_eq!(peers.0, 200);
        let listed: Vec<ApiPeer> = serde_json::from_str(&peers.1).expect("a peer list");
        assert_eq!(listed, ApiPeer::from_snapshot(&test_snapshot()));
        assert_eq!(listed[0].name.as_deref(), Some("al\"ice\\"));
        assert_eq!(listed[1].last_handshake_seconds_ago, None);
        assert_eq!(listed[1].health, "never");
        let json: serde_json::Value = serde_json::from_str(&peers.1).expect("JSON");
        for field in ["handshake_rtt_ms", "tcp_rtt_ms"] {
            assert!(json[0][field].is_null(), "{field}");
        }
        let interfaces: Vec<ApiInterface> =
            serde_json::from_str(&interfaces.1).expect("interfaces");
        assert_eq!(
            (interfaces[0].peers, interfaces[0].allowed_ip_entries, interfaces[0].drops["no_peer"]),
            (2, 2, 3)
        );
        assert_eq!(metrics, (200, prometheus::render(&test_snapshot())));
        assert_eq!(missing.0, 404);

        let _stopped = stop.send(());
        server.await.expect("the server task").expect("the server");
    }
}
