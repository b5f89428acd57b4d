//! `wgtel probe`: one probe from the command line, its report as text or JSON, and the exit
//! code (0 success, 1 failure, 2 bad input).

use std::{fmt::Write as _, net::Ipv4Addr, path::PathBuf, process::ExitCode, time::Duration};

use super::{EchoTarget, PrivateKey, ProbeError, ProbeReport, ProbeTarget, probe};

/// Exit code of a probe that ran and failed.
const FAILED: u8 = 1;
/// Exit code of bad input.
const BAD_INPUT: u8 = 2;

/// Flags of `wgtel probe`.
#[derive(Clone, Debug, clap::Args)]
pub struct ProbeArgs {
    /// The gateway's WireGuard endpoint, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub endpoint: String,
    /// The gateway's public key (base64).
    #[arg(long, value_name = "KEY")]
    pub peer_public_key: String,
    /// The monitoring peer's private key, as `wg genkey` writes it; never printed.
    #[arg(long, value_name = "FILE")]
    pub private_key_file: PathBuf,
    /// Send ICMP echoes through the tunnel to this IPv4 address (the gateway's tunnel address,
    /// or one behind it).
    #[arg(long, value_name = "IP", requires = "inner_source")]
    pub inner_target: Option<Ipv4Addr>,
    /// The monitoring peer's tunnel address: the echoes' source, inside the AllowedIPs the
    /// gateway has for it.
    #[arg(long, value_name = "IP", requires = "inner_target")]
    pub inner_source: Option<Ipv4Addr>,
    /// Echo requests to send, one after the other.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub count: u16,
    /// How long the handshake, and then each echo, may take (e.g. 5s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `wgtel probe`: prints the report (or the bad input) and says how to exit.
pub fn run(args: &ProbeArgs) -> ExitCode {
    match probe_once(args) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(json) => println!("{json}"),
                    Err(error) => eprintln!("wgtel: writing the report as JSON: {error}"),
                }
            } else {
                print!("{}", text(&report));
            }
            if report.success { ExitCode::SUCCESS } else { ExitCode::from(FAILED) }
        }
        Err(error) => {
            eprintln!("wgtel probe: {}", chain(&error));
            ExitCode::from(if error.is_bad_input() { BAD_INPUT } else { FAILED })
        }
    }
}

fn probe_once(args: &ProbeArgs) -> Result<ProbeReport, ProbeError> {
    let echo = args.inner_target.zip(args.inner_source).map(|(target, source)| EchoTarget {
        target,
        source,
        count: args.count,
    });
    let target = ProbeTarget::new(&args.endpoint, &args.peer_public_key, echo, args.timeout)?;
    let key = PrivateKey::read(&args.private_key_file)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProbeError::Runtime)?;
    runtime.block_on(probe(&key, &target))
}

/// `error` and its sources, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _infallible = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// The report for people: one line for the handshake, one per echo, one summary.
pub fn text(report: &ProbeReport) -> String {
    let mut text = String::new();
    let address = report.address.map(|address| format!(" ({address})")).unwrap_or_default();
    let _infallible = match report.handshake_seconds {
        Some(seconds) => writeln!(
            text,
            "{}{address}: reachable, handshake in {:.2} ms",
            report.endpoint,
            seconds * 1e3
        ),
        None => writeln!(text, "{}{address}: unreachable", report.endpoint),
    };
    if let Some(target) = report.inner_target
        && report.reachable
    {
        for echo in &report.echoes {
            let _infallible = match echo.rtt_seconds {
                Some(seconds) => {
                    writeln!(text, "echo {target} seq {}: {:.2} ms", echo.seq, seconds * 1e3)
                }
                None => writeln!(text, "echo {target} seq {}: no reply", echo.seq),
            };
        }
        let loss = report.loss.unwrap_or(1.0) * 100.0;
        let _infallible =
            writeln!(text, "{} echoes, {} replies, {loss:.0}% loss", report.sent, report.received);
    }
    if let Some(error) = &report.error {
        let _infallible = writeln!(text, "failed: {error}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::EchoResult;

    #[test]
    fn the_text_report_says_what_happened() {
        let report = ProbeReport {
            endpoint: "gw.example:51820".into(),
            address: Some("198.18.3.1:51820".parse().expect("an address")),
            reachable: true,
            handshake_seconds: Some(0.001_25),
            inner_target: Some(Ipv4Addr::new(198, 19, 3, 1)),
            echoes: vec![
                EchoResult { seq: 1, rtt_seconds: Some(0.000_5) },
                EchoResult { seq: 2, rtt_seconds: None },
            ],
            sent: 2,
            received: 1,
            loss: Some(0.5),
            success: false,
            error: Some("1 of 2 echoes to 198.19.3.1 unanswered within 1s".into()),
        };
        assert_eq!(
            text(&report),
            "gw.example:51820 (198.18.3.1:51820): reachable, handshake in 1.25 ms\n\
             echo 198.19.3.1 seq 1: 0.50 ms\n\
             echo 198.19.3.1 seq 2: no reply\n\
             2 echoes, 1 replies, 50% loss\n\
             failed: 1 of 2 echoes to 198.19.3.1 unanswered within 1s\n"
        );
        let unreachable = ProbeReport {
            reachable: false,
            handshake_seconds: None,
            echoes: Vec::new(),
            sent: 0,
            received: 0,
            loss: None,
            error: Some("no handshake response within 1s".into()),
            ..report
        };
        assert_eq!(
            text(&unreachable),
            "gw.example:51820 (198.18.3.1:51820): unreachable\n\
             failed: no handshake response within 1s\n"
        );
    }
}
