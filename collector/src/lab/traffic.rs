//! Bulk traffic through the lab and the kernel's own counts of it: the ground truth that
//! packet-conservation tests compare wgtel's counters with.
//!
//! - [`Lab::iperf3`]: one iperf3 run between two nodes, with iperf3's own counts.
//! - [`Lab::tcp_segments`] and [`Lab::udp_counters`]: the `Tcp:` and `Udp:` counters of
//!   `/proc/net/snmp` inside a node's namespace.

use std::{
    fs,
    net::IpAddr,
    os::unix::process::CommandExt as _,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use procfs::{FromRead as _, net::Snmp};
use serde::Deserialize;

use super::{Lab, LabError, LabNode, run, stop_child};

/// The port of the lab's iperf3 servers (iperf3's default), in the target's namespace.
const IPERF3_PORT: u16 = 5201;

/// How long an iperf3 server may take to listen, and to exit after its one test.
const IPERF3_GRACE: Duration = Duration::from_secs(5);

/// What iperf3 counted in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Iperf3Run {
    /// Payload bytes the sending end wrote (TCP), or sent in datagrams (UDP).
    pub sent_bytes: u64,
    /// Payload bytes the receiving end read.
    pub received_bytes: u64,
    /// For a UDP run, the datagrams.
    pub datagrams: Option<Datagrams>,
}

/// The datagrams of a UDP run, as iperf3 counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagrams {
    /// Sent by the sending end.
    pub sent: u64,
    /// Received by the receiving end: the highest sequence number it saw less those it counts
    /// lost (so datagrams lost after the last one received count in neither).
    pub received: u64,
    /// Lost: gaps in the sequence numbers the receiver saw (less those that came late).
    pub lost: u64,
}

/// The TCP segment counters of `/proc/net/snmp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegments {
    /// `InSegs`: received.
    pub received: u64,
    /// `OutSegs`: sent, not counting those that carry only retransmitted data (Linux counts a
    /// segment here when it sends new data or none: `__tcp_transmit_skb`).
    pub sent: u64,
    /// `RetransSegs`: sent again.
    pub retransmitted: u64,
}

impl TcpSegments {
    /// Every segment that left the stack: the new ones and the retransmitted ones.
    pub const fn transmitted(&self) -> u64 {
        self.sent + self.retransmitted
    }
}

/// The `Udp:` counters of `/proc/net/snmp` (IPv4 only; the kernel counts IPv6 apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpCounters {
    /// `InDatagrams`: delivered to a socket.
    pub in_datagrams: u64,
    /// `NoPorts`: to a port no socket listens on.
    pub no_ports: u64,
    /// `InErrors`: not delivered for another reason (a full receive buffer among them).
    pub in_errors: u64,
    /// `OutDatagrams`: sent.
    pub out_datagrams: u64,
    /// `RcvbufErrors`: dropped because the socket's receive buffer was full.
    pub rcvbuf_errors: u64,
    /// `SndbufErrors`: not sent because the send buffer was full.
    pub sndbuf_errors: u64,
}

/// The parts of iperf3's `--json` report read here.
#[derive(Debug, Deserialize)]
struct Report {
    /// Set when the run failed.
    error: Option<String>,
    end: Option<End>,
}

#[derive(Debug, Deserialize)]
struct End {
    sum_sent: Sum,
    sum_received: Sum,
}

#[derive(Debug, Deserialize)]
struct Sum {
    bytes: u64,
    /// UDP only.
    packets: Option<u64>,
    /// UDP only.
    lost_packets: Option<u64>,
}

impl Lab {
    /// Runs iperf3 from `from` to the node holding address `to` for `seconds`: an `iperf3 -s
    /// -1` server in that node's namespace (stopped by its pid if it outlives the run), then
    /// the client with `--json`; with `reverse`, the server sends. TCP, or UDP at `udp` bits
    /// per second (datagrams of iperf3's default length: the control connection's MSS, which
    /// fits the path). Fails when either end fails: never a zero count in place of an error.
    pub fn iperf3(
        &self,
        from: &LabNode,
        to: IpAddr,
        reverse: bool,
        seconds: u32,
        udp: Option<u64>,
    ) -> Result<Iperf3Run, LabError> {
        let target = std::iter::once(&self.gateway)
            .chain(&self.peers)
            .find(|node| {
                [IpAddr::from(node.tunnel_v4), node.tunnel_v6.into(), node.underlay_v4.into()]
                    .contains(&to)
            })
            .ok_or(LabError::NoSuchAddress(to))?;
        let log_path = self.dir.join(format!("iperf3-{}.log", target.name));
        let log = fs::File::create(&log_path).map_err(|source| LabError::File {
            what: "creating",
            path: log_path.clone(),
            source,
        })?;
        let port = IPERF3_PORT.to_string();
        let server = Self::command(&target.namespace, "iperf3")
            .args(["-s", "-1", "-p", &port])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| LabError::Spawn { command: "iperf3 -s".into(), source })?;
        let server = Server(Some(server));
        wait_until_listening(&target.namespace, &port)?;
        let mut client = Self::command(&from.namespace, "iperf3");
        client.args(["-c", &to.to_string(), "-p", &port, "-t", &seconds.to_string(), "--json"]);
        if reverse {
            client.arg("-R");
        }
        if let Some(bitrate) = udp {
            client.args(["-u", "-b", &bitrate.to_string()]);
        }
        let output = client
            .stdin(Stdio::null())
            .output()
            .map_err(|source| LabError::Spawn { command: "iperf3 -c".into(), source })?;
        let report: Report = serde_json::from_slice(&output.stdout).map_err(|source| {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            LabError::Iperf3Report { stderr, source }
        })?;
        if let Some(error) = report.error {
            let server_log = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(iperf3_error(format!("{error}; server: {}", server_log.trim())));
        }
        if !output.status.success() {
            return Err(iperf3_error(format!("the client exited with {}", output.status)));
        }
        server.finish()?;
        let end = report.end.ok_or_else(|| iperf3_error("no end of test in the report".into()))?;
        run_of(&end, udp.is_some())
    }

    /// The segment counters of the `Tcp:` line of `/proc/net/snmp` in `node`'s namespace (TCP
    /// over IPv4 and IPv6 together), since the namespace was made.
    pub fn tcp_segments(&self, node: &LabNode) -> Result<TcpSegments, LabError> {
        let snmp = snmp(node)?;
        Ok(TcpSegments {
            received: snmp.tcp_in_segs,
            sent: snmp.tcp_out_segs,
            retransmitted: snmp.tcp_retrans_segs,
        })
    }

    /// The `Udp:` counters of `/proc/net/snmp` in `node`'s namespace (UDP over IPv4).
    pub fn udp_counters(&self, node: &LabNode) -> Result<UdpCounters, LabError> {
        let snmp = snmp(node)?;
        Ok(UdpCounters {
            in_datagrams: snmp.udp_in_datagrams,
            no_ports: snmp.udp_no_ports,
            in_errors: snmp.udp_in_errors,
            out_datagrams: snmp.udp_out_datagrams,
            rcvbuf_errors: snmp.udp_rcvbuf_errors,
            sndbuf_errors: snmp.udp_sndbuf_errors,
        })
    }
}

/// A running iperf3 server; stopped by its pid when dropped.
struct Server(Option<std::process::Child>);

impl Server {
    /// Waits for the server to exit after its one test; an error when it does not, or fails.
    fn finish(mut self) -> Result<(), LabError> {
        let Some(mut child) = self.0.take() else { return Ok(()) };
        let deadline = Instant::now() + IPERF3_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(iperf3_error(format!("the server exited with {status}")));
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) | Err(_) => {
                    stop_child(child);
                    return Err(iperf3_error("the server did not exit after its test".into()));
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            stop_child(child);
        }
    }
}

/// Waits until a TCP socket listens on `port` in `namespace` (`ss`, which opens no connection:
/// a probe would use up the server's one test).
fn wait_until_listening(namespace: &str, port: &str) -> Result<(), LabError> {
    let deadline = Instant::now() + IPERF3_GRACE;
    loop {
        let listening =
            run(Lab::command(namespace, "ss").args(["-H", "-ltn", &format!("sport = :{port}")]))?;
        if !listening.stdout.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(iperf3_error(format!("the server never listened on port {port}")));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The counts of a finished run.
fn run_of(end: &End, udp: bool) -> Result<Iperf3Run, LabError> {
    let datagrams = if udp {
        let missing = || iperf3_error("a UDP report without packet counts".into());
        let sent = end.sum_sent.packets.ok_or_else(missing)?;
        let highest = end.sum_received.packets.ok_or_else(missing)?;
        let lost = end.sum_received.lost_packets.ok_or_else(missing)?;
        let received = highest
            .checked_sub(lost)
            .ok_or_else(|| iperf3_error(format!("{lost} datagrams lost of {highest} received")))?;
        Some(Datagrams { sent, received, lost })
    } else {
        None
    };
    Ok(Iperf3Run {
        sent_bytes: end.sum_sent.bytes,
        received_bytes: end.sum_received.bytes,
        datagrams,
    })
}

fn iperf3_error(reason: String) -> LabError {
    LabError::ToolOutput { tool: "iperf3", reason }
}

/// `/proc/net/snmp` as the kernel shows it inside `node`'s namespace.
fn snmp(node: &LabNode) -> Result<Snmp, LabError> {
    let output = run(Lab::command(&node.namespace, "cat").arg("/proc/net/snmp"))?;
    Snmp::from_read(output.stdout.as_slice())
        .map_err(|source| LabError::Snmp { namespace: node.namespace.clone(), source })
}
