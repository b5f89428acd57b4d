//! Monitoring peers for the outside-in probe (`wgtel probe`, `/probe`): a namespace on the
//! lab's underlay with no WireGuard of its own, holding a key the gateway knows (or, for the
//! probe's failure cases, one it does not).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use super::{Lab, LabError, add_namespace, wg_set, write_file};
use crate::wg::PublicKey;

/// A monitoring peer: where the probe runs from and the key it runs with.
#[derive(Debug)]
pub struct MonitoringPeer {
    /// Its network namespace, on the lab's underlay.
    pub namespace: String,
    /// Its underlay address.
    pub underlay_v4: Ipv4Addr,
    /// Its tunnel address: the gateway's AllowedIPs for it are this /32 (when it knows it).
    pub tunnel_v4: Ipv4Addr,
    /// Its public key.
    pub public_key: PublicKey,
    /// The file holding its private key (`wg genkey` format, mode 0600).
    key_file: PathBuf,
    /// Its private key in base64, for tests that prove it never leaks.
    private_key: String,
}

impl MonitoringPeer {
    /// The file holding its private key.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// Its private key in base64, for tests that prove it never leaks.
    pub fn private_key(&self) -> &str {
        &self.private_key
    }
}

impl Lab {
    /// Adds a monitoring peer: a namespace on the underlay and a fresh key in a file; when
    /// `known_to_gateway`, the gateway gets it as a peer with its tunnel address as a /32 and
    /// no endpoint (it learns the endpoint from the probe's handshake).
    pub fn add_monitoring_peer(
        &mut self,
        known_to_gateway: bool,
    ) -> Result<MonitoringPeer, LabError> {
        if self.next_host as usize >= 10 + super::MAX_PEERS {
            return Err(LabError::TooManyPeers);
        }
        let host = self.next_host;
        self.next_host += 1;
        let namespace = self.namespace(&format!("p{}", host - 9));
        let node = self.new_node("monitor", namespace, host, self.implementation)?;
        add_namespace(&node.namespace)?;
        self.connect_underlay(&node, None)?;
        if known_to_gateway {
            let allowed = format!("{}/32", node.tunnel_v4);
            wg_set(
                &self.gateway,
                &["peer", &node.public_key.to_string(), "allowed-ips", &allowed],
            )?;
        }
        let key_file = self.dir.join(format!("monitor{host}.key"));
        write_file(&key_file, &format!("{}\n", node.private_key.0))?;
        Ok(MonitoringPeer {
            namespace: node.namespace,
            underlay_v4: node.underlay_v4,
            tunnel_v4: node.tunnel_v4,
            public_key: node.public_key,
            key_file,
            private_key: node.private_key.0,
        })
    }
}
