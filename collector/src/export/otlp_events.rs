//! Operational events ([`crate::events`]) as OTLP log records, sent by the OTLP exporting
//! task after each snapshot's metrics: one record per event, its `event.name`
//! `wireguard.<type>`, the event's time as the record's timestamp, and the attributes of the
//! peer metrics (`wireguard.interface`, `wireguard.peer.public_key`, `wireguard.peer.name`)
//! plus `wireguard.event.type`.
//!
//! Events are sent once each. The log keeps the latest [`crate::events::EVENT_LOG_CAPACITY`]
//! and counts every event, so the events new since the last successful export are the newest
//! `total now - total then` of the snapshot's list; a failed export is retried with the next
//! snapshot, and only what the log no longer holds can be lost.

use std::time::{Duration, SystemTime};

use opentelemetry::{
    InstrumentationScope,
    logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity},
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    logs::{LogBatch, LogExporter, SdkLogRecord, SdkLogger, SdkLoggerProvider},
};

use crate::{events::Event, model::Snapshot};

/// Event types and their `event.name`s; a type not listed is sent as `wireguard.event`.
const EVENT_NAMES: [(&str, &str); 14] = [
    ("interface_created", "wireguard.interface_created"),
    ("interface_destroyed", "wireguard.interface_destroyed"),
    ("interface_restarted", "wireguard.interface_restarted"),
    ("listen_port_changed", "wireguard.listen_port_changed"),
    ("peer_added", "wireguard.peer_added"),
    ("peer_removed", "wireguard.peer_removed"),
    ("endpoint_roamed", "wireguard.endpoint_roamed"),
    ("allowed_ips_changed", "wireguard.allowed_ips_changed"),
    ("link_down", "wireguard.link_down"),
    ("link_up", "wireguard.link_up"),
    ("link_flapping", "wireguard.link_flapping"),
    ("public_key_changed", "wireguard.public_key_changed"),
    ("alert_firing", "wireguard.alert_firing"),
    ("alert_resolved", "wireguard.alert_resolved"),
];

/// Event types that mean something stopped working: sent with severity WARN, the rest INFO.
const WARNINGS: [&str; 4] = ["interface_destroyed", "link_down", "link_flapping", "alert_firing"];

/// Sends the events of each snapshot that were not sent yet.
#[derive(Debug)]
pub struct EventExport<L> {
    exporter: L,
    /// Makes the records; it has no processor: records go to `exporter` from here.
    logger: SdkLogger,
    _provider: SdkLoggerProvider,
    scope: InstrumentationScope,
    /// Events counted by the log at the last successful export; `None` before the first.
    sent_total: Option<u64>,
}

impl<L: LogExporter> EventExport<L> {
    /// Sends through `exporter`, whose resource the caller has set.
    pub fn new(exporter: L) -> Self {
        let provider = SdkLoggerProvider::builder().build();
        let scope = InstrumentationScope::builder("wgtel").build();
        let logger = provider.logger_with_scope(scope.clone());
        Self { exporter, logger, _provider: provider, scope, sent_total: None }
    }

    /// Sends the events of `snapshot` not sent yet (at the first call: every event it holds).
    pub async fn export(&mut self, snapshot: &Snapshot) -> OTelSdkResult {
        let total: u64 = snapshot.event_counts.values().sum();
        let new = self
            .sent_total
            .map_or(usize::MAX, |sent| {
                usize::try_from(total.saturating_sub(sent)).unwrap_or(usize::MAX)
            })
            .min(snapshot.events.len());
        if new > 0 {
            // Newest first in the snapshot; oldest first on the wire.
            let records: Vec<SdkLogRecord> =
                snapshot.events[..new].iter().rev().map(|event| self.record(event)).collect();
            let batch: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                records.iter().map(|record| (record, &self.scope)).collect();
            self.exporter.export(LogBatch::new(&batch)).await?;
        }
        self.sent_total = Some(total);
        Ok(())
    }

    /// Shuts the exporter down.
    pub fn shutdown(&self) -> OTelSdkResult {
        self.exporter.shutdown()
    }

    fn record(&self, event: &Event) -> SdkLogRecord {
        let mut record = self.logger.create_log_record();
        let name = EVENT_NAMES
            .iter()
            .find(|(kind, _)| *kind == event.kind)
            .map_or("wireguard.event", |(_, name)| name);
        record.set_event_name(name);
        record.set_timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(event.at.max(0.0)));
        record.set_observed_timestamp(SystemTime::now());
        let (severity, text) = if WARNINGS.contains(&event.kind.as_str()) {
            (Severity::Warn, "WARN")
        } else {
            (Severity::Info, "INFO")
        };
        record.set_severity_number(severity);
        record.set_severity_text(text);
        let subject = match (&event.peer, &event.name) {
            (_, Some(name)) => format!(" peer {name}"),
            (Some(key), None) => format!(" peer {key}"),
            (None, None) => String::new(),
        };
        record.set_body(AnyValue::from(format!(
            "{} on {}{subject}: {}",
            event.kind, event.interface, event.detail
        )));
        record.add_attribute("wireguard.event.type", event.kind.clone());
        record.add_attribute("wireguard.interface", event.interface.clone());
        if let Some(key) = &event.peer {
            record.add_attribute("wireguard.peer.public_key", key.clone());
        }
        if let Some(name) = &event.name {
            record.add_attribute("wireguard.peer.name", name.clone());
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry_sdk::error::OTelSdkError;

    use super::*;
    use crate::export::prometheus::tests::snapshot;

    /// Keeps the event names it was sent; fails while `failing` is set.
    #[derive(Debug, Default, Clone)]
    struct Recorder {
        sent: Arc<Mutex<Vec<String>>>,
        failing: Arc<Mutex<bool>>,
    }

    impl LogExporter for Recorder {
        async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
            if *self.failing.lock().expect("lock") {
                return Err(OTelSdkError::InternalFailure("down".into()));
            }
            let mut sent = self.sent.lock().expect("lock");
            for (record, _) in batch.iter() {
                sent.push(record.event_name().unwrap_or_default().to_owned());
            }
            Ok(())
        }
    }

    fn with_events(kinds: &[&str]) -> Snapshot {
        let mut snapshot = snapshot();
        // The log's order: newest first; its counts: every event since the start.
        snapshot.events = kinds
            .iter()
            .rev()
            .map(|kind| Event {
                at: 1.0,
                kind: (*kind).to_owned(),
                interface: "wg0".into(),
                peer: None,
                name: None,
                detail: String::new(),
            })
            .collect();
        snapshot.event_counts = std::iter::once(("any".to_owned(), kinds.len() as u64)).collect();
        snapshot
    }

    #[tokio::test]
    async fn each_event_is_sent_once_in_order_and_a_failed_export_is_retried() {
        let recorder = Recorder::default();
        let mut export = EventExport::new(recorder.clone());
        export.export(&with_events(&["peer_added"])).await.expect("sent");
        export.export(&with_events(&["peer_added"])).await.expect("nothing new");
        *recorder.failing.lock().expect("lock") = true;
        let two_more = with_events(&["peer_added", "link_down", "link_up"]);
        assert!(export.export(&two_more).await.is_err());
        *recorder.failing.lock().expect("lock") = false;
        export
            .export(&with_events(&["peer_added", "link_down", "link_up", "x"]))
            .await
            .expect("sent");
        assert_eq!(
            *recorder.sent.lock().expect("lock"),
            ["wireguard.peer_added", "wireguard.link_down", "wireguard.link_up", "wireguard.event"]
        );
    }
}
