//! wgtel: WireGuard telemetry from the packets themselves.
//!
//! Data flows one way: [`wg`] (WireGuard's peer state) and [`ebpf`] (kernel counters) feed
//! [`collect`] (in each watched network namespace, [`netns`]), which produces one [`model::Snapshot`] per interval, reads it for the causes of
//! failure ([`diagnosis`]) and measures it against [`rules`] (alerts, sent to the [`webhook`]); [`export`] only reads
//! snapshots. [`run`] is the daemon, [`status`], [`explain`], [`demo`] and [`probe`] the other commands, [`lab`] the
//! throw-away network the demo and the privileged tests build. `fuzzing` lends the readers of
//! untrusted input to the cargo-fuzz targets in `fuzz/`.

pub mod checks;
pub mod collect;
pub mod config;
pub mod demo;
pub mod diagnosis;
pub mod ebpf;
pub mod events;
pub mod explain;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod lab;
pub mod links;
pub mod model;
pub mod netns;
pub mod privileges;
pub mod probe;
pub mod rules;
pub mod run;
pub mod status;
pub mod udp_sockets;
pub mod underlay_routes;
pub mod webhook;
pub mod wg;
