//! Attaching the tunnel programs to an interface, and leaving nothing behind.
//!
//! - tcx (kernel 6.6+, commit e420bed02507 "bpf: Add fd-based tcx multi-prog infra"): each
//!   attachment is a BPF link owned by a file descriptor, so the kernel detaches it when the
//!   process exits, even on SIGKILL.
//! - clsact (older kernels): a `clsact` qdisc (added only if the interface has none, and then
//!   removed again on release) and one direct-action filter per direction. Filters outlive a
//!   killed process, so attaching first removes filters of our programs' names left by an
//!   earlier run.

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::Link as _,
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError},
    },
    util::KernelVersion,
};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcHandle, TcMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// How programs are attached to interfaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// tcx where the kernel has it (6.6+), clsact otherwise.
    #[default]
    Auto,
    /// tcx links.
    Tcx,
    /// A clsact qdisc with direct-action filters.
    Clsact,
}

impl AttachMode {
    /// `Auto` made concrete for the running kernel.
    pub(super) fn resolve(self) -> Self {
        match self {
            Self::Auto => {
                let has_tcx = KernelVersion::current()
                    .is_ok_and(|version| version >= KernelVersion::new(6, 6, 0));
                if has_tcx { Self::Tcx } else { Self::Clsact }
            }
            concrete => concrete,
        }
    }
}

/// Errors of attaching and detaching.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The program is not in the object.
    #[error("no program named {0}")]
    NoProgram(&'static str),
    /// Attaching or detaching a program failed.
    #[error("program {program}")]
    Program {
        /// Program name.
        program: &'static str,
        /// Why.
        #[source]
        source: Box<ProgramError>,
    },
    /// Adding the clsact qdisc, or removing a leftover filter, failed.
    #[error("tc")]
    Tc(#[source] TcError),
    /// Removing the clsact qdisc we added failed.
    #[error("removing the clsact qdisc")]
    RemoveQdisc(#[source] std::io::Error),
}

/// The attachments of one interface.
#[derive(Debug)]
pub(super) struct AttachedInterface {
    name: String,
    links: Vec<SchedClassifierLink>,
    /// Whether we added the clsact qdisc (and so must remove it).
    added_clsact: bool,
}

impl AttachedInterface {
    /// Attaches `programs` (ingress, egress) to interface `name`.
    pub(super) fn attach(
        ebpf: &mut Ebpf,
        mode: AttachMode,
        name: &str,
        programs: [&'static str; 2],
    ) -> Result<Self, AttachError> {
        let mut attached = Self { name: name.to_owned(), links: Vec::new(), added_clsact: false };
        if mode != AttachMode::Tcx {
            attached.added_clsact = add_clsact(name)?;
            for (program, direction) in programs.into_iter().zip(DIRECTIONS) {
                remove_leftover_filters(name, direction, program)?;
            }
        }
        // On failure `attached` drops, which releases whatever was attached so far.
        for (program_name, direction) in programs.into_iter().zip(DIRECTIONS) {
            let program: &mut SchedClassifier = ebpf
                .program_mut(program_name)
                .and_then(|program| program.try_into().ok())
                .ok_or(AttachError::NoProgram(program_name))?;
            let options = match mode {
                AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
                AttachMode::Auto | AttachMode::Clsact => {
                    TcAttachOptions::Netlink(NlOptions::default())
                }
            };
            let program_error =
                |source| AttachError::Program { program: program_name, source: Box::new(source) };
            let id =
                program.attach_with_options(name, direction, options).map_err(program_error)?;
            attached.links.push(program.take_link(id).map_err(program_error)?);
        }
        Ok(attached)
    }

    /// The interface's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Detaches every program and removes the qdisc we added. When the interface is `gone`,
    /// the kernel has already dropped everything: only our handles are released.
    pub(super) fn release(mut self, gone: bool) -> Result<(), AttachError> {
        self.release_all(gone)
    }

    fn release_all(&mut self, gone: bool) -> Result<(), AttachError> {
        let mut first_error = None;
        for link in self.links.drain(..) {
            if let Err(source) = link.detach()
                && !gone
            {
                first_error.get_or_insert(AttachError::Program {
                    program: "tunnel",
                    source: Box::new(source),
                });
            }
        }
        if std::mem::take(&mut self.added_clsact)
            && !gone
            && let Err(error) = remove_clsact(&self.name)
        {
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for AttachedInterface {
    fn drop(&mut self) {
        if let Err(error) = self.release_all(false) {
            log::warn!("detaching from {}: {error}", self.name);
        }
    }
}

const DIRECTIONS: [TcAttachType; 2] = [TcAttachType::Ingress, TcAttachType::Egress];

/// Adds a clsact qdisc to `interface`; `false` when it already had one.
fn add_clsact(interface: &str) -> Result<bool, AttachError> {
    match tc::qdisc_add_clsact(interface) {
        Ok(()) => Ok(true),
        Err(TcError::NetlinkError(error)) if error.raw_os_error() == Some(libc::EEXIST) => {
            Ok(false)
        }
        Err(error) => Err(AttachError::Tc(error)),
    }
}

/// Removes filters running `program` that an earlier, killed run left on `interface`.
fn remove_leftover_filters(
    interface: &str,
    direction: TcAttachType,
    program: &str,
) -> Result<(), AttachError> {
    match tc::qdisc_detach_program(interface, direction, program) {
        Ok(()) => {
            log::info!("removed a {program} filter an earlier run left on {interface}");
            Ok(())
        }
        Err(TcError::IoError(error)) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(AttachError::Tc(error)),
    }
}

/// Deletes the clsact qdisc of `interface` (`tc qdisc del dev IF clsact`) over rtnetlink.
fn remove_clsact(interface: &str) -> Result<(), AttachError> {
    let ifindex = nix_ifindex(interface).map_err(AttachError::RemoveQdisc)?;
    let mut message = TcMessage::with_index(ifindex);
    message.header.handle = TcHandle { major: 0xffff, minor: 0 };
    message.header.parent = TcHandle::CLSACT;
    message.attributes.push(TcAttribute::Kind("clsact".to_owned()));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut request = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::DelQueueDiscipline(message)),
    );
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);

    let mut socket = Socket::new(NETLINK_ROUTE).map_err(AttachError::RemoveQdisc)?;
    socket.bind_auto().map_err(AttachError::RemoveQdisc)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(AttachError::RemoveQdisc)?;
    socket.send(&buffer, 0).map_err(AttachError::RemoveQdisc)?;
    let mut reply = vec![0; 8192];
    let length = socket.recv(&mut &mut reply[..], 0).map_err(AttachError::RemoveQdisc)?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..length])
        .map_err(|e| AttachError::RemoveQdisc(std::io::Error::other(e)))?;
    match reply.payload {
        NetlinkPayload::Error(error) => match error.code {
            None => Ok(()),
            Some(code) => {
                Err(AttachError::RemoveQdisc(std::io::Error::from_raw_os_error(-code.get())))
            }
        },
        other => Err(AttachError::RemoveQdisc(std::io::Error::other(format!(
            "unexpected reply to RTM_DELQDISC: {other:?}"
        )))),
    }
}

/// The index of `interface` in this network namespace.
fn nix_ifindex(interface: &str) -> std::io::Result<i32> {
    let name = std::ffi::CString::new(interface).map_err(std::io::Error::other)?;
    // libc: rustix's `name_to_index` needs a socket of its own for the ioctl.
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    i32::try_from(index).map_err(std::io::Error::other)
}
