//! Other network namespaces (`--netns NAME|PATH|all`): which ones to watch, what they are
//! called, and entering them.
//!
//! # Design
//!
//! Interface indexes, the keys of every eBPF map, mean something only within one namespace
//! (two namespaces can each hold a `wg0` of index 3). So each watched namespace gets an eBPF
//! object of its own, loaded while the collector thread is inside it: its own maps (peer ids,
//! AllowedIPs trie, counters), its own tc/tcx attachments, and its own `kfree_skb` program,
//! which counts a drop only when the device's namespace (`skb->dev->nd_net.net->ns.inum`, offsets
//! from BTF) is the one it was loaded in. Counts of two namespaces never meet in a map, so they
//! stay exact however their indexes collide. A namespace whose discovery finds no WireGuard
//! interface gets no object (a host with many containers pays for those that run WireGuard),
//! and the object of a namespace other than the start one is sized for what it holds (at least
//! [`crate::ebpf::MapCapacity::for_namespace`]'s floor) rather than for a whole gateway.
//!
//! The collector thread does each namespace's work inside it ([`Namespace::enter`], `setns(2)`
//! moves only the calling thread, and [`Entered`] moves it back): netlink sockets (links,
//! generic netlink, routes), `if_nametoindex`, attaching (tcx links and clsact filters name the
//! interface by its index in the caller's namespace), `/proc/sys/net` and
//! `/proc/thread-self/net/udp` all answer for the namespace the thread is in.
//!
//! A userspace implementation's UAPI socket lives in the filesystem of the processes that run
//! it, which for a container is not the host's: the sockets of another namespace are looked
//! for in `var/run/wireguard/` inside `/proc/PID/root` for every process PID in that namespace
//! (the same directory for processes that share a root is read once). The kernel resolves those
//! paths inside the root ([`open_in_root`]: `openat2` with `RESOLVE_IN_ROOT`) and wgtel connects
//! through the descriptor it gets, so `/var/run -> /run` works and no link a container plants
//! leads wgtel to a socket of the host.
//!
//! # Names
//!
//! Every series of a namespace other than the start one carries `wireguard.netns`: the name
//! under `/run/netns` when the namespace has one, else the path given to `--netns`, else
//! (found by `all` through a process) `pid:N`, N the lowest process id in the namespace when it
//! was first seen. The label stays the same as long as wgtel watches the namespace.
//!
//! # Appearing and vanishing
//!
//! The namespaces are looked up again at every collection: one found for the first time is
//! entered and watched; one no longer found (`ip netns delete`, the container's last process
//! gone) is released: its programs detached (inside it), its object unloaded, its series gone.
//! wgtel keeps a descriptor of each namespace it watches, which keeps the namespace alive until
//! the release.

use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    io,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use rustix::{
    fs::{FileType, Mode, OFlags, ResolveFlags},
    thread::{LinkNameSpaceType, move_into_link_name_space},
};

/// Where `ip netns` keeps named namespaces.
pub const NAMED_DIR: &str = "/run/netns";

/// Where a userspace implementation puts its UAPI socket, inside its own root.
pub const UAPI_DIR_IN_ROOT: &str = "var/run/wireguard";

/// Errors of finding and entering network namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A namespace given by name or path cannot be opened.
    #[error("network namespace {spec}: cannot open {}", path.display())]
    Open {
        /// What was given to `--netns`.
        spec: String,
        /// The file opened.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `setns(2)` into a namespace failed: not a network namespace, or no `CAP_SYS_ADMIN`.
    #[error("entering network namespace {label}")]
    Enter {
        /// The namespace's label.
        label: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A directory of namespaces or processes could not be listed.
    #[error("listing {}", path.display())]
    List {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// One `--netns` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsSpec {
    /// `/run/netns/NAME`.
    Named(String),
    /// Any nsfs file, e.g. `/proc/PID/ns/net` (a value with a `/`).
    Path(PathBuf),
    /// Every named namespace and every namespace of a running process.
    All,
}

impl From<&str> for NetnsSpec {
    fn from(text: &str) -> Self {
        if text == "all" {
            Self::All
        } else if text.contains('/') {
            Self::Path(PathBuf::from(text))
        } else {
            Self::Named(text.to_owned())
        }
    }
}

impl std::fmt::Display for NetnsSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Named(name) => f.write_str(name),
            Self::Path(path) => write!(f, "{}", path.display()),
            Self::All => f.write_str("all"),
        }
    }
}

/// A network namespace found: where to open it, its identity and its label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// A file that refers to it.
    pub path: PathBuf,
    /// Its nsfs inode (`ns.inum`): the identity of a namespace.
    pub inode: u64,
    /// What its series carry as `wireguard.netns`.
    pub label: String,
}

/// An opened network namespace, kept alive while this lives.
#[derive(Debug)]
pub struct Namespace {
    handle: File,
    /// Its nsfs inode.
    pub inode: u64,
    /// Its label.
    pub label: String,
}

impl Namespace {
    /// Opens `found`; `None` when it is gone or is now another namespace.
    pub fn open(found: &Found) -> Option<Self> {
        let handle = File::open(&found.path).ok()?;
        let inode = handle.metadata().ok()?.ino();
        (inode == found.inode).then(|| Self { handle, inode, label: found.label.clone() })
    }

    /// Moves the calling thread into this namespace until the guard is dropped, when it goes
    /// back to `start`.
    pub fn enter(&self, start: &Arc<StartNamespace>) -> Result<Entered, NetnsError> {
        move_into_link_name_space(self.handle.as_fd(), Some(LinkNameSpaceType::Network)).map_err(
            |error| NetnsError::Enter { label: self.label.clone(), source: error.into() },
        )?;
        Ok(Entered { start: Arc::clone(start) })
    }
}

/// The namespace wgtel started in, to come back to.
#[derive(Debug)]
pub struct StartNamespace {
    handle: File,
    /// Its nsfs inode.
    pub inode: u64,
}

impl StartNamespace {
    /// The calling thread's namespace.
    pub fn current() -> io::Result<Self> {
        let handle = File::open("/proc/thread-self/ns/net")?;
        let inode = handle.metadata()?.ino();
        Ok(Self { handle, inode })
    }
}

/// The calling thread is in another namespace while this lives.
#[derive(Debug)]
pub struct Entered {
    start: Arc<StartNamespace>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        // A thread left in the wrong namespace would read and attach to the wrong interfaces:
        // the collector thread ends instead (and the daemon with it).
        #[expect(clippy::panic, reason = "continuing in the wrong namespace is worse")]
        if let Err(error) =
            move_into_link_name_space(self.start.handle.as_fd(), Some(LinkNameSpaceType::Network))
        {
            panic!("returning to the start network namespace failed: {error}");
        }
    }
}

/// The network namespace of every process, by nsfs inode, each with its process ids in
/// ascending order. Processes that vanish while listed, or whose namespace cannot be read, are
/// left out.
pub fn processes() -> Result<BTreeMap<u64, Vec<u32>>, NetnsError> {
    let list_error = |source| NetnsError::List { path: "/proc".into(), source };
    let mut found: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").map_err(list_error)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(metadata) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
            found.entry(metadata.ino()).or_default().push(pid);
        }
    }
    for pids in found.values_mut() {
        pids.sort_unstable();
    }
    Ok(found)
}

/// The device of the namespace filesystem (nsfs): a file of it is a namespace, a file of
/// another is not (an unmounted leftover under `/run/netns` is an empty file of the tmpfs).
fn nsfs_device() -> Result<u64, NetnsError> {
    let path = "/proc/thread-self/ns/net";
    std::fs::metadata(path)
        .map(|metadata| metadata.dev())
        .map_err(|source| NetnsError::List { path: path.into(), source })
}

/// The named namespaces: (name, nsfs inode); none when `/run/netns` does not exist.
fn named(nsfs: u64) -> Result<Vec<(String, u64)>, NetnsError> {
    let entries = match std::fs::read_dir(NAMED_DIR) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(NetnsError::List { path: NAMED_DIR.into(), source }),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if let Ok(metadata) = std::fs::metadata(entry.path())
            && metadata.dev() == nsfs
        {
            found.push((name, metadata.ino()));
        }
    }
    found.sort();
    Ok(found)
}

/// The namespace file of a `NAME` or `PATH` spec and its inode; `None` when it does not exist
/// or is no namespace, an error then when `strict`.
fn given(spec: &NetnsSpec, nsfs: u64, strict: bool) -> Result<Option<(PathBuf, u64)>, NetnsError> {
    let path = match spec {
        NetnsSpec::Named(name) => Path::new(NAMED_DIR).join(name),
        NetnsSpec::Path(path) => path.clone(),
        NetnsSpec::All => return Ok(None),
    };
    let failed = |source| NetnsError::Open { spec: spec.to_string(), path: path.clone(), source };
    match std::fs::metadata(&path) {
        Ok(metadata) if metadata.dev() == nsfs => Ok(Some((path, metadata.ino()))),
        // A file of another filesystem is never a namespace.
        Ok(_) if strict => {
            Err(failed(io::Error::new(io::ErrorKind::InvalidInput, "not a namespace file")))
        }
        Err(source) if strict => Err(failed(source)),
        Ok(_) | Err(_) => Ok(None),
    }
}

/// Every namespace `specs` stand for now, but the start namespace (`start`): each once, by
/// inode. `processes` is [`processes`]'s answer. A namespace given by name or path that cannot
/// be opened is an error only when `strict` (at start); later it has vanished.
pub fn resolve(
    specs: &[NetnsSpec],
    start: u64,
    processes: &BTreeMap<u64, Vec<u32>>,
    strict: bool,
) -> Result<Vec<Found>, NetnsError> {
    let nsfs = nsfs_device()?;
    let named = named(nsfs)?;
    let name_of =
        |inode: u64| named.iter().find(|(_, found)| *found == inode).map(|(name, _)| name.clone());
    let mut found = Vec::new();
    let mut seen = HashSet::from([start]);
    let mut add = |path: PathBuf, inode: u64, label: String| {
        if seen.insert(inode) {
            found.push(Found { path, inode, label });
        }
    };
    for spec in specs {
        match spec {
            NetnsSpec::Named(_) | NetnsSpec::Path(_) => {
                let Some((path, inode)) = given(spec, nsfs, strict)? else { continue };
                let label = name_of(inode).unwrap_or_else(|| spec.to_string());
                add(path, inode, label);
            }
            NetnsSpec::All => {
                for (name, inode) in &named {
                    add(Path::new(NAMED_DIR).join(name), *inode, name.clone());
                }
                for (inode, pids) in processes {
                    let Some(pid) = pids.first() else { continue };
                    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
                    add(path, *inode, format!("pid:{pid}"));
                }
            }
        }
    }
    Ok(found)
}

/// The roots (`/proc/PID/root`) of the processes of namespace `inode` that have a UAPI socket
/// directory, each directory once (processes that share a root share it).
pub fn uapi_roots(inode: u64, processes: &BTreeMap<u64, Vec<u32>>) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut roots = Vec::new();
    for pid in processes.get(&inode).into_iter().flatten() {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let Ok(dir) = open_in_root(&root, Path::new(UAPI_DIR_IN_ROOT)) else { continue };
        if let Ok(stat) = rustix::fs::fstat(&dir)
            && FileType::from_raw_mode(stat.st_mode) == FileType::Directory
            && seen.insert((stat.st_dev, stat.st_ino))
        {
            roots.push(root);
        }
    }
    roots
}

/// Opens `path` (relative) inside the directory tree `root` (a process's `/proc/PID/root`) as
/// that process sees it, for reference only (`O_PATH`): the kernel resolves every component,
/// symbolic links too, inside `root` (`openat2` with `RESOLVE_IN_ROOT`), so no link a
/// container makes (`/var/run -> /run`, or one to the host's files) leads out of it.
pub fn open_in_root(root: &Path, path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::CLOEXEC;
    let root = rustix::fs::open(root, flags | OFlags::DIRECTORY, Mode::empty())?;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    Ok(rustix::fs::openat2(&root, path, flags, Mode::empty(), resolve)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_all_a_path_or_a_name() {
        assert_eq!(NetnsSpec::from("all"), NetnsSpec::All);
        assert_eq!(NetnsSpec::from("blue"), NetnsSpec::Named("blue".into()));
        assert_eq!(NetnsSpec::from("/proc/1/ns/net"), NetnsSpec::Path("/proc/1/ns/net".into()));
        assert_eq!(NetnsSpec::Path("/proc/1/ns/net".into()).to_string(), "/proc/1/ns/net");
    }

    #[test]
    fn this_process_is_in_the_start_namespace_and_all_leaves_it_out() {
        let start = StartNamespace::current().expect("own namespace");
        let processes = processes().expect("/proc");
        let own = processes.get(&start.inode).expect("this namespace has processes");
        assert!(own.contains(&std::process::id()), "{own:?}");
        let found = resolve(&[NetnsSpec::All], start.inode, &processes, true).expect("resolve");
        assert!(found.iter().all(|found| found.inode != start.inode), "{found:?}");
        let inodes: HashSet<u64> = found.iter().map(|found| found.inode).collect();
        assert_eq!(inodes.len(), found.len(), "each namespace once: {found:?}");
    }

    #[test]
    fn a_missing_name_fails_at_start_and_is_gone_later() {
        let spec = [NetnsSpec::Named("wgtel-no-such-namespace".into())];
        let error = resolve(&spec, 0, &BTreeMap::new(), true).expect_err("missing");
        assert_eq!(
            error.to_string(),
            "network namespace wgtel-no-such-namespace: cannot open \
             /run/netns/wgtel-no-such-namespace"
        );
        assert_eq!(resolve(&spec, 0, &BTreeMap::new(), false).expect("later"), Vec::new());
    }

    #[test]
    fn links_inside_a_root_resolve_inside_it() {
        use std::os::unix::fs::symlink;
        let root = std::env::temp_dir().join(format!("wgtel-netns-root-{}", std::process::id()));
        let run = root.join("run/wireguard");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::create_dir_all(root.join("var")).unwrap();
        std::fs::write(run.join("inside"), b"").unwrap();
        symlink("/run", root.join("var/run")).unwrap();
        symlink("../run", root.join("var/relative")).unwrap();
        // Out of the root for anyone who follows it from outside: /etc/hostname.
        symlink("/etc/hostname", run.join("escape.sock")).unwrap();
        let inode = |path: &str| {
            let fd = open_in_root(&root, Path::new(path)).map_err(|e| e.kind());
            fd.map(|fd| rustix::fs::fstat(&fd).unwrap().st_ino)
        };
        let inside = std::fs::metadata(run.join("inside")).unwrap().ino();
        assert_eq!(inode("var/run/wireguard/inside"), Ok(inside));
        assert_eq!(inode("var/relative/wireguard/inside"), Ok(inside));
        assert_eq!(inode("var/run/wireguard/escape.sock"), Err(io::ErrorKind::NotFound));
        assert_eq!(inode("var/missing"), Err(io::ErrorKind::NotFound));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_start_namespace_given_by_path_is_not_watched_twice() {
        let start = StartNamespace::current().expect("own namespace");
        let spec = [NetnsSpec::Path("/proc/self/ns/net".into())];
        assert_eq!(resolve(&spec, start.inode, &BTreeMap::new(), true).expect("ok"), Vec::new());
    }
}
