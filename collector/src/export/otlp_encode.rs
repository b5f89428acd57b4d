//! The OTLP metrics request (`ExportMetricsServiceRequest`, protobuf), encoded straight from a
//! [`Snapshot`] through the metric table, in one pass and without the SDK.
//!
//! Semantics: counters are monotonic cumulative sums and histograms cumulative, each series
//! with its start time (a peer's: when wgtel first saw it, anew when it is re-added; an
//! interface's: when wgtel first saw the interface; everything else: when wgtel started);
//! gauges carry no start time. Histograms carry the kernel's exact bucket counts and sums with
//! its bucket bounds. A series that is no longer in the snapshot is simply not encoded again.
//!
//! The request is cut into several of at most [`REQUEST_LIMIT`] bytes, each a complete request
//! (receivers refuse large messages: gRPC's default limit is 4 MiB), handed over as soon as it
//! is full, so a 10,000-peer export never holds more than one request being written.
//!
//! Field numbers are those of opentelemetry-proto's `metrics/v1/metrics.proto`,
//! `common/v1/common.proto` and `collector/metrics/v1/metrics_service.proto`; the wire format
//! is written with prost's encoding functions.

use std::{
    collections::HashMap,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::{Buf as _, BufMut, Bytes, BytesMut};
use opentelemetry::Value as AttributeValue;
use opentelemetry_sdk::Resource;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use super::metrics::{Distribution, Instrument, METRICS, Metric, PointSink, Subject, Value};
use crate::{
    model::{InterfaceSnapshot, Snapshot},
    wg::PublicKey,
};

/// The largest request [`Encoder::encode`] hands over (a request ends after the point that
/// reaches it). Measured at 10,000 peers (`cargo xtask bench`): at 1 MiB, gRPC to rotel cost
/// 30 ms more CPU per export and the requests' buffers several megabytes more of peak RSS.
pub const REQUEST_LIMIT: usize = 512 * 1024;

/// Room a request is given past [`REQUEST_LIMIT`]: the metric's own fields and the point that
/// reaches the limit (a histogram point with its attributes is well under 2 KiB). A request
/// that outgrew its allocation would be copied into one twice its size.
const REQUEST_SLACK: usize = 16 * 1024;

/// `AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE`.
const CUMULATIVE: u64 = 2;

/// Encodes snapshots into OTLP requests, remembering when each series started.
#[derive(Debug)]
pub struct Encoder {
    /// The subjects of the snapshot being encoded.
    subjects: SubjectCache,
    /// The `Resource` message.
    resource: Bytes,
    /// The `InstrumentationScope` message.
    scope: Bytes,
    /// When wgtel started, ns since the epoch.
    started: u64,
    starts: SeriesStarts,
    limit: usize,
    /// Request buffers the transport is done with (see [`Recycler`]), for the next requests.
    returned: std::sync::mpsc::Receiver<BytesMut>,
    recycler: Recycler,
    /// The points of the metric being written, and the point: kept from one snapshot to the
    /// next.
    points: BytesMut,
    point: BytesMut,
}

/// Hands the buffers of sent requests back to their [`Encoder`]: a gateway's snapshot is
/// dozens of megabyte-sized requests each interval, and a buffer used again is memory the
/// kernel need not give (and fault in) again.
#[derive(Clone, Debug)]
pub struct Recycler(std::sync::mpsc::SyncSender<BytesMut>);

/// Sent requests' buffers waiting to be used again, at most: one per request in flight and
/// the one being written.
const RECYCLED_BUFFERS: usize = 2;

impl Recycler {
    /// Gives `request`'s buffer back, when nothing else holds the request any more.
    pub fn give_back(&self, request: Bytes) {
        if let Ok(mut buffer) = request.try_into_mut() {
            buffer.clear();
            // A full queue (or a dropped encoder) lets the buffer go.
            let _unused = self.0.try_send(buffer);
        }
    }
}

impl Encoder {
    /// An encoder for `resource`'s requests of at most about `limit` bytes.
    pub fn new(resource: &Resource, limit: usize) -> Self {
        let mut encoded = BytesMut::new();
        // Sorted by key: the same resource gives the same bytes.
        let mut attributes: Vec<_> = resource.iter().collect();
        attributes.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        for (key, value) in attributes {
            put_attribute(&mut encoded, 1, key.as_str(), Attribute::from_value(value).as_ref());
        }
        let mut scope = BytesMut::new();
        put_string(&mut scope, 1, "wgtel");
        put_string(&mut scope, 2, env!("CARGO_PKG_VERSION"));
        let (recycler, returned) = std::sync::mpsc::sync_channel(RECYCLED_BUFFERS);
        Self {
            subjects: SubjectCache::default(),
            resource: encoded.freeze(),
            scope: scope.freeze(),
            started: unix_nanos(SystemTime::now()),
            starts: SeriesStarts::default(),
            limit,
            returned,
            recycler: Recycler(recycler),
            points: BytesMut::new(),
            point: BytesMut::new(),
        }
    }

    /// What gives sent requests' buffers back to this encoder.
    pub fn recycler(&self) -> Recycler {
        self.recycler.clone()
    }

    /// Encodes every metric of `snapshot`, handing each complete request to `send`; stops
    /// when `send` answers `false`.
    pub fn encode(&mut self, snapshot: &Snapshot, send: &mut dyn FnMut(Bytes) -> bool) {
        let time = unix_nanos(snapshot.taken_at);
        self.starts.update(snapshot, time);
        self.subjects.clear();
        let reserve = self.resource.len() + self.scope.len() + 32;
        let points = std::mem::take(&mut self.points);
        let point = std::mem::take(&mut self.point);
        let mut writer = RequestWriter {
            encoder: self,
            reserve,
            body: BytesMut::new(),
            points,
            point,
            metric: &METRICS[0],
            time,
            send,
            open: true,
        };
        writer.start_request();
        for metric in METRICS {
            if !writer.open {
                break;
            }
            writer.metric = metric;
            (metric.read)(snapshot, &mut writer);
            writer.finish_metric();
        }
        writer.finish_request();
        let (mut points, mut point) = (writer.points, writer.point);
        points.clear();
        point.clear();
        (self.points, self.point) = (points, point);
    }
}

/// Nanoseconds since the epoch.
fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// When each interface's and peer's series started, kept from one snapshot to the next.
#[derive(Debug, Default)]
struct SeriesStarts {
    interfaces: Vec<InterfaceStart>,
    /// Incremented per snapshot; an entry not marked with the current one is gone.
    generation: u64,
}

#[derive(Debug)]
struct InterfaceStart {
    name: String,
    /// Its network namespace's label: two namespaces may each hold a `wg0`.
    netns: Option<String>,
    start: u64,
    seen: u64,
    /// Each peer's start and the generation that last saw it.
    peers: HashMap<PublicKey, (u64, u64)>,
}

impl SeriesStarts {
    /// Gives the interfaces and peers new in `snapshot` the start `now` and forgets those
    /// gone (a peer that comes back starts anew).
    fn update(&mut self, snapshot: &Snapshot, now: u64) {
        self.generation += 1;
        let generation = self.generation;
        for interface in &snapshot.interfaces {
            let index = match self.interfaces.iter().position(|i| i.is(interface)) {
                Some(index) => index,
                None => {
                    self.interfaces.push(InterfaceStart {
                        name: interface.name.clone(),
                        netns: interface.netns.clone(),
                        start: now,
                        seen: generation,
                        peers: HashMap::with_capacity(interface.peers.len()),
                    });
                    self.interfaces.len() - 1
                }
            };
            let known = &mut self.interfaces[index];
            known.seen = generation;
            for peer in &interface.peers {
                known.peers.entry(peer.public_key).or_insert((now, generation)).1 = generation;
            }
            known.peers.retain(|_, (_, seen)| *seen == generation);
        }
        self.interfaces.retain(|interface| interface.seen == generation);
    }

    fn interface(&self, interface: &InterfaceSnapshot) -> Option<&InterfaceStart> {
        self.interfaces.iter().find(|i| i.is(interface))
    }
}

impl InterfaceStart {
    /// Whether this is `interface`: the same name in the same namespace.
    fn is(&self, interface: &InterfaceSnapshot) -> bool {
        self.name == interface.name && self.netns == interface.netns
    }
}

/// Writes one request after another into `body`, whose first `reserve` bytes are kept for the
/// request's header (its length is known only at the end).
struct RequestWriter<'a> {
    encoder: &'a mut Encoder,
    reserve: usize,
    /// The request being written: `reserve` bytes, then `Metric` fields of `ScopeMetrics`.
    body: BytesMut,
    /// The data points of the metric being written.
    points: BytesMut,
    /// The point being written.
    point: BytesMut,
    metric: &'static Metric,
    time: u64,
    send: &'a mut dyn FnMut(Bytes) -> bool,
    open: bool,
}

impl RequestWriter<'_> {
    fn start_request(&mut self) {
        if self.body.capacity() == 0
            && let Ok(buffer) = self.encoder.returned.try_recv()
        {
            self.body = buffer;
        }
        self.body.reserve(self.encoder.limit + self.reserve + REQUEST_SLACK);
        self.body.put_bytes(0, self.reserve);
    }

    /// Writes the metric whose points are in `points` into the request, if it has any.
    fn finish_metric(&mut self) {
        if self.points.is_empty() {
            return;
        }
        let metric = self.metric;
        // Sum { data_points = 1, aggregation_temporality = 2, is_monotonic = 3 };
        // Gauge { data_points = 1 }; Histogram { data_points = 1, aggregation_temporality = 2 }.
        let (field, trailer): (u32, &[u8]) = match metric.instrument {
            Instrument::Counter => (7, &[0x10, CUMULATIVE as u8, 0x18, 1]),
            Instrument::Gauge => (5, &[]),
            Instrument::Histogram => (9, &[0x10, CUMULATIVE as u8]),
        };
        let data_len = self.points.len() + trailer.len();
        let metric_len = string_field_len(metric.name)
            + string_field_len(metric.description)
            + string_field_len(metric.unit)
            + 1
            + encoded_len_varint(data_len as u64)
            + data_len;
        // ScopeMetrics.metrics = 2
        encode_key(2, WireType::LengthDelimited, &mut self.body);
        encode_varint(metric_len as u64, &mut self.body);
        put_string(&mut self.body, 1, metric.name);
        put_string(&mut self.body, 2, metric.description);
        put_string(&mut self.body, 3, metric.unit);
        encode_key(field, WireType::LengthDelimited, &mut self.body);
        encode_varint(data_len as u64, &mut self.body);
        self.body.put_slice(&self.points);
        self.body.put_slice(trailer);
        self.points.clear();
    }

    /// Completes the request (header in the reserved bytes) and hands it over.
    fn finish_request(&mut self) {
        let metrics_len = self.body.len() - self.reserve;
        if metrics_len == 0 || !self.open {
            return;
        }
        let mut header = BytesMut::with_capacity(self.reserve);
        let scope = &self.encoder.scope;
        let resource = &self.encoder.resource;
        // ScopeMetrics { scope = 1, metrics = 2 }
        let scope_metrics_len =
            1 + encoded_len_varint(scope.len() as u64) + scope.len() + metrics_len;
        // ResourceMetrics { resource = 1, scope_metrics = 2 }
        let resource_metrics_len = 1
            + encoded_len_varint(resource.len() as u64)
            + resource.len()
            + 1
            + encoded_len_varint(scope_metrics_len as u64)
            + scope_metrics_len;
        // ExportMetricsServiceRequest { resource_metrics = 1 }
        encode_key(1, WireType::LengthDelimited, &mut header);
        encode_varint(resource_metrics_len as u64, &mut header);
        put_bytes(&mut header, 1, resource);
        encode_key(2, WireType::LengthDelimited, &mut header);
        encode_varint(scope_metrics_len as u64, &mut header);
        put_bytes(&mut header, 1, scope);
        let offset = self.reserve - header.len();
        self.body[offset..self.reserve].copy_from_slice(&header);
        // The whole buffer goes with the request, so that it can come back whole.
        let mut body = std::mem::take(&mut self.body);
        body.advance(offset);
        self.open = (self.send)(body.freeze());
    }

    /// The start of the series of `subject`, ns since the epoch.
    fn start(encoder: &Encoder, subject: Subject<'_>) -> u64 {
        let starts = &encoder.starts;
        let started = encoder.started;
        match subject {
            Subject::Interface(interface) | Subject::Peer { interface, key: None, .. } => {
                starts.interface(interface).map_or(started, |i| i.start)
            }
            Subject::Peer { interface, key: Some(key), .. } => starts
                .interface(interface)
                .and_then(|i| i.peers.get(key))
                .map_or(started, |(start, _)| *start),
            Subject::Host | Subject::Check(_) | Subject::Process(_) => started,
        }
    }

    /// Encodes one `NumberDataPoint` or `HistogramDataPoint` into `point`.
    fn encode_point(
        &mut self,
        subject: Subject<'_>,
        attributes: &[(&'static str, &str)],
        value: Value<'_>,
    ) {
        // NumberDataPoint.attributes = 7, HistogramDataPoint.attributes = 9
        let attributes_field = if matches!(value, Value::Histogram(_)) { 9 } else { 7 };
        let (subject_attributes, start) = Self::subject(self.encoder, subject, attributes_field);
        let start = (self.metric.instrument != Instrument::Gauge).then_some(start);
        let point = &mut self.point;
        point.clear();
        point.put_slice(subject_attributes);
        for (key, value) in attributes {
            put_attribute(point, attributes_field, key, Attribute::Str(value));
        }
        if let Some(start) = start {
            encode_key(2, WireType::SixtyFourBit, point);
            point.put_u64_le(start);
        }
        encode_key(3, WireType::SixtyFourBit, point);
        point.put_u64_le(self.time);
        match value {
            Value::Int(value) => {
                // as_int = 6 (sfixed64)
                encode_key(6, WireType::SixtyFourBit, point);
                point.put_i64_le(i64::try_from(value).unwrap_or(i64::MAX));
            }
            Value::Double(value) => {
                // as_double = 4
                encode_key(4, WireType::SixtyFourBit, point);
                point.put_f64_le(value);
            }
            Value::Histogram(distribution) => put_distribution(point, distribution),
        }
    }
}

impl RequestWriter<'_> {
    /// The encoded attributes of `subject` (as `KeyValue`s in `field`) and its series' start:
    /// encoded once per snapshot, then copied into each of its points.
    fn subject<'e>(encoder: &'e mut Encoder, subject: Subject<'_>, field: u32) -> (&'e [u8], u64) {
        let Some(identity) = SubjectCache::identity(subject, field) else {
            return (&[], encoder.started);
        };
        let (offset, len, start) = match encoder.subjects.entries.get(&identity) {
            Some(entry) => *entry,
            None => {
                let start = Self::start(encoder, subject);
                let cache = &mut encoder.subjects;
                let offset = cache.encoded.len();
                put_subject(&mut cache.encoded, field, subject);
                let entry = (offset, cache.encoded.len() - offset, start);
                cache.entries.insert(identity, entry);
                entry
            }
        };
        let cache = &encoder.subjects;
        (&cache.encoded[offset..offset + len], start)
    }
}

/// Each subject's encoded attributes and series start, for the snapshot being encoded; keyed
/// by the subject's address in the snapshot (stable while it is encoded).
#[derive(Debug, Default)]
struct SubjectCache {
    encoded: BytesMut,
    entries: HashMap<(u8, usize), (usize, usize, u64), foldhash::fast::FixedState>,
}

impl SubjectCache {
    fn clear(&mut self) {
        self.encoded.clear();
        self.entries.clear();
    }

    /// What tells `subject`'s attributes (in `field`) apart; `None` for the host's (none).
    fn identity(subject: Subject<'_>, field: u32) -> Option<(u8, usize)> {
        let (kind, address) = match subject {
            Subject::Host => return None,
            Subject::Interface(interface) => (0, std::ptr::from_ref(interface).addr()),
            Subject::Peer { key: Some(key), .. } => (1, std::ptr::from_ref(key).addr()),
            Subject::Peer { interface, key: None, .. } => (2, std::ptr::from_ref(interface).addr()),
            Subject::Check(check) => (3, std::ptr::from_ref(check).addr()),
            Subject::Process(process) => (4, std::ptr::from_ref(process).addr()),
        };
        Some((kind * 16 + u8::try_from(field).unwrap_or(0), address))
    }
}

impl PointSink for RequestWriter<'_> {
    fn point(
        &mut self,
        subject: Subject<'_>,
        attributes: &[(&'static str, &str)],
        value: Value<'_>,
    ) {
        if !self.open {
            return;
        }
        self.encode_point(subject, attributes, value);
        // Sum / Gauge / Histogram .data_points = 1
        put_bytes(&mut self.points, 1, &self.point);
        if self.body.len() - self.reserve + self.points.len() >= self.encoder.limit {
            self.finish_metric();
            self.finish_request();
            self.start_request();
        }
    }
}

/// `count` = 4, `sum` = 5, `bucket_counts` = 6 (packed fixed64), `explicit_bounds` = 7 (packed
/// double).
fn put_distribution(point: &mut BytesMut, distribution: Distribution<'_>) {
    encode_key(4, WireType::SixtyFourBit, point);
    point.put_u64_le(distribution.count);
    encode_key(5, WireType::SixtyFourBit, point);
    point.put_f64_le(distribution.sum);
    let buckets = distribution.bounds.len() + 1;
    encode_key(6, WireType::LengthDelimited, point);
    encode_varint(8 * buckets as u64, point);
    for bucket in 0..buckets {
        point.put_u64_le(distribution.counts.get(bucket).copied().unwrap_or(0));
    }
    encode_key(7, WireType::LengthDelimited, point);
    encode_varint(8 * distribution.bounds.len() as u64, point);
    for bound in distribution.bounds {
        point.put_f64_le(*bound);
    }
}

/// The attributes of `subject`, each a `KeyValue` in `field`.
fn put_subject(point: &mut BytesMut, field: u32, subject: Subject<'_>) {
    let mut key_text = [0; 44];
    let mut key = |point: &mut BytesMut, key: &PublicKey| {
        put_attribute(
            point,
            field,
            "wireguard.peer.public_key",
            Attribute::Str(key.base64(&mut key_text)),
        );
    };
    match subject {
        Subject::Host => {}
        Subject::Interface(interface) => put_interface(point, field, interface),
        Subject::Peer { interface, key: peer, name } => {
            put_interface(point, field, interface);
            match peer {
                Some(peer) => key(point, peer),
                None => put_attribute(point, field, "otel.metric.overflow", Attribute::Bool(true)),
            }
            if let Some(name) = name {
                put_attribute(point, field, "wireguard.peer.name", Attribute::Str(name));
            }
        }
        Subject::Check(check) => {
            put_attribute(point, field, "wireguard.check.name", Attribute::Str(&check.name));
            put_attribute(point, field, "wireguard.check.kind", Attribute::Str(&check.kind));
            if let Some(interface) = &check.interface {
                put_attribute(point, field, "wireguard.interface", Attribute::Str(interface));
            }
            if let Some(peer) = &check.peer_public_key {
                key(point, peer);
            }
            if let Some(name) = &check.peer_name {
                put_attribute(point, field, "wireguard.peer.name", Attribute::Str(name));
            }
        }
        Subject::Process(process) => {
            put_attribute(point, field, "process.pid", Attribute::Int(i64::from(process.pid)));
            put_attribute(point, field, "process.executable.name", Attribute::Str(&process.name));
            if let Some(interface) = &process.interface {
                put_attribute(point, field, "wireguard.interface", Attribute::Str(interface));
            }
        }
    }
}

/// `wireguard.interface`, and `wireguard.netns` outside the start namespace.
fn put_interface(point: &mut BytesMut, field: u32, interface: &InterfaceSnapshot) {
    put_attribute(point, field, "wireguard.interface", Attribute::Str(&interface.name));
    if let Some(netns) = &interface.netns {
        put_attribute(point, field, "wireguard.netns", Attribute::Str(netns));
    }
}

/// An attribute's value (`AnyValue`).
#[derive(Clone, Copy, Debug)]
enum Attribute<'a> {
    /// `string_value` = 1
    Str(&'a str),
    /// `bool_value` = 2
    Bool(bool),
    /// `int_value` = 3
    Int(i64),
    /// `double_value` = 4
    Double(f64),
}

/// An owned [`Attribute`] of a resource.
enum OwnedAttribute {
    Str(String),
    Bool(bool),
    Int(i64),
    Double(f64),
}

impl OwnedAttribute {
    fn as_ref(&self) -> Attribute<'_> {
        match self {
            Self::Str(text) => Attribute::Str(text),
            Self::Bool(value) => Attribute::Bool(*value),
            Self::Int(value) => Attribute::Int(*value),
            Self::Double(value) => Attribute::Double(*value),
        }
    }
}

impl Attribute<'_> {
    /// A resource attribute's value; arrays as their text.
    fn from_value(value: &AttributeValue) -> OwnedAttribute {
        match value {
            AttributeValue::Bool(value) => OwnedAttribute::Bool(*value),
            AttributeValue::I64(value) => OwnedAttribute::Int(*value),
            AttributeValue::F64(value) => OwnedAttribute::Double(*value),
            other => OwnedAttribute::Str(other.as_str().into_owned()),
        }
    }

    /// The length of the `AnyValue` message.
    fn len(self) -> usize {
        match self {
            Self::Str(text) => string_field_len(text),
            Self::Bool(_) => 2,
            Self::Int(value) => 1 + encoded_len_varint(value as u64),
            Self::Double(_) => 9,
        }
    }
}

/// A `KeyValue { key = 1, value = 2 }` in `field`.
fn put_attribute(out: &mut BytesMut, field: u32, key: &str, value: Attribute<'_>) {
    let any_len = value.len();
    let key_value_len = string_field_len(key) + 1 + encoded_len_varint(any_len as u64) + any_len;
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(key_value_len as u64, out);
    put_string(out, 1, key);
    encode_key(2, WireType::LengthDelimited, out);
    encode_varint(any_len as u64, out);
    match value {
        Attribute::Str(text) => put_string(out, 1, text),
        Attribute::Bool(value) => {
            encode_key(2, WireType::Varint, out);
            encode_varint(u64::from(value), out);
        }
        Attribute::Int(value) => {
            encode_key(3, WireType::Varint, out);
            encode_varint(value as u64, out);
        }
        Attribute::Double(value) => {
            encode_key(4, WireType::SixtyFourBit, out);
            out.put_f64_le(value);
        }
    }
}

/// The encoded length of a string field with a one-byte key (fields 1 to 15).
fn string_field_len(text: &str) -> usize {
    1 + encoded_len_varint(text.len() as u64) + text.len()
}

fn put_string(out: &mut impl BufMut, field: u32, text: &str) {
    put_bytes(out, field, text.as_bytes());
}

fn put_bytes(out: &mut impl BufMut, field: u32, bytes: &[u8]) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.put_slice(bytes);
}

#[cfg(test)]
#[path = "otlp_encode_tests.rs"]
mod tests;
