//! A run killed outright (SIGKILL, OOM) still cleans up. Each run starts a sentinel:
//! the same binary (`dockexpose verify-sentinel`), told over a pipe what the run does
//! before it does it (each probe, each neighbour entry). The guard's links are pinned,
//! so they stay attached when the run dies. If the pipe closes without "done", the run
//! died before its own cleanup, and the sentinel does it: a RST for each TCP probe
//! (the containers' half-open connections close, no SYN-ACK is retransmitted), the
//! probes' conntrack entries deleted by their tuples, the neighbour entries, the trace
//! table and the private veth removed, and, after the grace, the guard's pins. A later
//! run and `dockexpose cleanup` remove what a killed sentinel left as well.

use std::{
    io::{BufRead, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, SystemTime},
};

use super::{
    frame::{self, FrameSpec, Segment},
    plan::Probe,
    Answers, Sent,
};
use crate::kernel::{
    event::Proto,
    loader::{Kernel, KernelSettings},
};

/// Where runs pin their guards: one directory per run, named by its pid.
pub const PIN_ROOT: &str = "/sys/fs/bpf/dockexpose-verify";

/// What a run will do, as the sentinel needs it to undo it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// A probe about to be injected into `ifindex` (`mac`: the uplink's, None on L3).
    Probe {
        proto: Proto,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        isn: u32,
        ifindex: u32,
        mac: Option<[u8; 6]>,
    },
    /// A neighbour entry the run added.
    Neighbour { addr: IpAddr, dev: String },
}

impl Note {
    pub fn line(&self) -> String {
        match self {
            Note::Probe { proto, src, sport, dst, dport, isn, ifindex, mac } => {
                let mac =
                    mac.map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<String>()).unwrap_or_else(|| "-".into());
                format!("probe {} {src} {sport} {dst} {dport} {isn} {ifindex} {mac}", proto.as_str())
            }
            Note::Neighbour { addr, dev } => format!("neigh {addr} {dev}"),
        }
    }

    pub fn parse(line: &str) -> Option<Note> {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["probe", proto, src, sport, dst, dport, isn, ifindex, mac] => {
                let proto = [Proto::Tcp, Proto::Udp, Proto::Sctp].into_iter().find(|p| p.as_str() == *proto)?;
                let mac = match *mac {
                    "-" => None,
                    hex if hex.len() == 12 => {
                        let mut m = [0u8; 6];
                        for (i, b) in m.iter_mut().enumerate() {
                            *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
                        }
                        Some(m)
                    }
                    _ => return None,
                };
                Some(Note::Probe {
                    proto,
                    src: src.parse().ok()?,
                    sport: sport.parse().ok()?,
                    dst: dst.parse().ok()?,
                    dport: dport.parse().ok()?,
                    isn: isn.parse().ok()?,
                    ifindex: ifindex.parse().ok()?,
                    mac,
                })
            }
            ["neigh", addr, dev] => Some(Note::Neighbour { addr: addr.parse().ok()?, dev: dev.to_string() }),
            _ => None,
        }
    }
}

/// The run's side: the sentinel's pipe. Dropped without `done`, it means "clean up".
pub struct Sentinel {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Sentinel {
    /// Starts the sentinel of this run (pid), whose guard is pinned under `pins`.
    pub fn spawn(pins: &Path) -> std::io::Result<Sentinel> {
        let mut child = Command::new("/proc/self/exe")
            .args(["verify-sentinel", "--parent", &std::process::id().to_string(), "--pins"])
            .arg(pins)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let pipe = child.stdin.take();
        Ok(Sentinel { child, pipe })
    }

    pub fn note(&mut self, note: &Note) {
        if let Some(pipe) = self.pipe.as_mut() {
            let _ = writeln!(pipe, "{}", note.line());
        }
    }

    /// The run cleaned up itself: the sentinel has nothing to do.
    pub fn done(mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = writeln!(pipe, "done");
        }
        let _ = self.child.wait();
    }
}

/// This run's pin directory, made; None where /sys/fs/bpf is no bpffs (then a run
/// killed outright loses its guard at once: the warning says so).
pub fn pin_dir() -> Result<PathBuf, String> {
    let dir = PathBuf::from(PIN_ROOT).join(super::owner::Owner::me().tag());
    crate::kernel::pins::check_bpffs(Path::new("/sys/fs/bpf")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Removes a pin directory: the guard links pinned there detach.
fn remove_pins(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with("guard-") && std::fs::remove_file(entry.path()).is_ok() {
            n += 1;
        }
    }
    let _ = std::fs::remove_dir(dir);
    // The root too, when no other run's directory is left (fails harmlessly otherwise).
    let _ = std::fs::remove_dir(PIN_ROOT);
    n
}

/// The pins, trace tables and veths of runs whose process and sentinel are gone.
pub fn remove_stale() -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(PIN_ROOT).into_iter().flatten().flatten() {
        let Some(owner) = super::owner::Owner::parse(&entry.file_name().to_string_lossy()) else {
            continue;
        };
        if owner.is_gone() && !sentinel_of(owner.pid) {
            n += remove_pins(&entry.path());
        }
    }
    n + super::trace::remove_stale_tables() + super::inject::remove_stale()
}

/// Whether a sentinel of run `pid` is still at work.
fn sentinel_of(pid: u32) -> bool {
    let want = format!("verify-sentinel\0--parent\0{pid}\0");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&want)))
}

/// `dockexpose verify-sentinel --parent PID --pins DIR`: waits for the run's pipe to
/// close; cleans up after it unless it said "done". Signals that end the run (a
/// terminal's Ctrl-C reaches the whole group) do not end the sentinel.
pub fn run(parent: u32, pins: &Path) -> i32 {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: ignoring a signal installs no handler.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let mut notes = Vec::new();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        if line == "done" {
            return 0;
        }
        notes.extend(Note::parse(&line));
    }
    let report = clean_after(&notes, pins);
    crate::say!("dockexpose verify: run {parent} ended before its cleanup; its sentinel {report}");
    0
}

/// The cleanup of a run that died; returns what was done, in words.
fn clean_after(notes: &[Note], pins: &Path) -> String {
    let probes: Vec<&Note> = notes.iter().filter(|n| matches!(n, Note::Probe { .. })).collect();
    let mut rsts = 0;
    if probes.iter().any(|n| matches!(n, Note::Probe { proto: Proto::Tcp, .. })) {
        rsts = send_rsts(&probes).unwrap_or(0);
    }
    std::thread::sleep(Duration::from_millis(30));
    let sent: Vec<Sent> = probes
        .iter()
        .filter_map(|n| match n {
            Note::Probe { proto, src, sport, dst, dport, isn, .. } => Some(Sent {
                probe: Probe { target: 0, uplink: 0, source: *src, dst: *dst, dst_port: *dport, proto: *proto },
                sport: *sport,
                isn: *isn,
                at: SystemTime::now(),
                reached_on: None,
                answers: Answers::default(),
            }),
            _ => None,
        })
        .collect();
    let mut sources: Vec<IpAddr> = sent.iter().map(|s| s.probe.source).collect();
    sources.sort();
    sources.dedup();
    let (deleted, _) = super::delete_conntrack(&sent, &sources, &mut Vec::new());
    for n in notes {
        if let Note::Neighbour { addr, dev } = n {
            super::host_state::remove_neighbour(*addr, dev);
        }
    }
    super::trace::remove_stale_tables();
    super::inject::remove_stale();
    std::thread::sleep(super::GUARD_GRACE);
    let guards = remove_pins(pins);
    format!("sent {rsts} RSTs, deleted {deleted} conntrack entries and removed {guards} guard pins")
}

/// A RST for each TCP probe, into the uplink it entered by.
fn send_rsts(probes: &[&Note]) -> anyhow::Result<usize> {
    let (mut kernel, _events) = Kernel::load(KernelSettings::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let _answers = kernel.prepare_probes().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mut injector, _) = super::inject::Injector::choose(&mut kernel, crate::cli::InjectionArg::Auto)?;
    let mut n = 0;
    for note in probes {
        let Note::Probe { proto: Proto::Tcp, src, sport, dst, dport, isn, ifindex, mac } = note else {
            continue;
        };
        let spec = FrameSpec {
            dst_mac: Some(frame::live_frame_mac(*mac)),
            src: *src,
            dst: *dst,
            sport: *sport,
            dport: *dport,
            segment: Segment::Rst { seq: isn.wrapping_add(1) },
            ip_id: *sport,
        };
        if injector.inject(&mut kernel, &frame::build(&spec), *ifindex).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_read_back_as_written() {
        let notes = [
            Note::Probe {
                proto: Proto::Tcp,
                src: "198.51.100.77".parse().unwrap(),
                sport: 20001,
                dst: "10.0.0.1".parse().unwrap(),
                dport: 8080,
                isn: 4_000_000_000,
                ifindex: 7,
                mac: Some([0x02, 0, 0, 0, 0xab, 0xcd]),
            },
            Note::Probe {
                proto: Proto::Udp,
                src: "2001:db8:dc::77".parse().unwrap(),
                sport: 1,
                dst: "fd00::1".parse().unwrap(),
                dport: 53,
                isn: 0,
                ifindex: 9,
                mac: None,
            },
            Note::Neighbour { addr: "198.51.100.77".parse().unwrap(), dev: "eth0".into() },
        ];
        for n in &notes {
            assert_eq!(Note::parse(&n.line()).as_ref(), Some(n), "{}", n.line());
        }
        assert_eq!(Note::parse("probe tcp x 1 2 3 4 5 -"), None);
        assert_eq!(Note::parse("probe tcp 1.2.3.4 1 1.2.3.5 3 4 5 0211"), None);
        assert_eq!(Note::parse("done"), None);
    }
}
