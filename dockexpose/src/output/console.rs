//! Lines for people on stderr (and stdout), written so that a stream nobody reads any
//! more never ends the process: `eprintln!` panics when the write fails (EPIPE once
//! the journal or a pipe's reader is gone; Rust ignores SIGPIPE). A failed line is
//! dropped and counted (`losses.stderr_lines_lost` in `dockexpose status`).

use std::{
    fmt,
    io::Write as _,
    sync::atomic::{AtomicU64, Ordering},
};

static STDERR_LOST: AtomicU64 = AtomicU64::new(0);

/// Writes one line to stderr; a failure is counted, never a panic.
pub fn stderr_line(args: fmt::Arguments<'_>) {
    if writeln!(std::io::stderr().lock(), "{args}").is_err() {
        STDERR_LOST.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes to stdout (a command's answer), flushed; false when it could not be written.
pub fn stdout_text(args: fmt::Arguments<'_>) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.flush()).is_ok()
}

/// Lines that could not be written to stderr since the start.
pub fn stderr_lines_lost() -> u64 {
    STDERR_LOST.load(Ordering::Relaxed)
}

/// `eprintln!` that never panics: see the module.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::console::stderr_line(format_args!($($arg)*))
    };
}

/// `println!` that never panics (the answer is lost if stdout is gone).
#[macro_export]
macro_rules! say_out {
    ($($arg:tt)*) => {{
        let _ = $crate::output::console::stdout_text(format_args!("{}\n", format_args!($($arg)*)));
    }};
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_are_written_through_the_macros() {
        // The EPIPE case runs the binary with a closed pipe (tests/cli_errors.rs).
        crate::say!("console test line {}", 1);
        crate::say_out!("console test line {}", 2);
    }
}
