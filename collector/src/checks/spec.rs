//! What a check is: parsed from `--check KIND:TARGET` or from a `[[checks]]` table, validated
//! once at start so that a bad check stops `wgtel run` with a clear message.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use hickory_proto::rr::RecordType;
use serde::Deserialize;
use url::Url;

/// A check's period when none is given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// A check's timeout when none is given (never longer than its interval).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest period accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The DNS port when a server is given without one.
const DNS_PORT: u16 = 53;

/// Why a check's description is refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// `--check` without `KIND:`.
    #[error("check {0:?}: expected KIND:TARGET, KIND one of icmp, tcp, http, dns")]
    NoKind(String),
    /// A kind wgtel does not know.
    #[error("check kind {0:?}: expected icmp, tcp, http or dns")]
    UnknownKind(String),
    /// An ICMP target that is not an IP address.
    #[error("icmp check {0:?}: the target must be an IP address")]
    IcmpTarget(String),
    /// A TCP target that is not `HOST:PORT`.
    #[error("tcp check {0:?}: the target must be HOST:PORT (IPv6 as [ADDR]:PORT)")]
    TcpTarget(String),
    /// An HTTP target that is not an `http://` or `https://` URL.
    #[error("http check {0:?}: the target must be an http:// or https:// URL with a host")]
    HttpTarget(String),
    /// A DNS check without server or query, or with a server that is not `IP[:PORT]`.
    #[error(
        "dns check {0:?}: expected server = IP[:PORT] and a query name (flag: dns:NAME@SERVER)"
    )]
    DnsTarget(String),
    /// A DNS record type hickory does not know.
    #[error("dns check: record type {0:?} unknown (A, AAAA, CNAME, MX, TXT, ...)")]
    RecordType(String),
    /// `expect-status` outside 100..=599.
    #[error("http check: expect-status {0} is not an HTTP status")]
    ExpectStatus(u16),
    /// An interval or timeout that does not parse.
    #[error("check {name:?}: {key} {value:?}: expected a duration such as 10s or 500ms")]
    Duration {
        /// The check.
        name: String,
        /// `interval` or `timeout`.
        key: &'static str,
        /// The value given.
        value: String,
        /// Why it did not parse.
        #[source]
        source: humantime::DurationError,
    },
    /// An interval below [`MIN_INTERVAL`], or a timeout of zero or longer than the interval.
    #[error(
        "check {0:?}: the interval must be at least 100ms and the timeout between 1ms and the interval"
    )]
    Period(String),
    /// Two checks with one name.
    #[error("two checks are named {0:?}: names must be unique")]
    DuplicateName(String),
    /// A `[[checks]]` entry lacks the key its kind needs.
    #[error("{kind} check: missing {key}")]
    Missing {
        /// The check's kind.
        kind: &'static str,
        /// The missing key.
        key: &'static str,
    },
}

/// An HTTP check: a GET of `url`, up when the status is `expect_status` (any 2xx when unset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    /// The URL.
    pub url: Url,
    /// The status to expect.
    pub expect_status: Option<u16>,
}

/// A DNS check: `query` of `record_type` asked of `server` over UDP, up when the answer is
/// NOERROR with at least one record of that type (and `expect` among them, when set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsCheck {
    /// The resolver asked.
    pub server: SocketAddr,
    /// The name asked for.
    pub query: String,
    /// The record type asked for.
    pub record_type: RecordType,
    /// A record's data the answer must hold (an address, a name, a text).
    pub expect: Option<String>,
}

/// What a check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// ICMP echo to an address.
    Icmp(IpAddr),
    /// A TCP connect to a host and port.
    Tcp(String, u16),
    /// An HTTP GET.
    Http(HttpCheck),
    /// A DNS query.
    Dns(DnsCheck),
}

impl CheckKind {
    /// `icmp`, `tcp`, `http` or `dns`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Icmp(_) => "icmp",
            Self::Tcp(..) => "tcp",
            Self::Http(_) => "http",
            Self::Dns(_) => "dns",
        }
    }

    /// The target as an operator reads it.
    pub fn target(&self) -> String {
        match self {
            Self::Icmp(ip) => ip.to_string(),
            Self::Tcp(host, port) if host.contains(':') => format!("[{host}]:{port}"),
            Self::Tcp(host, port) => format!("{host}:{port}"),
            Self::Http(check) => check.url.to_string(),
            Self::Dns(check) => {
                format!("{} {} @{}", check.query, check.record_type, check.server)
            }
        }
    }

    /// The address the check's packets go to, when known without resolving a name.
    pub fn literal_address(&self) -> Option<IpAddr> {
        match self {
            Self::Icmp(ip) => Some(*ip),
            Self::Tcp(host, _) => host.parse().ok(),
            Self::Http(check) => match check.url.host()? {
                url::Host::Ipv4(ip) => Some(ip.into()),
                url::Host::Ipv6(ip) => Some(ip.into()),
                url::Host::Domain(_) => None,
            },
            Self::Dns(check) => Some(check.server.ip()),
        }
    }
}

/// One check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    /// Its name: given, or `KIND:TARGET`.
    pub name: String,
    /// What it does.
    pub kind: CheckKind,
    /// How often.
    pub interval: Duration,
    /// How long one run may take before it counts as failed.
    pub timeout: Duration,
}

/// `--check KIND:TARGET`: `icmp:198.19.0.11`, `tcp:198.19.0.11:22`,
/// `http:http://198.19.0.12:8080/health`, `dns:db.internal@198.19.0.12[:53]`; default interval
/// and timeout.
impl FromStr for CheckSpec {
    type Err = SpecError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (kind, target) =
            value.split_once(':').ok_or_else(|| SpecError::NoKind(value.into()))?;
        let kind = match kind {
            "icmp" => icmp(target)?,
            "tcp" => tcp(target)?,
            "http" => http(target, None)?,
            "dns" => {
                let (query, server) =
                    target.split_once('@').ok_or_else(|| SpecError::DnsTarget(target.into()))?;
                dns(server, query, None, None)?
            }
            other => return Err(SpecError::UnknownKind(other.into())),
        };
        Ok(Self {
            name: value.to_owned(),
            kind,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
        })
    }
}

/// One `[[checks]]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CheckTable {
    kind: String,
    name: Option<String>,
    target: Option<String>,
    #[serde(alias = "expect_status")]
    expect_status: Option<u16>,
    server: Option<String>,
    query: Option<String>,
    #[serde(rename = "type")]
    record_type: Option<String>,
    expect: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
}

impl CheckTable {
    /// The check this table describes.
    pub fn to_spec(&self) -> Result<CheckSpec, SpecError> {
        let target = |kind: &'static str| {
            self.target.as_deref().ok_or(SpecError::Missing { kind, key: "target" })
        };
        let kind = match self.kind.as_str() {
            "icmp" => icmp(target("icmp")?)?,
            "tcp" => tcp(target("tcp")?)?,
            "http" => http(target("http")?, self.expect_status)?,
            "dns" => {
                let server = self
                    .server
                    .as_deref()
                    .ok_or(SpecError::Missing { kind: "dns", key: "server" })?;
                let query = self
                    .query
                    .as_deref()
                    .ok_or(SpecError::Missing { kind: "dns", key: "query" })?;
                dns(server, query, self.record_type.as_deref(), self.expect.clone())?
            }
            other => return Err(SpecError::UnknownKind(other.into())),
        };
        let name =
            self.name.clone().unwrap_or_else(|| format!("{}:{}", kind.name(), kind.target()));
        let duration =
            |key: &'static str, value: &Option<String>, default: Duration| match value {
                Some(value) => humantime::parse_duration(value).map_err(|source| {
                    SpecError::Duration { name: name.clone(), key, value: value.clone(), source }
                }),
                None => Ok(default),
            };
        let interval = duration("interval", &self.interval, DEFAULT_INTERVAL)?;
        let timeout = duration("timeout", &self.timeout, DEFAULT_TIMEOUT.min(interval))?;
        if interval < MIN_INTERVAL || timeout.is_zero() || timeout > interval {
            return Err(SpecError::Period(name));
        }
        Ok(CheckSpec { name, kind, interval, timeout })
    }
}

/// The checks of the file's tables, then of the flags; refuses two with one name.
pub fn checks(tables: &[CheckTable], flags: &[String]) -> Result<Vec<CheckSpec>, SpecError> {
    let mut specs = Vec::with_capacity(tables.len() + flags.len());
    for table in tables {
        specs.push(table.to_spec()?);
    }
    for flag in flags {
        specs.push(flag.parse()?);
    }
    for (index, spec) in specs.iter().enumerate() {
        if specs[..index].iter().any(|other| other.name == spec.name) {
            return Err(SpecError::DuplicateName(spec.name.clone()));
        }
    }
    Ok(specs)
}

fn icmp(target: &str) -> Result<CheckKind, SpecError> {
    target.parse().map(CheckKind::Icmp).map_err(|_| SpecError::IcmpTarget(target.into()))
}

fn tcp(target: &str) -> Result<CheckKind, SpecError> {
    let bad = || SpecError::TcpTarget(target.into());
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?.to_string(),
        None if host.is_empty() || host.contains(':') => return Err(bad()),
        None => host.to_owned(),
    };
    if port == 0 {
        return Err(bad());
    }
    Ok(CheckKind::Tcp(host, port))
}

fn http(target: &str, expect_status: Option<u16>) -> Result<CheckKind, SpecError> {
    let url = Url::parse(target).map_err(|_| SpecError::HttpTarget(target.into()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(SpecError::HttpTarget(target.into()));
    }
    if let Some(status) = expect_status.filter(|status| !(100..=599).contains(status)) {
        return Err(SpecError::ExpectStatus(status));
    }
    Ok(CheckKind::Http(HttpCheck { url, expect_status }))
}

fn dns(
    server: &str,
    query: &str,
    record_type: Option<&str>,
    expect: Option<String>,
) -> Result<CheckKind, SpecError> {
    let bad = || SpecError::DnsTarget(format!("{query}@{server}"));
    let server = match server.parse::<SocketAddr>() {
        Ok(address) => address,
        Err(_) => {
            let ip = server.trim_start_matches('[').trim_end_matches(']');
            SocketAddr::new(ip.parse().map_err(|_| bad())?, DNS_PORT)
        }
    };
    if query.is_empty() {
        return Err(bad());
    }
    let record_type = match record_type {
        Some(name) => RecordType::from_str(&name.to_ascii_uppercase())
            .map_err(|_| SpecError::RecordType(name.into()))?,
        None => RecordType::A,
    };
    Ok(CheckKind::Dns(DnsCheck { server, query: query.to_owned(), record_type, expect }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(flag: &str) -> CheckSpec {
        flag.parse().unwrap()
    }

    #[test]
    fn flags_name_each_kind_and_its_target() {
        assert_eq!(spec("icmp:198.19.0.11").kind, CheckKind::Icmp("198.19.0.11".parse().unwrap()));
        assert_eq!(spec("tcp:198.19.0.11:22").kind, CheckKind::Tcp("198.19.0.11".into(), 22));
        assert_eq!(spec("tcp:[fd00::11]:5432").kind.target(), "[fd00::11]:5432");
        assert_eq!(spec("tcp:db.internal:5432").kind.literal_address(), None);
        let http = spec("http:http://198.19.0.12:8080/health");
        assert_eq!(http.kind.target(), "http://198.19.0.12:8080/health");
        assert_eq!(http.kind.literal_address(), Some("198.19.0.12".parse().unwrap()));
        assert_eq!(http.name, "http:http://198.19.0.12:8080/health");
        let dns = spec("dns:db.internal@198.19.0.12");
        assert_eq!(dns.kind.target(), "db.internal A @198.19.0.12:53");
        assert_eq!((dns.interval, dns.timeout), (DEFAULT_INTERVAL, DEFAULT_TIMEOUT));
    }

    #[test]
    fn bad_checks_are_refused_clearly() {
        let error = |flag: &str| flag.parse::<CheckSpec>().unwrap_err().to_string();
        assert_eq!(
            error("198.19.0.11"),
            "check \"198.19.0.11\": expected KIND:TARGET, KIND one of icmp, tcp, http, dns"
        );
        assert_eq!(
            error("udp:198.19.0.11:53"),
            "check kind \"udp\": expected icmp, tcp, http or dns"
        );
        assert_eq!(error("icmp:alice"), "icmp check \"alice\": the target must be an IP address");
        assert_eq!(
            error("tcp:198.19.0.11"),
            "tcp check \"198.19.0.11\": the target must be HOST:PORT (IPv6 as [ADDR]:PORT)"
        );
        assert_eq!(
            error("tcp:fd00::11:22"),
            "tcp check \"fd00::11:22\": the target must be HOST:PORT (IPv6 as [ADDR]:PORT)"
        );
        assert_eq!(
            error("http:ftp://198.19.0.12/"),
            "http check \"ftp://198.19.0.12/\": the target must be an http:// or https:// URL with a host"
        );
        assert_eq!(
            error("dns:db.internal"),
            "dns check \"db.internal\": expected server = IP[:PORT] and a query name (flag: dns:NAME@SERVER)"
        );
        let table = |text: &str| toml::from_str::<CheckTable>(text).unwrap().to_spec();
        assert_eq!(
            table("kind = \"dns\"\nserver = \"198.19.0.12\"\nquery = \"x\"\ntype = \"BOGUS\"")
                .unwrap_err()
                .to_string(),
            "dns check: record type \"BOGUS\" unknown (A, AAAA, CNAME, MX, TXT, ...)"
        );
        assert_eq!(
            table(
                "kind = \"tcp\"\ntarget = \"198.19.0.11:22\"\ninterval = \"1s\"\ntimeout = \"5s\""
            )
            .unwrap_err()
            .to_string(),
            "check \"tcp:198.19.0.11:22\": the interval must be at least 100ms and the timeout between 1ms and the interval"
        );
        assert_eq!(table("kind = \"http\"").unwrap_err().to_string(), "http check: missing target");
        assert_eq!(
            table("kind = \"http\"\ntarget = \"http://198.19.0.12/\"\nexpect-status = 42")
                .unwrap_err()
                .to_string(),
            "http check: expect-status 42 is not an HTTP status"
        );
        let twice = checks(&[], &["icmp:198.19.0.11".into(), "icmp:198.19.0.11".into()]);
        assert_eq!(
            twice.unwrap_err().to_string(),
            "two checks are named \"icmp:198.19.0.11\": names must be unique"
        );
    }

    #[test]
    fn tables_set_every_key() {
        let table: CheckTable = toml::from_str(
            "kind = \"dns\"\nname = \"resolver\"\nserver = \"198.19.0.12:5353\"\nquery = \"db.internal\"\n\
             type = \"aaaa\"\nexpect = \"fd00::12\"\ninterval = \"30s\"\ntimeout = \"500ms\"",
        )
        .unwrap();
        let spec = table.to_spec().unwrap();
        assert_eq!(spec.name, "resolver");
        assert_eq!(
            (spec.interval, spec.timeout),
            (Duration::from_secs(30), Duration::from_millis(500))
        );
        assert_eq!(
            spec.kind,
            CheckKind::Dns(DnsCheck {
                server: "198.19.0.12:5353".parse().unwrap(),
                query: "db.internal".into(),
                record_type: RecordType::AAAA,
                expect: Some("fd00::12".into()),
            })
        );
        let short: CheckTable =
            toml::from_str("kind = \"icmp\"\ntarget = \"198.19.0.11\"\ninterval = \"1s\"").unwrap();
        assert_eq!(short.to_spec().unwrap().timeout, Duration::from_secs(1));
    }
}
