//! OpenTelemetry metrics over OTLP (gRPC or HTTP/protobuf), one export per snapshot.
//!
//! Each snapshot is encoded straight into OTLP requests by [`Encoder`] (the metric table,
//! one pass, no SDK aggregation) on a thread of its own, `otlp-encode`, off the runtime that
//! serves the API; each request is sent by [`Transport`] as soon as it is complete, while the
//! next is being written. [`OtlpExporter::export`] only replaces the snapshot waiting to be
//! exported, so an endpoint that is down or slow never backs up memory or collection: at most
//! one snapshot waits, and at most [`REQUESTS_IN_FLIGHT`] encoded requests.
//!
//! Settings follow the OpenTelemetry specification: `OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT`,
//! `_PROTOCOL` (`grpc`, the default here, or `http/protobuf`), and those of
//! [`super::otlp_transport`], [`super::otlp_tls`] and [`super::otlp_resource`]. Metrics are
//! cumulative: `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta` is refused at start
//! with a pointer to the collector's `cumulativetodelta` processor. Events go as log records
//! through opentelemetry-otlp's log exporter ([`super::otlp_events`]).

use std::{
    future::Future,
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use opentelemetry_otlp::{
    LogExporter, Protocol, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::{
    export::{
        otlp_encode::{Encoder, REQUEST_LIMIT, Recycler},
        otlp_events::EventExport,
        otlp_resource::resource,
        otlp_tls::{OtlpTls, Signal, TlsError},
        otlp_transport::{SendError, Transport, TransportError},
    },
    model::Snapshot,
};

/// How long shutdown waits for the last export.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Encoded requests that may wait for sending while the next is written. One keeps the
/// transport busy (the next is written while one is sent): each more is memory, not speed.
pub const REQUESTS_IN_FLIGHT: usize = 1;

/// Why OTLP export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// `OTEL_EXPORTER_OTLP_(METRICS_)PROTOCOL` names a protocol wgtel does not speak.
    #[error("unsupported OTLP protocol {0:?}: use `grpc` or `http/protobuf`")]
    Protocol(String),
    /// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` asks for what wgtel does not send.
    #[error(
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE={0:?}: wgtel exports cumulative \
         metrics only; convert them in the OpenTelemetry Collector (the cumulativetodelta \
         processor)"
    )]
    Temporality(String),
    /// The SDK refused to build the log exporter (a malformed endpoint or header, say).
    #[error("building the OTLP log exporter")]
    Build(#[source] opentelemetry_otlp::ExporterBuildError),
    /// The metrics transport could not be set up.
    #[error("setting up OTLP metrics export")]
    Transport(#[source] TransportError),
    /// The TLS certificate or key files cannot be used.
    #[error("OTLP TLS")]
    Tls(#[source] TlsError),
    /// The thread that encodes the requests could not be started.
    #[error("starting the OTLP encoding thread")]
    EncodingThread(#[source] io::Error),
}

/// Sends encoded requests: [`Transport`], or a test's stand-in.
pub trait RequestSender: Send + 'static {
    /// Sends one request.
    fn send_request(
        &mut self,
        request: Bytes,
    ) -> impl Future<Output = Result<(), SendError>> + Send;
}

impl RequestSender for Transport {
    fn send_request(
        &mut self,
        request: Bytes,
    ) -> impl Future<Output = Result<(), SendError>> + Send {
        self.send(request)
    }
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

    /// The latest export's wall time in seconds: encoding the snapshot, sending every
    /// request and the endpoint's answers.
    pub fn last_seconds(&self) -> f64 {
        f64::from_bits(self.last_seconds.load(Ordering::Relaxed))
    }

    /// Exports that succeeded and that failed since the start.
    pub fn outcomes(&self) -> (u64, u64) {
        (self.succeeded.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// The endpoint the `OTEL_*` variables name for metrics, if any.
fn endpoint_from_env() -> Option<String> {
    ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.trim().is_empty()))
}

impl OtlpExporter {
    /// The exporter that `endpoint` (the `--otlp-endpoint` flag) or else the `OTEL_*`
    /// variables ask for; `None` when neither names an endpoint. Must be called inside the
    /// tokio runtime (the gRPC client lives on it).
    pub fn from_env(endpoint: Option<&str>) -> Result<Option<Self>, OtlpError> {
        let Some(shown) = endpoint.map(str::to_owned).or_else(endpoint_from_env) else {
            return Ok(None);
        };
        if let Ok(preference) = std::env::var("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
            && !preference.trim().is_empty()
            && !preference.trim().eq_ignore_ascii_case("cumulative")
        {
            return Err(OtlpError::Temporality(preference));
        }
        let protocol = protocol_from_env()?;
        let tls = |signal| OtlpTls::from_env(signal, endpoint).map_err(OtlpError::Tls);
        let metrics_tls = tls(Signal::Metrics)?;
        let logs_tls = tls(Signal::Logs)?;
        let transport = match protocol {
            Protocol::Grpc => Transport::grpc(&shown, metrics_tls.as_ref()),
            _ => {
                // The signal's own variable is used as it is; the flag and the generic
                // variable get the signal's path.
                let signal_variable = std::env::var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
                    .ok()
                    .filter(|url| endpoint.is_none() && !url.trim().is_empty());
                let url = signal_variable.unwrap_or_else(|| http_signal_url(&shown, "metrics"));
                Transport::http(url, metrics_tls.as_ref())
            }
        }
        .map_err(OtlpError::Transport)?;
        let mut logs = log_exporter(protocol, endpoint, logs_tls.as_ref())?;
        opentelemetry_sdk::logs::LogExporter::set_resource(&mut logs, &resource());
        Self::start(transport, Some(EventExport::new(logs)), shown).map(Some)
    }

    /// Starts the exporting task on the current tokio runtime, and the encoding thread. Generic
    /// so that tests can watch what reaches the endpoint.
    fn start<S: RequestSender, L: opentelemetry_sdk::logs::LogExporter + 'static>(
        mut sender: S,
        mut events: Option<EventExport<L>>,
        endpoint: String,
    ) -> Result<Self, OtlpError> {
        let encoding = EncodingThread::spawn(Encoder::new(&resource(), REQUEST_LIMIT))
            .map_err(OtlpError::EncodingThread)?;
        let (pending, mut snapshots) = watch::channel(None::<Arc<Snapshot>>);
        let stats = Arc::new(ExportStats::default());
        let task_stats = Arc::clone(&stats);
        let task = tokio::spawn(async move {
            let mut metrics_health = ExportHealth::default();
            let mut events_health = ExportHealth::default();
            while snapshots.changed().await.is_ok() {
                let Some(snapshot) = snapshots.borrow_and_update().clone() else { continue };
                let started = Instant::now();
                let result = export_snapshot(&encoding, &mut sender, &snapshot).await;
                task_stats.record(started.elapsed(), result.is_ok());
                let error =
                    result.as_ref().err().map(|error| error as &(dyn std::error::Error + 'static));
                metrics_health.report(error, "OTLP export", &endpoint);
                // An endpoint that refused the metrics is not asked to take the events: they
                // wait (the event log keeps them) for the next snapshot.
                if let Some(events) = events.as_mut().filter(|_| result.is_ok()) {
                    let result = events.export(&snapshot).await;
                    let error = result
                        .as_ref()
                        .err()
                        .map(|error| error as &(dyn std::error::Error + 'static));
                    events_health.report(error, "OTLP event (log record) export", &endpoint);
                }
            }
            if let Some(events) = &events
                && let Err(error) = events.shutdown()
            {
                log::debug!("shutting the OTLP log exporter down: {error}");
            }
        });
        Ok(Self { pending, task, stats })
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

/// Why one snapshot's export failed.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    /// A request was not accepted; the rest of the snapshot was not sent.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The encoding thread is gone: it panicked (its message is in the log).
    #[error("the OTLP encoding thread ended")]
    EncodingEnded,
}

/// The thread that encodes snapshots into OTLP requests, one snapshot at a time. Encoding
/// 10,000 peers takes milliseconds of CPU, which the runtime's workers (serving the API) must
/// not spend; a thread of its own, rather than tokio's blocking pool, keeps the daemon's threads
/// a fixed set, and names the one that spends the CPU. It ends when its exporter is dropped.
struct EncodingThread {
    jobs: std::sync::mpsc::Sender<Encoding>,
    /// Hands the sent requests' buffers back to the encoder.
    recycler: Recycler,
}

/// One snapshot to encode. Each request goes out on `requests` as soon as it is complete;
/// `done` fires when the snapshot is encoded or `requests` was closed.
struct Encoding {
    snapshot: Arc<Snapshot>,
    requests: mpsc::Sender<Bytes>,
    done: oneshot::Sender<()>,
}

impl EncodingThread {
    fn spawn(mut encoder: Encoder) -> io::Result<Self> {
        let recycler = encoder.recycler();
        let (jobs, queue) = std::sync::mpsc::channel::<Encoding>();
        let _detached = thread::Builder::new().name("otlp-encode".into()).spawn(move || {
            for Encoding { snapshot, requests, done } in queue {
                encoder.encode(&snapshot, &mut |request| requests.blocking_send(request).is_ok());
                let _exporter_gone = done.send(());
            }
        })?;
        Ok(Self { jobs, recycler })
    }
}

/// Has `snapshot` encoded on the encoding thread and sends each request as it is completed;
/// the first failure stops the rest (the next snapshot carries every cumulative value again).
async fn export_snapshot<S: RequestSender>(
    encoding: &EncodingThread,
    sender: &mut S,
    snapshot: &Arc<Snapshot>,
) -> Result<(), ExportError> {
    let (requests, mut received) = mpsc::channel::<Bytes>(REQUESTS_IN_FLIGHT);
    let (done, encoded) = oneshot::channel();
    let job = Encoding { snapshot: Arc::clone(snapshot), requests, done };
    encoding.jobs.send(job).map_err(|_thread_gone| ExportError::EncodingEnded)?;
    let mut result = Ok(());
    while let Some(request) = received.recv().await {
        if let Err(error) = sender.send_request(request.clone()).await {
            result = Err(ExportError::Send(error));
            break;
        }
        encoding.recycler.give_back(request);
    }
    // Closing the channel stops the encoder at its next request.
    drop(received);
    encoded.await.map_err(|_unwound| ExportError::EncodingEnded)?;
    result
}

/// The OTLP log exporter for events, built by opentelemetry-otlp.
fn log_exporter(
    protocol: Protocol,
    endpoint: Option<&str>,
    tls: Option<&OtlpTls>,
) -> Result<LogExporter, OtlpError> {
    let exporter = match protocol {
        Protocol::Grpc => {
            let mut builder = LogExporter::builder().with_tonic();
            if let Some(tls) = tls {
                builder = builder.with_tls_config(tls.tonic());
            }
            match endpoint {
                Some(endpoint) => builder.with_endpoint(endpoint).build(),
                None => builder.build(),
            }
        }
        _ => {
            let mut builder =
                LogExporter::builder().with_http().with_protocol(Protocol::HttpBinary);
            if let Some(tls) = tls {
                builder = builder.with_http_client(tls.http_client().map_err(OtlpError::Tls)?);
            }
            match endpoint {
                Some(endpoint) => builder.with_endpoint(http_signal_url(endpoint, "logs")).build(),
                None => builder.build(),
            }
        }
    };
    exporter.map_err(OtlpError::Build)
}

/// Whether exports fail, so that a failing endpoint is logged once, and its recovery once.
#[derive(Debug, Default)]
struct ExportHealth {
    failing: bool,
}

impl ExportHealth {
    fn report(
        &mut self,
        error: Option<&(dyn std::error::Error + 'static)>,
        what: &str,
        endpoint: &str,
    ) {
        match (error, self.failing) {
            (Some(error), false) => {
                log::warn!(
                    "{what} to {endpoint} failed: {}; retrying every interval, quiet until it \
                     recovers",
                    crate::collect::error_chain(error)
                );
                self.failing = true;
            }
            (None, true) => {
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

#[cfg(test)]
#[path = "otlp_tests.rs"]
mod tests;
