//! The userspace WireGuard implementations a lab node can run, and where their programs are.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::{Lab, LabError};

/// The environment variable naming the folder of the implementations `cargo xtask setup`
/// installs (`cargo xtask test` and `cargo xtask demo` set it to `.cache/tools/bin`).
const TOOLS_ENV: &str = "WGTEL_TOOLS";

/// Which WireGuard implementation runs a lab node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Implementation {
    /// Debian bookworm's wireguard-go (0.0.20220316, no UDP batching): `/usr/bin/wireguard-go`.
    #[default]
    WireguardGo,
    /// Debian trixie's wireguard-go (0.0.20231211, UDP GSO and GRO, TUN offloads), installed by
    /// `cargo xtask setup` as `wireguard-go-current`.
    WireguardGoCurrent,
    /// boringtun-cli 0.7.1, installed by `cargo xtask setup`.
    Boringtun,
}

impl Implementation {
    /// Its program: bookworm's wireguard-go from the system, the others from [`tools_dir`];
    /// an error naming `cargo xtask setup` when it is not there.
    pub fn program(self) -> Result<PathBuf, LabError> {
        let path = match self {
            Self::WireguardGo => PathBuf::from("/usr/bin/wireguard-go"),
            Self::WireguardGoCurrent => tools_dir().join("wireguard-go-current"),
            Self::Boringtun => tools_dir().join("boringtun-cli"),
        };
        if path.is_file() { Ok(path) } else { Err(LabError::MissingProgram(path)) }
    }

    /// The command that runs it in the foreground in `namespace` for `interface` (through
    /// `ip netns exec`, which execs: the child is the implementation's own process).
    pub(super) fn command(self, namespace: &str, interface: &str) -> Result<Command, LabError> {
        let mut command = Lab::command(namespace, self.program()?);
        match self {
            Self::WireguardGo | Self::WireguardGoCurrent => {
                command.args(["-f", interface]).env("LOG_LEVEL", "error");
            }
            Self::Boringtun => {
                // Two threads: the machines running labs have few cores.
                command.args(["--foreground", "--disable-drop-privileges", "--threads", "2"]);
                command.arg(interface).env("WG_LOG_LEVEL", "error");
            }
        }
        Ok(command)
    }
}

/// Where `cargo xtask setup` installs the implementations that are not Debian bookworm's:
/// `$WGTEL_TOOLS`, else `.cache/tools/bin` of the source tree this binary was built from.
fn tools_dir() -> PathBuf {
    std::env::var_os(TOOLS_ENV).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/tools/bin"),
        PathBuf::from,
    )
}
