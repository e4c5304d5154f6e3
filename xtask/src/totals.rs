//! The closing line of `cargo xtask test`: cargo's per-binary "test result" lines
//! added up, with the tests that skipped themselves moved from passed to skipped.
//!
//! A test that cannot run here (no root, no Docker, a tool missing) returns early, so
//! cargo counts it as passed. The tests' support code appends one line per skip to a
//! log (binary, test, reason; tab-separated) named by `SKIP_LOG_VAR`; this reads it.

use std::collections::BTreeSet;

/// The environment variable the tests' support code writes skips to (see
/// dockexpose/tests/support/skip.rs).
pub const SKIP_LOG_VAR: &str = "DOCKEXPOSE_SKIP_LOG";

/// Sums of cargo's "test result: ok. N passed; M failed; K ignored; ..." lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TestTotals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl TestTotals {
    /// One count per kernel of the VM matrix, each outcome printed on its own line.
    pub fn add_vm(&mut self, outcomes: &[crate::vm::Outcome]) {
        for o in outcomes {
            match o {
                crate::vm::Outcome::Passed { kernel, checks, secs } => {
                    println!("vm kernel {kernel}: passed ({checks} checks, {secs} s)");
                    self.passed += 1;
                }
                crate::vm::Outcome::Failed { kernel, why, secs } => {
                    println!("vm kernel {kernel}: FAILED ({secs} s): {why}");
                    self.failed += 1;
                }
                crate::vm::Outcome::Skipped { series, why } => {
                    println!("vm kernel {series}: SKIPPED: {why}");
                    self.ignored += 1;
                }
            }
        }
    }

    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// One test that skipped itself, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skip {
    /// The test binary (`verify` for tests/verify/).
    pub binary: String,
    pub test: String,
    pub reason: String,
}

/// The skips in a skip log, one per test: a test that recorded two reasons (two
/// checks failed) is one skipped test, with the first reason. Lines that are not
/// three tab-separated fields are ignored (a truncated last line).
pub fn parse_skips(log: &str) -> Vec<Skip> {
    let mut seen = BTreeSet::new();
    let mut skips = Vec::new();
    for line in log.lines() {
        let mut fields = line.splitn(3, '\t');
        let (Some(binary), Some(test), Some(reason)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if seen.insert((binary.to_string(), test.to_string())) {
            skips.push(Skip { binary: binary.into(), test: test.into(), reason: reason.into() });
        }
    }
    skips
}

/// The run's counts once the skips are known: (passed, failed, skipped). A skipped
/// test returned without failing, so cargo counted it among the passed; cargo's own
/// ignored tests are skipped too.
pub fn with_skips(total: &TestTotals, skips: &[Skip]) -> (u64, u64, u64) {
    let skipped = skips.len() as u64;
    // Never below zero: a skip log left from a run that cargo did not count (a test
    // binary that crashed) must not make the passed count wrap.
    (total.passed.saturating_sub(skipped), total.failed, total.ignored + skipped)
}

/// The lines printed before the closing line: every skip with its reason, then
/// "tests: N passed, M failed, K skipped".
pub fn summary(total: &TestTotals, skips: &[Skip]) -> Vec<String> {
    let mut lines: Vec<String> =
        skips.iter().map(|s| format!("skipped: {} {}: {}", s.binary, s.test, s.reason)).collect();
    let (passed, failed, skipped) = with_skips(total, skips);
    lines.push(format!("tests: {passed} passed, {failed} failed, {skipped} skipped"));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_result_lines_add_up() {
        let mut t = TestTotals::default();
        t.add_line("test result: ok. 61 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.08s");
        t.add_line("test result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1s");
        t.add_line("running 3 tests");
        assert_eq!(t, TestTotals { passed: 63, failed: 1, ignored: 1 });
    }

    #[test]
    fn skips_move_from_passed_to_skipped_with_their_reasons() {
        let mut t = TestTotals::default();
        t.add_line("test result: ok. 10 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s");
        t.add_line("test result: ok. 5 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1s");
        let log = "verify\tverify_says_held\tneeds root (network namespaces, iptables, eBPF)\n\
                   verify\tverify_says_held\tno Docker engine reachable (x)\n\
                   service\tthe_unit_runs\tsystemd-analyze not installed\n\
                   publish_paths\tverify_says_held\tno CNI plugins\n\
                   truncated line without tabs";
        let skips = parse_skips(log);
        // The same test twice in one binary is one skip; the same name in another
        // binary is another test.
        assert_eq!(skips.len(), 3, "{skips:?}");
        assert_eq!(skips[0].reason, "needs root (network namespaces, iptables, eBPF)");
        assert_eq!(with_skips(&t, &skips), (12, 1, 5));
        let lines = summary(&t, &skips);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1], "skipped: service the_unit_runs: systemd-analyze not installed");
        assert_eq!(lines.last().unwrap(), "tests: 12 passed, 1 failed, 5 skipped");
    }

    #[test]
    fn no_skip_log_changes_nothing_and_a_stale_one_never_wraps() {
        let mut t = TestTotals::default();
        t.add_line("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s");
        assert_eq!(summary(&t, &parse_skips("")), ["tests: 1 passed, 0 failed, 0 skipped"]);
        let skips = parse_skips("a\tx\twhy\nb\ty\twhy\n");
        assert_eq!(with_skips(&t, &skips), (0, 0, 2));
    }
}
