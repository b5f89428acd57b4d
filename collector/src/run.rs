//! `wgtel run`: the daemon. A collector thread publishes one snapshot per interval; the HTTP
//! listener and the OTLP exporter read them. SIGINT or SIGTERM stops collection, which drops
//! the probes and with them every attachment.

use std::{
    future::Future,
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::{
    collect::{Collector, CollectorConfig, UAPI_SOCKET_DIR},
    config::RunConfig,
    ebpf::{EbpfError, Probes},
    export::{
        api::{self, ApiState},
        listener::{ListenerError, Security},
        otlp::{OtlpError, OtlpExporter},
        series::SeriesSelector,
    },
    model::{CollectionHealth, PublishedHealth, Snapshot},
    probe::Prober,
    webhook::{self, WebhookError, WebhookStats},
};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Loading the eBPF programs failed.
    #[error("loading eBPF")]
    Ebpf(#[source] EbpfError),
    /// The HTTP listener could not bind.
    #[error("listening on {address}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The OTLP exporter could not be built from the settings.
    #[error("setting up OTLP export")]
    Otlp(#[source] OtlpError),
    /// The alert webhook could not be set up.
    #[error("setting up the alert webhook")]
    Webhook(#[source] WebhookError),
    /// Installing the signal handlers failed.
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    /// The HTTP server failed.
    #[error("HTTP server")]
    Serve(#[source] std::io::Error),
    /// The collector thread panicked: the daemon ends rather than serve a frozen snapshot.
    #[error("the collector thread panicked: {message}")]
    CollectorPanicked {
        /// The panic's message.
        message: String,
    },
    /// The process lacks a capability it needs.
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
    /// The TLS certificate, key or bearer token could not be loaded.
    #[error("setting up the HTTP listener")]
    Http(#[source] ListenerError),
    /// A `--netns` namespace cannot be opened or entered.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// The `[probe]` private key could not be loaded.
    #[error("setting up /probe")]
    Probe(#[source] crate::probe::ProbeError),
}

/// Runs the daemon until SIGINT or SIGTERM; returns [`RunError::CollectorPanicked`] at once
/// when the collector thread panics, so that the process ends (with a non-zero status) instead
/// of serving its last snapshot for ever.
pub async fn run(config: RunConfig) -> Result<(), RunError> {
    crate::privileges::check(&config.netns)?;
    check_netns(&config.netns)?;
    let security = Security::load(
        config.http.tls.as_ref().map(|(cert, key)| (cert.as_path(), key.as_path())),
        config.http.bearer_token_file.as_deref(),
    )
    .map_err(RunError::Http)?;
    let prober = config
        .probe
        .as_ref()
        .map(|probe| Prober::load(&probe.private_key_file, probe.timeout, probe.count))
        .transpose()
        .map_err(RunError::Probe)?
        .map(Arc::new);
    let capacity = crate::collect::map_capacity(UAPI_SOCKET_DIR.as_ref());
    log::debug!("eBPF maps sized for {capacity:?}");
    let probes =
        Probes::load(config.attach_mode, capacity, config.debug_ebpf).map_err(RunError::Ebpf)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Listen { address: config.listen, source })?;
    let exporter =
        OtlpExporter::from_env(config.otlp_endpoint.as_deref()).map_err(RunError::Otlp)?;
    log::info!(
        "wgtel listening on {}://{}{}, collecting every {}, OTLP {}",
        if security.tls.is_some() { "https" } else { "http" },
        config.listen,
        if security.bearer_token.is_some() { " (bearer token required)" } else { "" },
        humantime::format_duration(config.interval),
        if exporter.is_some() { "on" } else { "off" }
    );

    let webhook = match &config.webhook {
        Some(url) => {
            log::info!("alert changes go to the webhook {url} (queue of {})", config.webhook_queue);
            Some(webhook::start(url.clone(), config.webhook_queue).map_err(RunError::Webhook)?)
        }
        None => None,
    };
    let mut collector = Collector::new(
        CollectorConfig {
            interfaces: config.interfaces.clone(),
            names: config.names.clone(),
            underlays: config.underlays.clone(),
            uapi_socket_dir: UAPI_SOCKET_DIR.into(),
            alerts: config.alerts.clone(),
            webhook: webhook.as_ref().map(|(queue, _)| queue.clone()),
            checks: (!config.checks.is_empty()).then(|| crate::checks::start(&config.checks)),
            netns: config.netns.clone(),
            attach_mode: config.attach_mode,
        },
        probes,
    );
    let mut series = SeriesSelector::new(config.series.clone());
    let collect = move || {
        let (mut snapshot, health) = collector.collect();
        series.apply(&mut snapshot);
        (snapshot, health)
    };
    let served = Served {
        listener,
        security,
        interval: config.interval,
        exporter,
        webhook: webhook.map(|(_, stats)| stats),
        prober,
    };
    supervise(served, collect, wait_for_signal()).await
}

/// Fails when a namespace given to `--netns` by name or path does not exist or cannot be
/// entered, so that a typo ends the start instead of being retried for ever.
fn check_netns(specs: &[crate::netns::NetnsSpec]) -> Result<(), crate::netns::NetnsError> {
    use crate::netns::{self, Namespace, NetnsError, StartNamespace};
    if specs.is_empty() {
        return Ok(());
    }
    let list_error = |source| NetnsError::List { path: "/proc/thread-self/ns/net".into(), source };
    let start = Arc::new(StartNamespace::current().map_err(list_error)?);
    let processes = netns::processes()?;
    for found in netns::resolve(specs, start.inode, &processes, true)? {
        // Entering proves it is a network namespace and that wgtel may enter it.
        if let Some(namespace) = Namespace::open(&found) {
            drop(namespace.enter(&start)?);
        }
    }
    Ok(())
}

/// What the daemon serves, besides the collection.
struct Served {
    listener: tokio::net::TcpListener,
    security: Security,
    interval: Duration,
    exporter: Option<OtlpExporter>,
    webhook: Option<Arc<WebhookStats>>,
    prober: Option<Arc<Prober>>,
}

/// Runs `collect` every interval on a thread of its own, serves its snapshots over HTTP and
/// OTLP, and stops when `stop` completes (Ok) or the collector thread panics (Err).
async fn supervise<C>(
    served: Served,
    collect: C,
    stop: impl Future<Output = std::io::Result<()>>,
) -> Result<(), RunError>
where
    C: FnMut() -> (Snapshot, CollectionHealth) + Send + 'static,
{
    let Served { listener, security, interval, exporter, webhook, prober } = served;
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::empty()));
    let (health_tx, health_rx) =
        watch::channel(PublishedHealth { health: CollectionHealth::Starting, at: Instant::now() });
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    // Completes when the collector thread ends: Ok when it was told to, Err when it unwound.
    let (ended_tx, mut ended_rx) = tokio::sync::oneshot::channel::<()>();
    let collector_thread = thread::Builder::new()
        .name("collector".into())
        .spawn(move || {
            collect_until_stopped(collect, interval, &stop_rx, &snapshot_tx, &health_tx);
            let _receiver_gone = ended_tx.send(());
        })
        .map_err(RunError::Signals)?;

    let otlp_stats = exporter.as_ref().map(OtlpExporter::stats);
    let exporting = exporter.map(|exporter| {
        let mut snapshots = snapshot_rx.clone();
        tokio::spawn(async move {
            while snapshots.changed().await.is_ok() {
                let snapshot = snapshots.borrow_and_update().clone();
                exporter.export(snapshot);
            }
            exporter.shutdown().await;
        })
    });

    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let state = ApiState {
        snapshot: snapshot_rx,
        health: health_rx,
        interval,
        otlp: otlp_stats,
        webhook,
        prober,
    };
    let server = tokio::spawn(api::serve(listener, state, security, async move {
        let _closed = shutdown_rx.await;
    }));

    let panicked = tokio::select! {
        signal = stop => {
            signal.map_err(RunError::Signals)?;
            log::info!("stopping: detaching from every interface");
            false
        }
        ended = &mut ended_rx => ended.is_err(),
    };
    // Dropping the sender wakes the collector thread, which drops the probes on its way out.
    drop(stop_tx);
    let joined = tokio::task::spawn_blocking(move || collector_thread.join()).await;
    let _receiver_gone = shutdown_tx.send(());
    if panicked || !matches!(joined, Ok(Ok(()))) {
        let message = match joined {
            Ok(Err(payload)) => panic_message(payload.as_ref()),
            _ => "unknown".to_owned(),
        };
        log::error!(
            "the collector thread panicked ({message}): exiting, so that a supervisor restarts \
             wgtel instead of the API serving a snapshot that no longer changes"
        );
        server.abort();
        return Err(RunError::CollectorPanicked { message });
    }
    if let Some(exporting) = exporting {
        let _finished = exporting.await;
    }
    match server.await {
        Ok(result) => result.map_err(RunError::Serve)?,
        Err(error) => return Err(RunError::Serve(std::io::Error::other(error))),
    }
    log::info!("stopped");
    Ok(())
}

/// The message a panic carried (`panic!("...")` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Collects every `interval` until `stop` is dropped, publishing each snapshot with its health
/// and when it was published.
fn collect_until_stopped(
    mut collect: impl FnMut() -> (Snapshot, CollectionHealth),
    interval: Duration,
    stop: &mpsc::Receiver<()>,
    snapshots: &watch::Sender<Arc<Snapshot>>,
    health: &watch::Sender<PublishedHealth>,
) {
    let mut next = Instant::now();
    loop {
        let (snapshot, collection_health) = collect();
        snapshots.send_replace(Arc::new(snapshot));
        health.send_replace(PublishedHealth { health: collection_health, at: Instant::now() });
        next += interval;
        let now = Instant::now();
        if next < now {
            // Collection took longer than the interval: start the next one now, don't pile up.
            next = now;
        }
        match stop.recv_timeout(next - now) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // `collect` (and the collector with its probes) is dropped here, detaching everything.
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => log::info!("SIGTERM"),
        _ = interrupt.recv() => log::info!("SIGINT"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_the_collector_thread_ends_the_daemon_with_its_message() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let interval = Duration::from_millis(50);
        let served = Served {
            listener,
            security: Security::default(),
            interval,
            exporter: None,
            webhook: None,
            prober: None,
        };
        let mut collections = 0;
        let collect = move || {
            collections += 1;
            if collections == 3 {
                panic!("collection {collections} went wrong");
            }
            (Snapshot::empty(), CollectionHealth::Healthy)
        };
        // No signal ever comes: only the panic can end it. (The bound leaves room for the
        // panic hook's backtrace on a loaded host; without the fix this never ends.)
        let result = tokio::time::timeout(
            interval * 100,
            supervise(served, collect, std::future::pending()),
        )
        .await
        .expect("the daemon went on after the collector thread panicked");
        assert_eq!(
            result.map_err(|error| error.to_string()),
            Err("the collector thread panicked: collection 3 went wrong".to_owned())
        );
    }
}
