//! OpenTelemetry metrics over OTLP (gRPC or HTTP/protobuf), one export per snapshot.
//!
//! The SDK's observable instruments read the latest [`Snapshot`]; a [`ManualReader`] collects
//! them when a snapshot arrives, and one task exports the result. [`OtlpExporter::export`]
//! only replaces the snapshot waiting to be exported, so an endpoint that is down or slow
//! never backs up memory or collection: at most one snapshot waits.
//!
//! Settings follow the OpenTelemetry specification: `OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT`,
//! `_PROTOCOL` (`grpc`, the default here, or `http/protobuf`), `_HEADERS`, `_TIMEOUT`,
//! `_COMPRESSION` (`gzip`), the TLS variables of [`super::otlp_tls`], and the resource of
//! [`super::otlp_resource`] (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`).
//!
//! Longer than most modules (a third of it is tests): the SDK's instruments are registered one
//! by one; encoding the request straight from one descriptor table (issue 14) replaces that.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::{
    KeyValue,
    metrics::{Histogram, Meter, MeterProvider as _},
};
use opentelemetry_otlp::{
    LogExporter, MetricExporter, Protocol, WithExportConfig as _, WithHttpConfig as _,
    WithTonicConfig as _,
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Stream, Temporality,
        data::ResourceMetrics, exporter::PushMetricExporter, reader::MetricReader,
    },
};
use tokio::{sync::watch, task::JoinHandle};

use collector_common::latency::LATENCY_BUCKETS;

use crate::{
    export::{
        otlp_events::EventExport,
        otlp_resource::resource,
        otlp_tls::{OtlpTls, Signal, TlsError},
    },
    host::{NetworkInterfaceCounters, ProcessUsage},
    model::{InterfaceSnapshot, PeerSnapshot, PeerState, SeriesPeer, Snapshot},
    wg::PublicKey,
};

/// Series per instrument the SDK keeps before folding the rest into an overflow series. The
/// SDK's default is 2,000; a 10k-peer gateway has 20k series in a directional instrument.
pub const CARDINALITY_LIMIT: usize = 100_000;

/// How long shutdown waits for the last export.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds an OTLP exporter of type `$exporter` (`MetricExporter`, `LogExporter`) for
/// `$protocol`, sending to `$endpoint` when given (else to what the `OTEL_*` variables say),
/// with the TLS settings `$tls` when given.
macro_rules! build_exporter {
    ($exporter:ty, $signal:literal, $protocol:expr, $endpoint:expr, $tls:expr) => {{
        let endpoint: Option<&str> = $endpoint;
        let tls: Option<OtlpTls> = $tls;
        let exporter = match $protocol {
            Protocol::Grpc => {
                let mut builder = <$exporter>::builder().with_tonic();
                if let Some(tls) = &tls {
                    builder = builder.with_tls_config(tls.tonic());
                }
                match endpoint {
                    Some(endpoint) => builder.with_endpoint(endpoint).build(),
                    None => builder.build(),
                }
            }
            _ => {
                let mut builder =
                    <$exporter>::builder().with_http().with_protocol(Protocol::HttpBinary);
                if let Some(tls) = &tls {
                    builder = builder.with_http_client(tls.http_client().map_err(OtlpError::Tls)?);
                }
                match endpoint {
                    Some(endpoint) => {
                        builder.with_endpoint(http_signal_url(endpoint, $signal)).build()
                    }
                    None => builder.build(),
                }
            }
        };
        exporter.map_err(OtlpError::Build)
    }};
}

/// Why OTLP export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// `OTEL_EXPORTER_OTLP_(METRICS_)PROTOCOL` names a protocol wgtel does not speak.
    #[error("unsupported OTLP protocol {0:?}: use `grpc` or `http/protobuf`")]
    Protocol(String),
    /// The SDK refused to build the exporter (a malformed endpoint or header, say).
    #[error("building the OTLP exporter")]
    Build(#[source] opentelemetry_otlp::ExporterBuildError),
    /// The TLS certificate or key files cannot be used.
    #[error("OTLP TLS")]
    Tls(#[source] TlsError),
}

/// Exports snapshots over OTLP from a task of its own.
#[derive(Debug)]
pub struct OtlpExporter {
    pending: watch::Sender<Option<Arc<Snapshot>>>,
    task: JoinHandle<()>,
    stats: Arc<ExportStats>,
}

/// What the exporting task did, for `/metrics`.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Wall time of the latest export, as `f64` bits.
    last_seconds: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
}

impl ExportStats {
    fn record(&self, took: Duration, ok: bool) {
        self.last_seconds.store(took.as_secs_f64().to_bits(), Ordering::Relaxed);
        let outcome = if ok { &self.succeeded } else { &self.failed };
        outcome.fetch_add(1, Ordering::Relaxed);
    }

    /// The latest export's wall time in seconds: the SDK's collection of the snapshot,
    /// protobuf encoding, sending and the endpoint's answer.
    pub fn last_seconds(&self) -> f64 {
        f64::from_bits(self.last_seconds.load(Ordering::Relaxed))
    }

    /// Exports that succeeded and that failed since the start.
    pub fn outcomes(&self) -> (u64, u64) {
        (self.succeeded.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

impl OtlpExporter {
    /// The exporter that `endpoint` (the `--otlp-endpoint` flag) or else the `OTEL_*`
    /// variables ask for; `None` when neither names an endpoint. Must be called inside the
    /// tokio runtime (the gRPC client lives on it).
    pub fn from_env(endpoint: Option<String>) -> Result<Option<Self>, OtlpError> {
        let configured = endpoint.is_some()
            || ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
                .iter()
                .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
        if !configured {
            return Ok(None);
        }
        let protocol = protocol_from_env()?;
        let tls = |signal| OtlpTls::from_env(signal, endpoint.as_deref()).map_err(OtlpError::Tls);
        let metrics_tls = tls(Signal::Metrics)?;
        let logs_tls = tls(Signal::Logs)?;
        let exporter =
            build_exporter!(MetricExporter, "metrics", protocol, endpoint.as_deref(), metrics_tls)?;
        let mut logs =
            build_exporter!(LogExporter, "logs", protocol, endpoint.as_deref(), logs_tls)?;
        opentelemetry_sdk::logs::LogExporter::set_resource(&mut logs, &resource());
        let shown = endpoint
            .or_else(|| {
                ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
                    .iter()
                    .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
            })
            .unwrap_or_default();
        Ok(Some(Self::start(exporter, Some(EventExport::new(logs)), shown)))
    }

    /// Starts the exporting task on the current tokio runtime. Generic so that tests can
    /// watch what reaches the exporter.
    fn start<E: PushMetricExporter, L: opentelemetry_sdk::logs::LogExporter + 'static>(
        exporter: E,
        mut events: Option<EventExport<L>>,
        endpoint: String,
    ) -> Self {
        let current = Arc::new(Mutex::new(Arc::new(Snapshot::empty())));
        // The temporality the exporter asks for (the OTLP exporter reads
        // `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`; cumulative by default).
        let reader = SharedReader(Arc::new(
            ManualReader::builder().with_temporality(exporter.temporality()).build(),
        ));
        let provider = meter_provider(reader.clone(), resource(), &current);
        let mut latency = LatencyExport::new(resource());
        let (pending, mut snapshots) = watch::channel(None::<Arc<Snapshot>>);
        let stats = Arc::new(ExportStats::default());
        let task_stats = Arc::clone(&stats);
        let task = tokio::spawn(async move {
            let mut metrics_health = ExportHealth::default();
            let mut events_health = ExportHealth::default();
            let mut metrics = ResourceMetrics::default();
            let mut histograms = ResourceMetrics::default();
            while snapshots.changed().await.is_ok() {
                let Some(snapshot) = snapshots.borrow_and_update().clone() else { continue };
                let started = Instant::now();
                latency.record(&snapshot);
                *current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&snapshot);
                let mut result = match reader.0.collect(&mut metrics) {
                    Ok(()) => exporter.export(&metrics).await,
                    Err(error) => Err(error),
                };
                if result.is_ok() {
                    result = match latency.reader.0.collect(&mut histograms) {
                        Ok(()) if histograms.scope_metrics().next().is_some() => {
                            exporter.export(&histograms).await
                        }
                        Ok(()) => Ok(()),
                        Err(error) => Err(error),
                    };
                }
                task_stats.record(started.elapsed(), result.is_ok());
                metrics_health.report(&result, "OTLP export", &endpoint);
                if let Some(events) = &mut events {
                    let result = events.export(&snapshot).await;
                    events_health.report(&result, "OTLP event (log record) export", &endpoint);
                }
            }
            for provider in [&provider, &latency.provider] {
                if let Err(error) = provider.shutdown() {
                    log::debug!("shutting an OTLP meter provider down: {error}");
                }
            }
            if let Err(error) = exporter.shutdown() {
                log::debug!("shutting the OTLP exporter down: {error}");
            }
            if let Some(events) = &events
                && let Err(error) = events.shutdown()
            {
                log::debug!("shutting the OTLP log exporter down: {error}");
            }
        });
        Self { pending, task, stats }
    }

    /// What the exporter did so far.
    pub fn stats(&self) -> Arc<ExportStats> {
        Arc::clone(&self.stats)
    }

    /// Hands `snapshot` to the exporting task, replacing one that is still waiting. Never
    /// blocks.
    pub fn export(&self, snapshot: Arc<Snapshot>) {
        self.pending.send_replace(Some(snapshot));
    }

    /// Exports what is waiting, then stops; gives up after a few seconds.
    pub async fn shutdown(self) {
        let Self { pending, mut task, .. } = self;
        drop(pending);
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut task).await.is_err() {
            task.abort();
            log::warn!("OTLP export did not finish within {SHUTDOWN_TIMEOUT:?}; giving up on it");
        }
    }
}

/// Whether exports fail, so that a failing endpoint is logged once, and its recovery once.
#[derive(Debug, Default)]
struct ExportHealth {
    failing: bool,
}

impl ExportHealth {
    fn report(&mut self, result: &OTelSdkResult, what: &str, endpoint: &str) {
        match (result, self.failing) {
            (Err(error), false) => {
                log::warn!(
                    "{what} to {endpoint} failed: {error}; retrying every interval, quiet until \
                     it recovers"
                );
                self.failing = true;
            }
            (Ok(()), true) => {
                log::info!("{what} to {endpoint} recovered");
                self.failing = false;
            }
            _ => {}
        }
    }
}

/// `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`, else gRPC.
fn protocol_from_env() -> Result<Protocol, OtlpError> {
    let value = ["OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()));
    parse_protocol(value.as_deref())
}

fn parse_protocol(value: Option<&str>) -> Result<Protocol, OtlpError> {
    match value.map(str::trim) {
        None | Some("grpc") => Ok(Protocol::Grpc),
        Some("http/protobuf") => Ok(Protocol::HttpBinary),
        Some(other) => Err(OtlpError::Protocol(other.to_owned())),
    }
}

/// The URL of `signal` (`metrics`, `logs`) for an OTLP/HTTP base endpoint, as the
/// specification builds it from `OTEL_EXPORTER_OTLP_ENDPOINT`: `<base>/v1/<signal>`.
fn http_signal_url(endpoint: &str, signal: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    let path = format!("/v1/{signal}");
    if base.ends_with(&path) { base.to_owned() } else { format!("{base}{path}") }
}

/// The meter provider with wgtel's instruments, read by `reader`. One view raises every
/// instrument's cardinality limit to [`CARDINALITY_LIMIT`] (the SDK applies its default of
/// 2,000 series per instrument when no view sets one: `DEFAULT_CARDINALITY_LIMIT` in
/// opentelemetry_sdk 0.33 `src/metrics/pipeline.rs`).
fn meter_provider(
    reader: SharedReader,
    resource: Resource,
    current: &Arc<Mutex<Arc<Snapshot>>>,
) -> SdkMeterProvider {
    let provider = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(reader)
        .with_view(|_: &opentelemetry_sdk::metrics::Instrument| {
            Stream::builder().with_cardinality_limit(CARDINALITY_LIMIT).build().ok()
        })
        .build();
    let meter = provider.meter("wgtel");
    register_instruments(&meter, current);
    register_diagnosis(&meter, current);
    super::otlp_checks::register_up(&meter, current);
    provider
}

/// The latency histograms, `wireguard.peer.handshake.duration` and `wireguard.peer.rtt`. The
/// SDK has no observable histogram, so each snapshot's new samples (the kernel's bucket counts
/// grown since the previous snapshot) are recorded at their bucket's midpoint into histograms
/// whose bounds are the kernel's bucket edges, which keeps the kernel's resolution exactly.
/// Delta temporality, on a provider of their own: a removed peer's histograms stop.
struct LatencyExport {
    reader: SharedReader,
    provider: SdkMeterProvider,
    handshake: Histogram<f64>,
    rtt: Histogram<f64>,
    /// `wireguard.check.duration`.
    checks: super::otlp_checks::CheckDurations,
    /// Buckets at the previous snapshot by interface, peer (`None`: the aggregate) and kind.
    previous: HashMap<(String, Option<PublicKey>, &'static str), Vec<u64>>,
}

impl LatencyExport {
    fn new(resource: Resource) -> Self {
        let reader = SharedReader(Arc::new(
            ManualReader::builder().with_temporality(Temporality::Delta).build(),
        ));
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader.clone())
            .with_view(|_: &opentelemetry_sdk::metrics::Instrument| {
                Stream::builder().with_cardinality_limit(CARDINALITY_LIMIT).build().ok()
            })
            .build();
        let meter = provider.meter("wgtel");
        // Upper edges of the kernel's log2 buckets, 2^(b+1) ns, in seconds.
        let bounds: Vec<f64> =
            (0..LATENCY_BUCKETS).map(|bucket| (2u64 << bucket) as f64 / 1e9).collect();
        let handshake = meter
            .f64_histogram("wireguard.peer.handshake.duration")
            .with_unit("s")
            .with_description("Handshake initiation to response, by this host's role")
            .with_boundaries(bounds.clone())
            .build();
        let rtt = meter
            .f64_histogram("wireguard.peer.rtt")
            .with_unit("s")
            .with_description("Inner round trips: TCP SYN to SYN-ACK and ICMP echo, by kind")
            .with_boundaries(bounds)
            .build();
        let checks = super::otlp_checks::CheckDurations::new(&meter);
        Self { reader, provider, handshake, rtt, checks, previous: HashMap::new() }
    }

    /// Records the samples each peer and each check gained since the previous snapshot.
    fn record(&mut self, snapshot: &Snapshot) {
        self.checks.record(snapshot);
        let mut seen = HashMap::with_capacity(self.previous.len());
        for (interface, peer) in snapshot.series() {
            for (kind, latency) in &peer.latency {
                let identity = peer.aggregated.is_none().then_some(peer.public_key);
                let key = (interface.name.clone(), identity, *kind);
                let before = self.previous.remove(&key).unwrap_or_default();
                let (histogram, attribute) = match *kind {
                    "handshake_initiator" => {
                        (&self.handshake, ("wireguard.handshake.role", "initiator"))
                    }
                    "handshake_responder" => {
                        (&self.handshake, ("wireguard.handshake.role", "responder"))
                    }
                    other => (&self.rtt, ("wireguard.rtt.kind", other)),
                };
                let attributes = peer_attributes(
                    interface,
                    &peer,
                    Some(KeyValue::new(attribute.0, attribute.1)),
                );
                for (bucket, count) in latency.buckets.iter().enumerate() {
                    let new = count.saturating_sub(before.get(bucket).copied().unwrap_or(0));
                    let midpoint = (3u64 << bucket) as f64 / 2.0 / 1e9;
                    for _ in 0..new {
                        histogram.record(midpoint, &attributes);
                    }
                }
                seen.insert(key, latency.buckets.clone());
            }
        }
        self.previous = seen;
    }
}

/// The attributes of a userspace WireGuard process.
fn process_attributes(process: &ProcessUsage) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("process.pid", i64::from(process.pid)),
        KeyValue::new("process.executable.name", process.name.clone()),
    ];
    if let Some(interface) = &process.interface {
        attributes.push(KeyValue::new("wireguard.interface", interface.clone()));
    }
    attributes
}

/// The attributes that name `interface` (`wireguard.interface`, and `wireguard.netns` outside
/// the start namespace), then `extra`.
fn interface_attributes(interface: &InterfaceSnapshot, extra: Option<KeyValue>) -> Vec<KeyValue> {
    let mut attributes = vec![KeyValue::new("wireguard.interface", interface.name.clone())];
    if let Some(netns) = &interface.netns {
        attributes.push(KeyValue::new("wireguard.netns", netns.clone()));
    }
    attributes.extend(extra);
    attributes
}

/// The attributes of every peer metric, then `extra`. The sum of the peers without series of
/// their own carries the interface and `otel.metric.overflow = true` instead of a key.
fn peer_attributes(
    interface: &InterfaceSnapshot,
    peer: &SeriesPeer<'_>,
    extra: Option<KeyValue>,
) -> Vec<KeyValue> {
    let mut attributes = interface_attributes(interface, None);
    if peer.aggregated.is_some() {
        attributes.push(KeyValue::new("otel.metric.overflow", true));
    } else {
        attributes.push(KeyValue::new("wireguard.peer.public_key", peer.public_key.to_string()));
    }
    if let Some(name) = &peer.name {
        attributes.push(KeyValue::new("wireguard.peer.name", name.clone()));
    }
    attributes.extend(extra);
    attributes
}

/// Registers the contract's instruments; their callbacks read `current`.
///
/// A removed peer's series stop with it, because opentelemetry_sdk 0.33 reports an
/// observable instrument's attribute set only when the latest callback observed it:
/// `aggregate_fn` in `src/metrics/pipeline.rs` gives observable counters a `PrecomputedSum`,
/// whose cumulative collection (`src/metrics/internal/precomputed_sum.rs`) drains the value
/// map (`ValueMap::drain_and_reset`, `src/metrics/internal/mod.rs`), and observable gauges a
/// `LastValue` forced to delta temporality, which exports only entries updated since the
/// last collection (`ValueMap::collect_and_reset`). Changed in 0.32.0 by #3248 (CHANGELOG);
/// the test `a_removed_peer_stops_being_reported_and_units_are_the_contracts` holds it.
fn register_instruments(meter: &Meter, current: &Arc<Mutex<Arc<Snapshot>>>) {
    let snapshot = {
        let current = Arc::clone(current);
        move || current.lock().unwrap_or_else(PoisonError::into_inner).clone()
    };
    let directional = |observer: &dyn opentelemetry::metrics::AsyncInstrument<u64>,
                       snapshot: &Snapshot,
                       value: fn(&PeerSnapshot) -> (u64, u64)| {
        for (interface, peer) in snapshot.series() {
            let (receive, transmit) = value(peer.peer);
            let direction = |d: &'static str| Some(KeyValue::new("network.io.direction", d));
            observer.observe(receive, &peer_attributes(interface, &peer, direction("receive")));
            observer.observe(transmit, &peer_attributes(interface, &peer, direction("transmit")));
        }
    };

    let read = snapshot.clone();
    meter
        .u64_observable_counter("wireguard.peer.io")
        .with_unit("By")
        .with_description("Bytes through the tunnel per peer, as WireGuard counts them")
        .with_callback(move |observer| directional(observer, &read(), |p| (p.rx_bytes, p.tx_bytes)))
        .build();
    let read = snapshot.clone();
    meter
        .u64_observable_counter("wireguard.peer.packets")
        .with_unit("{packet}")
        .with_description("Inner packets through the tunnel per peer, counted by eBPF")
        .with_callback(move |observer| {
            directional(observer, &read(), |p| (p.rx_packets, p.tx_packets));
        })
        .build();
    let read = snapshot.clone();
    meter
        .u64_observable_counter("wireguard.peer.fragments")
        .with_unit("{packet}")
        .with_description("Outer IP fragments of a peer's WireGuard datagrams on the underlay")
        .with_callback(move |observer| {
            directional(observer, &read(), |p| {
                (p.underlay.fragments.receive, p.underlay.fragments.transmit)
            });
        })
        .build();
    let read = snapshot.clone();
    meter
        .u64_observable_counter("wireguard.peer.icmp.too_big")
        .with_unit("{packet}")
        .with_description("ICMP fragmentation-needed / packet-too-big about a peer's datagrams")
        .with_callback(move |observer| {
            directional(observer, &read(), |p| {
                (p.underlay.icmp_too_big.receive, p.underlay.icmp_too_big.transmit)
            });
        })
        .build();
    let read = snapshot.clone();
    meter
        .u64_observable_counter("wireguard.peer.icmp.unreachable")
        .with_unit("{packet}")
        .with_description(
            "ICMP destination unreachable (port, host, network, prohibited) about a peer's datagrams",
        )
        .with_callback(move |observer| {
            directional(observer, &read(), |p| {
                (p.underlay.icmp_unreachable.receive, p.underlay.icmp_unreachable.transmit)
            });
        })
        .build();
    let read = snapshot.clone();
    meter
        .u64_observable_gauge("wireguard.peer.path.mtu")
        .with_unit("By")
        .with_description(
            "The MTU the latest ICMP too-big message about a peer's datagrams reported",
        )
        .with_callback(move |observer| {
            for (interface, peer) in read().series() {
                if let Some(mtu) = peer.underlay.path_mtu {
                    observer.observe(u64::from(mtu), &peer_attributes(interface, &peer, None));
                }
            }
        })
        .build();
    let read = snapshot.clone();
    meter
        .u64_observable_gauge("wireguard.peer.handshake.unanswered")
        .with_unit("{initiation}")
        .with_description("Handshake initiations sent to a peer that no response answered")
        .with_callback(move |observer| {
            for (interface, peer) in read().series() {
                let unanswered = peer.underlay.unanswered_initiations;
                observer.observe(unanswered, &peer_attributes(interface, &peer, None));
            }
        })
        .build();
    let read = snapshot.clone();
    meter
        .u64_observable_counter("wireguard.underlay.messages")
        .with_unit("{message}")
        .with_description("WireGuard messages on the underlay by type and direction")
        .with_callback(move |observer| {
            for (interface, peer) in read().series() {
                for (kind, count) in &peer.underlay.messages {
                    for (direction, value) in
                        [("receive", count.receive), ("transmit", count.transmit)]
                    {
                        let mut attributes = peer_attributes(
                            interface,
                            &peer,
                            Some(KeyValue::new("wireguard.message.type", *kind)),
                        );
                        attributes.push(KeyValue::new("network.io.direction", direction));
                        observer.observe(value, &attributes);
                    }
                }
            }
        })
        .build();
    let read = snapshot.clone();
    meter
        .f64_observable_gauge("wireguard.peer.rtt.jitter")
        .with_unit("s")
        .with_description("Standard deviation of the last interval's latency samples, by kind")
        .with_callback(move |observer| {
            for (interface, peer) in read().series() {
                for (kind, latency) in &peer.latency {
                    if let Some(jitter) = latency.jitter {
                        let kind = Some(KeyValue::new("wireguard.rtt.kind", *kind));
                        observer.observe(jitter, &peer_attributes(interface, &peer, kind));
                    }
                }
            }
        })
        .build();
    let read = snapshot.clone();
    meter
        .u64_observable_counter("wireguard.peer.probes.lost")
        .with_unit("{probe}")
        .with_description("Round trips never answered (TCP SYNs, echo requests), by kind")
        .with_callback(move |observer| {
            for (interface, peer) in read().series() {
                for (kind, latency) in &peer.latency {
                    if latency.lost > 0 {
                        let kind = Some(KeyValue::new("wireguard.rtt.kind", *kind));
                        observer.observe(latency.lost, &peer_attributes(interface, &peer, kind));
                    }
                }
            }
        })
        .build();
    let read = snapshot.clone();
    meter
        .f64_observable_gauge("system.cpu.utilization")
        .with_unit("1")
        .with_description("CPU time by state over the last interval, all CPUs")
        .with_callback(move |observer| {
            for (state, value) in &read().host.cpu_utilization {
                observer.observe(*value, &[KeyValue::new("system.cpu.state", *state)]);
            }
        })
        .build();
    let read = snapshot.clone();
    meter
        .u64_observable_gauge("system.memory.usage")
        .with_unit("By")
        .with_description("Memory by state")
        .with_callback(move |observer| {
            for (state, value) in &read().host.memory_usage {
                observer.observe(*value, &[KeyValue::new("system.memory.state", *state)]);
            }
        })
        .build();
    for (counter, unit, description, value) in NetworkInterfaceCounters::COUNTERS {
        let read = snapshot.clone();
        meter
            .u64_observable_counter(format!("system.network.{counter}"))
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |observer| {
                for interface in &read().host.network {
                    let (receive, transmit) = value(interface);
                    for (direction, count) in [("receive", receive), ("transmit", transmit)] {
                        let attributes = [
                            KeyValue::new("network.interface.name", interface.name.clone()),
                            KeyValue::new("network.io.direction", direction),
                        ];
                        observer.observe(count, &attributes);
                    }
                }
            })
            .build();
    }
    let read = snapshot.clone();
    meter
        .u64_observable_gauge("process.memory.usage")
        .with_unit("By")
        .with_description("Resident memory of each userspace WireGuard process")
        .with_callback(move |observer| {
            for process in &read().host.userspace_wireguard {
                observer.observe(process.rss_bytes, &process_attributes(process));
            }
        })
        .build();
    let read = snapshot.clone();
    meter
        .f64_observable_gauge("process.cpu.utilization")
        .with_unit("1")
        .with_description("CPU of each userspace WireGuard process, fraction of one CPU")
        .with_callback(move |observer| {
            for process in &read().host.userspace_wireguard {
                if let Some(cpu) = process.cpu_utilization {
                    observer.observe(cpu, &process_attributes(process));
                }
            }
        })
        .build();
    let read = snapshot.clone();
    meter
        .u64_observable_counter("wireguard.events")
        .with_unit("{event}")
        .with_description("Operational events by type since wgtel started")
        .with_callback(move |observer| {
            for (kind, count) in &read().event_counts {
                observer.observe(*count, &[KeyValue::new("wireguard.event.type", kind.clone())]);
            }
        })
        .build();
    let read = snapshot.clone();
    meter
        .u64_observable_counter("wireguard.underlay.unknown_source")
        .with_unit("{packet}")
        .with_description("Datagrams to a WireGuard port from no known peer endpoint")
        .with_callback(move |observer| {
            for interface in &read().interfaces {
                observer.observe(
                    interface.underlay_unknown_source,
                    &interface_attributes(interface, None),
                );
            }
        })
        .build();
    let read = snapshot.clone();
    meter
        .f64_observable_gauge("wireguard.peer.handshake.age")
        .with_unit("s")
        .with_description("Seconds since the peer's last handshake; absent when there was none")
        .with_callback(move |observer| {
            for (interface, peer) in read().series() {
                if let Some(age) = peer.last_handshake_seconds_ago {
                    observer.observe(age, &peer_attributes(interface, &peer, None));
                }
            }
        })
        .build();
    let read = snapshot.clone();
    meter
        .u64_observable_counter("wireguard.peer.drops")
        .with_unit("{packet}")
        .with_description("Packets of a peer dropped, by reason")
        .with_callback(move |observer| {
            for (interface, peer) in read().series() {
                // None when the kernel's drops are not counted: no points rather than zeros.
                for (reason, count) in peer.drops.iter().flatten() {
                    let reason = Some(KeyValue::new("wireguard.drop.reason", reason.clone()));
                    observer.observe(*count, &peer_attributes(interface, &peer, reason));
                }
            }
        })
        .build();
    let read = snapshot.clone();
    meter
        .u64_observable_counter("wireguard.interface.drops")
        .with_unit("{packet}")
        .with_description("Packets dropped on a WireGuard interface that no peer can be tied to")
        .with_callback(move |observer| {
            for interface in &read().interfaces {
                for (reason, count) in &interface.drops {
                    let reason = KeyValue::new("wireguard.drop.reason", reason.clone());
                    observer.observe(*count, &interface_attributes(interface, Some(reason)));
                }
            }
        })
        .build();
    let read = snapshot.clone();
    meter
        .u64_observable_gauge("wgtel.series.aggregated_peers")
        .with_unit("{peer}")
        .with_description(
            "Peers without series of their own (--top-peers, --peer-allowlist), summed into the \
             otel.metric.overflow series",
        )
        .with_callback(move |observer| {
            for interface in &read().interfaces {
                if let Some(aggregated) = &interface.aggregated {
                    observer.observe(
                        u64::try_from(aggregated.count).unwrap_or(u64::MAX),
                        &interface_attributes(interface, None),
                    );
                }
            }
        })
        .build();
    let read = snapshot;
    meter
        .u64_observable_gauge("wireguard.peers")
        .with_unit("{peer}")
        .with_description("Peers per interface by state (active: handshake within 180 s)")
        .with_callback(move |observer| {
            for interface in &read().interfaces {
                for state in PeerState::ALL {
                    let count = interface.peers.iter().filter(|peer| peer.state == state).count();
                    observer.observe(
                        u64::try_from(count).unwrap_or(u64::MAX),
                        &interface_attributes(
                            interface,
                            Some(KeyValue::new("wireguard.peer.state", state.as_str())),
                        ),
                    );
                }
            }
        })
        .build();
}

/// Registers `wireguard.peer.diagnosis` and `wireguard.interface.diagnosis`: 1 for each code
/// holding, attribute `wireguard.diagnosis.code`; a code that clears stops being reported.
fn register_diagnosis(meter: &Meter, current: &Arc<Mutex<Arc<Snapshot>>>) {
    for (name, description, peers) in [
        ("wireguard.peer.diagnosis", "1 while the diagnosis code holds for the peer", true),
        (
            "wireguard.interface.diagnosis",
            "1 while the diagnosis code holds for the interface",
            false,
        ),
    ] {
        let current = Arc::clone(current);
        meter
            .u64_observable_gauge(name)
            .with_unit("1")
            .with_description(description)
            .with_callback(move |observer| {
                let snapshot = current.lock().unwrap_or_else(PoisonError::into_inner).clone();
                for diagnosis in snapshot.diagnoses.iter().filter(|d| d.peer.is_some() == peers) {
                    let mut attributes =
                        vec![KeyValue::new("wireguard.interface", diagnosis.interface.clone())];
                    if let Some(key) = diagnosis.peer {
                        attributes
                            .push(KeyValue::new("wireguard.peer.public_key", key.to_string()));
                        let name = snapshot
                            .peers()
                            .find(|(i, p)| i.name == diagnosis.interface && p.public_key == key)
                            .and_then(|(_, peer)| peer.name.clone());
                        if let Some(name) = name {
                            attributes.push(KeyValue::new("wireguard.peer.name", name));
                        }
                    }
                    attributes.push(KeyValue::new(
                        "wireguard.diagnosis.code",
                        diagnosis.diagnosis.code.as_str(),
                    ));
                    observer.observe(1, &attributes);
                }
            })
            .build();
    }
}

/// A [`ManualReader`] that both the meter provider and the exporting task hold.
#[derive(Clone, Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, metrics: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(metrics)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::{
        error::OTelSdkError,
        metrics::data::{AggregatedMetrics, MetricData},
    };

    use super::*;
    use crate::export::prometheus::tests::snapshot;

    #[test]
    fn protocols_by_their_specification_names() {
        assert!(matches!(parse_protocol(None), Ok(Protocol::Grpc)));
        assert!(matches!(parse_protocol(Some("grpc")), Ok(Protocol::Grpc)));
        assert!(matches!(parse_protocol(Some("http/protobuf")), Ok(Protocol::HttpBinary)));
        let error = parse_protocol(Some("http/json")).expect_err("not supported");
        assert_eq!(
            error.to_string(),
            r#"unsupported OTLP protocol "http/json": use `grpc` or `http/protobuf`"#
        );
    }

    #[test]
    fn http_endpoints_get_the_metrics_path_once() {
        assert_eq!(http_signal_url("http://c:4318", "metrics"), "http://c:4318/v1/metrics");
        assert_eq!(http_signal_url("http://c:4318/", "logs"), "http://c:4318/v1/logs");
        assert_eq!(
            http_signal_url("http://c:4318/v1/metrics", "metrics"),
            "http://c:4318/v1/metrics"
        );
    }

    /// Series of `name` in one collection: (attributes, value) for u64 sums.
    fn sums(metrics: &ResourceMetrics, name: &str) -> Vec<(Vec<String>, u64)> {
        let mut found = Vec::new();
        for scope in metrics.scope_metrics() {
            for metric in scope.metrics().filter(|metric| metric.name() == name) {
                if let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() {
                    for point in sum.data_points() {
                        let attributes = point
                            .attributes()
                            .map(|kv| format!("{}={}", kv.key, kv.value))
                            .collect();
                        found.push((attributes, point.value()));
                    }
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn a_removed_peer_stops_being_reported_and_units_are_the_contracts() {
        let current = Arc::new(Mutex::new(Arc::new(snapshot())));
        let reader = SharedReader(Arc::new(ManualReader::builder().build()));
        let _provider = meter_provider(reader.clone(), Resource::builder().build(), &current);

        let mut metrics = ResourceMetrics::default();
        reader.collect(&mut metrics).expect("collecting");
        let packets = sums(&metrics, "wireguard.peer.packets");
        assert_eq!(packets.len(), 4, "two peers, two directions: {packets:?}");
        let units: Vec<(String, String)> = metrics
            .scope_metrics()
            .flat_map(|scope| scope.metrics().map(|m| (m.name().to_owned(), m.unit().to_owned())))
            .collect();
        for (name, unit) in [
            ("wireguard.peer.io", "By"),
            ("wireguard.peer.packets", "{packet}"),
            ("wireguard.peer.handshake.age", "s"),
            ("wireguard.interface.drops", "{packet}"),
            ("wireguard.peers", "{peer}"),
        ] {
            assert!(
                units.contains(&(name.to_owned(), unit.to_owned())),
                "{name} {unit} in {units:?}"
            );
        }
        assert!(packets.iter().any(|(attributes, value)| *value == 51
            && attributes.contains(&"network.io.direction=transmit".to_owned())
            && attributes.contains(&"wireguard.peer.name=al\"ice\\".to_owned())));

        assert_eq!(gauges(&metrics, "wireguard.peer.handshake.age").len(), 1);

        // The first peer (the one with a handshake) goes away: none of its series, counter or
        // gauge, may be exported again.
        let mut fewer = snapshot();
        fewer.interfaces[0].peers.remove(0);
        *current.lock().expect("lock") = Arc::new(fewer);
        reader.collect(&mut metrics).expect("collecting");
        assert_eq!(sums(&metrics, "wireguard.peer.packets").len(), 2);
        assert_eq!(sums(&metrics, "wireguard.peer.io").len(), 2);
        assert_eq!(gauges(&metrics, "wireguard.peer.handshake.age"), Vec::<f64>::new());
    }

    /// Attributes of each point of the u64 gauge `name` in one collection (value 1 each),
    /// sorted.
    fn diagnosis_points(metrics: &ResourceMetrics, name: &str) -> Vec<Vec<String>> {
        let mut found = Vec::new();
        for scope in metrics.scope_metrics() {
            for metric in scope.metrics().filter(|metric| metric.name() == name) {
                if let AggregatedMetrics::U64(MetricData::Gauge(gauge)) = metric.data() {
                    for point in gauge.data_points() {
                        assert_eq!(point.value(), 1, "{name}");
                        let mut attributes: Vec<String> = point
                            .attributes()
                            .map(|kv| format!("{}={}", kv.key, kv.value))
                            .collect();
                        attributes.sort();
                        found.push(attributes);
                    }
                }
            }
        }
        found
    }

    #[test]
    fn a_code_is_a_diagnosis_gauge_of_one_while_it_holds() {
        let mut with_codes = snapshot();
        let diagnosis = |code| crate::model::Diagnosis {
            code,
            since: 1.0,
            evidence: String::new(),
            counters: std::collections::BTreeMap::new(),
        };
        with_codes.diagnoses = vec![
            crate::model::SubjectDiagnosis {
                interface: "wg0".into(),
                peer: None,
                diagnosis: diagnosis(crate::model::Code::NoPeerRoute),
            },
            crate::model::SubjectDiagnosis {
                interface: "wg0".into(),
                peer: Some(PublicKey([2; 32])),
                diagnosis: diagnosis(crate::model::Code::HandshakeUnanswered),
            },
        ];
        let current = Arc::new(Mutex::new(Arc::new(with_codes)));
        let reader = SharedReader(Arc::new(ManualReader::builder().build()));
        let _provider = meter_provider(reader.clone(), Resource::builder().build(), &current);
        let mut metrics = ResourceMetrics::default();
        reader.collect(&mut metrics).expect("collecting");
        let key = PublicKey([2; 32]).to_string();
        assert_eq!(
            diagnosis_points(&metrics, "wireguard.peer.diagnosis"),
            [vec![
                "wireguard.diagnosis.code=handshake_unanswered".to_owned(),
                "wireguard.interface=wg0".to_owned(),
                format!("wireguard.peer.public_key={key}"),
            ]]
        );
        assert_eq!(
            diagnosis_points(&metrics, "wireguard.interface.diagnosis"),
            [vec![
                "wireguard.diagnosis.code=no_peer_route".to_owned(),
                "wireguard.interface=wg0".to_owned(),
            ]]
        );
        // The codes clear: their series are gone.
        *current.lock().expect("lock") = Arc::new(snapshot());
        reader.collect(&mut metrics).expect("collecting");
        assert_eq!(
            diagnosis_points(&metrics, "wireguard.peer.diagnosis"),
            Vec::<Vec<String>>::new()
        );
    }

    #[test]
    fn peers_without_series_of_their_own_are_one_overflow_series_per_interface() {
        let mut aggregated = snapshot();
        crate::export::series::SeriesSelector::new(crate::export::series::SeriesLimits {
            top_peers: Some(0),
            allowlist: Vec::new(),
        })
        .apply(&mut aggregated);
        let current = Arc::new(Mutex::new(Arc::new(aggregated)));
        let reader = SharedReader(Arc::new(ManualReader::builder().build()));
        let _provider = meter_provider(reader.clone(), Resource::builder().build(), &current);
        let mut metrics = ResourceMetrics::default();
        reader.collect(&mut metrics).expect("collecting");
        let mut io = sums(&metrics, "wireguard.peer.io");
        for (attributes, _) in &mut io {
            attributes.sort();
        }
        io.sort();
        let overflow = |direction: &str| {
            vec![
                format!("network.io.direction={direction}"),
                "otel.metric.overflow=true".to_owned(),
                "wireguard.interface=wg0".to_owned(),
            ]
        };
        // Two peers of 1000 received and 2000 sent bytes each.
        assert_eq!(io, [(overflow("receive"), 2000), (overflow("transmit"), 4000)]);
        let mut gauges = Vec::new();
        for scope in metrics.scope_metrics() {
            for metric in scope.metrics().filter(|m| m.name() == "wgtel.series.aggregated_peers") {
                if let AggregatedMetrics::U64(MetricData::Gauge(gauge)) = metric.data() {
                    gauges.extend(
                        gauge
                            .data_points()
                            .map(opentelemetry_sdk::metrics::data::GaugeDataPoint::value),
                    );
                }
            }
        }
        assert_eq!(gauges, [2]);
    }

    /// Values of the f64 gauge `name` in one collection.
    fn gauges(metrics: &ResourceMetrics, name: &str) -> Vec<f64> {
        let mut found = Vec::new();
        for scope in metrics.scope_metrics() {
            for metric in scope.metrics().filter(|metric| metric.name() == name) {
                if let AggregatedMetrics::F64(MetricData::Gauge(gauge)) = metric.data() {
                    found.extend(
                        gauge
                            .data_points()
                            .map(opentelemetry_sdk::metrics::data::GaugeDataPoint::value),
                    );
                }
            }
        }
        found
    }

    #[test]
    fn a_gateway_of_twelve_thousand_peers_does_not_overflow() {
        let mut big = snapshot();
        let template = big.interfaces[0].peers[0].clone();
        big.interfaces[0].peers = (0..12_000u32)
            .map(|index| {
                let mut peer = template.clone();
                peer.public_key.0[..4].copy_from_slice(&index.to_be_bytes());
                peer
            })
            .collect();
        let current = Arc::new(Mutex::new(Arc::new(big)));
        let reader = SharedReader(Arc::new(ManualReader::builder().build()));
        let _provider = meter_provider(reader.clone(), Resource::builder().build(), &current);
        let mut metrics = ResourceMetrics::default();
        reader.collect(&mut metrics).expect("collecting");
        let io = sums(&metrics, "wireguard.peer.io");
        assert_eq!(io.len(), 24_000);
        assert!(
            !io.iter().any(|(attributes, _)| attributes.iter().any(|a| a.contains("overflow")))
        );
    }

    /// Records the receive bytes of the first peer of every export; each export waits for a
    /// permit, like a slow endpoint.
    #[derive(Debug)]
    struct SlowExporter {
        started: tokio::sync::mpsc::UnboundedSender<u64>,
        permits: Arc<tokio::sync::Semaphore>,
    }

    impl PushMetricExporter for SlowExporter {
        async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
            let rx = sums(metrics, "wireguard.peer.io")
                .into_iter()
                .find(|(attributes, _)| {
                    attributes.iter().any(|a| a == "network.io.direction=receive")
                })
                .map_or(0, |(_, value)| value);
            let _receiver_alive = self.started.send(rx);
            self.permits
                .acquire()
                .await
                .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?
                .forget();
            Ok(())
        }

        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }

        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }

        fn temporality(&self) -> Temporality {
            Temporality::Cumulative
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_newer_snapshot_replaces_the_unsent_one() {
        let with_rx = |rx_bytes: u64| {
            let mut snapshot = snapshot();
            snapshot.interfaces[0].peers.truncate(1);
            snapshot.interfaces[0].peers[0].rx_bytes = rx_bytes;
            Arc::new(snapshot)
        };
        let (started, mut exports) = tokio::sync::mpsc::unbounded_channel();
        let permits = Arc::new(tokio::sync::Semaphore::new(0));
        let exporter = OtlpExporter::start(
            SlowExporter { started, permits: Arc::clone(&permits) },
            None::<EventExport<LogExporter>>,
            "test".into(),
        );

        exporter.export(with_rx(1));
        assert_eq!(exports.recv().await, Some(1), "the first snapshot is being exported");
        // The endpoint is stuck: 2 waits, then 3 replaces it, then 4 replaces 3.
        for rx in 2..=4 {
            exporter.export(with_rx(rx));
        }
        permits.add_permits(100);
        assert_eq!(exports.recv().await, Some(4), "only the latest waiting snapshot is sent");
        exporter.export(with_rx(5));
        assert_eq!(exports.recv().await, Some(5));
        exporter.shutdown().await;
        assert_eq!(exports.recv().await, None, "nothing else was exported");
    }

    #[test]
    fn latency_histograms_carry_new_samples_in_the_kernels_buckets_and_stop_with_the_peer() {
        let mut export = LatencyExport::new(Resource::builder_empty().build());
        let mut with_samples = snapshot();
        let mut buckets = vec![0; LATENCY_BUCKETS as usize];
        buckets[24] = 3; // three samples of 16.8 to 33.6 ms
        with_samples.interfaces[0].peers[0].latency.insert(
            "icmp_round_trip",
            crate::model::LatencySnapshot::from_buckets(buckets.clone(), 75_000_000, 0, None),
        );
        export.record(&with_samples);
        let mut metrics = ResourceMetrics::default();
        export.reader.collect(&mut metrics).expect("collecting");
        let counts: Vec<(u64, Vec<u64>)> = metrics
            .scope_metrics()
            .flat_map(opentelemetry_sdk::metrics::data::ScopeMetrics::metrics)
            .filter(|metric| metric.name() == "wireguard.peer.rtt")
            .flat_map(|metric| match metric.data() {
                AggregatedMetrics::F64(MetricData::Histogram(histogram)) => histogram
                    .data_points()
                    .map(|point| (point.count(), point.bucket_counts().collect()))
                    .collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(counts.len(), 1);
        assert_eq!(counts[0].0, 3);
        // Bucket 24 of the kernel is bucket 24 of the export (bounds 2^(b+1) ns).
        assert_eq!(counts[0].1[24], 3);

        // No new samples, then the peer is gone: nothing more is exported for it.
        export.record(&with_samples);
        let mut gone = with_samples.clone();
        gone.interfaces[0].peers.remove(0);
        export.record(&gone);
        export.reader.collect(&mut metrics).expect("collecting");
        let points: usize = metrics
            .scope_metrics()
            .flat_map(opentelemetry_sdk::metrics::data::ScopeMetrics::metrics)
            .map(|metric| match metric.data() {
                AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                    histogram.data_points().count()
                }
                _ => 0,
            })
            .sum();
        assert_eq!(points, 0);
    }
}
