//! The OTLP resource: what tells one gateway's wgtel from another's at a shared collector.
//!
//! wgtel detects `host.name` (the kernel's node name), `host.arch` and `os.type` (the
//! semantic conventions' values), `service.name` `wgtel`, `service.version` (the crate
//! version) and `service.instance.id`; `OTEL_RESOURCE_ATTRIBUTES` (percent-decoded, as the
//! specification says) overrides any of them, and `OTEL_SERVICE_NAME` overrides
//! `service.name` over both. The SDK's `telemetry.sdk.*` attributes come along.
//!
//! `service.instance.id` is a UUID v5 (namespace [`INSTANCE_NAMESPACE`], the one the semantic
//! conventions give for it) of the machine-id, `host.name` and `service.name`, all as finally
//! resolved: stable across restarts and reboots, unique per machine, the machine-id itself
//! never shown (systemd asks applications not to expose it), and two daemons on one machine
//! (in two network namespaces) that the operator tells apart by `host.name` get two ids.
//! The listen address would not help there: each namespace has its own `127.0.0.1:9587`.

use std::sync::OnceLock;

use opentelemetry::{Key, KeyValue, Value};
use opentelemetry_sdk::{Resource, resource::TelemetryResourceDetector};
use uuid::Uuid;

/// The namespace of UUID v5 `service.instance.id`s in the semantic conventions.
pub const INSTANCE_NAMESPACE: Uuid = uuid::uuid!("4d63009a-8d0f-11ee-aad7-4c796ed8e320");

/// Where the machine-id is read from, in order (the second for systems without systemd).
const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

const SERVICE_NAME: &str = "service.name";
const HOST_NAME: &str = "host.name";
const INSTANCE_ID: &str = "service.instance.id";

/// Why `OTEL_RESOURCE_ATTRIBUTES` was ignored.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// An entry is not `key=value`, or its key is empty.
    #[error("OTEL_RESOURCE_ATTRIBUTES entry {0:?} is not key=value")]
    Entry(String),
    /// A value's percent-encoding does not decode to UTF-8.
    #[error("OTEL_RESOURCE_ATTRIBUTES value of {key} is not percent-encoded UTF-8")]
    Encoding {
        /// The attribute.
        key: String,
        /// What the decoder said.
        #[source]
        source: std::str::Utf8Error,
    },
}

/// What this machine says about itself, before the environment's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The kernel's node name (`uname -n`).
    pub host_name: String,
    /// `std::env::consts::ARCH`.
    pub arch: &'static str,
    /// The machine-id, when one is readable.
    pub machine_id: Option<String>,
}

impl Detected {
    /// Reads this machine's node name and machine-id.
    pub fn this_machine() -> Self {
        let host_name = rustix::system::uname().nodename().to_string_lossy().into_owned();
        let machine_id = MACHINE_ID_FILES.iter().find_map(|path| {
            let text = std::fs::read_to_string(path).ok()?;
            Some(text.trim().to_owned()).filter(|id| !id.is_empty())
        });
        if machine_id.is_none() {
            log::debug!("no machine-id: service.instance.id derives from host.name alone");
        }
        Self { host_name, arch: std::env::consts::ARCH, machine_id }
    }
}

/// The resource of every OTLP export: this machine's, overridden by the environment. A
/// malformed `OTEL_RESOURCE_ATTRIBUTES` is ignored as a whole, with a warning (the
/// specification's rule). Detected once per process.
pub fn resource() -> Resource {
    static RESOURCE: OnceLock<Resource> = OnceLock::new();
    RESOURCE.get_or_init(detect).clone()
}

fn detect() -> Resource {
    let attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok();
    let service_name = std::env::var("OTEL_SERVICE_NAME").ok();
    let (resource, error) =
        build(&Detected::this_machine(), attributes.as_deref(), service_name.as_deref());
    if let Some(error) = error {
        log::warn!("ignoring OTEL_RESOURCE_ATTRIBUTES: {error}");
    }
    resource
}

/// The resource from `detected`, `OTEL_RESOURCE_ATTRIBUTES` (`attributes`) and
/// `OTEL_SERVICE_NAME` (`service_name`), and why `attributes` was ignored, if it was.
pub fn build(
    detected: &Detected,
    attributes: Option<&str>,
    service_name: Option<&str>,
) -> (Resource, Option<ResourceError>) {
    let (overrides, error) = match parse_attributes(attributes.unwrap_or_default()) {
        Ok(overrides) => (overrides, None),
        Err(error) => (Vec::new(), Some(error)),
    };
    let mut builder = Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes([
            KeyValue::new(HOST_NAME, detected.host_name.clone()),
            KeyValue::new("host.arch", host_arch(detected.arch)),
            KeyValue::new("os.type", "linux"),
            KeyValue::new(SERVICE_NAME, "wgtel"),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .with_attributes(overrides);
    if let Some(name) = service_name.filter(|name| !name.is_empty()) {
        builder = builder.with_attribute(KeyValue::new(SERVICE_NAME, name.to_owned()));
    }
    let resource = builder.build();
    if resource.get(&Key::from_static_str(INSTANCE_ID)).is_some() {
        return (resource, error);
    }
    let text = |key: &'static str| {
        resource.get(&Key::from_static_str(key)).map(|value| value.as_str().into_owned())
    };
    let name = format!(
        "{}/{}/{}",
        detected.machine_id.as_deref().unwrap_or_default(),
        text(HOST_NAME).unwrap_or_default(),
        text(SERVICE_NAME).unwrap_or_default(),
    );
    let id = Uuid::new_v5(&INSTANCE_NAMESPACE, name.as_bytes()).to_string();
    let resource = Resource::builder_empty()
        .with_attributes(
            resource.iter().map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        )
        .with_attribute(KeyValue::new(INSTANCE_ID, id))
        .build();
    (resource, error)
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas, values percent-encoded.
fn parse_attributes(text: &str) -> Result<Vec<KeyValue>, ResourceError> {
    text.split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            let (key, value) = entry
                .split_once('=')
                .filter(|(key, _)| !key.trim().is_empty())
                .ok_or_else(|| ResourceError::Entry(entry.to_owned()))?;
            let key = key.trim().to_owned();
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|source| ResourceError::Encoding { key: key.clone(), source })?;
            Ok(KeyValue::new(key, Value::from(value.into_owned())))
        })
        .collect()
}

/// The semantic conventions' `host.arch` for a Rust `target_arch`; other architectures keep
/// Rust's name.
fn host_arch(arch: &'static str) -> &'static str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm32",
        "x86" => "x86",
        "powerpc" => "ppc32",
        "powerpc64" => "ppc64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Detected {
        Detected {
            host_name: "gw-berlin".into(),
            arch: "x86_64",
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
        }
    }

    fn attribute(resource: &Resource, key: &'static str) -> Option<String> {
        resource.get(&Key::from_static_str(key)).map(|value| value.as_str().into_owned())
    }

    fn wgtel_attributes(resource: &Resource) -> Vec<(String, String)> {
        let mut attributes: Vec<_> = resource
            .iter()
            .filter(|(key, _)| !key.as_str().starts_with("telemetry.sdk."))
            .map(|(key, value)| (key.to_string(), value.as_str().into_owned()))
            .collect();
        attributes.sort();
        attributes
    }

    #[test]
    fn the_machine_describes_itself_with_the_semantic_conventions() {
        let (resource, error) = build(&machine(), None, None);
        assert!(error.is_none());
        let expected = [
            ("host.arch", "amd64"),
            ("host.name", "gw-berlin"),
            ("os.type", "linux"),
            // Python: uuid.uuid5(UUID("4d63009a-..."), "0123.../gw-berlin/wgtel")
            ("service.instance.id", "bcae1d0c-c2f0-5390-8cee-3b9b1562a989"),
            ("service.name", "wgtel"),
            ("service.version", env!("CARGO_PKG_VERSION")),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned()));
        assert_eq!(wgtel_attributes(&resource), expected.to_vec());
        assert_eq!(attribute(&resource, "telemetry.sdk.language").as_deref(), Some("rust"));
    }

    #[test]
    fn the_environment_overrides_and_otel_service_name_wins() {
        let (resource, error) = build(
            &machine(),
            Some("host.name=gw%2Dparis, deployment.environment.name=prod,service.name=edge"),
            Some("wg-edge"),
        );
        assert!(error.is_none());
        assert_eq!(attribute(&resource, "host.name").as_deref(), Some("gw-paris"));
        assert_eq!(attribute(&resource, "deployment.environment.name").as_deref(), Some("prod"));
        assert_eq!(attribute(&resource, "service.name").as_deref(), Some("wg-edge"));
        // The instance id follows the resolved host and service names.
        assert_eq!(
            attribute(&resource, INSTANCE_ID).as_deref(),
            Some("59123101-8880-543b-ba5f-633e37d1f853")
        );

        let (resource, _) =
            build(&machine(), Some("service.name=edge,service.instance.id=gw-7"), Some(""));
        assert_eq!(attribute(&resource, "service.name").as_deref(), Some("edge"));
        assert_eq!(attribute(&resource, INSTANCE_ID).as_deref(), Some("gw-7"));
    }

    #[test]
    fn two_hosts_and_a_missing_machine_id_get_distinct_stable_ids() {
        let id = |detected: &Detected, attributes| {
            attribute(&build(detected, attributes, None).0, INSTANCE_ID).unwrap()
        };
        let no_machine_id = Detected { machine_id: None, ..machine() };
        assert_eq!(id(&machine(), None), id(&machine(), None));
        assert_ne!(id(&machine(), None), id(&machine(), Some("host.name=gw-paris")));
        assert_eq!(id(&no_machine_id, None), "4126c37e-2905-5a90-a8dd-ee4f043e1142");
    }

    #[test]
    fn a_malformed_variable_is_ignored_as_a_whole() {
        for (text, expected) in [
            ("host.name=a,novalue", "OTEL_RESOURCE_ATTRIBUTES entry \"novalue\" is not key=value"),
            ("=x", "OTEL_RESOURCE_ATTRIBUTES entry \"=x\" is not key=value"),
            (
                "host.name=a,team=%FF",
                "OTEL_RESOURCE_ATTRIBUTES value of team is not percent-encoded UTF-8",
            ),
        ] {
            let (resource, error) = build(&machine(), Some(text), None);
            assert_eq!(error.map(|error| error.to_string()).as_deref(), Some(expected));
            assert_eq!(attribute(&resource, "host.name").as_deref(), Some("gw-berlin"));
        }
    }

    #[test]
    fn architectures_use_the_semantic_convention_names() {
        assert_eq!(
            ["x86_64", "aarch64", "arm", "x86", "powerpc64", "s390x", "riscv64"].map(host_arch),
            ["amd64", "arm64", "arm32", "x86", "ppc64", "s390x", "riscv64"]
        );
    }
}
