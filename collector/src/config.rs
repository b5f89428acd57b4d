//! `wgtel run` settings: flags, the TOML file given by `--config` (flags win), and friendly
//! peer names from wg-quick style files and the TOML `[peer_names]` table.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{ebpf::AttachMode, export::series::SeriesLimits, wg::PublicKey};

/// The listener address when neither flag nor file sets one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9587";
/// The collection period when neither flag nor file sets one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The shortest collection period accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

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
    /// How to attach to interfaces: tcx on kernels that have it (6.6+), else clsact.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto, hide = true)]
    pub attach_mode: AttachMode,
}

/// The TOML file: the same settings as the flags, plus `[peer_names]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    #[serde(default, alias = "interfaces")]
    interface: Vec<String>,
    #[serde(default, alias = "underlays")]
    underlay: Vec<String>,
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
}

/// The settings `wgtel run` works with.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Interfaces to watch; empty means every WireGuard interface found.
    pub interfaces: Vec<String>,
    /// Underlay NICs to watch; empty means those routing to peers' endpoints.
    pub underlays: Vec<String>,
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
}

impl RunConfig {
    /// Settings from the flags and, when given, the TOML file.
    pub fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = read(path)?;
                toml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::Toml {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
            None => FileConfig::default(),
        };
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
        Ok(Self {
            interfaces: or_file(&args.interfaces, file.interface),
            underlays: or_file(&args.underlays, file.underlay),
            listen,
            otlp_endpoint: args.otlp_endpoint.clone().or(file.otlp_endpoint),
            interval,
            names,
            series: SeriesLimits {
                top_peers: args.top_peers.or(file.top_peers),
                allowlist: or_file(&args.peer_allowlist, file.peer_allowlist),
            },
            attach_mode: args.attach_mode,
        })
    }
}

/// A duration such as `10s`, `1s`, `500ms`, at least [`MIN_INTERVAL`].
pub fn parse_interval(value: &str) -> Result<Duration, ConfigError> {
    let interval = humantime::parse_duration(value)
        .map_err(|source| ConfigError::Interval { value: value.to_owned(), source })?;
    if interval < MIN_INTERVAL {
        return Err(ConfigError::IntervalTooShort(interval));
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
