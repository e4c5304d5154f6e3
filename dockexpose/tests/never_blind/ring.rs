//! The ring is never held: a trickle during a flood, and a record waiting for identity
//! across kill -9.

use super::*;

#[test]
fn a_trickle_to_an_address_no_container_holds_never_blinds_the_ring_during_a_flood() {
    let test = "a_trickle_to_an_address_no_container_holds_never_blinds_the_ring_during_a_flood";
    if !docker::ready(test) {
        return;
    }
    let (outside, _web, port) = published_echo("t", 29000);
    let n = outside.n;
    let spoofed = format!("198.19.{n}.0/24");
    assert_unrouted(&spoofed);
    let mut undo = Undo::default();
    sh(&["ip", "route", "add", &spoofed, "via", &outside.v4(2), "dev", &outside.uplink]);
    undo.push(&["ip", "route", "del", &spoofed]);
    let (guest, _accept) = Guest::reachable_from(&outside);
    let w = Watcher::start(&["--uplink", &outside.uplink, "--quiet", "--stats-interval", "0"], json_path("trickle"));

    // One connection every 0.4 s to the guest, for as long as the flood lasts.
    let stop = Arc::new(AtomicBool::new(false));
    let (ns, src, dst, s) =
        (outside.ns.clone(), outside.src4(), SocketAddr::new(guest.addr.parse().unwrap(), 7000), stop.clone());
    // A connection the flood crowds out (its SYN dropped twice in the veth's backlog:
    // the 2 s connect timeout) is no fault of the daemon's: counted, not made.
    let trickle = std::thread::spawn(move || {
        let (mut sports, mut failed) = (Vec::new(), 0usize);
        while !s.load(Ordering::Relaxed) {
            match tcp_connect(&ns, Some(src), dst) {
                Ok(sport) => sports.push(sport),
                Err(_) => failed += 1,
            }
            std::thread::sleep(Duration::from_millis(400));
        }
        (sports, failed)
    });
    std::thread::sleep(Duration::from_secs(2));
    let flood_dst = SocketAddrV4::new(outside.v4(1).parse().unwrap(), port);
    let sent = syn_flood(&outside.ns, [198, 19, n as u8], flood_dst, 300_000, 25_000, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (sports, failed) = trickle.join().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (records, status, lines) = w.stop();
    assert!(status.success());
    let last = lines.iter().find(|l| l.contains("final counters")).expect("final counters");
    let lost = counter(last, "ringbuf_full_lost");
    eprintln!(
        "{test}: {sent} spoofed SYNs, {} trickle connections ({failed} crowded out by the flood); ring lost {lost} ({last})",
        sports.len()
    );
    assert!(sent >= 150_000, "the flood was too slow to mean anything: {sent}");
    assert!(sports.len() >= 10, "too few trickle connections got through to mean anything: {}", sports.len());
    assert_eq!(lost, 0, "the ring lost records while the trickle waited for identity");
    // The guest closes first, so the client may use a source port again at once: each
    // port has as many records as connections were made from it.
    let mut made: std::collections::BTreeMap<u16, usize> = std::collections::BTreeMap::new();
    for sport in &sports {
        *made.entry(*sport).or_default() += 1;
    }
    for (sport, times) in made {
        let r: Vec<_> =
            reached(&records, sport).into_iter().filter(|r| r["src_ip"] == outside.v4(2).as_str()).collect();
        // A crowded-out connect may have reached the guest from a port used again later.
        if failed == 0 {
            assert_eq!(r.len(), times, "trickle connections from port {sport}: {r:?}");
        } else {
            assert!(r.len() >= times, "trickle connections from port {sport}: {r:?}");
        }
        assert!(r.iter().all(|r| r["dst_ip"] == guest.addr.as_str() && r["container"].is_null()), "{r:?}");
    }
    assert!(!guest.ns.is_empty());
}

#[test]
fn a_record_waiting_for_identity_survives_kill_9_without_holding_the_ring() {
    let test = "a_record_waiting_for_identity_survives_kill_9_without_holding_the_ring";
    if !docker::ready(test) {
        return;
    }
    let outside = OutsideHost::new("k");
    let (guest, _accept) = Guest::reachable_from(&outside);
    let (pin_dir, lock) = (
        format!("/sys/fs/bpf/dx17-pending-{}", std::process::id()),
        format!("/run/dockexpose/dx17-pending-{}.lock", std::process::id()),
    );
    let cleanup = |bin: &str| {
        let _ = Command::new(bin).args(["cleanup", "--pin-dir", &pin_dir, "--lock-file", &lock]).output();
        let _ = std::fs::remove_file(&lock);
    };
    let bin = env!("CARGO_BIN_EXE_dockexpose");
    cleanup(bin);
    let args = [
        "--uplink",
        outside.uplink.as_str(),
        "--stats-interval",
        "0",
        "--pin-dir",
        pin_dir.as_str(),
        "--lock-file",
        lock.as_str(),
    ];
    let json = json_path("pending-kill");
    let w = Watcher::start(&args, json.clone());
    let sport = tcp_connect(&outside.ns, Some(outside.src4()), SocketAddr::new(guest.addr.parse().unwrap(), 7000))
        .expect("the guest answers");
    // Killed while the record waits (up to a second) for a name.
    std::thread::sleep(Duration::from_millis(200));
    w.kill9();
    let in_log = |json: &std::path::Path| {
        std::fs::read_to_string(json)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("\"src_port\":{sport}")) && l.contains("\"reached\""))
            .count()
    };
    assert_eq!(in_log(&json), 0, "not written before the kill (it was waiting)");
    let w = Watcher::restart(&args, json.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let (_, status, lines) = w.stop();
    cleanup(bin);
    assert!(status.success());
    assert!(lines.iter().any(|l| l.contains("records the previous daemon held")), "{lines:#?}");
    assert_eq!(in_log(&json), 1, "written once by the next daemon");
}
