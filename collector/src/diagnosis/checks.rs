//! `check_failed`: synthetic checks through the tunnel fail, on the peer whose AllowedIPs
//! cover their targets.

use std::collections::BTreeMap;

use super::{Finding, Subject};
use crate::{checks::CheckResult, model::Code};

/// `check_failed` for each peer with checks whose latest run failed.
///
/// Signals: each check's latest result (checks run on their own interval, so the code appears
/// at the first snapshot after a failed run and clears at the first after every failing check
/// of the peer succeeded again), its consecutive failures and its totals. A check that no
/// tunnel carries names no peer and no code: its failure says nothing about WireGuard.
pub(super) fn diagnose(checks: &[CheckResult]) -> Vec<(Subject, Finding)> {
    let mut failing: BTreeMap<Subject, Vec<&CheckResult>> = BTreeMap::new();
    for check in checks.iter().filter(|check| check.up == Some(false)) {
        if let (Some(interface), Some(key)) = (&check.interface, check.peer_public_key) {
            failing.entry((interface.clone(), Some(key))).or_default().push(check);
        }
    }
    failing
        .into_iter()
        .map(|(subject, checks)| {
            let each: Vec<String> = checks
                .iter()
                .map(|check| {
                    format!(
                        "{} {:?} ({}): {}, {} run{} in a row",
                        check.kind,
                        check.name,
                        check.target,
                        check.error.as_deref().unwrap_or("failed"),
                        check.consecutive_failures,
                        if check.consecutive_failures == 1 { "" } else { "s" }
                    )
                })
                .collect();
            let evidence = format!(
                "{} check{} through this peer fail{}: {}",
                checks.len(),
                if checks.len() == 1 { "" } else { "s" },
                if checks.len() == 1 { "s" } else { "" },
                each.join("; ")
            );
            let sum = |f: fn(&CheckResult) -> u64| checks.iter().map(|c| f(c)).sum::<u64>();
            let counters = [
                ("checks.failing", checks.len() as u64),
                ("checks.consecutive_failures", sum(|c| c.consecutive_failures)),
                ("checks.failures", sum(|c| c.failures)),
                ("checks.runs", sum(|c| c.runs)),
            ];
            (subject, Finding::new(Code::CheckFailed, evidence, &counters))
        })
        .collect()
}
