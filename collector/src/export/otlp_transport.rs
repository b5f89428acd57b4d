//! Sending encoded OTLP metrics requests ([`super::otlp_encode`]): gRPC (tonic, the request's
//! bytes passed through as they are) or HTTP/protobuf (reqwest), with the specification's
//! settings: `OTEL_EXPORTER_OTLP_(METRICS_)HEADERS` (`key=value` pairs, comma-separated,
//! values percent-decoded), `_TIMEOUT` (ms), `_COMPRESSION` (`gzip` or `none`), `_INSECURE`
//! (gRPC without TLS for an endpoint without a scheme), and TLS from [`super::otlp_tls`].
//!
//! A receiver's partial success (points it rejected) is logged with its message.

use std::{io::Write as _, time::Duration};

use bytes::{Buf as _, Bytes};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message as _;
use tonic::{
    Status,
    client::Grpc,
    codec::{BufferSettings, Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap},
    transport::Channel,
};

use super::{
    otlp_encode::REQUEST_LIMIT,
    otlp_tls::{OtlpTls, Signal, timeout},
};

/// The gRPC method of OTLP metrics.
const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// Why the transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The endpoint is not a URL tonic accepts.
    #[error("OTLP endpoint {endpoint:?}")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// What tonic said.
        #[source]
        source: tonic::transport::Error,
    },
    /// The endpoint is not a URI.
    #[error("OTLP endpoint {endpoint:?} is not a URL")]
    Uri {
        /// The endpoint.
        endpoint: String,
        /// What the URI parser said.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// A header of `OTEL_EXPORTER_OTLP_(METRICS_)HEADERS` is malformed.
    #[error("{variable}: {reason} in {pair:?}")]
    Header {
        /// The variable.
        variable: String,
        /// The pair, value not quoted when it could be a secret.
        pair: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `OTEL_EXPORTER_OTLP_(METRICS_)COMPRESSION` names a compression wgtel lacks.
    #[error("{0}: unsupported compression {1:?}: use `gzip` or `none`")]
    Compression(String, String),
    /// The HTTP client could not be built.
    #[error("building the OTLP/HTTP client")]
    Client(#[source] reqwest::Error),
    /// The TLS settings could not be used.
    #[error("OTLP TLS")]
    Tls(#[source] super::otlp_tls::TlsError),
}

/// Why one request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The gRPC call failed.
    #[error("gRPC status {}: {}", .0.code(), .0.message())]
    Grpc(Status),
    /// The HTTP request failed.
    #[error("HTTP request")]
    Http(#[source] reqwest::Error),
    /// The receiver answered an HTTP error.
    #[error("HTTP status {0}")]
    Status(reqwest::StatusCode),
    /// Compressing the request failed.
    #[error("gzip")]
    Gzip(#[source] std::io::Error),
}

/// A connection to an OTLP receiver's metrics service.
#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "one transport per process, never moved")]
pub enum Transport {
    /// gRPC on a lazily connected channel.
    Grpc {
        /// The client.
        client: Grpc<Channel>,
        /// `OTEL_EXPORTER_OTLP_HEADERS` as metadata.
        headers: MetadataMap,
        /// Per request.
        timeout: Duration,
    },
    /// HTTP/protobuf.
    Http {
        /// The client (TLS and timeout set).
        client: reqwest::Client,
        /// `.../v1/metrics`.
        url: String,
        /// `OTEL_EXPORTER_OTLP_HEADERS`.
        headers: Vec<(String, String)>,
        /// Whether requests are gzipped.
        gzip: bool,
    },
}

/// Whether `OTEL_EXPORTER_OTLP_(METRICS_)COMPRESSION` asks for gzip.
fn gzip_from_env() -> Result<bool, TransportError> {
    match Signal::Metrics.var("COMPRESSION") {
        None => Ok(false),
        Some((_, value)) if value.trim() == "gzip" => Ok(true),
        Some((_, value)) if value.trim() == "none" => Ok(false),
        Some((variable, value)) => Err(TransportError::Compression(variable, value)),
    }
}

/// `OTEL_EXPORTER_OTLP_(METRICS_)HEADERS`: `key=value` pairs, comma-separated, values
/// percent-decoded (the specification's format).
fn headers_from_env() -> Result<Vec<(String, String)>, TransportError> {
    let Some((variable, value)) = Signal::Metrics.var("HEADERS") else {
        return Ok(Vec::new());
    };
    parse_headers(&variable, &value)
}

fn parse_headers(variable: &str, value: &str) -> Result<Vec<(String, String)>, TransportError> {
    let error = |pair: &str, reason| TransportError::Header {
        variable: variable.to_owned(),
        pair: pair.split('=').next().unwrap_or_default().to_owned(),
        reason,
    };
    value
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or_else(|| error(pair, "no `=`"))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(error(pair, "an empty key"));
            }
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| error(pair, "a value that is not UTF-8 once decoded"))?;
            Ok((key.to_ascii_lowercase(), value.into_owned()))
        })
        .collect()
}

impl Transport {
    /// gRPC to `endpoint` (`http://host:4317`, `https://...`; without a scheme: https, or
    /// http when `OTEL_EXPORTER_OTLP_(METRICS_)INSECURE=true`).
    pub fn grpc(endpoint: &str, tls: Option<&OtlpTls>) -> Result<Self, TransportError> {
        let insecure = Signal::Metrics
            .var("INSECURE")
            .is_some_and(|(_, value)| value.trim().eq_ignore_ascii_case("true"));
        let url = if endpoint.contains("://") {
            endpoint.to_owned()
        } else if insecure {
            format!("http://{endpoint}")
        } else {
            format!("https://{endpoint}")
        };
        let invalid = |source| TransportError::Endpoint { endpoint: endpoint.to_owned(), source };
        let mut builder = Channel::from_shared(url.clone())
            .map_err(|source| TransportError::Uri { endpoint: endpoint.to_owned(), source })?;
        let secure = url.starts_with("https://");
        if let Some(tls) = tls.filter(|_| secure) {
            builder = builder.tls_config(tls.tonic()).map_err(invalid)?;
        } else if secure {
            let config = tonic::transport::ClientTlsConfig::new().with_native_roots();
            builder = builder.tls_config(config).map_err(invalid)?;
        }
        let timeout = timeout(Signal::Metrics);
        let channel = builder.timeout(timeout).connect_lazy();
        let mut client = Grpc::new(channel);
        if gzip_from_env()? {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        client = client.accept_compressed(CompressionEncoding::Gzip);
        let mut headers = MetadataMap::new();
        for (key, value) in headers_from_env()? {
            let bad = |reason| TransportError::Header {
                variable: "OTEL_EXPORTER_OTLP_HEADERS".into(),
                pair: key.clone(),
                reason,
            };
            let name: AsciiMetadataKey = key.parse().map_err(|_| bad("a key gRPC refuses"))?;
            let value: AsciiMetadataValue =
                value.parse().map_err(|_| bad("a value gRPC refuses"))?;
            headers.insert(name, value);
        }
        Ok(Self::Grpc { client, headers, timeout })
    }

    /// HTTP/protobuf to `url` (`.../v1/metrics`).
    pub fn http(url: String, tls: Option<&OtlpTls>) -> Result<Self, TransportError> {
        let client = match tls {
            Some(tls) => tls.http_client().map_err(TransportError::Tls)?,
            None => reqwest::Client::builder()
                .timeout(timeout(Signal::Metrics))
                .build()
                .map_err(TransportError::Client)?,
        };
        Ok(Self::Http { client, url, headers: headers_from_env()?, gzip: gzip_from_env()? })
    }

    /// Sends one encoded `ExportMetricsServiceRequest`; logs what the receiver rejected.
    pub async fn send(&mut self, request: Bytes) -> Result<(), SendError> {
        let response = match self {
            Self::Grpc { client, headers, timeout } => {
                client
                    .ready()
                    .await
                    .map_err(|error| SendError::Grpc(Status::unavailable(error.to_string())))?;
                let mut call = tonic::Request::new(request);
                *call.metadata_mut() = headers.clone();
                call.set_timeout(*timeout);
                let path = http::uri::PathAndQuery::from_static(GRPC_EXPORT);
                client.unary(call, path, PassThrough).await.map_err(SendError::Grpc)?.into_inner()
            }
            Self::Http { client, url, headers, gzip } => {
                let mut post = client
                    .post(url.as_str())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf");
                for (key, value) in headers.iter() {
                    post = post.header(key.as_str(), value.as_str());
                }
                let body = if *gzip {
                    post = post.header(http::header::CONTENT_ENCODING, "gzip");
                    gzip_body(&request).map_err(SendError::Gzip)?
                } else {
                    request
                };
                let response = post.body(body).send().await.map_err(SendError::Http)?;
                let status = response.status();
                if !status.is_success() {
                    return Err(SendError::Status(status));
                }
                response.bytes().await.map_err(SendError::Http)?
            }
        };
        report_partial_success(&response);
        Ok(())
    }
}

/// `request` gzipped.
fn gzip_body(request: &[u8]) -> std::io::Result<Bytes> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(request.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(request)?;
    Ok(Bytes::from(encoder.finish()?))
}

/// Logs the points a receiver said it rejected.
fn report_partial_success(response: &[u8]) {
    let Ok(response) = ExportMetricsServiceResponse::decode(response) else {
        return;
    };
    if let Some(partial) = response.partial_success
        && (partial.rejected_data_points > 0 || !partial.error_message.is_empty())
    {
        log::warn!(
            "the OTLP receiver rejected {} data points: {}",
            partial.rejected_data_points,
            partial.error_message
        );
    }
}

/// A gRPC codec that sends already encoded bytes and returns the answer's bytes.
#[derive(Clone, Copy, Debug)]
struct PassThrough;

impl Codec for PassThrough {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = PassThrough;
    type Decoder = PassThrough;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }

    /// A buffer that holds a whole request at once (tonic's default, 8 KiB, grows step by
    /// step).
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(REQUEST_LIMIT + 64 * 1024, REQUEST_LIMIT)
    }
}

impl Decoder for PassThrough {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_pairs_with_percent_decoded_values() {
        let headers = parse_headers("V", "Api-Key=a%20b, x-tenant = t1 ,").expect("valid");
        assert_eq!(
            headers,
            vec![
                ("api-key".to_owned(), "a b".to_owned()),
                ("x-tenant".to_owned(), "t1".to_owned())
            ]
        );
        let error = parse_headers("V", "authorization").expect_err("no =");
        assert_eq!(error.to_string(), r#"V: no `=` in "authorization""#);
        let error = parse_headers("V", "=secret").expect_err("empty key");
        assert_eq!(error.to_string(), r#"V: an empty key in """#);
    }
}
