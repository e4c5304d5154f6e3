//! The measures of the saturation benchmark: medians and percentiles, how each is
//! shown against its goal, and the CPU counters read from /proc.

use crate::support::counter;

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len().is_multiple_of(2) { (v[m - 1] + v[m]) / 2.0 } else { v[m] })
}

pub(crate) fn percentile(mut v: Vec<f64>, p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[i.clamp(1, v.len()) - 1])
}

pub(crate) fn show(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0} {unit}"),
        Some(x) if x != 0.0 && x.abs() < 0.1 => format!("{x:.5} {unit}"),
        Some(x) => format!("{x:.2} {unit}"),
        None => "n/a".to_string(),
    }
}

pub(crate) fn goal(v: Option<f64>, ok: impl Fn(f64) -> bool) -> &'static str {
    match v {
        Some(x) if ok(x) => "met",
        Some(_) => "NOT met",
        None => "n/a (not measured)",
    }
}

/// A counter of the final counters line, or None when this daemon does not count it.
pub(crate) fn maybe_counter(line: &str, name: &str) -> Option<u64> {
    let key = format!("{name}=");
    line.split_whitespace().any(|kv| kv.starts_with(&key)).then(|| counter(line, name))
}

/// Jiffies of all CPUs together: (busy, total). Busy is everything but idle and iowait.
pub(crate) fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let line = stat.lines().next().unwrap();
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f.get(7).copied().unwrap_or(0);
    (busy, busy + f[3] + f[4])
}

/// utime and stime of a process, in jiffies (fields 14 and 15 of /proc/PID/stat).
pub(crate) fn proc_cpu(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces: count the fields after its closing ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse().unwrap(), f[12].parse().unwrap())
}

/// Nanoseconds on a CPU of all the threads of a process (first field of each
/// /proc/PID/task/TID/schedstat): the total at ns precision, where utime and stime
/// count 10 ms jiffies (a few jiffies a round: too coarse for µs per connection).
pub(crate) fn proc_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// CPU time of the calling thread so far, in µs.
pub(crate) fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

pub(crate) fn us_per_jiffy() -> f64 {
    1e6 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// CPU jiffies (utime + stime) of each compiler on the machine now (other engineers'
/// builds), by pid. A compiler that runs during a round skews it, and which way
/// depends on which round it falls in; one that waits (a build blocked on a lock)
/// does not.
pub(crate) fn compiler_jiffies() -> std::collections::HashMap<u32, u64> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Default::default() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| {
                matches!(c.trim(), "rustc" | "bpf-linker" | "cc1" | "cc1plus" | "ld" | "ld.bfd" | "ld.lld" | "clang")
            })
        })
        .filter_map(|pid| {
            // It may have exited since: skip it then.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let f: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
            Some((pid, f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
        })
        .collect()
}

/// Jiffies the compilers used between two snapshots (new ones: all of theirs).
pub(crate) fn compiler_use(
    before: &std::collections::HashMap<u32, u64>,
    after: &std::collections::HashMap<u32, u64>,
) -> u64 {
    after.iter().map(|(pid, j)| j.saturating_sub(before.get(pid).copied().unwrap_or(0))).sum()
}
