//! Running code inside another network namespace: on a thread of its own, because `setns(2)`
//! with `CLONE_NEWNET` moves only the calling thread.

use std::{fs::File, io, os::fd::AsFd as _, thread};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use super::LabError;

/// Runs `f` on a new thread inside the named network namespace (`/run/netns/NAME`) and returns
/// its result. The calling thread stays where it is.
pub fn in_namespace<T: Send>(namespace: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
    let path = format!("/run/netns/{namespace}");
    let setns_error = |source| LabError::Setns { namespace: namespace.to_owned(), source };
    let handle = File::open(&path).map_err(setns_error)?;
    thread::scope(|scope| {
        scope
            .spawn(move || {
                // setns(2) only affects this thread.
                move_into_link_name_space(handle.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(io::Error::from)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
    .map_err(setns_error)
}
