//! OTLP export (placeholder until the SDK wiring lands).

use std::sync::Arc;

use crate::model::Snapshot;

/// OTLP export errors.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// Not built yet.
    #[error("OTLP export is not available in this build")]
    Unavailable,
}

/// Exports snapshots over OTLP.
#[derive(Debug)]
pub struct OtlpExporter;

impl OtlpExporter {
    /// The exporter the settings ask for, if any.
    pub fn from_env(endpoint: Option<String>) -> Result<Option<Self>, OtlpError> {
        match endpoint.or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()) {
            Some(_) => Err(OtlpError::Unavailable),
            None => Ok(None),
        }
    }

    /// Exports one snapshot.
    pub fn export(&self, _snapshot: Arc<Snapshot>) {}

    /// Flushes and stops.
    pub async fn shutdown(self) {}
}
