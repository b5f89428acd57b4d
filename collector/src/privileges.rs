//! The capabilities `wgtel run` needs, checked at start: a missing one is named, with what it
//! is for, before anything is loaded, instead of surfacing later as a bare "Operation not
//! permitted" from deep inside a program load or an attachment.
//!
//! Since Linux 5.8, `CAP_BPF` and `CAP_PERFMON` split from `CAP_SYS_ADMIN`, which still
//! grants both (`bpf_capable()` and `perfmon_capable()` accept it); wgtel supports 5.10 and
//! later, so the split capabilities always exist.

use rustix::thread::{CapabilitySet, capabilities};

use crate::netns::NetnsSpec;

/// One capability `wgtel run` needs, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// The capability as the kernel and systemd name it (`CAP_BPF`).
    pub name: &'static str,
    /// What wgtel does with it.
    pub used_for: &'static str,
    capability: CapabilitySet,
    /// `CAP_SYS_ADMIN` grants it too.
    sys_admin_grants: bool,
}

/// Everything `wgtel run` needs, in the order the README lists it.
pub const REQUIRED: [Requirement; 3] = [
    Requirement {
        name: "CAP_BPF",
        used_for: "loading the eBPF programs and creating their maps",
        capability: CapabilitySet::BPF,
        sys_admin_grants: true,
    },
    Requirement {
        name: "CAP_NET_ADMIN",
        used_for: "attaching to interfaces (tcx links, clsact qdiscs and filters) and reading \
                   the WireGuard module over generic netlink",
        capability: CapabilitySet::NET_ADMIN,
        sys_admin_grants: false,
    },
    Requirement {
        name: "CAP_PERFMON",
        used_for: "the raw tracepoint program that counts the kernel's drops, and reading \
                   kernel memory (sk_buff fields) from the programs",
        capability: CapabilitySet::PERFMON,
        sys_admin_grants: true,
    },
];

/// What `--netns` needs besides [`REQUIRED`]: entering another network namespace, and finding
/// the processes of each namespace (`/proc/PID/ns/net`) and their UAPI sockets
/// (`/proc/PID/root`). The kernel lets a process read those of another only when its own
/// permitted capabilities cover the other's, or with `CAP_SYS_PTRACE`: a wireguard-go running
/// as root holds every capability, so a wgtel cut down to its own needs `CAP_SYS_PTRACE` to see
/// it, for a named namespace as much as for `all` (only a namespace holding nothing but kernel
/// WireGuard would do without; wgtel cannot know that at start).
pub const NETNS_REQUIRED: [Requirement; 2] = [
    Requirement {
        name: "CAP_SYS_ADMIN",
        used_for: "entering the --netns network namespaces (setns)",
        capability: CapabilitySet::SYS_ADMIN,
        sys_admin_grants: true,
    },
    Requirement {
        name: "CAP_SYS_PTRACE",
        used_for: "finding the processes of each --netns namespace and their UAPI sockets \
                   (/proc/PID/ns/net, /proc/PID/root)",
        capability: CapabilitySet::SYS_PTRACE,
        sys_admin_grants: false,
    },
];

/// Why the daemon may not start.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// `capget(2)` on this process failed.
    #[error("reading this process's capabilities")]
    Read(#[source] std::io::Error),
    /// Capabilities the daemon needs are not in its effective set.
    #[error(
        "wgtel run lacks {}; it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (systemd: \
         AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON), or root",
        describe(missing)
    )]
    Missing {
        /// The missing capabilities.
        missing: Vec<Requirement>,
    },
    /// Capabilities `--netns` needs are not in the effective set.
    #[error(
        "wgtel run --netns lacks {}; see the README's \"Other network namespaces and containers\"",
        describe(missing)
    )]
    MissingForNetns {
        /// The missing capabilities.
        missing: Vec<Requirement>,
    },
}

fn describe(missing: &[Requirement]) -> String {
    missing
        .iter()
        .map(|requirement| format!("{} ({})", requirement.name, requirement.used_for))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The requirements that `effective` does not meet.
pub fn missing_from(effective: CapabilitySet) -> Vec<Requirement> {
    unmet(&REQUIRED, effective)
}

/// What `--netns` with `specs` needs that `effective` lacks: nothing without any, else
/// [`NETNS_REQUIRED`].
pub fn missing_for_netns(specs: &[NetnsSpec], effective: CapabilitySet) -> Vec<Requirement> {
    if specs.is_empty() { Vec::new() } else { unmet(&NETNS_REQUIRED, effective) }
}

/// The requirements of `required` that `effective` does not meet.
fn unmet(required: &[Requirement], effective: CapabilitySet) -> Vec<Requirement> {
    let sys_admin = effective.contains(CapabilitySet::SYS_ADMIN);
    required
        .iter()
        .copied()
        .filter(|requirement| {
            !(effective.contains(requirement.capability)
                || (requirement.sys_admin_grants && sys_admin))
        })
        .collect()
}

/// Checks this process's effective capabilities against [`REQUIRED`], and against
/// [`NETNS_REQUIRED`] for `--netns` with `netns`.
pub fn check(netns: &[NetnsSpec]) -> Result<(), PrivilegeError> {
    let sets = capabilities(None).map_err(|errno| PrivilegeError::Read(errno.into()))?;
    let missing = missing_from(sets.effective);
    if !missing.is_empty() {
        return Err(PrivilegeError::Missing { missing });
    }
    let missing = missing_for_netns(netns, sets.effective);
    if missing.is_empty() { Ok(()) } else { Err(PrivilegeError::MissingForNetns { missing }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(missing: &[Requirement]) -> Vec<&'static str> {
        missing.iter().map(|requirement| requirement.name).collect()
    }

    #[test]
    fn the_three_capabilities_suffice_and_each_missing_one_is_named() {
        let all = CapabilitySet::BPF | CapabilitySet::NET_ADMIN | CapabilitySet::PERFMON;
        assert!(missing_from(all).is_empty());
        assert_eq!(names(&missing_from(all - CapabilitySet::BPF)), ["CAP_BPF"]);
        assert_eq!(names(&missing_from(all - CapabilitySet::NET_ADMIN)), ["CAP_NET_ADMIN"]);
        assert_eq!(names(&missing_from(all - CapabilitySet::PERFMON)), ["CAP_PERFMON"]);
        assert_eq!(
            names(&missing_from(CapabilitySet::empty())),
            ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]
        );
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon_but_not_net_admin() {
        assert!(missing_from(CapabilitySet::SYS_ADMIN | CapabilitySet::NET_ADMIN).is_empty());
        assert_eq!(names(&missing_from(CapabilitySet::SYS_ADMIN)), ["CAP_NET_ADMIN"]);
    }

    #[test]
    fn netns_needs_sys_admin_and_sys_ptrace() {
        let base = CapabilitySet::BPF | CapabilitySet::NET_ADMIN | CapabilitySet::PERFMON;
        let named = [NetnsSpec::Named("blue".into())];
        assert!(missing_for_netns(&[], base).is_empty());
        assert_eq!(names(&missing_for_netns(&named, base)), ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]);
        let both = base | CapabilitySet::SYS_ADMIN | CapabilitySet::SYS_PTRACE;
        assert!(missing_for_netns(&named, both).is_empty());
        assert_eq!(
            names(&missing_for_netns(&[NetnsSpec::All], base | CapabilitySet::SYS_ADMIN)),
            ["CAP_SYS_PTRACE"]
        );
        assert_eq!(
            names(&missing_for_netns(&[NetnsSpec::Path("/proc/1/ns/net".into())], both)),
            Vec::<&str>::new()
        );
        let error = PrivilegeError::MissingForNetns {
            missing: missing_for_netns(&named, base | CapabilitySet::SYS_PTRACE),
        };
        assert_eq!(
            error.to_string(),
            "wgtel run --netns lacks CAP_SYS_ADMIN (entering the --netns network namespaces \
             (setns)); see the README's \"Other network namespaces and containers\""
        );
    }

    #[test]
    fn the_error_names_what_is_missing_and_what_for() {
        let error = PrivilegeError::Missing {
            missing: missing_from(CapabilitySet::BPF | CapabilitySet::NET_ADMIN),
        };
        assert_eq!(
            error.to_string(),
            "wgtel run lacks CAP_PERFMON (the raw tracepoint program that counts the kernel's \
             drops, and reading kernel memory (sk_buff fields) from the programs); it needs \
             CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (systemd: AmbientCapabilities=CAP_BPF \
             CAP_NET_ADMIN CAP_PERFMON), or root"
        );
    }
}
