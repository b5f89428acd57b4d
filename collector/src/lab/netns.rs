//! Running code inside another network namespace: on a thread of its own, because `setns(2)`
//! with `CLONE_NEWNET` moves only the calling thread.

use std::{fs::File, io, os::fd::AsRawFd as _, thread};

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
                // SAFETY: `handle` is an open namespace file; setns(2) only affects this thread.
                let entered = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
                if entered != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
    .map_err(setns_error)
}
