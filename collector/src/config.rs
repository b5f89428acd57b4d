//! `wgtel run` settings: flags, the TOML file given by `--config` (flags win), and friendly
//! peer names from wg-quick style files and the TOML `[peer_names]` table.
//!
//! Longer than most modules (a third of it is tests): each setting's flag, TOML key,
//! validation and error are kept together so that flag and file cannot drift apart.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    ebpf::AttachMode,
    export::series::SeriesLimits,
    netns::NetnsSpec,
    rules::{AlertConfig, ExpectedPeer, Rule},
    webhook::{self, WebhookError, WebhookUrl},
    wg::PublicKey,
};

/// The listener address when neither flag nor file sets one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9587";
/// The collection period when neither flag nor file sets one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The shortest collection period accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest collection period accepted: the deadlines derived from it (three intervals for
/// `/healthz`, a hundred for a stuck collection) must not overflow a clock.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Errors of reading the settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file or a names file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML file is not valid.
    #[error("{path} is not a valid wgtel config")]
    Toml {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its position.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A duration is not of the form `10s`, `500ms`, `1m`.
    #[error("interval {value:?}: expected a duration such as 10s or 500ms")]
    Interval {
        /// The value given.
        value: String,
        /// Why it did not parse.
        #[source]
        source: humantime::DurationError,
    },
    /// The interval is too short to be useful.
    #[error("interval {0:?} is shorter than the minimum of 100ms")]
    IntervalTooShort(Duration),
    /// The interval is too long to be useful (and its multiples would overflow).
    #[error("interval {0:?} is longer than the maximum of 1h")]
    IntervalTooLong(Duration),
    /// The listen address is not `host:port`.
    #[error("listen address {value:?}: expected IP:PORT such as 127.0.0.1:9587")]
    Listen {
        /// The value given.
        value: String,
        /// Why it did not parse.
        #[source]
        source: std::net::AddrParseError,
    },
    /// A `[peer_names]` key is not a public key.
    #[error("[peer_names] in {path}")]
    PeerNameKey {
        /// The file.
        path: PathBuf,
        /// The bad key.
        #[source]
        source: crate::wg::InvalidPublicKey,
    },
    /// A duration under `[alerts]` is not of the form `10s`, `500ms`, `10m`.
    #[error("alerts.{key} = {value:?}: expected a duration such as 30s or 10m")]
    AlertDuration {
        /// The key, e.g. `for` or `for-rule.drop_rate`.
        key: String,
        /// The value given.
        value: String,
        /// Why it did not parse.
        #[source]
        source: humantime::DurationError,
    },
    /// A threshold under `[alerts]` is out of its range.
    #[error("alerts.{key} = {value}: expected {expected}")]
    AlertThreshold {
        /// The key, e.g. `cpu-saturated`.
        key: &'static str,
        /// The value given.
        value: f64,
        /// What it must be.
        expected: &'static str,
    },
    /// `[alerts.for-rule]` names no rule.
    #[error(
        "alerts.for-rule.{0}: no such rule (rules: handshake_stale, expected_peer_missing, always_on_quiet, drop_rate, handshake_unanswered, fragmentation, cpu_saturated)"
    )]
    UnknownRule(String),
    /// An `expected-peers` or `always-on` entry is neither a key nor a known name.
    #[error(
        "alerts.{list}: {value:?} is neither a public key nor the name of exactly one peer \
         (names come from names-from and [peer_names])"
    )]
    UnknownPeer {
        /// `expected-peers` or `always-on`.
        list: &'static str,
        /// The entry.
        value: String,
    },
    /// The webhook settings are not usable.
    #[error("[alerts] webhook")]
    Webhook(#[source] WebhookError),
    /// A non-loopback listen address without TLS and a bearer token, and without
    /// `--listen-insecure`: the API lists every peer's endpoint and key.
    #[error(
        "refusing to listen on {0}, which is not a loopback address, without TLS and a bearer \
         token: the API lists every peer's endpoint. Set --tls-cert, --tls-key and \
         --bearer-token-file ([http] tls-cert, tls-key, bearer-token-file), or pass \
         --listen-insecure ([http] listen-insecure = true) to serve it in the clear to anyone"
    )]
    InsecureListen(SocketAddr),
    /// Only one of the TLS certificate and key is given.
    #[error("TLS needs both --tls-cert and --tls-key ([http] tls-cert, tls-key)")]
    HalfTls,
    /// A `[probe]` setting is out of its range or not a duration.
    #[error("probe.{key} = {value:?}: expected {expected}")]
    Probe {
        /// The key, e.g. `timeout`.
        key: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A synthetic check (`--check`, `[[checks]]`) is not valid.
    #[error(transparent)]
    Check(#[from] crate::checks::SpecError),
    /// A `PublicKey =` line of a names file holds no valid key.
    #[error("{path}, line {line}: PublicKey is not a WireGuard public key")]
    NamesFileKey {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

/// Flags of `wgtel run`; every one can also be set in the `--config` file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RunArgs {
    /// TOML file with any of the settings below (flags win over it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// WireGuard interface to watch (repeatable); default: every one found.
    #[arg(long = "interface", value_name = "NAME")]
    pub interfaces: Vec<String>,
    /// Underlay NIC to watch (repeatable); default: those routing to the peers' endpoints.
    #[arg(long = "underlay", value_name = "NAME")]
    pub underlays: Vec<String>,
    /// Watch another network namespace too (repeatable): NAME under /run/netns, a PATH such as
    /// /proc/PID/ns/net, or `all` (every named namespace and every process's: containers).
    #[arg(long = "netns", value_name = "NAME|PATH|all")]
    pub netns: Vec<String>,
    /// HTTP listener for /metrics, /api/v1/peers and /healthz [default: 127.0.0.1:9587].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// OTLP destination; default: OTEL_EXPORTER_OTLP_ENDPOINT, else no OTLP export.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Collection and export period, e.g. 10s, 1s, 500ms [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,
    /// wg-quick style file whose `# Name = ...` comments name peers (repeatable).
    #[arg(long = "names-from", value_name = "FILE")]
    pub names_from: Vec<PathBuf>,
    /// Per-peer series only for the N busiest peers (bytes over the last interval); the rest
    /// are summed per interface into series marked otel_metric_overflow. 0: per-interface sums
    /// only.
    #[arg(long, value_name = "N")]
    pub top_peers: Option<usize>,
    /// Peer (public key or friendly name) that always keeps its own series (repeatable); with
    /// an allowlist and no --top-peers, only these peers do.
    #[arg(long = "peer-allowlist", value_name = "KEY_OR_NAME")]
    pub peer_allowlist: Vec<String>,
    /// Serve the API over TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` on every request; the token is the file's first
    /// line.
    #[arg(long, value_name = "FILE")]
    pub bearer_token_file: Option<PathBuf>,
    /// Allow a non-loopback --listen address without TLS and a bearer token (the API lists
    /// every peer's endpoint and key).
    #[arg(long)]
    pub listen_insecure: bool,
    /// A synthetic check through the tunnel (repeatable): icmp:IP, tcp:HOST:PORT,
    /// http:URL, dns:NAME@SERVER[:PORT]; every 10s with a 2s timeout ([[checks]] in the file
    /// sets more).
    #[arg(long = "check", value_name = "KIND:TARGET")]
    pub checks: Vec<String>,
    /// How to attach to interfaces: tcx on kernels that have it (6.6+), else clsact.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto, hide = true)]
    pub attach_mode: AttachMode,
    /// Have the eBPF programs log what they could not parse (truncated headers, datagrams on
    /// a WireGuard port that are no WireGuard message), at
    /// info; without it they carry no log statement at all.
    #[arg(long)]
    pub debug_ebpf: bool,
}

/// The TOML file: the same settings as the flags, plus `[peer_names]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    #[serde(default, alias = "interfaces")]
    interface: Vec<String>,
    #[serde(default, alias = "underlays")]
    underlay: Vec<String>,
    #[serde(default)]
    netns: Vec<String>,
    listen: Option<String>,
    #[serde(alias = "otlp_endpoint")]
    otlp_endpoint: Option<String>,
    interval: Option<String>,
    #[serde(default, alias = "names_from")]
    names_from: Vec<PathBuf>,
    top_peers: Option<usize>,
    #[serde(default, alias = "peer_allowlist")]
    peer_allowlist: Vec<String>,
    #[serde(default, rename = "peer_names", alias = "peer-names")]
    peer_names: HashMap<String, String>,
    #[serde(default)]
    alerts: AlertsFile,
    #[serde(default)]
    http: HttpFile,
    #[serde(default)]
    checks: Vec<crate::checks::CheckTable>,
    probe: Option<ProbeFile>,
    #[serde(default, alias = "debug_ebpf")]
    debug_ebpf: bool,
}

/// The `[probe]` table: the monitoring peer's key behind `/probe`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ProbeFile {
    private_key_file: PathBuf,
    timeout: Option<String>,
    count: Option<u16>,
}

/// `/probe` on the listener: the monitoring peer's key and the probes' limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// The monitoring peer's private key (`wg genkey` format); the requests never carry one.
    pub private_key_file: PathBuf,
    /// How long the handshake, and each echo, may take [default: 2s].
    pub timeout: Duration,
    /// Echoes per probe with an `inner_target` [default: 3].
    pub count: u16,
}

/// The `[probe]` table checked: a timeout from 100ms to 30s, a count from 1 to
/// [`crate::probe::MAX_COUNT`].
fn probe_config(file: Option<ProbeFile>) -> Result<Option<ProbeConfig>, ConfigError> {
    let Some(file) = file else { return Ok(None) };
    let timeout = match file.timeout {
        Some(value) => humantime::parse_duration(&value)
            .ok()
            .filter(|timeout| (MIN_INTERVAL..=Duration::from_secs(30)).contains(timeout))
            .ok_or(ConfigError::Probe {
                key: "timeout",
                value,
                expected: "a duration from 100ms to 30s",
            })?,
        None => Duration::from_secs(2),
    };
    let count = file.count.unwrap_or(3);
    if !(1..=crate::probe::MAX_COUNT).contains(&count) {
        return Err(ConfigError::Probe {
            key: "count",
            value: count.to_string(),
            expected: "a count from 1 to 1000",
        });
    }
    Ok(Some(ProbeConfig { private_key_file: file.private_key_file, timeout, count }))
}

/// The `[http]` table: how the API is served.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct HttpFile {
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    listen_insecure: bool,
}

/// How the API is served.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpConfig {
    /// TLS certificate chain and private key files (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The file holding the bearer token every request must carry.
    pub bearer_token_file: Option<PathBuf>,
}

/// The `[alerts]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct AlertsFile {
    #[serde(rename = "for")]
    hold: Option<String>,
    #[serde(default, alias = "for_rule")]
    for_rule: HashMap<String, String>,
    #[serde(alias = "handshake_stale")]
    handshake_stale: Option<String>,
    #[serde(alias = "quiet_bytes_per_second")]
    quiet_bytes_per_second: Option<f64>,
    #[serde(alias = "drop_rate")]
    drop_rate: Option<f64>,
    #[serde(alias = "cpu_saturated")]
    cpu_saturated: Option<f64>,
    #[serde(alias = "growth_window")]
    growth_window: Option<String>,
    #[serde(default, alias = "expected_peers")]
    expected_peers: Vec<String>,
    #[serde(default, alias = "always_on")]
    always_on: Vec<String>,
    webhook: Option<String>,
    #[serde(alias = "webhook_queue")]
    webhook_queue: Option<usize>,
}

/// The settings `wgtel run` works with.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Interfaces to watch; empty means every WireGuard interface found.
    pub interfaces: Vec<String>,
    /// Underlay NICs to watch; empty means those routing to peers' endpoints.
    pub underlays: Vec<String>,
    /// Other network namespaces to watch.
    pub netns: Vec<NetnsSpec>,
    /// HTTP listener.
    pub listen: SocketAddr,
    /// OTLP destination given by flag or file (the OTEL_* variables are read by the exporter).
    pub otlp_endpoint: Option<String>,
    /// Collection period.
    pub interval: Duration,
    /// Friendly peer names.
    pub names: PeerNames,
    /// Which peers get series of their own.
    pub series: SeriesLimits,
    /// How to attach.
    pub attach_mode: AttachMode,
    /// Whether the eBPF programs log what they could not parse (`--debug-ebpf`).
    pub debug_ebpf: bool,
    /// The health rules.
    pub alerts: AlertConfig,
    /// Where alert changes are POSTed, if anywhere.
    pub webhook: Option<WebhookUrl>,
    /// How many alert changes wait for the webhook at most.
    pub webhook_queue: usize,
    /// TLS and the bearer token of the HTTP listener.
    pub http: HttpConfig,
    /// `/probe`, when `[probe]` is set.
    pub probe: Option<ProbeConfig>,
    /// The synthetic checks through the tunnel: `[[checks]]`, then `--check`.
    pub checks: Vec<crate::checks::CheckSpec>,
}

impl RunConfig {
    /// Settings from the flags and, when given, the TOML file.
    pub fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => parse_file(path, &read(path)?)?,
            None => FileConfig::default(),
        };
        Self::from_file(args, file)
    }

    /// Settings from the flags and the parsed TOML file `file`.
    fn from_file(args: &RunArgs, file: FileConfig) -> Result<Self, ConfigError> {
        let or_file = |flag: &Vec<String>, file: Vec<String>| {
            if flag.is_empty() { file } else { flag.clone() }
        };
        let listen = args.listen.clone().or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen =
            listen.parse().map_err(|source| ConfigError::Listen { value: listen, source })?;
        let interval = match args.interval.clone().or(file.interval) {
            Some(value) => parse_interval(&value)?,
            None => DEFAULT_INTERVAL,
        };
        let mut names = PeerNames::default();
        for path in file.names_from.iter().chain(&args.names_from) {
            names.read_wg_quick_file(path)?;
        }
        if let Some(path) = &args.config {
            for (key, name) in file.peer_names {
                let key = key
                    .parse()
                    .map_err(|source| ConfigError::PeerNameKey { path: path.clone(), source })?;
                names.insert(key, name);
            }
        }
        let http = http_config(args, file.http, listen)?;
        let probe = probe_config(file.probe)?;
        let alerts = alert_config(&file.alerts, &names, interval)?;
        let webhook = file
            .alerts
            .webhook
            .as_deref()
            .map(WebhookUrl::parse)
            .transpose()
            .map_err(ConfigError::Webhook)?;
        let webhook_queue = file.alerts.webhook_queue.unwrap_or(webhook::DEFAULT_QUEUE);
        if webhook_queue == 0 {
            return Err(ConfigError::Webhook(WebhookError::EmptyQueue));
        }
        Ok(Self {
            interfaces: or_file(&args.interfaces, file.interface),
            underlays: or_file(&args.underlays, file.underlay),
            netns: or_file(&args.netns, file.netns)
                .iter()
                .map(|value| NetnsSpec::from(value.as_str()))
                .collect(),
            listen,
            otlp_endpoint: args.otlp_endpoint.clone().or(file.otlp_endpoint),
            interval,
            names,
            series: SeriesLimits {
                top_peers: args.top_peers.or(file.top_peers),
                allowlist: or_file(&args.peer_allowlist, file.peer_allowlist),
            },
            attach_mode: args.attach_mode,
            debug_ebpf: args.debug_ebpf || file.debug_ebpf,
            alerts,
            webhook,
            webhook_queue,
            http,
            probe,
            checks: crate::checks::checks(&file.checks, &args.checks)?,
        })
    }
}

/// The TOML file at `path`, whose text is `text`.
fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text)
        .map_err(|source| ConfigError::Toml { path: path.to_owned(), source: Box::new(source) })
}

/// The settings of a `--config` file whose text is `text`, with no other flag, checked as
/// `wgtel run` checks them; the files it names are not read (the fuzzer's entry point).
pub(crate) fn from_toml_text(text: &str) -> Result<RunConfig, ConfigError> {
    let path = PathBuf::from("wgtel.toml");
    let mut file = parse_file(&path, text)?;
    file.names_from.clear();
    RunConfig::from_file(&RunArgs { config: Some(path), ..RunArgs::default() }, file)
}

/// The listener's TLS and token settings (flags win over `[http]`); refuses a non-loopback
/// `listen` address unless it gets both TLS and a token, or `listen-insecure`.
fn http_config(
    args: &RunArgs,
    file: HttpFile,
    listen: SocketAddr,
) -> Result<HttpConfig, ConfigError> {
    let cert = args.tls_cert.clone().or(file.tls_cert);
    let key = args.tls_key.clone().or(file.tls_key);
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(ConfigError::HalfTls),
    };
    let bearer_token_file = args.bearer_token_file.clone().or(file.bearer_token_file);
    let protected = tls.is_some() && bearer_token_file.is_some();
    let insecure = args.listen_insecure || file.listen_insecure;
    if !listen.ip().is_loopback() && !protected && !insecure {
        return Err(ConfigError::InsecureListen(listen));
    }
    Ok(HttpConfig { tls, bearer_token_file })
}

/// The rules' settings from `[alerts]`, peers by key or by name from `names`. Counter rules
/// look back at least two collection intervals.
fn alert_config(
    file: &AlertsFile,
    names: &PeerNames,
    interval: Duration,
) -> Result<AlertConfig, ConfigError> {
    let duration = |key: &str, value: &str| {
        humantime::parse_duration(value).map_err(|source| ConfigError::AlertDuration {
            key: key.to_owned(),
            value: value.to_owned(),
            source,
        })
    };
    let mut config = AlertConfig::default();
    if let Some(value) = &file.hold {
        config.hold = duration("for", value)?;
    }
    for (rule, value) in &file.for_rule {
        let parsed = Rule::from_name(rule).ok_or_else(|| ConfigError::UnknownRule(rule.clone()))?;
        config.hold_by_rule.insert(parsed, duration(&format!("for-rule.{rule}"), value)?);
    }
    if let Some(value) = &file.handshake_stale {
        config.handshake_stale = duration("handshake-stale", value)?;
    }
    if let Some(value) = &file.growth_window {
        config.growth_window = duration("growth-window", value)?;
    }
    config.growth_window = config.growth_window.max(interval * 2);
    let threshold = |key: &'static str, value: Option<f64>, default: f64, fraction: bool| {
        let value = value.unwrap_or(default);
        let fits = value.is_finite() && value >= 0.0 && (!fraction || value <= 1.0);
        let expected = if fraction { "a fraction from 0 to 1" } else { "a number of at least 0" };
        if fits { Ok(value) } else { Err(ConfigError::AlertThreshold { key, value, expected }) }
    };
    config.quiet_bytes_per_second = threshold(
        "quiet-bytes-per-second",
        file.quiet_bytes_per_second,
        config.quiet_bytes_per_second,
        false,
    )?;
    config.drop_rate = threshold("drop-rate", file.drop_rate, config.drop_rate, false)?;
    config.cpu_saturated =
        threshold("cpu-saturated", file.cpu_saturated, config.cpu_saturated, true)?;
    for entry in &file.expected_peers {
        let (interface, public_key) = match names.resolve(entry) {
            Some(key) => (None, key),
            None => {
                let unknown =
                    || ConfigError::UnknownPeer { list: "expected-peers", value: entry.clone() };
                let (interface, peer) = entry.split_once(':').ok_or_else(unknown)?;
                (Some(interface.to_owned()), names.resolve(peer).ok_or_else(unknown)?)
            }
        };
        let name = names.get(&public_key).map(str::to_owned);
        config.expected_peers.push(ExpectedPeer { interface, public_key, name });
    }
    for entry in &file.always_on {
        let key = names
            .resolve(entry)
            .ok_or_else(|| ConfigError::UnknownPeer { list: "always-on", value: entry.clone() })?;
        config.always_on.push(key);
    }
    Ok(config)
}

/// A duration such as `10s`, `1s`, `500ms`, from [`MIN_INTERVAL`] to [`MAX_INTERVAL`].
pub fn parse_interval(value: &str) -> Result<Duration, ConfigError> {
    let interval = humantime::parse_duration(value)
        .map_err(|source| ConfigError::Interval { value: value.to_owned(), source })?;
    if interval < MIN_INTERVAL {
        return Err(ConfigError::IntervalTooShort(interval));
    }
    if interval > MAX_INTERVAL {
        return Err(ConfigError::IntervalTooLong(interval));
    }
    Ok(interval)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })
}

/// Friendly names of peers by public key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerNames(HashMap<PublicKey, String>);

impl PeerNames {
    /// The name of `key`, if one was given.
    pub fn get(&self, key: &PublicKey) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The peer `value` names: a public key, or the name of exactly one peer.
    pub fn resolve(&self, value: &str) -> Option<PublicKey> {
        if let Ok(key) = value.parse() {
            return Some(key);
        }
        let mut named = self.0.iter().filter(|(_, name)| *name == value).map(|(key, _)| *key);
        let key = named.next()?;
        named.next().is_none().then_some(key)
    }

    /// Names `key`; a later name for the same key wins.
    pub fn insert(&mut self, key: PublicKey, name: String) {
        self.0.insert(key, name);
    }

    /// Reads the names of a wg-quick style file (see [`PeerNames::parse_wg_quick`]).
    pub fn read_wg_quick_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = read(path)?;
        self.parse_wg_quick(&text)
            .map_err(|line| ConfigError::NamesFileKey { path: path.to_owned(), line })
    }

    /// Takes names from a wg-quick style file: a `# Name = ...` or `# friendly_name = ...`
    /// comment names the peer whose `PublicKey =` line follows it in the same section. Other
    /// lines, the private and preshared keys among them, are skipped unread. Errors with the
    /// line number of a named `PublicKey` that is not a key.
    pub fn parse_wg_quick(&mut self, text: &str) -> Result<(), usize> {
        let mut pending: Option<String> = None;
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.starts_with('[') {
                pending = None;
            } else if let Some(comment) = line.strip_prefix('#') {
                if let Some((key, value)) = comment.split_once('=') {
                    let key = key.trim();
                    let value = value.trim();
                    if (key.eq_ignore_ascii_case("name")
                        || key.eq_ignore_ascii_case("friendly_name"))
                        && !value.is_empty()
                    {
                        pending = Some(value.to_owned());
                    }
                }
            } else if let Some((key, value)) = line.split_once('=')
                && key.trim().eq_ignore_ascii_case("publickey")
                && let Some(name) = pending.take()
            {
                let key = value.trim().parse().map_err(|_| index + 1)?;
                self.insert(key, name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const BOB: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";

    #[test]
    fn names_come_from_comments_above_public_keys() {
        let text = format!(
            "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n\
             # Name = not a peer\n\n[Peer]\n# Name = alice laptop\nPublicKey = {ALICE}\n\
             AllowedIPs = 198.19.0.2/32\n\n[Peer]\nPublicKey = {BOB}\n\n\
             [Peer]\n# friendly_name = bob\nPresharedKey = ignored\npublickey={BOB}\n"
        );
        let mut names = PeerNames::default();
        names.parse_wg_quick(&text).unwrap();
        assert_eq!(names.get(&ALICE.parse().unwrap()), Some("alice laptop"));
        assert_eq!(names.get(&BOB.parse().unwrap()), Some("bob"));
        assert_eq!(names.0.len(), 2);
    }

    #[test]
    fn netns_in_the_file_is_a_name_a_path_or_all_and_the_flag_wins() {
        let run = from_toml_text("netns = [\"blue\", \"/proc/1/ns/net\", \"all\"]\n").unwrap();
        assert_eq!(
            run.netns,
            [
                NetnsSpec::Named("blue".into()),
                NetnsSpec::Path("/proc/1/ns/net".into()),
                NetnsSpec::All
            ]
        );
        assert_eq!(from_toml_text("").unwrap().netns, []);
        let file = parse_file(Path::new("wgtel.toml"), "netns = [\"blue\"]\n").unwrap();
        let args = RunArgs { netns: vec!["red".into()], ..RunArgs::default() };
        let run = RunConfig::from_file(&args, file).unwrap();
        assert_eq!(run.netns, [NetnsSpec::Named("red".into())]);
    }

    #[test]
    fn an_interval_beyond_an_hour_is_refused_not_multiplied_into_a_panic() {
        let error = from_toml_text("interval = \"18446744073709551615s\"\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "interval 18446744073709551615s is longer than the maximum of 1h"
        );
        assert_eq!(from_toml_text("interval = \"1h\"\n").unwrap().interval, MAX_INTERVAL);
    }

    #[test]
    fn a_bad_named_key_reports_its_line_only() {
        let mut names = PeerNames::default();
        assert_eq!(names.parse_wg_quick("[Peer]\n# Name = x\nPublicKey = secret-ish\n"), Err(3));
    }

    #[test]
    fn flags_win_over_the_file_and_names_merge() {
        let dir = std::env::temp_dir().join(format!("wgtel-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let names = dir.join("wg0.conf");
        std::fs::write(&names, format!("[Peer]\n# Name = alice\nPublicKey = {ALICE}\n")).unwrap();
        let config = dir.join("wgtel.toml");
        std::fs::write(
            &config,
            format!(
                "interface = [\"wg0\", \"wg1\"]\nlisten = \"127.0.0.1:1\"\ninterval = \"2s\"\n\
                 otlp-endpoint = \"http://127.0.0.1:4317\"\nnames-from = [{names:?}]\n\
                 top-peers = 5\npeer-allowlist = [\"alice\"]\n\
                 [peer_names]\n\"{BOB}\" = \"bob\"\n"
            ),
        )
        .unwrap();
        let args = RunArgs {
            config: Some(config),
            interfaces: vec!["wg9".into()],
            interval: Some("500ms".into()),
            ..RunArgs::default()
        };
        let run = RunConfig::from_args(&args).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(run.interfaces, ["wg9"]);
        assert_eq!(run.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(run.interval, Duration::from_millis(500));
        assert_eq!(run.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert_eq!(run.names.get(&ALICE.parse().unwrap()), Some("alice"));
        assert_eq!(run.names.get(&BOB.parse().unwrap()), Some("bob"));
        assert_eq!(
            run.series,
            SeriesLimits { top_peers: Some(5), allowlist: vec!["alice".into()] }
        );
    }

    fn alerts_from(toml_text: &str, interval: Duration) -> Result<AlertConfig, ConfigError> {
        let file: FileConfig = toml::from_str(toml_text).unwrap();
        let mut names = PeerNames::default();
        names.insert(ALICE.parse().unwrap(), "alice".into());
        alert_config(&file.alerts, &names, interval)
    }

    #[test]
    fn the_alerts_table_sets_every_rule_and_names_peers_by_key_or_name() {
        let alerts = alerts_from(
            &format!(
                "[alerts]\nfor = \"1s\"\nhandshake-stale = \"5m\"\ndrop-rate = 2.5\n\
                 cpu-saturated = 0.75\nquiet-bytes-per-second = 10\ngrowth-window = \"1s\"\n\
                 expected-peers = [\"alice\", \"wg1:{BOB}\"]\nalways-on = [\"{BOB}\"]\n\
                 for-rule = {{ cpu_saturated = \"2m\" }}\n"
            ),
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(alerts.hold(Rule::DropRate), Duration::from_secs(1));
        assert_eq!(alerts.hold(Rule::CpuSaturated), Duration::from_secs(120));
        assert_eq!(alerts.handshake_stale, Duration::from_secs(300));
        assert_eq!(
            (alerts.drop_rate, alerts.cpu_saturated, alerts.quiet_bytes_per_second),
            (2.5, 0.75, 10.0)
        );
        assert_eq!(alerts.growth_window, Duration::from_secs(4), "at least two intervals");
        assert_eq!(
            alerts.expected_peers,
            [
                ExpectedPeer {
                    interface: None,
                    public_key: ALICE.parse().unwrap(),
                    name: Some("alice".into())
                },
                ExpectedPeer {
                    interface: Some("wg1".into()),
                    public_key: BOB.parse().unwrap(),
                    name: None
                },
            ]
        );
        assert_eq!(alerts.always_on, [BOB.parse::<PublicKey>().unwrap()]);
        assert_eq!(
            alerts_from("", DEFAULT_INTERVAL).unwrap(),
            AlertConfig { growth_window: Duration::from_secs(30), ..AlertConfig::default() }
        );
    }

    #[test]
    fn bad_alert_settings_are_refused_clearly() {
        let error = |text: &str| alerts_from(text, DEFAULT_INTERVAL).unwrap_err().to_string();
        assert_eq!(
            error("[alerts]\ncpu-saturated = 1.5"),
            "alerts.cpu-saturated = 1.5: expected a fraction from 0 to 1"
        );
        assert_eq!(
            error("[alerts]\ndrop-rate = -1.0"),
            "alerts.drop-rate = -1: expected a number of at least 0"
        );
        assert_eq!(
            error("[alerts]\nfor = \"soon\""),
            "alerts.for = \"soon\": expected a duration such as 30s or 10m"
        );
        assert!(
            error("[alerts]\nfor-rule = { nope = \"1s\" }")
                .starts_with("alerts.for-rule.nope: no such rule")
        );
        assert!(
            error("[alerts]\nalways-on = [\"carol\"]")
                .starts_with("alerts.always-on: \"carol\" is neither")
        );
        assert!(
            error("[alerts]\nexpected-peers = [\"wg0:carol\"]")
                .starts_with("alerts.expected-peers: \"wg0:carol\"")
        );
        let dir = std::env::temp_dir().join(format!("wgtel-alerts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("wgtel.toml");
        for (text, message) in [
            ("[alerts]\nwebhook = \"https://hooks.example/x\"", "[alerts] webhook"),
            (
                "[alerts]\nwebhook = \"http://hooks.example/x\"\nwebhook-queue = 0",
                "[alerts] webhook",
            ),
        ] {
            std::fs::write(&config, text).unwrap();
            let args = RunArgs { config: Some(config.clone()), ..RunArgs::default() };
            assert_eq!(RunConfig::from_args(&args).unwrap_err().to_string(), message);
        }
        std::fs::write(&config, "[alerts]\nwebhook = \"http://hooks.example:8080/x?token=t\"")
            .unwrap();
        let args = RunArgs { config: Some(config.clone()), ..RunArgs::default() };
        let run = RunConfig::from_args(&args).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(run.webhook.unwrap().to_string(), "http://hooks.example:8080/x");
        assert_eq!(run.webhook_queue, webhook::DEFAULT_QUEUE);
    }

    #[test]
    fn a_non_loopback_listener_needs_tls_and_a_token_or_listen_insecure() {
        let listen = |address: &str| RunArgs { listen: Some(address.into()), ..RunArgs::default() };
        let error = RunConfig::from_args(&listen("0.0.0.0:9587")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "refusing to listen on 0.0.0.0:9587, which is not a loopback address, without TLS \
             and a bearer token: the API lists every peer's endpoint. Set --tls-cert, --tls-key \
             and --bearer-token-file ([http] tls-cert, tls-key, bearer-token-file), or pass \
             --listen-insecure ([http] listen-insecure = true) to serve it in the clear to anyone"
        );
        let tls_only = RunArgs {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..listen("198.18.1.1:9587")
        };
        assert!(matches!(RunConfig::from_args(&tls_only), Err(ConfigError::InsecureListen(_))));
        let protected = RunArgs { bearer_token_file: Some("token".into()), ..tls_only.clone() };
        assert_eq!(
            RunConfig::from_args(&protected).unwrap().http,
            HttpConfig {
                tls: Some(("c.pem".into(), "k.pem".into())),
                bearer_token_file: Some("token".into())
            }
        );
        let insecure = RunArgs { listen_insecure: true, ..listen("[fd00::1]:9587") };
        assert_eq!(RunConfig::from_args(&insecure).unwrap().http, HttpConfig::default());
        assert_eq!(
            RunConfig::from_args(&listen("[::1]:9587")).unwrap().http,
            HttpConfig::default()
        );
        let half = RunArgs { tls_cert: Some("c.pem".into()), ..RunArgs::default() };
        assert!(matches!(RunConfig::from_args(&half), Err(ConfigError::HalfTls)));
        let file: FileConfig = toml::from_str(
            "listen = \"0.0.0.0:1\"\n[http]\ntls-cert = \"c\"\ntls-key = \"k\"\nbearer-token-file = \"t\"\n",
        )
        .unwrap();
        let http = http_config(&RunArgs::default(), file.http, "0.0.0.0:1".parse().unwrap());
        assert_eq!(
            http.unwrap(),
            HttpConfig { tls: Some(("c".into(), "k".into())), bearer_token_file: Some("t".into()) }
        );
    }

    #[test]
    fn the_probe_table_gives_the_key_file_and_limits_and_refuses_bad_ones() {
        let probe = |text: &str| {
            toml::from_str::<FileConfig>(text)
                .map_err(|e| e.to_string())
                .and_then(|file| probe_config(file.probe).map_err(|e| e.to_string()))
        };
        assert_eq!(probe(""), Ok(None));
        assert_eq!(
            probe("[probe]\nprivate-key-file = \"/etc/wgtel/monitor.key\""),
            Ok(Some(ProbeConfig {
                private_key_file: "/etc/wgtel/monitor.key".into(),
                timeout: Duration::from_secs(2),
                count: 3,
            }))
        );
        assert_eq!(
            probe("[probe]\nprivate-key-file = \"k\"\ntimeout = \"500ms\"\ncount = 10"),
            Ok(Some(ProbeConfig {
                private_key_file: "k".into(),
                timeout: Duration::from_millis(500),
                count: 10,
            }))
        );
        assert_eq!(
            probe("[probe]\nprivate-key-file = \"k\"\ntimeout = \"1m\""),
            Err("probe.timeout = \"1m\": expected a duration from 100ms to 30s".into())
        );
        assert_eq!(
            probe("[probe]\nprivate-key-file = \"k\"\ncount = 0"),
            Err("probe.count = \"0\": expected a count from 1 to 1000".into())
        );
        assert!(probe("[probe]\ntimeout = \"1s\"").is_err_and(|e| e.contains("private-key-file")));
    }

    #[test]
    fn bad_values_are_refused_clearly() {
        assert!(matches!(parse_interval("10"), Err(ConfigError::Interval { .. })));
        assert!(matches!(parse_interval("10ms"), Err(ConfigError::IntervalTooShort(_))));
        assert_eq!(parse_interval("1s").unwrap(), Duration::from_secs(1));
        let args = RunArgs { listen: Some("localhost".into()), ..RunArgs::default() };
        let error = RunConfig::from_args(&args).unwrap_err();
        assert!(error.to_string().contains("expected IP:PORT"), "{error}");
    }
}
