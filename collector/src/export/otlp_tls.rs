//! TLS for OTLP exports (rustls with the `ring` provider), from the specification's variables:
//! `OTEL_EXPORTER_OTLP_(METRICS_|LOGS_)CERTIFICATE` (the CA that signs the receiver's
//! certificate), `_CLIENT_CERTIFICATE` and `_CLIENT_KEY` (mutual TLS). The signal's own
//! variable wins over the generic one.
//!
//! An `https://` endpoint trusts the named CA alone when one is named (as the Go and Java SDKs
//! do), else the system's roots. Every file is read and checked when wgtel starts: a missing
//! or malformed file, or a client certificate that does not match its key, stops the start
//! with the file's name.

use std::{path::PathBuf, sync::Arc, time::Duration};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use zeroize::Zeroizing;

/// The OTLP/HTTP request timeout when no variable sets one (the specification's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the OTLP TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("reading {path} ({variable})")]
    Read {
        /// The file.
        path: PathBuf,
        /// The variable that names it.
        variable: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A certificate file holds no PEM certificate, or a malformed one.
    #[error("{path} ({variable}) holds no usable PEM certificate")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// The variable that names it.
        variable: String,
        /// What the PEM parser said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The key file holds no PEM private key (the key itself is never quoted).
    #[error("{path} ({variable}) holds no PEM private key")]
    Key {
        /// The file.
        path: PathBuf,
        /// The variable that names it.
        variable: String,
        /// What the PEM parser said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A client certificate without a key, or a key without a certificate.
    #[error("{0} is set but {1} is not: mutual TLS needs both")]
    HalfIdentity(String, String),
    /// rustls refused a CA certificate, or the client certificate and key together.
    #[error("the OTLP TLS certificates are not usable")]
    Rustls(#[source] rustls::Error),
    /// An `https://` endpoint, no CA file and no CA certificate on the system.
    #[error(
        "no system CA certificates for the https OTLP endpoint: install ca-certificates or set \
         OTEL_EXPORTER_OTLP_CERTIFICATE"
    )]
    NoRoots,
    /// The HTTP client could not be built.
    #[error("building the OTLP/HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The OTLP signals wgtel exports, for their variables' names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `OTEL_EXPORTER_OTLP_METRICS_*`.
    Metrics,
    /// `OTEL_EXPORTER_OTLP_LOGS_*`.
    Logs,
}

impl Signal {
    /// The signal's own variable `OTEL_EXPORTER_OTLP_<SIGNAL>_<suffix>`, else the generic
    /// `OTEL_EXPORTER_OTLP_<suffix>`: (name, value) of the first one set and not empty.
    pub fn var(self, suffix: &str) -> Option<(String, String)> {
        let signal = match self {
            Self::Metrics => "METRICS",
            Self::Logs => "LOGS",
        };
        [format!("OTEL_EXPORTER_OTLP_{signal}_{suffix}"), format!("OTEL_EXPORTER_OTLP_{suffix}")]
            .into_iter()
            .find_map(|name| {
                let value = std::env::var(&name).ok().filter(|value| !value.trim().is_empty())?;
                Some((name, value))
            })
    }
}

/// The TLS settings of one signal's exporter, read and checked.
pub struct OtlpTls {
    /// The CA file's PEM text.
    ca: Option<String>,
    /// The client certificate chain and key, PEM.
    identity: Option<(String, Zeroizing<String>)>,
    /// The same, for the HTTP client.
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl std::fmt::Debug for OtlpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpTls")
            .field("ca", &self.ca.is_some())
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl OtlpTls {
    /// The TLS settings of `signal` sent to `endpoint` (the `--otlp-endpoint` flag, else the
    /// signal's endpoint variable, else the generic one); `None` for a plain `http://`
    /// endpoint that names no TLS file. Files named for a plain endpoint are checked all the
    /// same, so that a typo shows at once.
    pub fn from_env(signal: Signal, endpoint: Option<&str>) -> Result<Option<Self>, TlsError> {
        let endpoint =
            endpoint.map(str::to_owned).or_else(|| signal.var("ENDPOINT").map(|(_, url)| url));
        let https = endpoint.is_some_and(|url| {
            url.trim().get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
        });
        let files = Files {
            ca: signal.var("CERTIFICATE"),
            cert: signal.var("CLIENT_CERTIFICATE"),
            key: signal.var("CLIENT_KEY"),
        };
        Self::load(https, files, timeout(signal))
    }

    /// [`OtlpTls::from_env`] with the variables read.
    fn load(https: bool, files: Files, timeout: Duration) -> Result<Option<Self>, TlsError> {
        let Files { ca, cert, key } = files;
        if !https && ca.is_none() && cert.is_none() && key.is_none() {
            return Ok(None);
        }
        let ca = ca.map(|(variable, path)| read(&variable, path)).transpose()?;
        let identity = match (cert, key) {
            (Some((cert_variable, cert)), Some((key_variable, key))) => {
                let cert = read(&cert_variable, cert)?;
                let key = read(&key_variable, key)?;
                Some((cert, key))
            }
            (Some((set, _)), None) => {
                return Err(TlsError::HalfIdentity(set, "OTEL_EXPORTER_OTLP_CLIENT_KEY".into()));
            }
            (None, Some((set, _))) => {
                return Err(TlsError::HalfIdentity(
                    set,
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE".into(),
                ));
            }
            (None, None) => None,
        };
        let config = client_config(ca.as_ref(), identity.as_ref(), https)?;
        Ok(Some(Self {
            ca: ca.map(|file| file.text.to_string()),
            identity: identity.map(|(cert, key)| (cert.text.to_string(), key.text)),
            config: Arc::new(config),
            timeout,
        }))
    }

    /// The settings for the gRPC (tonic) exporter.
    pub fn tonic(&self) -> ClientTlsConfig {
        let config = match &self.ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key.as_bytes())),
            None => config,
        }
    }

    /// The client for the HTTP/protobuf exporter, with the signal's timeout.
    pub fn http_client(&self) -> Result<reqwest::Client, TlsError> {
        reqwest::Client::builder()
            .use_preconfigured_tls(rustls::ClientConfig::clone(&self.config))
            .timeout(self.timeout)
            .build()
            .map_err(TlsError::Client)
    }
}

/// (variable, path) of the CA file, the client certificate and the client key.
struct Files {
    ca: Option<(String, String)>,
    cert: Option<(String, String)>,
    key: Option<(String, String)>,
}

/// A file named by a variable, read.
struct File {
    variable: String,
    path: PathBuf,
    text: Zeroizing<String>,
}

fn read(variable: &str, path: String) -> Result<File, TlsError> {
    let path = PathBuf::from(path);
    let text = std::fs::read_to_string(&path).map_err(|source| TlsError::Read {
        path: path.clone(),
        variable: variable.to_owned(),
        source,
    })?;
    Ok(File { variable: variable.to_owned(), path, text: Zeroizing::new(text) })
}

fn certificates(file: &File) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(file.text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .and_then(|certificates| {
            if certificates.is_empty() {
                Err(rustls::pki_types::pem::Error::NoItemsFound)
            } else {
                Ok(certificates)
            }
        })
        .map_err(|source| TlsError::Certificate {
            path: file.path.clone(),
            variable: file.variable.clone(),
            source,
        })
}

/// The rustls client configuration: the CA alone when one is named, else the system's roots
/// (needed only for `https`), and the client certificate when one is named.
fn client_config(
    ca: Option<&File>,
    identity: Option<&(File, File)>,
    https: bool,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(ca) => {
            for certificate in certificates(ca)? {
                roots.add(certificate).map_err(TlsError::Rustls)?;
            }
        }
        None if https => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                log::debug!("reading the system's CA certificates: {error}");
            }
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(TlsError::NoRoots);
            }
        }
        None => {}
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Rustls)?
    .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => {
            let chain = certificates(cert)?;
            let key_der = PrivateKeyDer::from_pem_slice(key.text.as_bytes()).map_err(|source| {
                TlsError::Key { path: key.path.clone(), variable: key.variable.clone(), source }
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(TlsError::Rustls)
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// `OTEL_EXPORTER_OTLP_(<SIGNAL>_)TIMEOUT` in milliseconds, as the SDK reads it for gRPC.
pub fn timeout(signal: Signal) -> Duration {
    signal
        .var("TIMEOUT")
        .and_then(|(_, value)| value.trim().parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(variable: &str, path: &std::path::Path) -> Option<(String, String)> {
        Some((variable.to_owned(), path.to_str().expect("a UTF-8 path").to_owned()))
    }

    fn error(https: bool, files: Files) -> String {
        match OtlpTls::load(https, files, DEFAULT_TIMEOUT) {
            Ok(tls) => panic!("loaded: {tls:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_plain_endpoint_without_files_needs_no_tls() {
        let files = Files { ca: None, cert: None, key: None };
        assert!(OtlpTls::load(false, files, DEFAULT_TIMEOUT).expect("no TLS").is_none());
    }

    #[test]
    fn bad_files_are_named_at_start() {
        let dir = std::env::temp_dir().join(format!("wgtel-otlp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let missing = dir.join("missing.pem");
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("writing a file");
        let ca = "OTEL_EXPORTER_OTLP_CERTIFICATE";
        assert_eq!(
            error(true, Files { ca: named(ca, &missing), cert: None, key: None }),
            format!("reading {} ({ca})", missing.display())
        );
        assert_eq!(
            error(false, Files { ca: named(ca, &garbage), cert: None, key: None }),
            format!("{} ({ca}) holds no usable PEM certificate", garbage.display())
        );
        let cert = "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE";
        assert_eq!(
            error(true, Files { ca: None, cert: named(cert, &garbage), key: None }),
            format!(
                "{cert} is set but OTEL_EXPORTER_OTLP_CLIENT_KEY is not: mutual TLS needs both"
            )
        );
        let key = "OTEL_EXPORTER_OTLP_CLIENT_KEY";
        assert_eq!(
            error(true, Files { ca: None, cert: None, key: named(key, &garbage) }),
            format!(
                "{key} is set but OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE is not: mutual TLS needs \
                 both"
            )
        );
        std::fs::remove_dir_all(&dir).expect("removing the temporary directory");
    }
}
