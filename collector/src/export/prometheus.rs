//! `/metrics`: the Prometheus text exposition (format 0.0.4) of a [`Snapshot`], rendered from
//! the metric table ([`super::metrics::METRICS`]) as a stream of chunks.
//!
//! Names follow the OpenTelemetry-to-Prometheus rules: dots become underscores, the unit
//! becomes a suffix (`By` -> `_bytes`, `s` -> `_seconds`; `{annotations}` are dropped), and
//! counters end in `_total`. Attribute names become labels the same way.
//!
//! [`render_chunks`] hands the text over in pieces of about [`CHUNK`] bytes, so a 10,000-peer
//! page (about 40 MB) is never held whole: the HTTP response streams each piece as it is
//! written, and stops writing when the client goes away.

use std::fmt::Write as _;

use bytes::{BufMut as _, Bytes, BytesMut};

use super::metrics::{Distribution, METRICS, Metric, PointSink, Subject, Value};
use crate::{
    model::{InterfaceSnapshot, Snapshot},
    wg::PublicKey,
};

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The size of the pieces [`render_chunks`] hands over.
pub const CHUNK: usize = 64 * 1024;

/// Renders every metric of `snapshot`, then `tail` (wgtel's own health, rendered by
/// [`render_runtime`] and the others), handing each piece of about [`CHUNK`] bytes to `send`;
/// stops early when `send` answers `false` (the reader is gone).
pub fn render_chunks(snapshot: &Snapshot, tail: &str, send: &mut dyn FnMut(Bytes) -> bool) {
    let mut writer = TextWriter {
        out: BytesMut::with_capacity(CHUNK + 4096),
        send,
        open: true,
        metric: &METRICS[0],
    };
    for metric in METRICS {
        if !writer.open {
            return;
        }
        writer.metric = metric;
        writer.family(metric);
        (metric.read)(snapshot, &mut writer);
    }
    writer.out.put_slice(tail.as_bytes());
    writer.flush();
}

/// Renders every metric of `snapshot` into one string (tests, `wgtel demo`).
pub fn render(snapshot: &Snapshot) -> String {
    let mut text = Vec::new();
    render_chunks(snapshot, "", &mut |chunk| {
        text.extend_from_slice(&chunk);
        true
    });
    String::from_utf8(text).unwrap_or_default()
}

/// Writes the exposition into `out`, handing it to `send` whenever it passes [`CHUNK`].
struct TextWriter<'a> {
    out: BytesMut,
    send: &'a mut dyn FnMut(Bytes) -> bool,
    /// Whether the reader still reads.
    open: bool,
    /// The metric being written.
    metric: &'static Metric,
}

impl TextWriter<'_> {
    fn flush(&mut self) {
        if self.open && !self.out.is_empty() {
            let chunk = self.out.split().freeze();
            self.open = (self.send)(chunk);
        }
        self.out.clear();
    }

    fn family(&mut self, metric: &Metric) {
        let name = metric.prometheus;
        let _infallible = write!(
            self.out,
            "# HELP {name} {}.\n# TYPE {name} {}\n",
            metric.description,
            metric.instrument.as_str()
        );
    }

    /// One sample line: the family's name with `suffix`, the subject's labels, `attributes`,
    /// an `le` label when given, and the value.
    fn sample(
        &mut self,
        suffix: &str,
        subject: Subject<'_>,
        attributes: &[(&'static str, &str)],
        le: Option<f64>,
        value: SampleValue,
    ) {
        self.out.put_slice(self.metric.prometheus.as_bytes());
        self.out.put_slice(suffix.as_bytes());
        let mut labels = Labels { out: &mut self.out, count: 0 };
        labels.subject(subject);
        for (name, value) in attributes {
            labels.push(name, value);
        }
        match le {
            Some(bound) if bound.is_finite() => labels.push_number("le", bound),
            Some(_) => labels.push("le", "+Inf"),
            None => {}
        }
        if labels.count > 0 {
            self.out.put_u8(b'}');
        }
        let _infallible = match value {
            SampleValue::Int(value) => writeln!(self.out, " {value}"),
            SampleValue::Double(value) => writeln!(self.out, " {value}"),
        };
    }

    /// `_bucket` lines up to the highest bucket with samples, `+Inf`, `_sum` and `_count`.
    fn histogram(
        &mut self,
        subject: Subject<'_>,
        attributes: &[(&'static str, &str)],
        distribution: Distribution<'_>,
    ) {
        let last = distribution.counts.iter().rposition(|count| *count > 0).unwrap_or(0);
        let mut cumulative = 0;
        for (bound, count) in distribution.bounds.iter().zip(distribution.counts).take(last + 1) {
            cumulative += count;
            self.sample("_bucket", subject, attributes, Some(*bound), SampleValue::Int(cumulative));
        }
        let count = SampleValue::Int(distribution.count);
        self.sample("_bucket", subject, attributes, Some(f64::INFINITY), count);
        self.sample("_sum", subject, attributes, None, SampleValue::Double(distribution.sum));
        self.sample("_count", subject, attributes, None, count);
    }
}

impl PointSink for TextWriter<'_> {
    fn point(
        &mut self,
        subject: Subject<'_>,
        attributes: &[(&'static str, &str)],
        value: Value<'_>,
    ) {
        match value {
            Value::Int(value) => {
                self.sample("", subject, attributes, None, SampleValue::Int(value));
            }
            Value::Double(value) => {
                self.sample("", subject, attributes, None, SampleValue::Double(value));
            }
            Value::Histogram(distribution) => self.histogram(subject, attributes, distribution),
        }
        if self.out.len() >= CHUNK {
            self.flush();
        }
    }
}

/// A sample's value as the exposition writes it.
#[derive(Clone, Copy)]
enum SampleValue {
    Int(u64),
    Double(f64),
}

/// The label set of one sample being written.
struct Labels<'a> {
    out: &'a mut BytesMut,
    count: usize,
}

impl Labels<'_> {
    /// `name="value"`, the name translated from an attribute name, the value escaped.
    fn push(&mut self, attribute: &str, value: &str) {
        self.out.put_u8(if self.count == 0 { b'{' } else { b',' });
        self.count += 1;
        let start = self.out.len();
        self.out.put_slice(attribute.as_bytes());
        for byte in &mut self.out[start..] {
            if *byte == b'.' {
                *byte = b'_';
            }
        }
        self.out.put_slice(b"=\"");
        // Most values need no escaping: copied whole.
        if value.bytes().any(|byte| matches!(byte, b'\\' | b'"' | b'\n')) {
            for c in value.chars() {
                match c {
                    '\\' => self.out.put_slice(b"\\\\"),
                    '"' => self.out.put_slice(b"\\\""),
                    '\n' => self.out.put_slice(b"\\n"),
                    c => {
                        let mut utf8 = [0; 4];
                        self.out.put_slice(c.encode_utf8(&mut utf8).as_bytes());
                    }
                }
            }
        } else {
            self.out.put_slice(value.as_bytes());
        }
        self.out.put_u8(b'"');
    }

    /// `name="number"`: a number needs no escaping.
    fn push_number(&mut self, name: &str, number: impl std::fmt::Display) {
        self.out.put_u8(if self.count == 0 { b'{' } else { b',' });
        self.count += 1;
        let _infallible = write!(self.out, "{name}=\"{number}\"");
    }

    fn key(&mut self, key: &PublicKey) {
        let mut text = [0; 44];
        self.push("wireguard.peer.public_key", key.base64(&mut text));
    }

    /// `wireguard.interface`, and `wireguard.netns` outside the start namespace.
    fn interface(&mut self, interface: &InterfaceSnapshot) {
        self.push("wireguard.interface", &interface.name);
        if let Some(netns) = &interface.netns {
            self.push("wireguard.netns", netns);
        }
    }

    fn subject(&mut self, subject: Subject<'_>) {
        match subject {
            Subject::Host => {}
            Subject::Interface(interface) => self.interface(interface),
            Subject::Peer { interface, key, name } => {
                self.interface(interface);
                match key {
                    Some(key) => self.key(key),
                    None => self.push("otel.metric.overflow", "true"),
                }
                if let Some(name) = name {
                    self.push("wireguard.peer.name", name);
                }
            }
            Subject::Check(check) => {
                self.push("wireguard.check.name", &check.name);
                self.push("wireguard.check.kind", &check.kind);
                if let Some(interface) = &check.interface {
                    self.push("wireguard.interface", interface);
                }
                if let Some(key) = &check.peer_public_key {
                    self.key(key);
                }
                if let Some(name) = &check.peer_name {
                    self.push("wireguard.peer.name", name);
                }
            }
            Subject::Process(process) => {
                self.push_number("process_pid", process.pid);
                self.push("process.executable.name", &process.name);
                if let Some(interface) = &process.interface {
                    self.push("wireguard.interface", interface);
                }
            }
        }
    }
}

/// wgtel's tokio runtime: the tasks alive (the request being served among them), so that a
/// task leak shows as growth.
pub fn render_runtime(out: &mut String, alive_tasks: usize) {
    family(
        out,
        "wgtel_runtime_tasks",
        "gauge",
        "Tasks alive on wgtel's tokio runtime, the request serving this page among them.",
    );
    sample(out, "wgtel_runtime_tasks", "", alive_tasks as f64);
}

/// wgtel's own OTLP export: the latest export's wall time and the outcomes so far.
pub fn render_otlp_stats(out: &mut String, stats: &crate::export::otlp::ExportStats) {
    family(
        out,
        "wgtel_otlp_export_duration_seconds",
        "gauge",
        "The latest OTLP export: encoding the snapshot, sending, the endpoint's answer.",
    );
    sample(out, "wgtel_otlp_export_duration_seconds", "", stats.last_seconds());
    family(out, "wgtel_otlp_exports_total", "counter", "OTLP exports by outcome.");
    let (succeeded, failed) = stats.outcomes();
    for (outcome, count) in [("success", succeeded), ("failure", failed)] {
        sample(out, "wgtel_otlp_exports_total", &format!("outcome=\"{outcome}\""), count as f64);
    }
}

/// The alert webhook: changes sent, retried, refused, and dropped from a full queue.
pub fn render_webhook_stats(out: &mut String, stats: &crate::webhook::WebhookStats) {
    for (name, help, value) in [
        ("wgtel_webhook_sent_total", "Alert changes the webhook accepted.", stats.sent()),
        (
            "wgtel_webhook_failed_attempts_total",
            "Webhook POSTs that failed and were retried.",
            stats.failed_attempts(),
        ),
        (
            "wgtel_webhook_rejected_total",
            "Alert changes the webhook refused with a 4xx (not retried).",
            stats.rejected(),
        ),
        (
            "wgtel_webhook_dropped_total",
            "Alert changes dropped because the webhook queue was full.",
            stats.dropped(),
        ),
    ] {
        family(out, name, "counter", help);
        sample(out, name, "", value as f64);
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _infallible = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    let _infallible = if labels.is_empty() {
        writeln!(out, "{name} {value}")
    } else {
        writeln!(out, "{name}{{{labels}}} {value}")
    };
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;
    use crate::{
        model::{DROP_REASON_NO_PEER, InterfaceSnapshot, PeerSnapshot, PeerState},
        wg::{Implementation, PublicKey},
    };

    /// A gateway with one named, active peer and one peer that never had a handshake.
    pub(crate) fn snapshot() -> Snapshot {
        let peer = |key: u8, name: Option<&str>, age: Option<f64>| PeerSnapshot {
            public_key: PublicKey([key; 32]),
            name: name.map(str::to_owned),
            endpoint: Some("198.18.1.10:51820".parse().expect("an endpoint")),
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
            last_handshake_seconds_ago: age,
            last_handshake_unix: age.map(|age| 1_796_000_000.0 - age),
            state: PeerState::from_handshake_age(age),
            health: crate::model::PeerHealth::judge(PeerState::from_handshake_age(age), false),
            rx_bytes: 1000,
            tx_bytes: 2000,
            rx_packets: 50,
            tx_packets: 51,
            rx_bytes_per_second: 10.0,
            tx_bytes_per_second: 20.5,
            drops: Some(BTreeMap::new()),
            underlay: crate::model::PeerUnderlaySnapshot::default(),
            latency: BTreeMap::new(),
        };
        Snapshot {
            taken_at: SystemTime::UNIX_EPOCH,
            collection_seconds: 0.25,
            events: Vec::new(),
            event_counts: BTreeMap::from([("peer_added".to_owned(), 2)]),
            host: crate::host::HostSnapshot::default(),
            alerts: Vec::new(),
            ebpf_map_errors: vec![("SESSIONS", 0), ("DROPS", 4)],
            unavailable: Vec::new(),
            diagnoses: Vec::new(),
            checks: Vec::new(),
            interfaces: vec![InterfaceSnapshot {
                name: "wg0".into(),
                ifindex: 7,
                netns: None,
                implementation: Implementation::WireguardGo,
                listen_port: Some(51820),
                fwmark: None,
                public_key: Some(PublicKey([9; 32])),
                drops: BTreeMap::from([(DROP_REASON_NO_PEER.to_owned(), 3)]),
                allowed_ip_entries: 2,
                no_peer_destinations: Vec::new(),
                initiation_sources: Vec::new(),
                underlay_unknown_source: 0,
                udp_socket_drops: None,
                ipv4_forwarding: None,
                ipv6_forwarding: None,
                peers: vec![peer(1, Some("al\"ice\\"), Some(12.5)), peer(2, None, None)],
                aggregated: None,
            }],
        }
    }

    #[test]
    fn renders_every_family_with_exact_samples() {
        let text = render(&snapshot());
        let alice = PublicKey([1; 32]).to_string();
        let never = PublicKey([2; 32]).to_string();
        for line in [
            "# TYPE wireguard_peer_io_bytes_total counter".to_owned(),
            format!(r#"wireguard_peer_io_bytes_total{{wireguard_interface="wg0",wireguard_peer_public_key="{alice}",wireguard_peer_name="al\"ice\\",network_io_direction="receive"}} 1000"#),
            "# TYPE wgtel_ebpf_map_errors_total counter".to_owned(),
            r#"wgtel_ebpf_map_errors_total{map="DROPS"} 4"#.to_owned(),
            r#"wgtel_ebpf_map_errors_total{map="SESSIONS"} 0"#.to_owned(),
            format!(r#"wireguard_peer_packets_total{{wireguard_interface="wg0",wireguard_peer_public_key="{never}",network_io_direction="transmit"}} 51"#),
            format!(r#"wireguard_peer_handshake_age_seconds{{wireguard_interface="wg0",wireguard_peer_public_key="{alice}",wireguard_peer_name="al\"ice\\"}} 12.5"#),
            r#"wireguard_interface_drops_total{wireguard_interface="wg0",wireguard_drop_reason="no_peer"} 3"#.to_owned(),
            r#"wireguard_peers{wireguard_interface="wg0",wireguard_peer_state="active"} 1"#.to_owned(),
            r#"wireguard_peers{wireguard_interface="wg0",wireguard_peer_state="stale"} 0"#.to_owned(),
            r#"wireguard_peers{wireguard_interface="wg0",wireguard_peer_state="never"} 1"#.to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\nin\n{text}");
        }
        // No handshake, no age sample.
        assert_eq!(text.matches("wireguard_peer_handshake_age_seconds{").count(), 1);
    }

    #[test]
    fn an_interface_of_another_namespace_carries_it_on_every_series() {
        let mut elsewhere = snapshot();
        elsewhere.interfaces[0].netns = Some("blue".into());
        let text = render(&elsewhere);
        let never = PublicKey([2; 32]).to_string();
        for line in [
            format!(r#"wireguard_peer_packets_total{{wireguard_interface="wg0",wireguard_netns="blue",wireguard_peer_public_key="{never}",network_io_direction="transmit"}} 51"#),
            r#"wireguard_interface_drops_total{wireguard_interface="wg0",wireguard_netns="blue",wireguard_drop_reason="no_peer"} 3"#.to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\nin\n{text}");
        }
        let interface_series = text.lines().filter(|l| l.contains("wireguard_interface=\"wg0\""));
        assert!(interface_series.clone().count() > 10);
        assert!(interface_series.clone().all(|l| l.contains("wireguard_netns=\"blue\"")));
        assert!(!render(&snapshot()).contains("wireguard_netns"));
    }

    /// [`snapshot`] with `peers` copies of its first peer, peer `i` with key bytes `i` and
    /// `i` bytes received.
    pub(crate) fn gateway_of(peers: u32) -> Snapshot {
        let mut big = snapshot();
        let template = big.interfaces[0].peers[0].clone();
        big.interfaces[0].peers = (0..peers)
            .map(|index| {
                let mut peer = template.clone();
                peer.public_key.0[..4].copy_from_slice(&index.to_be_bytes());
                peer.rx_bytes = u64::from(index);
                peer
            })
            .collect();
        big
    }

    #[test]
    fn a_large_page_comes_in_pieces_and_a_gone_reader_stops_it() {
        let big = gateway_of(2_000);
        let mut pieces = Vec::new();
        render_chunks(&big, "tail 1\n", &mut |piece| {
            pieces.push(piece);
            true
        });
        assert!(pieces.len() > 10, "{} pieces", pieces.len());
        // A piece ends after the sample that passes the size: never much above it.
        assert!(pieces.iter().all(|piece| piece.len() < CHUNK + 2048));
        let text: Vec<u8> = pieces.concat();
        let text = String::from_utf8(text).expect("UTF-8");
        assert!(text.ends_with("tail 1\n"));
        assert_eq!(text.matches("wireguard_peer_io_bytes_total{").count(), 4_000);
        let mut asked = 0;
        render_chunks(&big, "", &mut |_| {
            asked += 1;
            false
        });
        assert_eq!(asked, 1, "nothing more is rendered for a reader that is gone");
    }

    #[test]
    fn latency_histograms_are_cumulative_up_to_the_highest_bucket_with_samples() {
        let mut with_samples = snapshot();
        let mut buckets = vec![0; collector_common::latency::LATENCY_BUCKETS as usize];
        buckets[1] = 2; // 2 to 4 ns
        buckets[3] = 1; // 8 to 16 ns
        with_samples.interfaces[0].peers[1].latency.insert(
            "icmp_round_trip",
            crate::model::LatencySnapshot::from_buckets(buckets, 30, 0, None),
        );
        let text = render(&with_samples);
        let never = PublicKey([2; 32]).to_string();
        let prefix = format!(
            r#"wireguard_peer_rtt_seconds_bucket{{wireguard_interface="wg0",wireguard_peer_public_key="{never}",wireguard_rtt_kind="icmp_round_trip","#
        );
        let buckets: Vec<&str> =
            text.lines().filter_map(|line| line.strip_prefix(prefix.as_str())).collect();
        assert_eq!(
            buckets,
            [
                r#"le="0.000000002"} 0"#,
                r#"le="0.000000004"} 2"#,
                r#"le="0.000000008"} 2"#,
                r#"le="0.000000016"} 3"#,
                r#"le="+Inf"} 3"#,
            ]
        );
        assert!(text.contains(&format!(
            r#"wireguard_peer_rtt_seconds_sum{{wireguard_interface="wg0",wireguard_peer_public_key="{never}",wireguard_rtt_kind="icmp_round_trip"}} 0.00000003"#
        )));
    }
}
