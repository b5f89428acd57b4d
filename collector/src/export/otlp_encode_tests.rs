//! Tests of [`super`]: every request decodes with opentelemetry-proto's own types.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::any_value::Value as Any,
    metrics::v1::{Metric as ProtoMetric, metric::Data, number_data_point::Value as Number},
};
use prost::Message as _;

use super::*;
use crate::{
    export::prometheus::tests::{gateway_of, snapshot},
    model::LatencySnapshot,
};
use collector_common::latency::LATENCY_BUCKETS;

/// Every request `encoder` makes of `snapshot`, decoded.
fn requests(
    encoder: &mut Encoder,
    snapshot: &Snapshot,
) -> Vec<(usize, ExportMetricsServiceRequest)> {
    let mut requests = Vec::new();
    encoder.encode(snapshot, &mut |request| {
        let decoded =
            ExportMetricsServiceRequest::decode(request.clone()).expect("a valid request");
        requests.push((request.len(), decoded));
        true
    });
    requests
}

/// The metrics named `name` over all requests.
fn metrics<'a>(
    requests: &'a [(usize, ExportMetricsServiceRequest)],
    name: &str,
) -> Vec<&'a ProtoMetric> {
    requests
        .iter()
        .flat_map(|(_, request)| &request.resource_metrics)
        .flat_map(|resource| &resource.scope_metrics)
        .flat_map(|scope| &scope.metrics)
        .filter(|metric| metric.name == name)
        .collect()
}

fn text(attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> Vec<String> {
    attributes
        .iter()
        .map(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Any::StringValue(text)) => format!("{}={text}", kv.key),
            Some(Any::BoolValue(value)) => format!("{}={value}", kv.key),
            Some(Any::IntValue(value)) => format!("{}={value}", kv.key),
            other => format!("{}={other:?}", kv.key),
        })
        .collect()
}

fn encoder() -> Encoder {
    let resource = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("host.name", "gw1"),
            KeyValue::new("service.name", "wgtel"),
        ])
        .build();
    Encoder::new(&resource, REQUEST_LIMIT)
}

#[test]
fn counters_are_cumulative_sums_with_the_peers_start_and_the_resource() {
    let mut encoder = encoder();
    let mut first = snapshot();
    first.taken_at = UNIX_EPOCH + Duration::from_secs(1_000);
    let requests = requests(&mut encoder, &first);
    assert_eq!(requests.len(), 1);
    let resource = requests[0].1.resource_metrics[0].resource.as_ref().expect("a resource");
    assert_eq!(text(&resource.attributes), ["host.name=gw1", "service.name=wgtel"]);
    let scope = &requests[0].1.resource_metrics[0].scope_metrics[0];
    assert_eq!(scope.scope.as_ref().map(|s| s.name.as_str()), Some("wgtel"));

    let packets = metrics(&requests, "wireguard.peer.packets");
    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0].unit, "{packet}");
    let Some(Data::Sum(sum)) = &packets[0].data else { panic!("a sum: {packets:?}") };
    assert!(sum.is_monotonic);
    assert_eq!(sum.aggregation_temporality, 2, "cumulative");
    assert_eq!(sum.data_points.len(), 4, "two peers, two directions");
    let alice = PublicKey([1; 32]).to_string();
    let point = &sum.data_points[1];
    assert_eq!(
        text(&point.attributes),
        [
            "wireguard.interface=wg0".to_owned(),
            format!("wireguard.peer.public_key={alice}"),
            "wireguard.peer.name=al\"ice\\".to_owned(),
            "network.io.direction=transmit".to_owned(),
        ]
    );
    assert_eq!(point.value, Some(Number::AsInt(51)));
    assert_eq!(point.time_unix_nano, 1_000_000_000_000);
    assert_eq!(point.start_time_unix_nano, 1_000_000_000_000, "first seen now");

    // Gauges carry no start time; the handshake age is a double.
    let age = metrics(&requests, "wireguard.peer.handshake.age");
    let Some(Data::Gauge(gauge)) = &age[0].data else { panic!("a gauge") };
    assert_eq!(gauge.data_points.len(), 1, "the peer without a handshake has no age");
    assert_eq!(gauge.data_points[0].value, Some(Number::AsDouble(12.5)));
    assert_eq!(gauge.data_points[0].start_time_unix_nano, 0);

    // Ten seconds later the peers keep their start; alice leaves and comes back: anew.
    let mut later = first.clone();
    later.taken_at += Duration::from_secs(10);
    let requests_later = self::requests(&mut encoder, &later);
    let Some(Data::Sum(sum)) = &metrics(&requests_later, "wireguard.peer.packets")[0].data else {
        panic!("a sum")
    };
    assert_eq!(sum.data_points[0].start_time_unix_nano, 1_000_000_000_000);
    let mut without = later.clone();
    without.interfaces[0].peers.remove(0);
    without.taken_at += Duration::from_secs(10);
    let gone = self::requests(&mut encoder, &without);
    let Some(Data::Sum(sum)) = &metrics(&gone, "wireguard.peer.packets")[0].data else {
        panic!("a sum")
    };
    assert_eq!(sum.data_points.len(), 2, "a removed peer's series stop");
    let mut back = later;
    back.taken_at += Duration::from_secs(30);
    let back = self::requests(&mut encoder, &back);
    let Some(Data::Sum(sum)) = &metrics(&back, "wireguard.peer.packets")[0].data else {
        panic!("a sum")
    };
    assert_eq!(sum.data_points[0].start_time_unix_nano, 1_040_000_000_000, "re-added: new start");
    assert_eq!(sum.data_points[2].start_time_unix_nano, 1_000_000_000_000, "the other peer");
}

#[test]
fn latency_histograms_carry_the_kernels_buckets_and_exact_sum() {
    let mut with_samples = snapshot();
    let mut buckets = vec![0; LATENCY_BUCKETS as usize];
    buckets[24] = 3; // three samples of 16.8 to 33.6 ms
    buckets[39] = 1; // one beyond 2^39 ns: the overflow bucket
    with_samples.interfaces[0].peers[0]
        .latency
        .insert("icmp_round_trip", LatencySnapshot::from_buckets(buckets, 75_000_000, 0, None));
    let requests = requests(&mut encoder(), &with_samples);
    let rtt = metrics(&requests, "wireguard.peer.rtt");
    let Some(Data::Histogram(histogram)) = &rtt[0].data else { panic!("a histogram") };
    assert_eq!(histogram.aggregation_temporality, 2);
    assert_eq!(histogram.data_points.len(), 1);
    let point = &histogram.data_points[0];
    assert_eq!(point.count, 4);
    assert_eq!(point.sum, Some(0.075));
    assert_eq!(point.explicit_bounds.len(), 39);
    assert_eq!(point.explicit_bounds[24], 2f64.powi(25) / 1e9);
    assert_eq!(point.bucket_counts.len(), 40);
    assert_eq!(point.bucket_counts[24], 3);
    assert_eq!(point.bucket_counts[39], 1);
    assert!(text(&point.attributes).contains(&"wireguard.rtt.kind=icmp_round_trip".to_owned()));
}

#[test]
fn a_large_gateway_is_cut_into_requests_under_the_limit_that_lose_nothing() {
    let big = gateway_of(12_000);
    let requests = requests(&mut encoder(), &big);
    assert!(requests.len() > 4, "{} requests", requests.len());
    for (size, _) in &requests {
        assert!(*size <= REQUEST_LIMIT + 1024, "a request of {size} bytes");
    }
    let mut received: Vec<i64> = metrics(&requests, "wireguard.peer.io")
        .iter()
        .filter_map(|metric| match &metric.data {
            Some(Data::Sum(sum)) => Some(sum.data_points.iter()),
            _ => None,
        })
        .flatten()
        .filter(|point| {
            text(&point.attributes).contains(&"network.io.direction=receive".to_owned())
        })
        .filter_map(|point| match point.value {
            Some(Number::AsInt(value)) => Some(value),
            _ => None,
        })
        .collect();
    received.sort_unstable();
    assert_eq!(received, (0..12_000).collect::<Vec<i64>>(), "every peer exactly once");
}

#[test]
fn the_overflow_series_is_a_boolean_attribute() {
    let mut aggregated = snapshot();
    crate::export::series::SeriesSelector::new(crate::export::series::SeriesLimits {
        top_peers: Some(0),
        allowlist: Vec::new(),
    })
    .apply(&mut aggregated);
    let requests = requests(&mut encoder(), &aggregated);
    let Some(Data::Sum(sum)) = &metrics(&requests, "wireguard.peer.io")[0].data else {
        panic!("a sum")
    };
    let points: Vec<(Vec<String>, Option<Number>)> =
        sum.data_points.iter().map(|point| (text(&point.attributes), point.value)).collect();
    let overflow = |direction: &str| {
        vec![
            "wireguard.interface=wg0".to_owned(),
            "otel.metric.overflow=true".to_owned(),
            format!("network.io.direction={direction}"),
        ]
    };
    assert_eq!(
        points,
        [
            (overflow("receive"), Some(Number::AsInt(2000))),
            (overflow("transmit"), Some(Number::AsInt(4000)))
        ]
    );
}

#[test]
fn a_refused_request_stops_the_encoding() {
    let big = gateway_of(12_000);
    let mut handed = 0;
    encoder().encode(&big, &mut |_| {
        handed += 1;
        false
    });
    assert_eq!(handed, 1);
}

#[test]
fn sent_requests_buffers_are_used_again() {
    let big = gateway_of(12_000);
    let mut encoder = encoder();
    let recycler = encoder.recycler();
    let mut first = Vec::new();
    encoder.encode(&big, &mut |request| {
        first.push(request.as_ptr() as usize);
        recycler.give_back(request);
        true
    });
    let mut again = 0;
    let mut requests = 0;
    encoder.encode(&big, &mut |request| {
        requests += 1;
        // A request starts where its header fits before the points: within the first
        // hundreds of bytes of its buffer.
        let at = request.as_ptr() as usize;
        again += usize::from(first.iter().any(|start| at.abs_diff(*start) < 512));
        recycler.give_back(request);
        true
    });
    assert!(requests > 4, "{requests} requests");
    assert_eq!(again, requests, "every request in a buffer that served before");
    // A request still held elsewhere is not given back.
    let mut held = Vec::new();
    encoder.encode(&big, &mut |request| {
        held.push(request.clone());
        recycler.give_back(request);
        true
    });
    assert!(encoder.returned.try_recv().is_err(), "a held request came back");
}
