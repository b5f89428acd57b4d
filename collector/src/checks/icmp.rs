//! `icmp` checks: one ICMP echo through the tunnel with surge-ping, on an ICMP datagram socket
//! (Linux 3.0+: allowed to the groups in `net.ipv4.ping_group_range`; surge-ping falls back to
//! a raw socket, which needs `CAP_NET_RAW`).

use std::{net::IpAddr, time::Duration};

use surge_ping::{Client, Config, ICMP, PingIdentifier, PingSequence, SurgeError};

use super::CheckError;

/// 56 bytes of payload, as ping(8) sends.
const PAYLOAD: [u8; 56] = [0; 56];

/// Sends one echo request to `target` and waits up to `timeout` for its reply.
pub(super) async fn echo(
    target: IpAddr,
    sequence: u16,
    timeout: Duration,
) -> Result<(), CheckError> {
    let kind = if target.is_ipv4() { ICMP::V4 } else { ICMP::V6 };
    let client = Client::new(&Config::builder().kind(kind).build()).map_err(|source| {
        CheckError::Io { what: "opening an ICMP socket (ping_group_range or CAP_NET_RAW)", source }
    })?;
    let mut pinger = client.pinger(target, PingIdentifier(std::process::id() as u16)).await;
    pinger.timeout(timeout);
    match pinger.ping(PingSequence(sequence), &PAYLOAD).await {
        Ok(_reply) => Ok(()),
        Err(SurgeError::Timeout { .. }) => Err(CheckError::Timeout(timeout)),
        Err(error) => Err(CheckError::Icmp(error)),
    }
}
