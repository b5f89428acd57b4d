//! Userspace WireGuard (wireguard-go, boringtun) over the cross-platform UAPI socket
//! `<socket_dir>/<ifname>.sock`.
//!
//! One `get=1` request per read: the implementation answers with `key=value` lines, ends with
//! `errno=N` and an empty line. Private and preshared keys are checked for shape and dropped on
//! sight: they are never stored and never quoted in an error.
//!
//! wireguard-go does not report the interface's own public key, only its private key: the
//! public key is derived from it (X25519) and the private key dropped. boringtun reports its
//! public key.
//!
//! Which implementation answers is read from the process behind the socket (`SO_PEERCRED`, then
//! `/proc/PID/comm`), because the same keys mean different things (see [`parse_get_reply`]).
//! boringtun forgets a peer's handshake when the session expires (180 s after it without a new
//! one): the last one it reported is kept here, per process, so that an idle peer's handshake
//! ages instead of turning into "never".

use std::{
    collections::HashMap,
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use foldhash::HashMap as FastMap;

use bytes::BytesMut;
use zeroize::Zeroize as _;

use super::{AllowedIp, Implementation, InterfaceState, PeerSource, PeerState, PublicKey};

/// How long one read may take, connection included, by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest reply read, by default. A 10 000-peer interface answers about 3 MB.
const DEFAULT_MAX_REPLY_BYTES: usize = 32 * 1024 * 1024;

/// Values longer than this are cut in error messages.
const MAX_QUOTED_VALUE_CHARS: usize = 40;

/// Reads userspace WireGuard interfaces over their UAPI sockets.
#[derive(Debug)]
pub struct Uapi {
    /// Directory holding `<ifname>.sock`, usually `/var/run/wireguard`.
    socket_dir: PathBuf,
    /// For the sockets of another network namespace's processes: the root (`/proc/PID/root`)
    /// that every path is resolved inside (see [`crate::netns::open_in_root`]).
    root: Option<PathBuf>,
    /// Deadline for a whole read: connect, request and reply.
    timeout: Duration,
    /// Replies longer than this are refused, so memory stays bounded.
    max_reply: usize,
    /// The handshakes boringtun last reported, by interface.
    remembered: Mutex<HashMap<String, Remembered>>,
    /// The reply buffer, kept from one read to the next (it grows to the largest reply and
    /// stays): no allocation per read. It holds wireguard-go's private key while a reply is
    /// parsed and is wiped after each read; see [`ReplyBuffer`].
    buffer: Mutex<ReplyBuffer>,
}

/// Where replies are read: a zero-filled [`BytesMut`], `filled` bytes of it the start of a
/// line not yet complete (then what was just read).
#[derive(Debug, Default)]
struct ReplyBuffer {
    bytes: BytesMut,
    filled: usize,
    /// Peers in the last reply: what the next is expected to hold.
    peers: usize,
}

/// The least room a read is given: a larger reply grows the buffer.
const READ_ROOM: usize = 64 * 1024;

impl ReplyBuffer {
    /// The reply read so far.
    fn reply(&self) -> &[u8] {
        self.bytes.get(..self.filled).unwrap_or_default()
    }

    /// Room for at least [`READ_ROOM`] more bytes after the reply. A bigger buffer is a new
    /// allocation and the old one is wiped before it is freed (`BytesMut::reserve` could move
    /// the bytes and free the old copy of the key as it is). Replies are parsed as they
    /// arrive, so it grows past one read's room only for a line longer than that.
    fn room(&mut self) -> &mut [u8] {
        if self.bytes.len() - self.filled < READ_ROOM {
            let mut bigger = BytesMut::zeroed((self.bytes.len() * 2).max(self.filled + READ_ROOM));
            bigger[..self.filled].copy_from_slice(self.reply());
            self.bytes.zeroize();
            self.bytes = bigger;
        }
        self.bytes.get_mut(self.filled..).unwrap_or_default()
    }

    /// Hands every complete line to `reply` (`lines` counts them, for errors), then moves the
    /// incomplete rest to the front, wiping where it was; whether the reply ended (its empty
    /// line: the lines between `errno` and it are read and ignored).
    fn take_lines(&mut self, reply: &mut Reply, lines: &mut usize) -> Result<Flow, UapiError> {
        let mut start = 0;
        let mut flow = Flow::More;
        while let Some(end) = memchr::memchr(b'\n', &self.bytes[start..self.filled]) {
            let line = &self.bytes[start..start + end];
            start += end + 1;
            *lines += 1;
            if line.is_empty() {
                flow = Flow::Done;
                break;
            }
            take_line(reply, *lines, line)?;
        }
        let rest = self.filled - start;
        self.bytes.copy_within(start..self.filled, 0);
        if let Some(moved) = self.bytes.get_mut(rest..self.filled) {
            moved.zeroize();
        }
        self.filled = rest;
        Ok(flow)
    }

    /// At the end of the stream: the bytes after the last newline, if any, as one more line.
    fn take_last_line(&mut self, reply: &mut Reply, lines: &mut usize) -> Result<(), UapiError> {
        if self.filled == 0 {
            return Ok(());
        }
        *lines += 1;
        take_line(reply, *lines, &self.bytes[..self.filled])
    }

    /// Wipes the reply; the allocation stays for the next.
    fn wipe(&mut self) {
        if let Some(reply) = self.bytes.get_mut(..self.filled) {
            reply.zeroize();
        }
        self.filled = 0;
    }
}

/// Hands line `number` of a reply to `reply`, unless the reply ended with its `errno` line.
fn take_line(reply: &mut Reply, number: usize, line: &[u8]) -> Result<(), UapiError> {
    if reply.errno.is_some() {
        return Ok(());
    }
    let line = std::str::from_utf8(line)
        .map_err(|_| UapiError::Garbled { line: number, reason: "not UTF-8".to_owned() })?;
    reply.line(number, line).map(drop)
}

/// The handshakes one boringtun process last reported for its peers.
#[derive(Debug)]
struct Remembered {
    /// The process (`None` when hidden): another process forgets them.
    pid: Option<u32>,
    handshakes: HashMap<PublicKey, SystemTime>,
}

impl Uapi {
    /// Reads the sockets in `dir`, with a 2 s timeout per read.
    pub fn with_socket_dir(dir: PathBuf) -> Self {
        Self {
            socket_dir: dir,
            root: None,
            timeout: DEFAULT_TIMEOUT,
            max_reply: DEFAULT_MAX_REPLY_BYTES,
            remembered: Mutex::default(),
            buffer: Mutex::default(),
        }
    }

    /// Reads the sockets of `/var/run/wireguard` inside the process root `root`
    /// (`/proc/PID/root`), resolving every path inside it: a container's links cannot lead
    /// wgtel to a socket of the host.
    pub fn in_root(root: PathBuf) -> Self {
        let socket_dir = root.join(crate::netns::UAPI_DIR_IN_ROOT);
        Self { root: Some(root), ..Self::with_socket_dir(socket_dir) }
    }

    /// The directory of the sockets.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The process root the sockets are resolved inside, if any.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// Whether interface `name` has a socket here.
    pub fn has_socket(&self, name: &str) -> bool {
        match &self.root {
            None => super::discovery::is_socket(&self.socket_path(name)),
            Some(root) => Self::open_in_root(root, name).is_ok(),
        }
    }

    /// The socket of interface `name` inside `root`, opened for reference (`O_PATH`); an
    /// error when it is not a socket.
    fn open_in_root(root: &Path, name: &str) -> io::Result<std::os::fd::OwnedFd> {
        let path = Path::new(crate::netns::UAPI_DIR_IN_ROOT).join(format!("{name}.sock"));
        let socket = crate::netns::open_in_root(root, &path)?;
        let mode = rustix::fs::fstat(&socket)?.st_mode;
        if rustix::fs::FileType::from_raw_mode(mode) == rustix::fs::FileType::Socket {
            Ok(socket)
        } else {
            Err(io::Error::new(io::ErrorKind::InvalidInput, "not a socket"))
        }
    }

    /// Connects to the socket of interface `name` at `path`; inside the root, through the
    /// descriptor of the socket found there (`/proc/self/fd/N` names that very inode).
    fn connect(&self, name: &str, path: &Path) -> io::Result<UnixStream> {
        let Some(root) = &self.root else { return UnixStream::connect(path) };
        let socket = Self::open_in_root(root, name)?;
        let by_fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&socket));
        UnixStream::connect(by_fd)
    }

    /// The UAPI socket of interface `name`.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.socket_dir.join(format!("{name}.sock"))
    }

    /// Sends `get=1` to the socket at `path` and parses the reply as it arrives, line by
    /// line, into `buffer` (the lines not yet complete) up to its `errno` line or terminating
    /// empty line; returns who sent it (the process behind the socket when this pid namespace
    /// sees it) and the interface. A gateway's reply is megabytes: only the line being read is
    /// held, never the whole reply.
    fn read_reply(
        &self,
        name: &str,
        path: &Path,
        buffer: &mut ReplyBuffer,
    ) -> Result<(Option<u32>, InterfaceState), UapiError> {
        buffer.wipe();
        let deadline = Instant::now() + self.timeout;
        let io_error = |source: io::Error| {
            if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                UapiError::Timeout { path: path.to_owned(), timeout: self.timeout }
            } else {
                UapiError::Io { path: path.to_owned(), source }
            }
        };
        let mut stream = self.connect(name, path).map_err(|source| {
            if source.kind() == io::ErrorKind::PermissionDenied {
                UapiError::PermissionDenied { path: path.to_owned() }
            } else {
                UapiError::Connect { path: path.to_owned(), source }
            }
        })?;
        let pid = peer_pid(&stream);
        stream.set_write_timeout(Some(self.timeout)).map_err(io_error)?;
        stream.write_all(b"get=1\n\n").map_err(io_error)?;
        let process = pid.and_then(implementation_of).unwrap_or(Implementation::Userspace);
        let mut reply = Reply::new(name, process, buffer.peers);
        let mut lines = 0;
        let mut total = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(UapiError::Timeout { path: path.to_owned(), timeout: self.timeout });
            }
            stream.set_read_timeout(Some(remaining)).map_err(io_error)?;
            let read = match stream.read(buffer.room()) {
                Ok(0) => {
                    // The stream ended: what it left after its last newline is a line too.
                    buffer.take_last_line(&mut reply, &mut lines)?;
                    break;
                }
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(io_error(error)),
            };
            buffer.filled += read;
            total += read;
            if total > self.max_reply {
                return Err(UapiError::TooLarge { path: path.to_owned(), limit: self.max_reply });
            }
            if buffer.take_lines(&mut reply, &mut lines)? == Flow::Done {
                break;
            }
        }
        buffer.peers = reply.interface.peers.len();
        Ok((pid, reply.finish(SystemTime::now())?))
    }
}

/// Overwrites the stack below the caller's frame, where parsing a reply left copies of the
/// private key (hex decoding, X25519) in frames that have returned.
#[inline(never)]
fn wipe_stack() {
    let mut area = [0u8; 32 * 1024];
    area.zeroize();
    std::hint::black_box(&area);
}

impl PeerSource for Uapi {
    type Error = UapiError;

    fn read_interface(&self, name: &str) -> Result<InterfaceState, UapiError> {
        let path = self.socket_path(name);
        let mut buffer = self.buffer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let read = self.read_reply(name, &path, &mut buffer);
        // Whatever happened, what is left of the reply (wireguard-go's private key) goes now.
        buffer.wipe();
        drop(buffer);
        wipe_stack();
        let (pid, mut state) = read?;
        if state.implementation == Implementation::Boringtun {
            self.remember_handshakes(pid, &mut state);
        }
        Ok(state)
    }
}

impl Uapi {
    /// Fills in the handshakes boringtun forgot with the ones it reported before, and keeps
    /// those it reports now.
    fn remember_handshakes(&self, pid: Option<u32>, state: &mut InterfaceState) {
        let mut remembered =
            self.remembered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = remembered
            .remove(&state.name)
            .filter(|before| before.pid == pid)
            .map(|before| before.handshakes)
            .unwrap_or_default();
        let mut now = HashMap::with_capacity(state.peers.len());
        for peer in &mut state.peers {
            peer.last_handshake =
                peer.last_handshake.or_else(|| before.get(&peer.public_key).copied());
            if let Some(at) = peer.last_handshake {
                now.insert(peer.public_key, at);
            }
        }
        remembered.insert(state.name.clone(), Remembered { pid, handshakes: now });
    }
}

/// The process at the other end of `stream`: the one that listens on the socket, by
/// `SO_PEERCRED`; `None` when this pid namespace does not see it.
fn peer_pid(stream: &UnixStream) -> Option<u32> {
    // libc: rustix's `socket_peercred` holds the pid as a non-zero `Pid`, and the kernel
    // reports 0 for a process outside this pid namespace.
    let mut credentials = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut length = libc::socklen_t::try_from(size_of::<libc::ucred>()).ok()?;
    // SAFETY: the buffer and its length describe `credentials`, which outlives the call.
    let read = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut credentials).cast(),
            &raw mut length,
        )
    };
    if read != 0 {
        return None;
    }
    u32::try_from(credentials.pid).ok().filter(|&pid| pid != 0)
}

/// The userspace implementation process `pid` runs, from its name (`/proc/PID/comm`, which
/// anyone may read); `None` for a process of another name or one that is gone.
fn implementation_of(pid: u32) -> Option<Implementation> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Implementation::of_process_name(comm.trim_end())
}

/// Parses the reply to a UAPI `get=1` request for interface `name`, answered by `process`
/// (the implementation of the process behind the socket; [`Implementation::Userspace`] when it
/// could not be identified) at `now`.
///
/// Unknown keys are ignored, so newer implementations still parse. A peer whose public key
/// appears a second time is merged into the first: later values replace earlier ones and
/// allowed IPs are appended. The reply must end with an `errno=N` line; anything after it is
/// ignored.
///
/// What differs between implementations:
/// - wireguard-go writes `private_key` (the public key is derived from it), boringtun
///   `own_public_key`; a reply with `own_public_key` from a process not identified is
///   boringtun's.
/// - wireguard-go writes the last handshake as a UNIX time, `0`/`0` for never; boringtun writes
///   the time elapsed since it, and no handshake lines at all for never (or once the session
///   expired).
/// - boringtun leaves out `listen_port` 0, `fwmark` 0, `protocol_version`, and an unset
///   `preshared_key` and `persistent_keepalive_interval`.
pub fn parse_get_reply(
    name: &str,
    reply: &str,
    process: Implementation,
    now: SystemTime,
) -> Result<InterfaceState, UapiError> {
    let peers = memchr::memmem::find_iter(reply.as_bytes(), b"\npublic_key=").count();
    let mut parsed = Reply::new(name, process, peers);
    for (index, line) in reply.lines().enumerate() {
        if line.is_empty() || parsed.line(index + 1, line)? == Flow::Done {
            break;
        }
    }
    parsed.finish(now)
}

/// Whether a reply goes on after a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// More lines may follow.
    More,
    /// The `errno` line: the reply is complete.
    Done,
}

/// A `get=1` reply being parsed.
#[derive(Debug)]
struct Reply {
    interface: InterfaceState,
    /// The handshake lines of each peer, in the order of `interface.peers`.
    handshakes: Vec<Handshake>,
    peer_index: FastMap<PublicKey, usize>,
    /// The peer the lines now describe.
    current: Option<usize>,
    errno: Option<i32>,
}

impl Reply {
    /// A reply about `peers` peers (as many as its `public_key` lines: a hint, so that a
    /// gateway's thousands of peers are not copied again as the lists grow).
    fn new(name: &str, process: Implementation, peers: usize) -> Self {
        Self {
            interface: InterfaceState {
                name: name.to_owned(),
                implementation: process,
                public_key: None,
                listen_port: None,
                fwmark: None,
                peers: Vec::with_capacity(peers),
            },
            handshakes: Vec::with_capacity(peers),
            peer_index: FastMap::with_capacity_and_hasher(peers, Default::default()),
            current: None,
            errno: None,
        }
    }

    /// Takes line `line_number`.
    fn line(&mut self, line_number: usize, line: &str) -> Result<Flow, UapiError> {
        let garbled = |reason: String| UapiError::Garbled { line: line_number, reason };
        // memchr: `split_once('=')` searches for a char, a tenth of the parse at 1,000 peers.
        let Some((key, value)) =
            memchr::memchr(b'=', line.as_bytes()).map(|at| (&line[..at], &line[at + 1..]))
        else {
            // The line may be a secret that lost its '=': never quote it.
            return Err(garbled("expected key=value".to_owned()));
        };
        let invalid = |what: &str| garbled(format!("{key}: {what}: {:?}", quote(value)));
        let interface = &mut self.interface;
        match key {
            // Secrets: checked for shape, never quoted, never stored.
            "private_key" | "preshared_key" if !is_hex_key(value) => {
                return Err(garbled(format!("{key}: not 64 hex digits")));
            }
            "private_key" => interface.public_key = PublicKey::of_private_hex(value),
            "preshared_key" => {}
            "own_public_key" => {
                let key = PublicKey::from_hex(value).ok_or_else(|| invalid("not 64 hex digits"))?;
                interface.public_key = Some(key);
                if interface.implementation == Implementation::Userspace {
                    interface.implementation = Implementation::Boringtun;
                }
            }
            "listen_port" => {
                let port: u16 = value.parse().map_err(|_| invalid("not a port"))?;
                interface.listen_port = (port != 0).then_some(port);
            }
            "fwmark" => {
                let mark: u32 = value.parse().map_err(|_| invalid("not a 32-bit mark"))?;
                interface.fwmark = (mark != 0).then_some(mark);
            }
            "public_key" => {
                let key = PublicKey::from_hex(value).ok_or_else(|| invalid("not 64 hex digits"))?;
                self.current = Some(self.peer(key));
            }
            "errno" => {
                self.errno = Some(value.parse::<i32>().map_err(|_| invalid("not a number"))?);
                return Ok(Flow::Done);
            }
            "endpoint"
            | "last_handshake_time_sec"
            | "last_handshake_time_nsec"
            | "tx_bytes"
            | "rx_bytes"
            | "persistent_keepalive_interval"
            | "allowed_ip" => {
                let (Some(peer), Some(handshake)) = (
                    self.current.and_then(|position| interface.peers.get_mut(position)),
                    self.current.and_then(|position| self.handshakes.get_mut(position)),
                ) else {
                    return Err(garbled(format!("{key} before any public_key")));
                };
                peer_line(peer, handshake, key, value, line_number).map_err(invalid)?;
            }
            // protocol_version and keys from newer implementations.
            _ => {}
        }
        Ok(Flow::More)
    }

    /// The position of the peer `key`, added when new.
    fn peer(&mut self, key: PublicKey) -> usize {
        let peers = &mut self.interface.peers;
        let handshakes = &mut self.handshakes;
        *self.peer_index.entry(key).or_insert_with(|| {
            peers.push(PeerState {
                public_key: key,
                endpoint: None,
                allowed_ips: Vec::new(),
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                persistent_keepalive: None,
            });
            handshakes.push(Handshake::default());
            peers.len() - 1
        })
    }

    /// The interface, once the reply ended with `errno=0`.
    fn finish(mut self, now: SystemTime) -> Result<InterfaceState, UapiError> {
        match self.errno {
            None => Err(UapiError::Truncated),
            Some(0) => {
                let since = self.interface.implementation == Implementation::Boringtun;
                for (peer, handshake) in self.interface.peers.iter_mut().zip(&self.handshakes) {
                    peer.last_handshake =
                        if since { handshake.since(now)? } else { handshake.unix_time()? };
                }
                Ok(self.interface)
            }
            Some(errno) => Err(UapiError::Errno { errno }),
        }
    }
}

/// Takes one line about `peer`; on a bad value, what is wrong with it.
fn peer_line(
    peer: &mut PeerState,
    handshake: &mut Handshake,
    key: &str,
    value: &str,
    line_number: usize,
) -> Result<(), &'static str> {
    match key {
        "endpoint" => peer.endpoint = Some(parse_endpoint(value).ok_or("not ip:port")?),
        "last_handshake_time_sec" => {
            handshake.seconds = Some(value.parse().map_err(|_| "not seconds")?);
            handshake.line = line_number;
        }
        "last_handshake_time_nsec" => {
            let nanos: u32 = value.parse().map_err(|_| "not nanoseconds")?;
            if nanos >= 1_000_000_000 {
                return Err("nanoseconds out of range");
            }
            handshake.nanos = nanos;
        }
        "tx_bytes" => peer.tx_bytes = value.parse().map_err(|_| "not bytes")?,
        "rx_bytes" => peer.rx_bytes = value.parse().map_err(|_| "not bytes")?,
        "persistent_keepalive_interval" => {
            let interval: u16 = value.parse().map_err(|_| "not 16-bit seconds")?;
            peer.persistent_keepalive = (interval != 0).then_some(interval);
        }
        _ => peer.allowed_ips.push(parse_allowed_ip(value).ok_or("not addr/cidr")?),
    }
    Ok(())
}

/// A peer's last handshake as the two UAPI lines give it.
#[derive(Clone, Copy, Debug, Default)]
struct Handshake {
    /// `last_handshake_time_sec`; `None` when the reply has no such line.
    seconds: Option<u64>,
    /// `last_handshake_time_nsec`, below one billion.
    nanos: u32,
    /// Line of `last_handshake_time_sec`, for errors.
    line: usize,
}

impl Handshake {
    /// The handshake time when the lines are a UNIX time (the reference protocol, as
    /// wireguard-go and the kernel write it); `None` for 0/0 (or no lines), which means never.
    fn unix_time(self) -> Result<Option<SystemTime>, UapiError> {
        let seconds = self.seconds.unwrap_or(0);
        if seconds == 0 && self.nanos == 0 {
            return Ok(None);
        }
        SystemTime::UNIX_EPOCH
            .checked_add(Duration::new(seconds, self.nanos))
            .map(Some)
            .ok_or_else(|| self.out_of_range(seconds))
    }

    /// The handshake time when the lines are the time elapsed since it, as boringtun writes
    /// them; `None` without lines, which means no current session.
    fn since(self, now: SystemTime) -> Result<Option<SystemTime>, UapiError> {
        let Some(seconds) = self.seconds else { return Ok(None) };
        now.checked_sub(Duration::new(seconds, self.nanos))
            .map(Some)
            .ok_or_else(|| self.out_of_range(seconds))
    }

    fn out_of_range(self, seconds: u64) -> UapiError {
        UapiError::Garbled {
            line: self.line,
            reason: format!("last_handshake_time_sec: out of range: {seconds}"),
        }
    }
}

/// Whether `value` has the shape of a key: 64 hex digits.
fn is_hex_key(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// The start of `value`, short enough for an error message.
fn quote(value: &str) -> String {
    let mut chars = value.chars();
    let mut quoted: String = chars.by_ref().take(MAX_QUOTED_VALUE_CHARS).collect();
    if chars.next().is_some() {
        quoted.push('…');
    }
    quoted
}

/// `1.2.3.4:51820`, `[fd00::1]:51820` or `[fe80::1%eth0]:51820` (the zone is resolved to a
/// scope id when it is a number or a local interface name, else dropped).
fn parse_endpoint(value: &str) -> Option<SocketAddr> {
    if let Ok(endpoint) = value.parse() {
        return Some(endpoint);
    }
    let (address, port) = value.strip_prefix('[')?.rsplit_once("]:")?;
    let (address, zone) = address.split_once('%')?;
    let mut endpoint: std::net::SocketAddrV6 = format!("[{address}]:{port}").parse().ok()?;
    let scope = zone.parse().ok().or_else(|| super::discovery::ifindex(zone)).unwrap_or(0);
    endpoint.set_scope_id(scope);
    Some(SocketAddr::V6(endpoint))
}

/// `10.0.0.2/32` or `fd00::2/128`, with a prefix length valid for the family.
fn parse_allowed_ip(value: &str) -> Option<AllowedIp> {
    let (address, cidr) = value.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    let cidr: u8 = cidr.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    (cidr <= max).then_some(AllowedIp { address, cidr })
}

/// Why a userspace interface could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    /// The socket belongs to root and this process is not root: wireguard-go and boringtun
    /// make their sockets `0700 root`.
    #[error(
        "no permission to open the UAPI socket {} (userspace WireGuard makes it 0700 root: run \
         wgtel as root with its capabilities cut to CAP_BPF CAP_NET_ADMIN CAP_PERFMON, as the \
         README's systemd unit does)",
        path.display()
    )]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket is missing (no such userspace interface) or could not be opened.
    #[error("cannot connect to the UAPI socket {}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why connecting failed.
        source: io::Error,
    },
    /// Sending the request or reading the reply failed.
    #[error("UAPI socket {}: {source}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The implementation did not answer completely in time.
    #[error("no complete reply from the UAPI socket {} within {timeout:?}", path.display())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The time allowed.
        timeout: Duration,
    },
    /// The reply exceeded the size limit.
    #[error("reply from the UAPI socket {} exceeds {limit} bytes", path.display())]
    TooLarge {
        /// The socket path.
        path: PathBuf,
        /// The limit in bytes.
        limit: usize,
    },
    /// A line of the reply is not what the protocol allows. Never quotes key material.
    #[error("garbled UAPI reply at line {line}: {reason}")]
    Garbled {
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The implementation refused the request.
    #[error("UAPI request failed with errno {errno}")]
    Errno {
        /// The `errno=` value.
        errno: i32,
    },
    /// The reply ended without its `errno=` line.
    #[error("UAPI reply ended without an errno line")]
    Truncated,
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        os::unix::net::UnixListener,
        sync::atomic::{AtomicUsize, Ordering},
        thread,
    };

    use super::*;

    #[test]
    fn a_growing_reply_keeps_every_byte_in_order_and_is_wiped_after() {
        let mut buffer = ReplyBuffer::default();
        let mut expected = Vec::new();
        for round in 0..50u16 {
            // Pieces of up to 49 KiB: the buffer grows several times past READ_ROOM.
            let piece: Vec<u8> =
                (0..round * 1024).map(|i| (i as u8).wrapping_mul(round as u8)).collect();
            let room = buffer.room();
            assert!(room.len() >= READ_ROOM);
            room[..piece.len()].copy_from_slice(&piece);
            buffer.filled += piece.len();
            expected.extend_from_slice(&piece);
        }
        assert_eq!(buffer.reply(), expected.as_slice());
        let size = buffer.bytes.len();
        buffer.wipe();
        assert_eq!(buffer.reply(), b"");
        assert!(buffer.bytes.iter().all(|&byte| byte == 0));
        // The allocation stays for the next reply.
        assert_eq!(buffer.bytes.len(), size);
        assert_eq!(buffer.room().len(), size);
    }

    const PRIVATE_KEY_HEX: &str =
        "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
    const PRESHARED_KEY_HEX: &str =
        "188515093e952f5f22e865cef3012e72f8b5f0b598ac0309d5dacce3b70fcf52";
    const PEER_A_HEX: &str = "b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33";
    const PEER_B_HEX: &str = "58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376";
    /// Public keys of the lab run whose replies the tests below quote.
    const LAB_BORINGTUN_HEX: &str =
        "080958e7f6dde4593af8d8d2c71da404b9a42a1c35b2b2d102c210cfbc69a82b";
    const LAB_WIREGUARD_GO_HEX: &str =
        "9e41c9b6427d8d4efc2b1895b5bddddc12e1d75b771c5face85ce83093a9e564";
    const LAB_NEVER_HEX: &str = "fa623849f04ef4c2c528f6390cd2badbd511f2a2dfd0dc02432547df3c0a151c";

    fn realistic_reply() -> String {
        format!(
            "private_key={PRIVATE_KEY_HEX}\n\
             listen_port=51820\n\
             fwmark=0\n\
             public_key={PEER_A_HEX}\n\
             preshared_key={PRESHARED_KEY_HEX}\n\
             protocol_version=1\n\
             endpoint=192.0.2.1:51820\n\
             last_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=500\n\
             tx_bytes=1024\n\
             rx_bytes=2048\n\
             persistent_keepalive_interval=25\n\
             allowed_ip=10.0.0.2/32\n\
             allowed_ip=192.168.10.0/24\n\
             public_key={PEER_B_HEX}\n\
             preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
             protocol_version=1\n\
             endpoint=[fd00::1]:51821\n\
             last_handshake_time_sec=0\n\
             last_handshake_time_nsec=0\n\
             tx_bytes=0\n\
             rx_bytes=0\n\
             persistent_keepalive_interval=0\n\
             allowed_ip=fd00::2/128\n\
             allowed_ip=10.0.0.3/32\n\
             errno=0\n\n"
        )
    }

    /// The reply parsed as one from a process not identified, in the reference protocol.
    fn parse(name: &str, reply: &str) -> Result<InterfaceState, UapiError> {
        parse_get_reply(name, reply, Implementation::Userspace, SystemTime::now())
    }

    fn key(hex: &str) -> PublicKey {
        PublicKey::from_hex(hex).expect("test key is valid hex")
    }

    /// Every form the test secrets could leak in.
    fn secret_forms() -> Vec<String> {
        let mut forms = Vec::new();
        for hex in [PRIVATE_KEY_HEX, PRESHARED_KEY_HEX] {
            forms.push(hex.to_owned());
            forms.push(key(hex).to_string());
            forms.push(format!("{:?}", key(hex).0));
            forms.push(hex.get(..16).unwrap_or_default().to_owned());
        }
        forms
    }

    fn assert_no_secret(debug: &str) {
        for secret in secret_forms() {
            assert!(!debug.contains(&secret), "secret {secret} leaked into {debug}");
        }
    }

    #[test]
    fn parses_realistic_reply_with_two_peers() {
        let state = parse("wg0", &realistic_reply()).expect("valid reply");
        let expected = InterfaceState {
            name: "wg0".to_owned(),
            implementation: Implementation::Userspace,
            // What `wg pubkey` derives from PRIVATE_KEY_HEX.
            public_key: Some(key(
                "c1532e1b3d3508fc7ebc354fa679620f33f287149542e684c67b7b0d81362b29",
            )),
            listen_port: Some(51820),
            fwmark: None,
            peers: vec![
                PeerState {
                    public_key: key(PEER_A_HEX),
                    endpoint: Some(SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 51820))),
                    allowed_ips: vec![
                        AllowedIp { address: Ipv4Addr::new(10, 0, 0, 2).into(), cidr: 32 },
                        AllowedIp { address: Ipv4Addr::new(192, 168, 10, 0).into(), cidr: 24 },
                    ],
                    last_handshake: Some(
                        SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 500),
                    ),
                    rx_bytes: 2048,
                    tx_bytes: 1024,
                    persistent_keepalive: Some(25),
                },
                PeerState {
                    public_key: key(PEER_B_HEX),
                    endpoint: Some(SocketAddr::from((
                        "fd00::1".parse::<Ipv6Addr>().expect("valid"),
                        51821,
                    ))),
                    allowed_ips: vec![
                        AllowedIp { address: "fd00::2".parse().expect("valid"), cidr: 128 },
                        AllowedIp { address: Ipv4Addr::new(10, 0, 0, 3).into(), cidr: 32 },
                    ],
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: None,
                },
            ],
        };
        assert_eq!(state, expected);
    }

    #[test]
    fn empty_interface_parses() {
        let state = parse("wg1", "errno=0\n\n").expect("valid reply");
        assert!(state.peers.is_empty());
        assert_eq!(state.listen_port, None);
    }

    #[test]
    fn repeated_peer_is_merged() {
        let reply = format!(
            "public_key={PEER_A_HEX}\nallowed_ip=10.0.0.2/32\ntx_bytes=1\n\
             public_key={PEER_B_HEX}\n\
             public_key={PEER_A_HEX}\nallowed_ip=10.0.0.4/32\ntx_bytes=2\nerrno=0\n\n"
        );
        let state = parse("wg0", &reply).expect("valid reply");
        assert_eq!(state.peers.len(), 2);
        let first = state.peers.first().expect("two peers");
        assert_eq!(first.public_key, key(PEER_A_HEX));
        assert_eq!(first.allowed_ips.len(), 2);
        assert_eq!(first.tx_bytes, 2);
    }

    #[test]
    fn zoned_ipv6_endpoint_parses() {
        let endpoint = parse_endpoint("[fe80::1%7]:51820").expect("zoned endpoint");
        let SocketAddr::V6(endpoint) = endpoint else { panic!("not v6: {endpoint}") };
        assert_eq!(endpoint.scope_id(), 7);
        assert_eq!(endpoint.port(), 51820);
    }

    #[test]
    fn nonzero_errno_is_an_error() {
        let error = parse("wg0", "errno=19\n\n").expect_err("errno 19");
        assert!(matches!(error, UapiError::Errno { errno: 19 }), "{error:?}");
    }

    #[test]
    fn reply_without_errno_is_truncated() {
        let reply = realistic_reply();
        let cut = reply.get(..reply.len() - "errno=0\n\n".len()).expect("in bounds");
        let error = parse("wg0", cut).expect_err("no errno");
        assert!(matches!(error, UapiError::Truncated), "{error:?}");
        let error = parse("wg0", "").expect_err("empty");
        assert!(matches!(error, UapiError::Truncated), "{error:?}");
    }

    #[test]
    fn garbled_lines_are_rejected_with_their_line_number() {
        let cases = [
            (format!("public_key={}\nerrno=0\n", "zz".repeat(32)), 1),
            (format!("public_key={PEER_A_HEX}\nallowed_ip=10.0.0.1/33\nerrno=0\n"), 2),
            (format!("public_key={PEER_A_HEX}\nallowed_ip=fd00::1/129\nerrno=0\n"), 2),
            (format!("public_key={PEER_A_HEX}\nallowed_ip=10.0.0.1\nerrno=0\n"), 2),
            ("listen_port=51820\nthis line has no equals sign\nerrno=0\n".to_owned(), 2),
            ("listen_port=70000\nerrno=0\n".to_owned(), 1),
            ("tx_bytes=1\nerrno=0\n".to_owned(), 1),
            (format!("public_key={PEER_A_HEX}\nendpoint=nowhere\nerrno=0\n"), 2),
            (format!("public_key={PEER_A_HEX}\nlast_handshake_time_nsec=1000000000\nerrno=0\n"), 2),
            ("errno=zero\n".to_owned(), 1),
        ];
        for (reply, expected_line) in cases {
            match parse("wg0", &reply) {
                Err(UapiError::Garbled { line, .. }) => assert_eq!(line, expected_line, "{reply}"),
                other => panic!("{reply:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn long_values_are_cut_in_errors() {
        let reply = format!("listen_port={}\nerrno=0\n", "9".repeat(1000));
        let error = parse("wg0", &reply).expect_err("bad port");
        assert!(error.to_string().len() < 200, "{error}");
    }

    #[test]
    fn secrets_never_appear_in_results_or_errors() {
        let ok = parse("wg0", &realistic_reply());
        assert!(ok.is_ok());
        assert_no_secret(&format!("{ok:?}"));

        let garbled_secrets = [
            // A garbled private key: one digit too many, one too few, non-hex.
            format!("private_key={PRIVATE_KEY_HEX}0\nerrno=0\n"),
            format!("private_key={}\nerrno=0\n", PRIVATE_KEY_HEX.get(1..).unwrap_or_default()),
            format!("private_key=x{PRIVATE_KEY_HEX}\nerrno=0\n"),
            format!("public_key={PEER_A_HEX}\npreshared_key={PRESHARED_KEY_HEX}z\nerrno=0\n"),
            // A secret line that lost its '='.
            format!("private_key{PRIVATE_KEY_HEX}\nerrno=0\n"),
            // A good secret followed by an error elsewhere, and a failing errno.
            format!("private_key={PRIVATE_KEY_HEX}\nlisten_port=x\nerrno=0\n"),
            format!("private_key={PRIVATE_KEY_HEX}\npreshared_key={PRESHARED_KEY_HEX}\nerrno=1\n"),
            format!("private_key={PRIVATE_KEY_HEX}\n"),
        ];
        for reply in garbled_secrets {
            let result = parse("wg0", &reply);
            assert!(result.is_err(), "{reply}");
            assert_no_secret(&format!("{result:?}"));
            if let Err(error) = result {
                assert_no_secret(&error.to_string());
            }
        }
    }

    /// What boringtun-cli 0.7.1 answered in the lab 2.22 s after a handshake with its first
    /// peer (a wireguard-go-current), with a second peer never reached (preshared key and
    /// keepalive set): `own_public_key`, no `protocol_version`, handshake lines only for the
    /// first peer, and they hold the time since the handshake. The preshared key is the test's.
    fn boringtun_reply() -> String {
        format!(
            "own_public_key={LAB_BORINGTUN_HEX}\n\
             listen_port=51820\n\
             public_key={LAB_WIREGUARD_GO_HEX}\n\
             endpoint=198.18.250.2:51820\n\
             allowed_ip=198.19.250.2/32\n\
             allowed_ip=fd00:19:0:250::2/128\n\
             last_handshake_time_sec=2\n\
             last_handshake_time_nsec=220151807\n\
             rx_bytes=252\n\
             tx_bytes=252\n\
             public_key={LAB_NEVER_HEX}\n\
             preshared_key={PRESHARED_KEY_HEX}\n\
             persistent_keepalive_interval=25\n\
             endpoint=[fd00::3]:51820\n\
             allowed_ip=198.19.250.3/32\n\
             rx_bytes=0\n\
             tx_bytes=0\n\
             errno=0\n\n"
        )
    }

    /// What Debian trixie's wireguard-go (0.0.20231211) answered at the other end of the same
    /// tunnel: the handshake as a UNIX time. The private key is the test's.
    fn wireguard_go_reply() -> String {
        format!(
            "private_key={PRIVATE_KEY_HEX}\n\
             listen_port=51820\n\
             public_key={LAB_BORINGTUN_HEX}\n\
             preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
             protocol_version=1\n\
             endpoint=198.18.250.1:51820\n\
             last_handshake_time_sec=1796103876\n\
             last_handshake_time_nsec=380814845\n\
             tx_bytes=564\n\
             rx_bytes=440\n\
             persistent_keepalive_interval=25\n\
             allowed_ip=198.19.250.0/24\n\
             errno=0\n\n"
        )
    }

    /// When boringtun's reply was read.
    fn lab_now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(1_796_103_878, 330_242_002)
    }

    #[test]
    fn boringtuns_reply_has_its_own_key_and_the_time_since_the_handshake() {
        let state =
            parse_get_reply("wgt250a", &boringtun_reply(), Implementation::Boringtun, lab_now())
                .expect("valid reply");
        let expected = InterfaceState {
            name: "wgt250a".to_owned(),
            implementation: Implementation::Boringtun,
            public_key: Some(key(LAB_BORINGTUN_HEX)),
            listen_port: Some(51820),
            fwmark: None,
            peers: vec![
                PeerState {
                    public_key: key(LAB_WIREGUARD_GO_HEX),
                    endpoint: Some(SocketAddr::from((Ipv4Addr::new(198, 18, 250, 2), 51820))),
                    allowed_ips: vec![
                        AllowedIp { address: Ipv4Addr::new(198, 19, 250, 2).into(), cidr: 32 },
                        AllowedIp {
                            address: "fd00:19:0:250::2".parse().expect("valid"),
                            cidr: 128,
                        },
                    ],
                    // 2.220151807 s before the reply was read.
                    last_handshake: Some(
                        SystemTime::UNIX_EPOCH + Duration::new(1_796_103_876, 110_090_195),
                    ),
                    rx_bytes: 252,
                    tx_bytes: 252,
                    persistent_keepalive: None,
                },
                PeerState {
                    public_key: key(LAB_NEVER_HEX),
                    endpoint: Some("[fd00::3]:51820".parse().expect("valid")),
                    allowed_ips: vec![AllowedIp {
                        address: Ipv4Addr::new(198, 19, 250, 3).into(),
                        cidr: 32,
                    }],
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: Some(25),
                },
            ],
        };
        assert_eq!(state, expected);
        assert_no_secret(&format!("{state:?}"));
    }

    #[test]
    fn wireguard_gos_reply_has_the_handshakes_unix_time() {
        let reply = wireguard_go_reply();
        let state = parse_get_reply("wgt250b", &reply, Implementation::WireguardGo, lab_now())
            .expect("valid reply");
        assert_eq!(state.implementation, Implementation::WireguardGo);
        // What `wg pubkey` derives from PRIVATE_KEY_HEX.
        let derived = "c1532e1b3d3508fc7ebc354fa679620f33f287149542e684c67b7b0d81362b29";
        assert_eq!(state.public_key, Some(key(derived)));
        let peer = state.peers.first().expect("one peer");
        assert_eq!(state.peers.len(), 1);
        assert_eq!(peer.public_key, key(LAB_BORINGTUN_HEX));
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_796_103_876, 380_814_845);
        assert_eq!(peer.last_handshake, Some(at));
        assert_eq!((peer.rx_bytes, peer.tx_bytes, peer.persistent_keepalive), (440, 564, Some(25)));
        assert_no_secret(&format!("{state:?}"));
    }

    #[test]
    fn the_same_handshake_line_is_a_time_for_wireguard_go_and_an_age_for_boringtun() {
        let reply = format!(
            "public_key={PEER_A_HEX}\nlast_handshake_time_sec=2\nlast_handshake_time_nsec=0\n\
             errno=0\n\n"
        );
        let handshake = |process| {
            let state = parse_get_reply("wg0", &reply, process, lab_now()).expect("valid");
            state.peers.first().and_then(|peer| peer.last_handshake)
        };
        // 2 s after 1970 for wireguard-go (a handshake 57 years ago if boringtun had said it).
        assert_eq!(
            handshake(Implementation::WireguardGo),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2))
        );
        assert_eq!(handshake(Implementation::Boringtun), Some(lab_now() - Duration::from_secs(2)));
        // An implementation not identified speaks the reference protocol.
        assert_eq!(
            handshake(Implementation::Userspace),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2))
        );
    }

    #[test]
    fn own_public_key_names_boringtun_when_the_process_does_not() {
        let state =
            parse_get_reply("wgt250a", &boringtun_reply(), Implementation::Userspace, lab_now())
                .expect("valid reply");
        assert_eq!(state.implementation, Implementation::Boringtun);
        let at = state.peers.first().and_then(|peer| peer.last_handshake);
        assert_eq!(at, Some(lab_now() - Duration::new(2, 220_151_807)));
        // The process, when known, is believed.
        let state =
            parse_get_reply("wgt250b", &wireguard_go_reply(), Implementation::Userspace, lab_now())
                .expect("valid reply");
        assert_eq!(state.implementation, Implementation::Userspace);
    }

    #[test]
    fn boringtuns_forgotten_handshakes_are_remembered_per_process() {
        let uapi = Uapi::with_socket_dir(PathBuf::from("/nonexistent"));
        let read = |pid, handshake: Option<SystemTime>| {
            let mut state = parse_get_reply(
                "wgt250a",
                &boringtun_reply(),
                Implementation::Boringtun,
                lab_now(),
            )
            .expect("valid reply");
            state.peers.truncate(1);
            if let Some(peer) = state.peers.first_mut() {
                peer.last_handshake = handshake;
            }
            uapi.remember_handshakes(pid, &mut state);
            state.peers.first().and_then(|peer| peer.last_handshake)
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_103_000);
        assert_eq!(read(Some(7), Some(at)), Some(at));
        // The session expired: boringtun prints no handshake lines any more.
        assert_eq!(read(Some(7), None), Some(at));
        assert_eq!(read(Some(7), None), Some(at));
        // A newer handshake replaces it.
        let later = at + Duration::from_secs(120);
        assert_eq!(read(Some(7), Some(later)), Some(later));
        // Another process (boringtun restarted) never had a handshake with the peer.
        assert_eq!(read(Some(8), None), None);
        assert_eq!(read(Some(7), None), None);
    }

    #[test]
    fn the_process_behind_a_socket_is_found_and_named() {
        let dir = temp_socket_dir();
        let path = dir.join("wgpeer.sock");
        let _listener = UnixListener::bind(&path).expect("bind");
        let stream = UnixStream::connect(&path).expect("connect");
        assert_eq!(peer_pid(&stream), Some(std::process::id()));
        // This test's own process is no WireGuard.
        assert_eq!(implementation_of(std::process::id()), None);
        std::fs::remove_dir_all(dir).expect("cleanup");
        for (comm, expected) in [
            ("wireguard-go", Some(Implementation::WireguardGo)),
            // comm holds 15 bytes of `wireguard-go-current`.
            ("wireguard-go-cu", Some(Implementation::WireguardGo)),
            ("boringtun-cli", Some(Implementation::Boringtun)),
            ("boringtun", Some(Implementation::Boringtun)),
            ("wg-quick", None),
        ] {
            assert_eq!(Implementation::of_process_name(comm), expected, "{comm}");
        }
    }

    /// A socket directory of its own for one test.
    fn temp_socket_dir() -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wgtel-uapi-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    /// Serves one connection on `<dir>/<name>.sock`: reads the request, then runs `answer`.
    fn serve_once(
        dir: &Path,
        name: &str,
        answer: impl FnOnce(UnixStream) + Send + 'static,
    ) -> thread::JoinHandle<()> {
        let listener = UnixListener::bind(dir.join(format!("{name}.sock"))).expect("bind");
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0u8; 7];
            stream.read_exact(&mut request).expect("read request");
            assert_eq!(&request, b"get=1\n\n");
            answer(stream);
        })
    }

    #[test]
    fn reads_from_a_fake_server() {
        let dir = temp_socket_dir();
        let server = serve_once(&dir, "wgfake0", |mut stream| {
            // Written in two parts, the terminator split across them.
            let reply = realistic_reply();
            let (first, second) = reply.split_at(reply.len() - 1);
            stream.write_all(first.as_bytes()).expect("write");
            stream.flush().expect("flush");
            thread::sleep(Duration::from_millis(20));
            stream.write_all(second.as_bytes()).expect("write");
            // Keep the connection open: the client must stop at the empty line.
            thread::sleep(Duration::from_millis(500));
        });
        let uapi = Uapi::with_socket_dir(dir.clone());
        let started = Instant::now();
        let state = uapi.read_interface("wgfake0").expect("read");
        assert!(started.elapsed() < Duration::from_millis(400));
        assert_eq!(state, parse("wgfake0", &realistic_reply()).expect("valid"));
        server.join().expect("server");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_gateways_reply_is_parsed_as_it_arrives_in_a_small_buffer() {
        let dir = temp_socket_dir();
        let mut reply = format!("private_key={PRIVATE_KEY_HEX}\nlisten_port=51820\n");
        for peer in 0..20_000_u32 {
            let key = format!("{peer:064x}");
            reply.push_str(&format!(
                "public_key={key}\nendpoint=198.18.{}.{}:51820\nlast_handshake_time_sec=0\n\
                 last_handshake_time_nsec=0\ntx_bytes={peer}\nrx_bytes=7\n\
                 persistent_keepalive_interval=0\nallowed_ip=fd00::{peer:x}/128\n",
                peer / 250,
                peer % 250
            ));
        }
        reply.push_str("errno=0\n\n");
        assert!(reply.len() > 4 * 1024 * 1024, "{} bytes", reply.len());
        let server = serve_once(&dir, "wgbig0", move |mut stream| {
            stream.write_all(reply.as_bytes()).expect("write");
        });
        let uapi = Uapi::with_socket_dir(dir.clone());
        let state = uapi.read_interface("wgbig0").expect("read");
        assert_eq!(state.peers.len(), 20_000);
        assert_eq!(state.peers[19_999].tx_bytes, 19_999);
        assert_eq!(state.peers[19_999].allowed_ips[0].to_string(), "fd00::4e1f/128");
        let buffer = uapi.buffer.lock().expect("the buffer");
        // A read's room and the start of a line, not the reply.
        assert!(buffer.bytes.len() <= 2 * READ_ROOM, "{} bytes", buffer.bytes.len());
        assert!(buffer.bytes.iter().all(|&byte| byte == 0));
        drop(buffer);
        server.join().expect("server");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn inside_a_root_links_resolve_inside_it_and_none_leads_out() {
        let root = temp_socket_dir();
        let dir = root.join("run/wireguard");
        std::fs::create_dir_all(&dir).expect("the directory");
        std::fs::create_dir_all(root.join("var")).expect("var");
        std::os::unix::fs::symlink("/run", root.join("var/run")).expect("var/run -> /run");
        // A socket outside the root, and a link to it inside: never followed out.
        let outside = temp_socket_dir();
        let _host = UnixListener::bind(outside.join("host.sock")).expect("bind");
        std::os::unix::fs::symlink(outside.join("host.sock"), dir.join("wgesc.sock"))
            .expect("link");
        let server = serve_once(&dir, "wgroot0", |mut stream| {
            stream.write_all(realistic_reply().as_bytes()).expect("write");
        });
        let uapi = Uapi::in_root(root.clone());
        assert!(uapi.has_socket("wgroot0"));
        assert!(!uapi.has_socket("wgesc"));
        assert!(!uapi.has_socket("wgnone"));
        let state = uapi.read_interface("wgroot0").expect("read through /var/run -> /run");
        assert_eq!(state, parse("wgroot0", &realistic_reply()).expect("valid"));
        server.join().expect("server");
        let error = uapi.read_interface("wgesc").expect_err("out of the root");
        assert!(matches!(error, UapiError::Connect { .. }), "{error:?}");
        std::fs::remove_dir_all(root).expect("cleanup");
        std::fs::remove_dir_all(outside).expect("cleanup");
    }

    #[test]
    fn missing_socket_is_a_connect_error() {
        let dir = temp_socket_dir();
        let error = Uapi::with_socket_dir(dir.clone()).read_interface("wgnone").expect_err("none");
        assert!(matches!(error, UapiError::Connect { .. }), "{error:?}");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn garbage_then_close_is_an_error() {
        let dir = temp_socket_dir();
        let server = serve_once(&dir, "wgfake1", |mut stream| {
            stream.write_all(b"listen_port=1\nnonsense").expect("write");
        });
        let error = Uapi::with_socket_dir(dir.clone()).read_interface("wgfake1").expect_err("bad");
        assert!(matches!(error, UapiError::Garbled { line: 2, .. }), "{error:?}");
        server.join().expect("server");

        let server = serve_once(&dir, "wgfake2", |mut stream| {
            stream.write_all(b"listen_port=1\n").expect("write");
        });
        let error = Uapi::with_socket_dir(dir.clone()).read_interface("wgfake2").expect_err("cut");
        assert!(matches!(error, UapiError::Truncated), "{error:?}");
        server.join().expect("server");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn oversized_reply_is_refused() {
        let dir = temp_socket_dir();
        let server = serve_once(&dir, "wgfake3", |mut stream| {
            let line = format!("public_key={PEER_A_HEX}\n");
            for _ in 0..1000 {
                if stream.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
        });
        let uapi = Uapi { max_reply: 4096, ..Uapi::with_socket_dir(dir.clone()) };
        let error = uapi.read_interface("wgfake3").expect_err("too large");
        assert!(matches!(error, UapiError::TooLarge { limit: 4096, .. }), "{error:?}");
        server.join().expect("server");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn silent_server_times_out() {
        let dir = temp_socket_dir();
        let server = serve_once(&dir, "wgfake4", |stream| {
            thread::sleep(Duration::from_millis(800));
            drop(stream);
        });
        let uapi =
            Uapi { timeout: Duration::from_millis(200), ..Uapi::with_socket_dir(dir.clone()) };
        let started = Instant::now();
        let error = uapi.read_interface("wgfake4").expect_err("timeout");
        let elapsed = started.elapsed();
        assert!(matches!(error, UapiError::Timeout { .. }), "{error:?}");
        assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(700), "{elapsed:?}");
        server.join().expect("server");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn invalid_utf8_is_garbled() {
        let dir = temp_socket_dir();
        let server = serve_once(&dir, "wgfake5", |mut stream| {
            stream.write_all(b"listen_port=1\nfoo=\xff\xfe\nerrno=0\n\n").expect("write");
        });
        let error = Uapi::with_socket_dir(dir.clone()).read_interface("wgfake5").expect_err("bad");
        assert!(matches!(error, UapiError::Garbled { line: 2, .. }), "{error:?}");
        server.join().expect("server");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
