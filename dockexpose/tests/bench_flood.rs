//! Benchmark, not a test (ignored; `cargo xtask bench` runs it): dockexpose under the
//! highest new-flow rate this machine generates (issue 8). TCP SYNs from at least
//! 1 000 000 distinct spoofed sources (address and port, from 198.19.0.0/16, the
//! benchmarking range) at a published port, as fast as one sender thread can write
//! them (batched raw-socket sends), for 60 s. Reports what was sent, what the audit
//! log recorded, what was lost and where (the veth before any hook, the kernel's ring
//! buffer, the daemon's reader), the daemon's peak RSS, and how long a legitimate
//! connection made every 0.5 s during the flood took to appear in the audit log.
//! Prints the goals met or NOT met. Bounded: about 90 s. Needs root and Docker.
//!
//! DOCKEXPOSE_FLOOD_PPS caps the rate (default: as fast as possible);
//! DOCKEXPOSE_FLOOD_SECONDS changes the length (default 60).

mod support;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use support::{docker, *};

const MIN_SOURCES: u64 = 1_000_000;
const LEGIT_EVERY: Duration = Duration::from_millis(500);
const GOAL_RSS_KIB: u64 = 64 * 1024;
const GOAL_LEGIT_P99: Duration = Duration::from_secs(1);
/// Spoofed sources: 198.19.0.0/16 (the benchmarking range; outside hosts sit in 198.18.N.0/24).
const SPOOFED: &str = "198.19.0.0/16";
const BATCH: usize = 64;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Flow `i` (i < 65 534 * 64 512): a distinct source address and port in 198.19.0.0/16.
/// Consecutive flows differ in address, so that every address is used before any repeats.
fn flow(i: u64) -> ([u8; 4], u16) {
    let host = (i % 65_534) as u32 + 1; // 198.19.0.1 ..= 198.19.255.254
    let port = 1024 + ((i / 65_534) % 64_512) as u16;
    ([198, 19, (host >> 8) as u8, host as u8], port)
}

fn syn(i: u64, dst: SocketAddrV4, out: &mut [u8; 40]) {
    let (src, sport) = flow(i);
    spoofed_syn(src, sport, dst, (i as u32).wrapping_mul(2_654_435_761), i as u16, out);
}

/// Sends SYNs of flows 0, 1, 2, ... from `ns` through a raw socket, BATCH at a time
/// with sendmmsg, for `length` (and at most `per_second` a second, 0: no cap).
/// Returns how many the kernel took.
fn flood(ns: &str, dst: SocketAddrV4, per_second: u64, length: Duration) -> u64 {
    in_netns(ns, move || {
        // SAFETY: socket syscalls on an fd owned here and closed at the end; the
        // message headers point into buffers that outlive each sendmmsg call.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.ip().octets()) },
            sin_zero: [0; 8],
        };
        let mut bufs = vec![[0u8; 40]; BATCH];
        let mut iovs: Vec<libc::iovec> = vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 40 }; BATCH];
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        let start = Instant::now();
        let mut sent: u64 = 0;
        while start.elapsed() < length {
            if per_second > 0 {
                let due = start + Duration::from_secs_f64(sent as f64 / per_second as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            for k in 0..BATCH {
                syn(sent + k as u64, dst, &mut bufs[k]);
                iovs[k].iov_base = bufs[k].as_mut_ptr().cast();
                msgs[k].msg_hdr.msg_name = (&sa as *const libc::sockaddr_in).cast_mut().cast();
                msgs[k].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
                msgs[k].msg_hdr.msg_iov = &mut iovs[k];
                msgs[k].msg_hdr.msg_iovlen = 1;
            }
            let rc = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
            if rc > 0 {
                sent += rc as u64;
            } else {
                // ENOBUFS under load: let the queue drain.
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        unsafe { libc::close(fd) };
        sent
    })
}

/// Follows the audit log as it grows: when each "reached" record of `src` appears, by
/// source port.
struct Tail {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<HashMap<u16, Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tail {
    fn start(json: PathBuf, src: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let (s, map) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let needle = format!("\"src_ip\":\"{src}\",\"src_port\":");
            let mut file = None;
            let mut pos = 0u64;
            let mut partial = Vec::new();
            let mut buf = vec![0u8; 1 << 20];
            while !s.load(Ordering::Relaxed) {
                if file.is_none() {
                    file = std::fs::File::open(&json).ok();
                }
                let Some(f) = file.as_mut() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                f.seek(SeekFrom::Start(pos)).unwrap();
                let n = f.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                let now = Instant::now();
                pos += n as u64;
                partial.extend_from_slice(&buf[..n]);
                let end = partial.iter().rposition(|&b| b == b'\n').map_or(0, |e| e + 1);
                for line in partial[..end].split(|&b| b == b'\n') {
                    // The source comes early in a record (after ts, stage, proto, family).
                    let line = String::from_utf8_lossy(&line[..line.len().min(200)]);
                    if let Some(at) = line.find(&needle) {
                        if line.contains("\"stage\":\"reached\"") {
                            let rest = &line[at + needle.len()..];
                            if let Ok(port) =
                                rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse()
                            {
                                map.lock().unwrap().entry(port).or_insert(now);
                            }
                        }
                    }
                }
                partial.drain(..end);
            }
        });
        Self { stop, seen, thread: Some(thread) }
    }

    fn stop(mut self) -> HashMap<u16, Instant> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.seen.lock().unwrap().clone()
    }
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[i.clamp(1, v.len()) - 1])
}

/// The host's conntrack statistics (root namespace), summed over CPUs, by column name.
fn conntrack_stats() -> HashMap<String, u64> {
    let text = std::fs::read_to_string("/proc/net/stat/nf_conntrack").unwrap_or_default();
    let mut lines = text.lines();
    let names: Vec<String> = lines.next().unwrap_or_default().split_whitespace().map(str::to_string).collect();
    let mut sums = HashMap::new();
    for line in lines {
        for (name, v) in names.iter().zip(line.split_whitespace()) {
            *sums.entry(name.clone()).or_insert(0) += u64::from_str_radix(v, 16).unwrap_or(0);
        }
    }
    sums
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn flood_at_the_highest_rate() {
    let test = "flood_at_the_highest_rate";
    if !docker::ready(test) {
        return;
    }
    let length = Duration::from_secs(env_u64("DOCKEXPOSE_FLOOD_SECONDS", 60));
    let cap = env_u64("DOCKEXPOSE_FLOOD_PPS", 0);
    let image = docker::echo_image();
    let outside = OutsideHost::new("b");
    let hook = bench_uplink_hook();
    let n = outside.n;
    // The container's SYN-ACKs to the spoofed sources go back into the outside
    // namespace, where a blackhole route ends them. Without it the namespace (which
    // inherits IPv4 forwarding from the host) sends each one back out through the
    // uplink: extra packets for XDP, and conntrack INVALIDs on the host.
    assert_unrouted(SPOOFED);
    let mut undo = Undo::default();
    sh(&["ip", "route", "add", SPOOFED, "via", &outside.v4(2), "dev", &outside.uplink]);
    undo.push(&["ip", "route", "del", SPOOFED]);
    sh(&["ip", "-n", &outside.ns, "route", "add", "blackhole", SPOOFED]);
    let port = 32000 + n as u16;
    let _web =
        docker::Container::run(&format!("dx-bflood-{n}"), &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
    let json = std::env::temp_dir().join(format!("dockexpose-bflood-{n}.json"));
    let mut w = Watcher::start(
        &["--uplink", &outside.uplink, "--uplink-hook", &hook, "--quiet", "--stats-interval", "0"],
        json.clone(),
    );
    let pid = w.pid();
    let src = outside.src4();
    let legit_dst = outside.host4(port);
    // The container answers before the flood starts.
    tcp_connect(&outside.ns, Some(src), legit_dst).expect("the container answers");

    let tail = Tail::start(json.clone(), src.to_string());
    let dst = SocketAddrV4::new(outside.v4(1).parse::<Ipv4Addr>().unwrap(), port);
    let dropped_before = tx_dropped(&outside.ns, "eth0");
    let ct_before = conntrack_stats();
    let done = Arc::new(AtomicBool::new(false));
    // A legitimate connection every 0.5 s during the flood, from the real outside address.
    let legit = {
        let (ns, done) = (outside.ns.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut made, mut failed) = (Vec::new(), 0usize);
            let mut next = Instant::now() + LEGIT_EVERY;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next += LEGIT_EVERY;
                let t0 = Instant::now();
                match tcp_connect(&ns, Some(src), legit_dst) {
                    // When connect() was called, and when the connection was up (the
                    // greeting read): a SYN the veth dropped costs a retransmit (1 s)
                    // before any hook of dockexpose can see it.
                    Ok(sport) => made.push((sport, t0, Instant::now())),
                    Err(_) => failed += 1,
                }
            }
            (made, failed)
        })
    };
    let started = Instant::now();
    let sent = flood(&outside.ns, dst, cap, length);
    let flood_time = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let (made, legit_failed) = legit.join().unwrap();
    let veth_dropped = tx_dropped(&outside.ns, "eth0") - dropped_before;
    let ct_after = conntrack_stats();
    let ct =
        |name: &str| ct_after.get(name).copied().unwrap_or(0).saturating_sub(ct_before.get(name).copied().unwrap_or(0));
    let rate = sent as f64 / flood_time.as_secs_f64();
    eprintln!("{test}: sent {sent} SYNs in {flood_time:.1?} ({rate:.0}/s); the veth dropped {veth_dropped}");

    // Let the last records reach the log, then stop the daemon (SIGTERM) and read its
    // final counters; the log itself may be large, so it is counted as a stream.
    std::thread::sleep(Duration::from_secs(3));
    let peak = peak_rss_kib(pid);
    let seen = tail.stop();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let last = w.wait_for_line("final counters", Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = w.lines();
    drop(w);
    let (mut attempted, mut reached, mut bytes) = (0u64, 0u64, 0u64);
    if let Ok(f) = std::fs::File::open(&json) {
        for line in BufReader::with_capacity(1 << 20, f).split(b'\n').map_while(Result::ok) {
            bytes += line.len() as u64 + 1;
            let head = &line[..line.len().min(120)];
            let has = |s: &[u8]| head.windows(s.len()).any(|x| x == s);
            if has(b"\"stage\":\"attempted\"") {
                attempted += 1;
            } else if has(b"\"stage\":\"reached\"") {
                reached += 1;
            }
        }
    }
    let _ = std::fs::remove_file(&json);

    let c = |name: &str| {
        last.split_whitespace().any(|kv| kv.starts_with(&format!("{name}="))).then(|| counter(&last, name))
    };
    let shown = |v: Option<u64>| v.map_or("n/a".to_string(), |v| v.to_string());
    let (ring_lost, reader_lost) = (c("ringbuf_full_lost"), c("reader_lost"));
    let latencies: Vec<Duration> =
        made.iter().filter_map(|(p, t0, _)| seen.get(p).map(|t| t.saturating_duration_since(*t0))).collect();
    let from_up: Vec<Duration> =
        made.iter().filter_map(|(p, _, t1)| seen.get(p).map(|t| t.saturating_duration_since(*t1))).collect();
    let unseen = made.len() - latencies.len();
    let (p50, p99) = (percentile(latencies.clone(), 50.0), percentile(latencies.clone(), 99.0));
    let (up50, up99) = (percentile(from_up.clone(), 50.0), percentile(from_up.clone(), 99.0));
    let ms = |d: Option<Duration>| d.map_or("n/a".to_string(), |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0));
    let warned = lines.iter().any(|l| l.starts_with("WARNING:") && l.contains("lost"));

    println!("dockexpose under a SYN flood ({flood_time:.1?}, one sender thread, batches of {BATCH}):");
    println!(
        "  sent       {sent} SYNs from {sent} distinct spoofed sources (address and port in {SPOOFED}), {rate:.0}/s{}",
        if cap > 0 { format!(" (capped at {cap}/s)") } else { String::new() }
    );
    let (uplink, bridge) = (c("uplink_packets"), c("bridge_new_flows"));
    println!(
        "  delivered  past the veth {} ({:.0}/s; sent - tx_dropped); seen by the uplink XDP program {} packets, new flows at the bridge {} ({:.0}/s)",
        sent.saturating_sub(veth_dropped),
        sent.saturating_sub(veth_dropped) as f64 / flood_time.as_secs_f64(),
        shown(uplink),
        shown(bridge),
        bridge.unwrap_or(0) as f64 / flood_time.as_secs_f64()
    );
    println!(
        "  conntrack  early_drop {} (unassured entries evicted: the table holds {}), drop {}, insert_failed {}, invalid {}",
        ct("early_drop"),
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max").unwrap_or_default().trim(),
        ct("drop"),
        ct("insert_failed"),
        ct("invalid")
    );
    println!(
        "  recorded   {attempted} attempted + {reached} reached records in the audit log ({:.0} MiB)",
        bytes as f64 / 1048576.0
    );
    println!(
        "  lost       veth tx_dropped {veth_dropped} (before any hook); ring buffer full {}; reader {}{}",
        shown(ring_lost),
        shown(reader_lost),
        if warned { " (the daemon warned about the loss)" } else { "" }
    );
    println!("  counters   {last}");
    println!("  daemon     peak RSS {peak} KiB ({:.1} MiB)", peak as f64 / 1024.0);
    println!(
        "  legit      {} connections every {LEGIT_EVERY:?} during the flood: {} failed to connect, {unseen} not in the log; connect() to record p50 {} p99 {}; connection up to record p50 {} p99 {}",
        made.len() + legit_failed,
        legit_failed,
        ms(p50),
        ms(p99),
        ms(up50),
        ms(up99)
    );
    let goals = [
        (format!("at least {MIN_SOURCES} distinct sources"), verdict(sent >= MIN_SOURCES)),
        ("peak RSS < 64 MiB".to_string(), verdict(peak > 0 && peak < GOAL_RSS_KIB)),
        // A legit connection that could not be made (its SYN or SYN-ACK lost in the
        // flood) has no record to wait for: reported above, not part of this goal.
        (
            "legit connection's connect() to record p99 < 1 s".to_string(),
            verdict(unseen == 0 && p99.is_some_and(|p| p < GOAL_LEGIT_P99)),
        ),
    ];
    println!("  goals:");
    for (what, v) in &goals {
        println!("    {what}: {v}");
    }
    println!(
        "FLOOD SUMMARY: {}/{} goals met; {rate:.0} SYN/s for {:.0} s ({sent} sources), veth dropped {veth_dropped}, ring lost {}, reader lost {}, logged {}, peak RSS {:.1} MiB, legit connect()-to-record p99 {} (from connection up {})",
        goals.iter().filter(|(_, v)| *v == "met").count(),
        goals.len(),
        flood_time.as_secs_f64(),
        shown(ring_lost),
        shown(reader_lost),
        attempted + reached,
        peak as f64 / 1024.0,
        ms(p99),
        ms(up99)
    );
    // Loss must never be silent.
    if ring_lost.unwrap_or(0) + reader_lost.unwrap_or(0) > 0 {
        assert!(warned, "records were lost but the daemon printed no WARNING about it");
    }
}
