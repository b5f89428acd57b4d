//! `wgtel demo`.

/// Flags of `wgtel demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {}

/// Runs the demo.
pub fn run(_args: &DemoArgs) -> Result<(), DemoError> {
    Ok(())
}
