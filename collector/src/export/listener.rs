//! The HTTP listener under the API: plain TCP or TLS (rustls), an optional bearer token, and
//! limits that keep a gateway's daemon serving whatever clients do.
//!
//! - At most [`MAX_CONNECTIONS`] connections are served at once; while that many are open, the
//!   next ones wait in the kernel's accept queue (they are served as soon as one closes).
//! - A request head (request line and headers) larger than [`MAX_HEADER_BYTES`] gets
//!   `431 Request Header Fields Too Large`; one not complete within [`HEADER_TIMEOUT`] closes
//!   the connection, as does a connection open longer than [`CONNECTION_LIFETIME`], so slow
//!   clients cannot hold the connection slots.
//! - A request body larger than [`MAX_BODY_BYTES`] gets `413 Payload Too Large` (every route is
//!   a `GET`: none reads a body).
//! - One request per connection: no idle keep-alive connection holds a slot.
//! - With a bearer token, a request without `Authorization: Bearer <token>` gets `401`; the
//!   token is compared in constant time.

use std::{future::Future, io, path::Path, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use subtle::ConstantTimeEq as _;
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use zeroize::Zeroizing;

/// Connections served at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 64;
/// The largest request head (request line and headers) read.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// How long a client may take to send its request head (and, with TLS, its handshake).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may stay open at most.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Why the listener's TLS or token settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// A certificate, key or token file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{path} holds no PEM certificate")]
    Certificate {
        /// The file.
        path: std::path::PathBuf,
        /// What the PEM parser said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The key file holds no PEM private key (the key itself is never quoted).
    #[error("{path} holds no PEM private key")]
    Key {
        /// The file.
        path: std::path::PathBuf,
        /// What the PEM parser said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificate and key (e.g. they do not match).
    #[error("the TLS certificate and key are not usable together")]
    Tls(#[source] rustls::Error),
    /// The bearer token file is empty.
    #[error("{0} holds no token")]
    EmptyToken(std::path::PathBuf),
}

/// How the listener talks to clients: TLS or not, a bearer token or not.
#[derive(Clone, Default)]
pub struct Security {
    /// Serve HTTPS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Require `Authorization: Bearer <token>`.
    pub bearer_token: Option<Arc<Zeroizing<String>>>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("bearer_token", &self.bearer_token.is_some())
            .finish()
    }
}

impl Security {
    /// Reads the certificate chain and key (PEM) for TLS, and the token (the file's first
    /// line), as given.
    pub fn load(
        tls: Option<(&Path, &Path)>,
        bearer_token_file: Option<&Path>,
    ) -> Result<Self, ListenerError> {
        let tls = tls.map(|(cert, key)| tls_config(cert, key)).transpose()?.map(Arc::new);
        let bearer_token = bearer_token_file
            .map(|path| {
                let text = Zeroizing::new(read(path)?);
                let token = text.lines().next().unwrap_or_default().trim();
                if token.is_empty() {
                    return Err(ListenerError::EmptyToken(path.to_owned()));
                }
                Ok(Arc::new(Zeroizing::new(token.to_owned())))
            })
            .transpose()?;
        Ok(Self { tls, bearer_token })
    }
}

fn read(path: &Path) -> Result<String, ListenerError> {
    std::fs::read_to_string(path)
        .map_err(|source| ListenerError::Read { path: path.to_owned(), source })
}

/// A rustls server configuration from a PEM certificate chain and a PEM private key.
fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ListenerError> {
    let chain = CertificateDer::pem_slice_iter(read(cert)?.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .and_then(|chain| {
            if chain.is_empty() {
                Err(rustls::pki_types::pem::Error::NoItemsFound)
            } else {
                Ok(chain)
            }
        })
        .map_err(|source| ListenerError::Certificate { path: cert.to_owned(), source })?;
    let key_text = Zeroizing::new(read(key)?);
    let key_der = PrivateKeyDer::from_pem_slice(key_text.as_bytes())
        .map_err(|source| ListenerError::Key { path: key.to_owned(), source })?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(ListenerError::Tls)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(ListenerError::Tls)
}

/// Serves `router` on `listener` as `security` says, within the limits above, until
/// `shutdown` completes; open connections are then dropped.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    security: Security,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let router = guarded(router, security.bearer_token.clone());
    let tls = security.tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A slot first: while none is free, new connections wait in the accept queue.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.map_err(io::Error::other)?,
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors and the like: pause rather than spin.
                    log::warn!("HTTP listener: accepting a connection: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        connections.spawn(async move {
            let _slot = slot;
            let _done = tokio::time::timeout(CONNECTION_LIFETIME, async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(Ok(stream)) =
                            tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await
                        {
                            serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                    None => serve_connection(TokioIo::new(stream), service).await,
                }
            })
            .await;
        });
        // Reap the finished ones so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
    Ok(())
}

/// One HTTP/1.1 connection, one request, with the head limits.
async fn serve_connection<I>(io: TokioIo<I>, service: TowerToHyperService<Router>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _ended = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(false)
        .serve_connection(io, service)
        .await;
}

/// `router` with the body limit and, when `token` is set, the bearer token check.
fn guarded(router: Router, token: Option<Arc<Zeroizing<String>>>) -> Router {
    let router = match token {
        Some(token) => router.layer(axum::middleware::from_fn(move |request, next| {
            authorize(Arc::clone(&token), request, next)
        })),
        None => router,
    };
    router.layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY_BYTES))
}

/// Passes `request` on when it carries the bearer token, else answers 401.
async fn authorize(token: Arc<Zeroizing<String>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if bool::from(given.ct_eq(token.as_bytes())) {
        return next.run(request).await;
    }
    let mut response =
        (StatusCode::UNAUTHORIZED, "401: a bearer token is required\n").into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}
