//! Recorded skips. A test that cannot run here returns early, and cargo counts it as
//! passed; so every skip is also appended to the file named by DOCKEXPOSE_SKIP_LOG
//! (`cargo xtask test` sets it), and xtask counts those tests as skipped, with their
//! reasons, in the run's closing line. Included by `support` and `sinks_support`.

use std::io::Write;

/// The environment variable naming the skip log.
pub const SKIP_LOG_VAR: &str = "DOCKEXPOSE_SKIP_LOG";

/// Says that `test` is skipped and why, and records it in the skip log. Never panics:
/// whether a missing prerequisite is a failure (CI) is the caller's decision. Returns
/// false, so that `if !check(test) { return; }` reads the same for every check.
pub fn skip(test: &str, reason: &str) -> bool {
    eprintln!("{test}: SKIPPED: {reason}");
    if let Some(path) = std::env::var_os(SKIP_LOG_VAR) {
        // One line per skip: binary, test, reason (tabs and newlines flattened).
        let flat = |s: &str| s.replace(['\t', '\n', '\r'], " ");
        let line = format!("{}\t{}\t{}\n", flat(&binary()), flat(test), flat(reason));
        // O_APPEND: one write per line, so that lines of two processes never interleave.
        let written = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            // An unrecorded skip would be counted as passed: that must not pass quietly.
            panic!("{test}: could not record the skip in {} ({SKIP_LOG_VAR}): {e}", path.to_string_lossy());
        }
    }
    false
}

/// The test binary's name without cargo's hash (`verify-0123abcd` is `verify`): two
/// test files may hold tests of the same name.
fn binary() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe.as_ref().and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => name.to_string(),
        _ => stem,
    }
}
