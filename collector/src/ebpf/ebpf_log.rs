//! Debug mode (`wgtel run --debug-ebpf`): the programs log what they could not parse (see
//! `collector-ebpf/src/debug.rs`) into aya-log's ring buffer, read here whenever it holds
//! records and written to wgtel's own log (at info, target `collector::debug`).
//!
//! Without the flag the programs' log level, a `.rodata` global set at load, is 0: the
//! verifier then knows that no log statement runs and removes them all.

use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};

use super::EbpfError;

/// Logging off: no level is at or below 0.
static OFF: u8 = 0;
/// Errors, warnings and information: what the programs log is information.
static INFO: u8 = aya_log::Level::Info as u8;

/// Sets the programs' log level in `loader`: information when `debug`, else none.
pub(super) fn set_level(loader: &mut EbpfLoader<'_>, debug: bool) {
    loader.override_global(aya_log::LEVEL, if debug { &INFO } else { &OFF }, true);
}

/// Starts writing the programs' log records to wgtel's log, on the tokio runtime this is
/// called from, for as long as it runs.
pub(super) fn forward(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| EbpfError::NoRuntime)?;
    let logger = EbpfLogger::init(ebpf).map_err(|source| EbpfError::Log(Box::new(source)))?;
    let _entered = runtime.enter();
    // SAFETY: the descriptor is the ring buffer map's, which the logger owns and keeps open,
    // unchanged, for as long as it lives: as long as the AsyncFd that owns it.
    let mut records = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|error| EbpfError::LogReader(error.into()))?;
    runtime.spawn(async move {
        loop {
            match records.readable_mut().await {
                Ok(mut ready) => {
                    ready.get_inner_mut().flush();
                    ready.clear_ready();
                }
                Err(error) => {
                    log::warn!("reading the eBPF programs' log stopped: {error}");
                    return;
                }
            }
        }
    });
    Ok(())
}
