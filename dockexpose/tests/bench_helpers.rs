//! The pure helpers of the kernel-program benchmark (frames, medians, batches),
//! unit-tested here: the benchmark itself is a bench target run by `cargo xtask bench`.

#[allow(dead_code, reason = "the benchmark's main and runner are not called from tests")]
#[path = "../benches/kernel_programs.rs"]
mod kernel_programs;
