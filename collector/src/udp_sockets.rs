//! Drops of the UDP sockets of the calling thread's network namespace by local port, from
//! `/proc/thread-self/net/udp` and `udp6` (the last column, the socket's `sk_drops`: datagrams the kernel
//! dropped because the receive buffer was full, or failed its checksum or socket filter).
//! Kernel WireGuard's sockets are listed there too.

use std::{collections::HashMap, fs::File, io::Read as _};

/// Why the socket tables could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UdpSocketsError {
    /// A table could not be read.
    #[error("reading {path}")]
    Read {
        /// The table.
        path: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The tables read: IPv4 always; IPv6 when the kernel has it.
/// `/proc/net` is the namespace of the process's first thread, `/proc/thread-self/net` that of
/// the reading thread (which may have entered another namespace).
const TABLES: [(&str, bool); 2] =
    [("/proc/thread-self/net/udp", true), ("/proc/thread-self/net/udp6", false)];

/// Room to read a table in one go: each `read(2)` that starts past what the kernel formatted
/// last walks the namespace's whole UDP hash table again (16,384 slots or more) to find its
/// place, and `read_to_string` into an empty `String` starts with reads of 32 bytes.
const READ_BUFFER: usize = 64 * 1024;

/// Drops summed over every UDP socket bound to each local port.
pub fn drops_by_port() -> Result<HashMap<u16, u64>, UdpSocketsError> {
    let mut drops = HashMap::new();
    let mut text = String::with_capacity(READ_BUFFER);
    for (path, required) in TABLES {
        text.clear();
        match File::open(path).and_then(|mut file| file.read_to_string(&mut text)) {
            Ok(_) => {}
            Err(_) if !required => continue,
            Err(source) => return Err(UdpSocketsError::Read { path, source }),
        }
        for (port, count) in text.lines().skip(1).filter_map(parse_line) {
            *drops.entry(port).or_default() += count;
        }
    }
    Ok(drops)
}

/// `(local port, drops)` of one table line; `None` for a line that does not parse.
fn parse_line(line: &str) -> Option<(u16, u64)> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
    let drops = fields.last()?.parse().ok()?;
    Some((port, drops))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_gives_its_local_port_and_drops() {
        let v4 = "  12: 00000000:CA6C 00000000:0000 07 00000000:00000000 00:00000000 00000000     \
                  0        0 43113 2 ffff8b0e4a5f0000 931";
        assert_eq!(parse_line(v4), Some((51820, 931)));
        let v6 = " 1: 00000000000000000000000000000000:CA6C 00000000000000000000000000000000:0000 \
                  07 00000000:00000000 00:00000000 00000000     0        0 0 2 ffff8b0e4a5f0400 0";
        assert_eq!(parse_line(v6), Some((51820, 0)));
        assert_eq!(parse_line("  sl  local_address rem_address   st"), None);
    }
}
