//! Synthetic checks through the tunnel: `[[checks]]` in the TOML file and `--check KIND:TARGET`.
//!
//! Each check runs on the async runtime on its own interval with its own timeout, so a slow
//! or dead target never delays collection: the collector only reads the [`CheckBoard`], where
//! every check leaves its latest result and the cumulative histogram of its durations. The
//! collector ties each result to the peer whose AllowedIPs cover the address the check
//! reached (the target's, or the DNS server's), and the diagnosis names `check_failed` on it.
//!
//! One file per kind does the protocol with a well-kept crate: [`icmp`] (surge-ping, an ICMP
//! datagram socket: `net.ipv4.ping_group_range` must include wgtel's group, else it needs
//! `CAP_NET_RAW`), [`tcp`] (a connect), [`http`] (reqwest), [`dns`] (hickory-proto over UDP).

mod dns;
mod http;
mod icmp;
mod spec;
mod tcp;

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

pub use self::spec::{CheckKind, CheckSpec, CheckTable, DnsCheck, HttpCheck, SpecError, checks};
use crate::wg::{AllowedIp, PublicKey};

/// Upper bounds (seconds) of the `wireguard.check.duration` histogram's buckets; the last
/// bucket is unbounded.
pub const DURATION_BOUNDS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// How many of a check's latest durations its result keeps, for exporters that record each
/// run (OTLP): more than one export interval's worth at the shortest check interval.
pub const RECENT_DURATIONS: usize = 64;

/// Why one run of a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No answer within the check's timeout.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// A socket could not be opened, or sending or receiving failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The ICMP socket could not be opened or used.
    #[error("ICMP echo: {0}")]
    Icmp(#[source] surge_ping::SurgeError),
    /// The HTTP request failed (connection, protocol).
    #[error("HTTP request: {0}")]
    Http(#[source] reqwest::Error),
    /// The HTTP server answered with a status other than the expected one.
    #[error("HTTP status {got}, expected {expected}")]
    HttpStatus {
        /// The status the server sent.
        got: u16,
        /// The status the check expects.
        expected: String,
    },
    /// The DNS query could not be built or the answer not parsed.
    #[error("DNS: {0}")]
    Dns(#[source] hickory_proto::ProtoError),
    /// The DNS server answered with an error code.
    #[error("DNS answer {0}")]
    DnsCode(String),
    /// The DNS answer does not hold the expected record.
    #[error("DNS answer holds {got:?}, expected {expected:?}")]
    DnsUnexpected {
        /// The records' data in the answer.
        got: Vec<String>,
        /// What the check expects among them.
        expected: String,
    },
    /// The target's host name did not resolve.
    #[error("resolving {0}: no address")]
    Unresolved(String),
}

/// The latest state of one check, as the collector reads it and `/api/v1/checks` serves it.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct CheckResult {
    /// The check's name (given, or `KIND:TARGET`).
    pub name: String,
    /// `icmp`, `tcp`, `http` or `dns`.
    pub kind: String,
    /// What it checks, as configured.
    pub target: String,
    /// The address the check's packets go to (the target's, the DNS server's); `None` until a
    /// host name resolved.
    pub address: Option<IpAddr>,
    /// The WireGuard interface whose peer's AllowedIPs cover `address`; `None` when no tunnel
    /// carries it (set by the collector).
    pub interface: Option<String>,
    /// That peer's public key (set by the collector).
    pub peer_public_key: Option<PublicKey>,
    /// That peer's name, when known (set by the collector).
    pub peer_name: Option<String>,
    /// Whether the latest run succeeded; `None` before the first run ended.
    pub up: Option<bool>,
    /// How long the latest run took, seconds (a failed one: until it failed).
    pub duration_seconds: Option<f64>,
    /// Why the latest run failed.
    pub error: Option<String>,
    /// When the latest run ended, seconds since the Unix epoch.
    pub last_run_unix: Option<f64>,
    /// Runs ended since wgtel started.
    pub runs: u64,
    /// Of those, the failed ones.
    pub failures: u64,
    /// Consecutive failed runs up to the latest.
    pub consecutive_failures: u64,
    /// Runs per bucket of [`DURATION_BOUNDS`] (one more for the overflow), cumulative.
    pub buckets: Vec<u64>,
    /// Sum of every run's duration, seconds.
    pub duration_sum_seconds: f64,
    /// The latest [`RECENT_DURATIONS`] durations, oldest first, seconds.
    #[serde(skip)]
    pub recent_durations: VecDeque<f64>,
}

impl CheckResult {
    /// The result of `spec` before its first run.
    pub fn new(spec: &CheckSpec) -> Self {
        Self {
            name: spec.name.clone(),
            kind: spec.kind.name().to_owned(),
            target: spec.kind.target(),
            address: spec.kind.literal_address(),
            interface: None,
            peer_public_key: None,
            peer_name: None,
            up: None,
            duration_seconds: None,
            error: None,
            last_run_unix: None,
            runs: 0,
            failures: 0,
            consecutive_failures: 0,
            buckets: vec![0; DURATION_BOUNDS.len() + 1],
            duration_sum_seconds: 0.0,
            recent_durations: VecDeque::with_capacity(RECENT_DURATIONS),
        }
    }

    /// Records one run that took `seconds`.
    fn record(&mut self, outcome: &Result<(), CheckError>, seconds: f64, ended: SystemTime) {
        self.runs += 1;
        self.up = Some(outcome.is_ok());
        self.duration_seconds = Some(seconds);
        self.error = outcome.as_ref().err().map(ToString::to_string);
        if outcome.is_err() {
            self.failures += 1;
            self.consecutive_failures += 1;
        } else {
            self.consecutive_failures = 0;
        }
        self.last_run_unix =
            ended.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs_f64());
        let bucket = DURATION_BOUNDS.iter().position(|bound| seconds <= *bound);
        if let Some(count) = self.buckets.get_mut(bucket.unwrap_or(DURATION_BOUNDS.len())) {
            *count += 1;
        }
        self.duration_sum_seconds += seconds;
        if self.recent_durations.len() == RECENT_DURATIONS {
            self.recent_durations.pop_front();
        }
        self.recent_durations.push_back(seconds);
    }
}

/// Where the running checks leave their results; cheap to clone, shared with the collector.
#[derive(Clone, Debug, Default)]
pub struct CheckBoard(Arc<Mutex<Vec<CheckResult>>>);

impl CheckBoard {
    /// Every check's latest result, in configuration order.
    pub fn results(&self) -> Vec<CheckResult> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn update(&self, index: usize, change: impl FnOnce(&mut CheckResult)) {
        if let Some(result) = self.0.lock().unwrap_or_else(PoisonError::into_inner).get_mut(index) {
            change(result);
        }
    }
}

/// Starts every check on the current tokio runtime; each runs until the runtime ends.
pub fn start(specs: &[CheckSpec]) -> CheckBoard {
    let board = CheckBoard(Arc::new(Mutex::new(specs.iter().map(CheckResult::new).collect())));
    for (index, spec) in specs.iter().enumerate() {
        log::info!(
            "check {:?}: {} {} every {}, timeout {}",
            spec.name,
            spec.kind.name(),
            spec.kind.target(),
            humantime::format_duration(spec.interval),
            humantime::format_duration(spec.timeout)
        );
        tokio::spawn(run_check(spec.clone(), index, board.clone()));
    }
    board
}

/// Runs `spec` every interval (the first run at once), leaving each result on `board`.
async fn run_check(spec: CheckSpec, index: usize, board: CheckBoard) {
    let mut ticks = tokio::time::interval(spec.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence: u16 = 0;
    loop {
        ticks.tick().await;
        sequence = sequence.wrapping_add(1);
        let started = Instant::now();
        let outcome =
            match tokio::time::timeout(spec.timeout, once(&spec, sequence, &board, index)).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => Err(CheckError::Timeout(spec.timeout)),
            };
        let seconds = started.elapsed().as_secs_f64();
        if let Err(error) = &outcome {
            log::debug!("check {:?} failed: {error}", spec.name);
        }
        board.update(index, |result| result.record(&outcome, seconds, SystemTime::now()));
    }
}

/// One run of `spec`; a host name that resolves leaves its address on the board.
async fn once(
    spec: &CheckSpec,
    sequence: u16,
    board: &CheckBoard,
    index: usize,
) -> Result<(), CheckError> {
    match &spec.kind {
        CheckKind::Icmp(target) => icmp::echo(*target, sequence, spec.timeout).await,
        CheckKind::Tcp(host, port) => {
            let address = resolve(host, *port).await?;
            board.update(index, |result| result.address = Some(address.ip()));
            tcp::connect(address).await
        }
        CheckKind::Http(check) => {
            let port = check.url.port_or_known_default().unwrap_or(80);
            let host = check.url.host_str().unwrap_or_default();
            let address = resolve(host, port).await?;
            board.update(index, |result| result.address = Some(address.ip()));
            http::get(check, spec.timeout).await
        }
        CheckKind::Dns(check) => dns::query(check).await,
    }
}

/// A peer as [`tie`] reads it: interface, public key, name, AllowedIPs.
pub type RoutedPeer<'a> = (&'a str, PublicKey, Option<&'a str>, &'a [AllowedIp]);

/// Ties each result to the peer whose AllowedIPs hold its address with the longest prefix (as
/// WireGuard routes it), or to none.
pub fn tie(results: &mut [CheckResult], peers: &[RoutedPeer<'_>]) {
    for result in results {
        let best = result.address.and_then(|address| {
            peers
                .iter()
                .filter_map(|peer| {
                    let prefix =
                        peer.3.iter().filter(|ip| ip.contains(address)).map(|ip| ip.cidr).max()?;
                    Some((prefix, peer))
                })
                .max_by_key(|(prefix, _)| *prefix)
        });
        result.interface = best.map(|(_, peer)| peer.0.to_owned());
        result.peer_public_key = best.map(|(_, peer)| peer.1);
        result.peer_name = best.and_then(|(_, peer)| peer.2.map(str::to_owned));
    }
}

/// The first address of `host:port` (an IP literal is used as it is).
async fn resolve(host: &str, port: u16) -> Result<std::net::SocketAddr, CheckError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((ip, port).into());
    }
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| CheckError::Io { what: "resolving the target", source })?
        .next()
        .ok_or_else(|| CheckError::Unresolved(host.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_counts_runs_failures_and_durations_into_its_buckets() {
        let spec: CheckSpec = "tcp:198.19.0.11:22".parse().unwrap();
        let mut result = CheckResult::new(&spec);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        result.record(&Ok(()), 0.003, at);
        result.record(&Err(CheckError::Timeout(Duration::from_secs(2))), 2.0, at);
        result.record(&Err(CheckError::Unresolved("x".into())), 7.0, at);
        assert_eq!((result.runs, result.failures, result.consecutive_failures), (3, 2, 2));
        assert_eq!(result.up, Some(false));
        assert_eq!(result.error.as_deref(), Some("resolving x: no address"));
        assert_eq!(result.buckets, [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1]);
        assert!((result.duration_sum_seconds - 9.003).abs() < 1e-9);
        assert_eq!(result.recent_durations, [0.003, 2.0, 7.0]);
        assert_eq!(result.last_run_unix, Some(100.0));
        result.record(&Ok(()), 0.5, at);
        assert_eq!((result.up, result.consecutive_failures, result.error), (Some(true), 0, None));
    }

    #[test]
    fn a_result_goes_to_the_longest_prefix_that_holds_its_address() {
        let key = |byte: u8| PublicKey([byte; 32]);
        let ip = |text: &str| -> AllowedIp {
            let (address, cidr) = text.split_once('/').unwrap();
            AllowedIp { address: address.parse().unwrap(), cidr: cidr.parse().unwrap() }
        };
        let wide = [ip("198.19.0.0/16"), ip("fd00::/8")];
        let narrow = [ip("198.19.0.11/32")];
        let everything = [ip("0.0.0.0/0")];
        let peers = [
            ("wg0", key(1), Some("hub"), &wide[..]),
            ("wg0", key(2), None, &narrow[..]),
            ("wg1", key(3), Some("exit"), &everything[..]),
        ];
        let mut results: Vec<CheckResult> = [
            "icmp:198.19.0.11",
            "icmp:198.19.0.12",
            "icmp:fd00::1",
            "icmp:203.0.113.1",
            "icmp:2001:db8::1",
        ]
        .iter()
        .map(|flag| CheckResult::new(&flag.parse().unwrap()))
        .collect();
        tie(&mut results, &peers);
        let tied: Vec<_> = results
            .iter()
            .map(|r| (r.interface.as_deref(), r.peer_public_key, r.peer_name.as_deref()))
            .collect();
        assert_eq!(
            tied,
            [
                (Some("wg0"), Some(key(2)), None),
                (Some("wg0"), Some(key(1)), Some("hub")),
                (Some("wg0"), Some(key(1)), Some("hub")),
                (Some("wg1"), Some(key(3)), Some("exit")),
                (None, None, None),
            ]
        );
    }

    #[test]
    fn recent_durations_keep_the_latest_only() {
        let spec: CheckSpec = "icmp:198.19.0.11".parse().unwrap();
        let mut result = CheckResult::new(&spec);
        for run in 0..(RECENT_DURATIONS + 3) {
            result.record(&Ok(()), run as f64, SystemTime::UNIX_EPOCH);
        }
        assert_eq!(result.recent_durations.len(), RECENT_DURATIONS);
        assert_eq!(result.recent_durations.front(), Some(&3.0));
        assert_eq!(result.runs, RECENT_DURATIONS as u64 + 3);
    }
}
