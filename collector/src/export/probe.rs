//! `GET /probe?endpoint=HOST:PORT&peer_public_key=KEY[&inner_target=IP&inner_source=IP]`:
//! one outside-in probe ([`crate::probe`]) per request, answered in the Prometheus text format
//! the way the blackbox exporter answers (a failed probe is a `200` with
//! `wgtel_probe_success 0`; a bad request is a `400`, `/probe` without `[probe]` a `404`).
//!
//! The key is the configuration's `[probe] private-key-file`; the request never carries one.
//! Probes run on the async runtime (a few datagrams each), never on the collector thread, at
//! most [`Prober::MAX_RUNNING`] at once, each bounded by the configured timeout.
//!
//! | series | meaning |
//! | --- | --- |
//! | `wgtel_probe_success` | 1 when the handshake and every echo asked for succeeded |
//! | `wgtel_probe_handshake_success` | 1 when the handshake completed |
//! | `wgtel_probe_handshake_duration_seconds` | initiation to response (only with a response) |
//! | `wgtel_probe_echo_success_ratio` | share of the echoes answered (only with `inner_target`) |
//! | `wgtel_probe_echo_duration_seconds{seq}` | each answered echo's round trip |
//! | `wgtel_probe_duration_seconds` | the whole probe |

use std::{fmt::Write as _, net::Ipv4Addr, sync::Arc, time::Instant};

use axum::{
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{api::ApiState, prometheus::CONTENT_TYPE};
use crate::probe::{EchoTarget, ProbeReport, ProbeTarget, Prober};

/// The query of `/probe`: every value as given, checked by [`target`].
#[derive(Debug, Default, Deserialize)]
pub struct ProbeQuery {
    endpoint: Option<String>,
    peer_public_key: Option<String>,
    inner_target: Option<String>,
    inner_source: Option<String>,
}

/// The `/probe` route.
pub async fn probe(State(state): State<ApiState>, Query(query): Query<ProbeQuery>) -> Response {
    let Some(prober) = state.prober else {
        return (
            StatusCode::NOT_FOUND,
            "404: /probe is off: set [probe] private-key-file in the configuration\n",
        )
            .into_response();
    };
    let target = match target(&query, &prober) {
        Ok(target) => target,
        Err(message) => {
            return (StatusCode::BAD_REQUEST, format!("400: {message}\n")).into_response();
        }
    };
    answer(&prober, &target).await
}

async fn answer(prober: &Arc<Prober>, target: &ProbeTarget) -> Response {
    let started = Instant::now();
    let report = match prober.run(target).await {
        Some(Ok(report)) => report,
        Some(Err(error)) => {
            log::warn!("/probe of {}: {error}", target.endpoint);
            failed(target)
        }
        None => {
            return (StatusCode::SERVICE_UNAVAILABLE, "503: too many probes running\n")
                .into_response();
        }
    };
    let text = render(&report, started.elapsed().as_secs_f64());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// The report of a probe this host could not run (no socket).
fn failed(target: &ProbeTarget) -> ProbeReport {
    ProbeReport {
        error: Some("this host could not open a socket".into()),
        ..ProbeReport::new(target)
    }
}

/// The probe a query asks for, or what is wrong with it.
fn target(query: &ProbeQuery, prober: &Prober) -> Result<ProbeTarget, String> {
    let endpoint = query.endpoint.as_deref().ok_or("endpoint=HOST:PORT is required")?;
    let key = query.peer_public_key.as_deref().ok_or("peer_public_key=KEY is required")?;
    let address = |name: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(|text| {
                text.parse::<Ipv4Addr>()
                    .map_err(|_| format!("{name} {text:?} is not an IPv4 address"))
            })
            .transpose()
    };
    let echo = match (
        address("inner_target", &query.inner_target)?,
        address("inner_source", &query.inner_source)?,
    ) {
        (Some(target), Some(source)) => Some(EchoTarget { target, source, count: prober.count }),
        (None, None) => None,
        _ => return Err("inner_target and inner_source go together".into()),
    };
    ProbeTarget::new(endpoint, key, echo, prober.timeout).map_err(|error| {
        match std::error::Error::source(&error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        }
    })
}

/// `report` in the Prometheus text format; `seconds` is how long the probe took.
pub fn render(report: &ProbeReport, seconds: f64) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _infallible = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _infallible = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |value: f64| vec![(String::new(), value)];
    gauge(
        "wgtel_probe_success",
        "1 when the WireGuard handshake and every echo asked for succeeded, else 0.",
        &one(f64::from(u8::from(report.success))),
    );
    gauge(
        "wgtel_probe_handshake_success",
        "1 when the WireGuard handshake with the endpoint completed, else 0.",
        &one(f64::from(u8::from(report.reachable))),
    );
    gauge(
        "wgtel_probe_handshake_duration_seconds",
        "Handshake initiation to response (absent without a response).",
        &report.handshake_seconds.map(one).unwrap_or_default(),
    );
    if report.inner_target.is_some() {
        let ratio = report.loss.map_or(0.0, |loss| 1.0 - loss);
        gauge(
            "wgtel_probe_echo_success_ratio",
            "Share of the ICMP echoes through the tunnel that were answered.",
            &one(ratio),
        );
    }
    let echoes: Vec<(String, f64)> = report
        .echoes
        .iter()
        .filter_map(|echo| Some((format!("{{seq=\"{}\"}}", echo.seq), echo.rtt_seconds?)))
        .collect();
    gauge(
        "wgtel_probe_echo_duration_seconds",
        "Round trip of each answered ICMP echo through the tunnel, by sequence number.",
        &echoes,
    );
    gauge("wgtel_probe_duration_seconds", "How long the whole probe took.", &one(seconds));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::EchoResult;

    #[test]
    fn a_report_renders_as_blackbox_style_gauges() {
        let report = ProbeReport {
            endpoint: "198.18.3.1:51820".into(),
            address: Some("198.18.3.1:51820".parse().expect("an address")),
            reachable: true,
            handshake_seconds: Some(0.0015),
            inner_target: Some(Ipv4Addr::new(198, 19, 3, 1)),
            echoes: vec![
                EchoResult { seq: 1, rtt_seconds: Some(0.0005) },
                EchoResult { seq: 2, rtt_seconds: None },
            ],
            sent: 2,
            received: 1,
            loss: Some(0.5),
            success: false,
            error: Some("1 of 2 echoes unanswered".into()),
        };
        assert_eq!(
            render(&report, 1.25),
            "# HELP wgtel_probe_success 1 when the WireGuard handshake and every echo asked for \
             succeeded, else 0.\n# TYPE wgtel_probe_success gauge\nwgtel_probe_success 0\n\
             # HELP wgtel_probe_handshake_success 1 when the WireGuard handshake with the \
             endpoint completed, else 0.\n# TYPE wgtel_probe_handshake_success gauge\n\
             wgtel_probe_handshake_success 1\n\
             # HELP wgtel_probe_handshake_duration_seconds Handshake initiation to response \
             (absent without a response).\n\
             # TYPE wgtel_probe_handshake_duration_seconds gauge\n\
             wgtel_probe_handshake_duration_seconds 0.0015\n\
             # HELP wgtel_probe_echo_success_ratio Share of the ICMP echoes through the tunnel \
             that were answered.\n# TYPE wgtel_probe_echo_success_ratio gauge\n\
             wgtel_probe_echo_success_ratio 0.5\n\
             # HELP wgtel_probe_echo_duration_seconds Round trip of each answered ICMP echo \
             through the tunnel, by sequence number.\n\
             # TYPE wgtel_probe_echo_duration_seconds gauge\n\
             wgtel_probe_echo_duration_seconds{seq=\"1\"} 0.0005\n\
             # HELP wgtel_probe_duration_seconds How long the whole probe took.\n\
             # TYPE wgtel_probe_duration_seconds gauge\nwgtel_probe_duration_seconds 1.25\n"
        );
    }
}
