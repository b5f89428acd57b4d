//! `wgtel run`: the daemon. A collector thread publishes one snapshot per interval; the HTTP
//! listener and the OTLP exporter read them. SIGINT or SIGTERM stops collection, which drops
//! the probes and with them every attachment.

use std::{
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
        otlp::{OtlpError, OtlpExporter},
        series::SeriesSelector,
    },
    model::{CollectionHealth, Snapshot},
    webhook::{self, WebhookError},
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
    /// The collector thread panicked.
    #[error("the collector thread panicked")]
    CollectorPanicked,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: RunConfig) -> Result<(), RunError> {
    let capacity = crate::collect::map_capacity(UAPI_SOCKET_DIR.as_ref());
    log::debug!("eBPF maps sized for {capacity:?}");
    let probes = Probes::load(config.attach_mode, capacity).map_err(RunError::Ebpf)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Listen { address: config.listen, source })?;
    let exporter = OtlpExporter::from_env(config.otlp_endpoint.clone()).map_err(RunError::Otlp)?;
    log::info!(
        "wgtel listening on http://{}, collecting every {}, OTLP {}",
        config.listen,
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
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::empty()));
    let (health_tx, health_rx) = watch::channel(CollectionHealth::Starting);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let collector = Collector::new(
        CollectorConfig {
            interfaces: config.interfaces.clone(),
            names: config.names.clone(),
            underlays: config.underlays.clone(),
            uapi_socket_dir: UAPI_SOCKET_DIR.into(),
            alerts: config.alerts.clone(),
            webhook: webhook.as_ref().map(|(queue, _)| queue.clone()),
        },
        probes,
    );
    let interval = config.interval;
    let series = SeriesSelector::new(config.series.clone());
    let collector_thread = thread::Builder::new()
        .name("collector".into())
        .spawn(move || {
            collect_until_stopped(collector, series, interval, &stop_rx, &snapshot_tx, &health_tx);
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
    let server = tokio::spawn(api::serve(
        listener,
        ApiState {
            snapshot: snapshot_rx,
            health: health_rx,
            otlp: otlp_stats,
            webhook: webhook.map(|(_, stats)| stats),
        },
        async move {
            let _closed = shutdown_rx.await;
        },
    ));

    wait_for_signal().await.map_err(RunError::Signals)?;
    log::info!("stopping: detaching from every interface");
    // Dropping the sender wakes the collector thread, which drops the probes on its way out.
    drop(stop_tx);
    let joined = tokio::task::spawn_blocking(move || collector_thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        return Err(RunError::CollectorPanicked);
    }
    let _receiver_gone = shutdown_tx.send(());
    if let Some(exporting) = exporting {
        let _finished = exporting.await;
    }
    match server.await {
        Ok(result) => result.map_err(RunError::Serve)?,
        Err(_) => return Err(RunError::CollectorPanicked),
    }
    log::info!("stopped");
    Ok(())
}

/// Collects every `interval` until `stop` is dropped, publishing each snapshot.
fn collect_until_stopped(
    mut collector: Collector,
    mut series: SeriesSelector,
    interval: Duration,
    stop: &mpsc::Receiver<()>,
    snapshots: &watch::Sender<Arc<Snapshot>>,
    health: &watch::Sender<CollectionHealth>,
) {
    let mut next = Instant::now();
    loop {
        let (mut snapshot, collection_health) = collector.collect();
        series.apply(&mut snapshot);
        snapshots.send_replace(Arc::new(snapshot));
        health.send_replace(collection_health);
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
    drop(collector);
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
