//! Exporters: they read [`crate::model::Snapshot`]s and nothing else.
//!
//! - [`metrics`]: the one table of every metric, which drives `/metrics`, OTLP and the README.
//! - [`prometheus`]: the `/metrics` text exposition, streamed.
//! - [`api`]: the HTTP listener (`/metrics`, `/api/v1/...`, `/healthz`).
//! - [`listener`]: what the API is served over: TLS, bearer token, connection and size limits.
//! - [`otlp`]: OpenTelemetry metrics over OTLP (gRPC or HTTP/protobuf): the exporting task.
//! - [`otlp_encode`]: the OTLP request, encoded straight from a snapshot.
//! - [`otlp_transport`]: sending it (gRPC, HTTP), headers, compression.
//! - [`otlp_events`]: operational events as OTLP log records, beside the metrics.
//! - [`otlp_resource`]: the OTLP resource (`host.name`, `service.instance.id`, ...).
//! - [`otlp_tls`]: TLS and client certificates for OTLP.
//! - [`probe`]: `/probe`, an outside-in WireGuard probe per request, for a blackbox-style scrape.
//! - [`series`]: which peers get series of their own (`--top-peers`, `--peer-allowlist`).

pub mod api;
pub mod listener;
pub mod metrics;
pub mod otlp;
pub mod otlp_encode;
pub mod otlp_events;
pub mod otlp_resource;
pub mod otlp_tls;
pub mod otlp_transport;
pub mod probe;
pub mod prometheus;
pub mod series;
