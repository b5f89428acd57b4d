//! `tcp` checks: a TCP connect through the tunnel; up when the handshake completes.

use std::net::SocketAddr;

use super::CheckError;

/// Connects to `address` and closes the connection at once.
pub(super) async fn connect(address: SocketAddr) -> Result<(), CheckError> {
    tokio::net::TcpStream::connect(address)
        .await
        .map(drop)
        .map_err(|source| CheckError::Io { what: "connecting", source })
}
