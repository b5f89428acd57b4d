//! Tests of [`super`]: the exporting task and the specification's settings.

use super::*;

#[test]
fn protocols_by_their_specification_names() {
    assert!(matches!(parse_protocol(None), Ok(Protocol::Grpc)));
    assert!(matches!(parse_protocol(Some("grpc")), Ok(Protocol::Grpc)));
    assert!(matches!(parse_protocol(Some("http/protobuf")), Ok(Protocol::HttpBinary)));
    let error = parse_protocol(Some("http/json")).expect_err("not supported");
    assert_eq!(
        error.to_string(),
        r#"unsupported OTLP protocol "http/json": use `grpc` or `http/protobuf`"#
    );
}

#[test]
fn http_endpoints_get_the_metrics_path_once() {
    assert_eq!(http_signal_url("http://c:4318", "metrics"), "http://c:4318/v1/metrics");
    assert_eq!(http_signal_url("http://c:4318/", "logs"), "http://c:4318/v1/logs");
    assert_eq!(http_signal_url("http://c:4318/v1/metrics", "metrics"), "http://c:4318/v1/metrics");
}

/// Reports the receive bytes of the first peer of every request; each request waits for a
/// permit, like a slow endpoint.
struct SlowSender {
    started: mpsc::UnboundedSender<i64>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl RequestSender for SlowSender {
    async fn send_request(&mut self, request: Bytes) -> Result<(), SendError> {
        use opentelemetry_proto::tonic::{
            collector::metrics::v1::ExportMetricsServiceRequest,
            metrics::v1::{metric::Data, number_data_point::Value},
        };
        use prost::Message as _;
        let request = ExportMetricsServiceRequest::decode(request).expect("a valid request");
        let rx = request.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|metric| metric.name == "wireguard.peer.io")
            .and_then(|metric| match &metric.data {
                Some(Data::Sum(sum)) => sum.data_points[0].value,
                _ => None,
            });
        let _receiver_alive = self.started.send(match rx {
            Some(Value::AsInt(rx)) => rx,
            _ => -1,
        });
        self.permits.acquire().await.expect("open").forget();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_snapshot_replaces_the_unsent_one() {
    let with_rx = |rx_bytes: u64| {
        let mut snapshot = crate::export::prometheus::tests::snapshot();
        snapshot.interfaces[0].peers.truncate(1);
        snapshot.interfaces[0].peers[0].rx_bytes = rx_bytes;
        Arc::new(snapshot)
    };
    let (started, mut exports) = mpsc::unbounded_channel();
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let exporter = OtlpExporter::start(
        SlowSender { started, permits: Arc::clone(&permits) },
        None::<EventExport<LogExporter>>,
        "test".into(),
    )
    .expect("the encoding thread starts");

    exporter.export(with_rx(1));
    assert_eq!(exports.recv().await, Some(1), "the first snapshot is being exported");
    // The endpoint is stuck: 2 waits, then 3 replaces it, then 4 replaces 3.
    for rx in 2..=4 {
        exporter.export(with_rx(rx));
    }
    permits.add_permits(100);
    assert_eq!(exports.recv().await, Some(4), "only the latest waiting snapshot is sent");
    exporter.export(with_rx(5));
    assert_eq!(exports.recv().await, Some(5));
    exporter.shutdown().await;
    assert_eq!(exports.recv().await, None, "nothing else was exported");
}
