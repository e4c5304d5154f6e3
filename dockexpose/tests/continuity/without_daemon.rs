//! Time with no daemon running, or no Docker: records written by the next daemon,
//! beyond the ring's size too, and identity coming back.

use super::*;

#[test]
fn thirty_seconds_without_a_daemon_are_written_by_the_next() {
    if !docker::ready("thirty_seconds_without_a_daemon_are_written_by_the_next") {
        return;
    }
    let story = Story::new("g", 63);
    let w1 = story.start();
    let first = story.connect().expect("bypass");
    std::thread::sleep(Duration::from_millis(300));
    let (_, status, _) = w1.stop();
    assert!(status.success());
    // 30 s with no daemon, connections arriving.
    let traffic = Traffic::start(&story, Duration::from_millis(250));
    std::thread::sleep(Duration::from_secs(30));
    let mut gap_ports = traffic.finish();
    assert!(gap_ports.len() >= 100, "{} connections in 30 s", gap_ports.len());
    let mut w2 = story.start();
    w2.wait_for_line("kernel side resumed", Duration::from_secs(5));
    let last = story.connect().expect("bypass");
    std::thread::sleep(Duration::from_millis(500));
    let (_, status, _) = w2.stop();
    assert!(status.success());
    let records = story.records();
    let s = starts(&records);
    assert_eq!(s.len(), 2);
    assert_eq!(s[1]["kernel_state"], "resumed");
    assert_eq!(
        s[1]["backlog_records"].as_u64(),
        Some(gap_ports.len() as u64 * 2),
        "attempted + reached per connection: {:?}",
        s[1]
    );
    assert_eq!(s[1]["lost_since_last_stop"], 0);
    // The gap's records come after the start record, before the last connection's.
    let pos = |port: u16| records.iter().position(|r| r["src_port"] == port && r["stage"] == "reached").unwrap();
    let start_at = records.iter().position(|r| r["event"] == "daemon_start" && r["kernel_state"] == "resumed").unwrap();
    assert!(gap_ports.iter().all(|p| pos(*p) > start_at && pos(*p) < pos(last)));
    let mut all = vec![first];
    all.append(&mut gap_ports);
    all.push(last);
    let (g, problems) = gap(&records, &story.outside.v4(2), &all);
    report("no_daemon_30s", &g, &problems);
    // Their timestamps are when the kernel saw them, not when they were written.
    let r = records.iter().find(|r| r["src_port"] == all[1] && r["stage"] == "reached").unwrap();
    assert!(
        r["ts"].as_str().unwrap() < s[1]["ts"].as_str().unwrap(),
        "{r} written with the time it was seen, before {}",
        s[1]
    );
}

#[test]
fn docker_going_away_while_pinned_keeps_detection_and_identity_returns() {
    if !docker::ready("docker_going_away_while_pinned_keeps_detection_and_identity_returns") {
        return;
    }
    let story = Story::new("y", 67);
    let sock = std::env::temp_dir().join(format!("dx10-relay-{}.sock", std::process::id()));
    let mut relay = docker::SocketRelay::start(&sock);
    let endpoint = format!("unix://{}", sock.display());
    let mut args = story.args();
    args.extend(["--docker-host".to_string(), endpoint]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut w = Watcher::restart(&args, story.json.clone());
    let traffic = Traffic::start(&story, Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(500));
    relay.stop();
    w.wait_for_line("keeping the kernel side and the last known inventory", Duration::from_secs(5));
    let away = traffic.count();
    std::thread::sleep(Duration::from_secs(2));
    let _relay = docker::SocketRelay::start(&sock);
    let back = Instant::now();
    let found = loop {
        if w.lines().iter().filter(|l| l.contains("Docker inventory: ")).count() >= 2 {
            break Some(back.elapsed());
        }
        if back.elapsed() > Duration::from_secs(5) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = found.unwrap_or_else(|| panic!("identity not back within 5 s: {:?}", w.lines()));
    std::thread::sleep(Duration::from_millis(500));
    let ports = traffic.finish();
    std::thread::sleep(Duration::from_millis(300));
    let (_, status, _) = w.stop();
    assert!(status.success());
    let records = story.records();
    let (g, problems) = gap(&records, &story.outside.v4(2), &ports);
    eprintln!("Docker back after {took:?}; {} connections after it went away", ports.len().saturating_sub(away));
    report("docker_away", &g, &problems);
    // Named before and after; while away, named from the last inventory.
    for p in &ports {
        let r = records.iter().find(|r| r["src_port"] == *p && r["stage"] == "reached").unwrap();
        assert!(r["container"]["name"].as_str().is_some_and(|n| n.starts_with("dx10-y-")), "{r}");
    }
}

#[test]
fn beyond_the_ring_while_no_daemon_runs_every_record_is_written_or_counted_lost() {
    if !docker::ready("beyond_the_ring_while_no_daemon_runs_every_record_is_written_or_counted_lost") {
        return;
    }
    let story = Story::new("o", 71);
    // Spoofed sources in 198.18.72.0/24, routed back into the outside namespace.
    let spoofed = "198.18.72.0/24";
    assert_unrouted(spoofed);
    let mut undo = Undo::default();
    sh(&["ip", "route", "add", spoofed, "via", &story.outside.v4(2), "dev", &story.outside.uplink]);
    undo.push(&["ip", "route", "del", spoofed]);
    let w1 = story.start();
    let (_, status, _) = w1.stop();
    assert!(status.success());
    // 30 000 new connections (60 000 records) into a ring of about 43 000.
    let dst = std::net::SocketAddrV4::new(story.outside.v4(1).parse().unwrap(), story.port);
    let sent = syn_flood(&story.outside.ns, [198, 18, 72], dst, 30_000, 15_000, Duration::from_secs(10));
    assert!(sent >= 29_000, "{sent} SYNs sent");
    std::thread::sleep(Duration::from_millis(500));
    let mut w2 = story.start();
    w2.wait_for_line("kernel side resumed", Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    let start = loop {
        let records = story.records();
        if let Some(s) = starts(&records).get(1).map(|v| (*v).clone()) {
            let backlog = s["backlog_records"].as_u64().unwrap() as usize;
            if records.iter().filter(|r| r["kseq"].is_u64()).count() >= backlog {
                break s;
            }
        }
        assert!(Instant::now() < deadline, "backlog not written within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (_, status, lines) = w2.stop();
    assert!(status.success());
    drop(undo);
    let records = story.records();
    let backlog = start["backlog_records"].as_u64().unwrap();
    let lost = start["lost_since_last_stop"].as_u64().unwrap();
    let capacity = start["ring_bytes"].as_u64().unwrap() / 96;
    assert!(backlog > capacity * 9 / 10, "the ring was full: {backlog} of about {capacity}");
    assert!(lost > 0, "beyond capacity: counted lost");
    // Every number a CPU gave is a record in the log or a record counted lost.
    let since = start["kernel_state_since"].as_str().unwrap().to_string();
    let first = records.iter().find(|r| r["event"] == "daemon_start").unwrap();
    assert_eq!(first["kernel_state_since"].as_str(), Some(since.as_str()));
    let created: u64 = created_secs(&since);
    let mut per_cpu: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in records.iter().filter(|r| r["kseq"].is_u64()) {
        per_cpu.entry(r["cpu"].as_u64().unwrap()).or_default().push(r["kseq"].as_u64().unwrap());
    }
    // What each CPU numbered last (lost records included), from the pinned map.
    let issued = record_seq(&story.pins.version_dir().join("maps/RECORD_SEQ"));
    let mut missing = 0;
    for (cpu, last) in &issued {
        let written = per_cpu.get_mut(cpu).map_or(0, |seqs| {
            seqs.sort_unstable();
            seqs.dedup();
            seqs.len() as u64
        });
        missing += last - (created << 32) - written;
    }
    let final_line = lines.iter().find(|l| l.contains("final counters")).unwrap();
    let ring_lost = counter(final_line, "ringbuf_full_lost");
    eprintln!(
        "GAP ring_overflow: {sent} SYNs while no daemon ran; backlog {backlog} records written, {lost} counted lost at start; sequence gaps {missing}, ringbuf_full_lost {ring_lost}"
    );
    assert_eq!(missing, ring_lost, "every record is in the log or counted lost");
    assert_eq!(lost, ring_lost, "all of it lost while no daemon ran");
}

/// The per-CPU values of the pinned RECORD_SEQ map (bpftool's JSON: a number, or the
/// value's bytes in hex when the map has no BTF).
fn record_seq(path: &Path) -> BTreeMap<u64, u64> {
    let o = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(path).output().expect("bpftool");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let entry = &v[0];
    let values =
        entry["values"].as_array().or_else(|| entry["formatted"]["values"].as_array()).unwrap_or_else(|| panic!("{v}"));
    values
        .iter()
        .map(|c| {
            let value = match &c["value"] {
                Value::Number(n) => n.as_u64().unwrap(),
                Value::Array(bytes) => bytes.iter().rev().fold(0u64, |acc, b| {
                    (acc << 8) | u64::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
                }),
                other => panic!("{other}"),
            };
            (c["cpu"].as_u64().unwrap(), value)
        })
        .collect()
}

/// Seconds since the epoch of "YYYY-MM-DDTHH:MM:SS.ffffffZ" (the daemon's format).
fn created_secs(ts: &str) -> u64 {
    let n = |a: usize, b: usize| ts[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from civil (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19)) as u64
}
