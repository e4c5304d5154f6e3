//! A daemon that stops (kill -9, SIGTERM and a second binary, a crash before release)
//! and the next one that carries on: no record lost.

use super::*;

#[test]
fn kill_9_mid_traffic_then_restart_loses_nothing() {
    if !docker::ready("kill_9_mid_traffic_then_restart_loses_nothing") {
        return;
    }
    let story = Story::new("k", 61);
    let w1 = story.start();
    let traffic = Traffic::start(&story, Duration::from_millis(10));
    while traffic.count() < 100 {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Killed in the middle of traffic: records in flight were read, maybe written,
    // but their ring space never released.
    w1.kill9();
    let at_kill = traffic.count();
    std::thread::sleep(Duration::from_secs(1));
    let mut w2 = story.start();
    w2.wait_for_line("kernel side resumed", Duration::from_secs(5));
    let before = traffic.count();
    while traffic.count() < before + 100 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ports = traffic.finish();
    std::thread::sleep(Duration::from_millis(500));
    let (_, status, _) = w2.stop();
    assert!(status.success());
    let records = story.records();
    let s = starts(&records);
    assert_eq!(s.len(), 2, "{s:#?}");
    assert_eq!((s[0]["kernel_state"].as_str(), s[1]["kernel_state"].as_str()), (Some("fresh"), Some("resumed")));
    assert_eq!(s[1]["previous_stop"], "crash", "a SIGKILL leaves the running mark: {:?}", s[1]);
    assert_eq!(s[1]["lost_since_last_stop"], 0);
    let (g, problems) = gap(&records, &story.outside.v4(2), &ports);
    eprintln!("{} connections while no daemon ran (killed at {at_kill})", before - at_kill);
    report("kill_9", &g, &problems);
}

#[test]
fn sigterm_then_a_second_binary_adopts_links_and_ring() {
    if !docker::ready("sigterm_then_a_second_binary_adopts_links_and_ring") {
        return;
    }
    let story = Story::new("u", 62);
    // The "new version": another copy of the binary, started from elsewhere.
    let dir = std::env::temp_dir().join(format!("dx10-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("dockexpose-next");
    std::fs::copy(BIN, &copy).unwrap();
    let w1 = story.start();
    let traffic = Traffic::start(&story, Duration::from_millis(20));
    while traffic.count() < 50 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let links_before = link_programs(&story.pins.version_dir());
    let (_, status, lines) = w1.stop();
    assert!(status.success());
    assert!(lines.iter().any(|l| l.contains("the kernel side stays attached")), "{lines:#?}");
    // Between the two: the kernel keeps recording.
    let at_stop = traffic.count();
    std::thread::sleep(Duration::from_secs(1));
    // Connections made from here on may come after the new daemon measured its
    // backlog: the gap, for that figure, ends here.
    let at_restart = traffic.count();
    let mut w2 = story.start_cmd(Command::new(&copy));
    w2.wait_for_line("kernel side resumed", Duration::from_secs(5));
    w2.wait_for_line("the previous daemon's pinned link, program replaced", Duration::from_secs(5));
    let links_after = link_programs(&story.pins.version_dir());
    let before = traffic.count();
    while traffic.count() < before + 50 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ports = traffic.finish();
    std::thread::sleep(Duration::from_millis(500));
    let (_, status, _) = w2.stop();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);

    // Same links (never detached), new programs behind them.
    assert!(!links_before.is_empty());
    for (pin, (link, prog)) in &links_before {
        let (link2, prog2) =
            links_after.get(pin).unwrap_or_else(|| panic!("{pin} gone after the upgrade: {links_after:?}"));
        assert_eq!(link, link2, "{pin}: the link itself is kept");
        assert_ne!(prog, prog2, "{pin}: its program is replaced by the new daemon's");
    }
    let records = story.records();
    let s = starts(&records);
    assert_eq!(s.len(), 2);
    assert_eq!((s[1]["kernel_state"].as_str(), s[1]["previous_stop"].as_str()), (Some("resumed"), Some("clean")));
    let backlog = s[1]["backlog_records"].as_u64().unwrap();
    let gap_connections = (at_restart - at_stop) as u64;
    assert!(
        backlog >= gap_connections * 2 - 2,
        "the ring held the gap's records: backlog {backlog}, {gap_connections} connections"
    );
    assert!(records.iter().any(|r| r["event"] == "daemon_stop" && r["kernel_side"] == "kept"));
    let (g, problems) = gap(&records, &story.outside.v4(2), &ports);
    eprintln!("{gap_connections} connections while no daemon ran; backlog at start {backlog} records");
    report("sigterm_upgrade", &g, &problems);
}

#[test]
fn records_written_but_not_released_before_a_crash_come_back_flagged() {
    if !docker::ready("records_written_but_not_released_before_a_crash_come_back_flagged") {
        return;
    }
    let story = Story::new("f", 70);
    // A daemon that writes but never releases (the fault hook): its SIGKILL leaves
    // every record it wrote in the ring, as a crash right after a write would.
    let mut cmd = Command::new(BIN);
    cmd.env("DOCKEXPOSE_FAULT_NEVER_RELEASE", "1");
    let mut w1 = story.start_cmd(cmd);
    let first: Vec<u16> = (0..20).map(|_| story.connect().expect("bypass")).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while story.records().iter().filter(|r| r["stage"] == "reached").count() < first.len() {
        assert!(Instant::now() < deadline && w1.is_running(), "records not written");
        std::thread::sleep(Duration::from_millis(50));
    }
    w1.kill9();
    let mut w2 = story.start();
    w2.wait_for_line("kernel side resumed", Duration::from_secs(5));
    let after: Vec<u16> = (0..5).map(|_| story.connect().expect("bypass")).collect();
    std::thread::sleep(Duration::from_millis(500));
    let (_, status, _) = w2.stop();
    assert!(status.success());
    let records = story.records();
    let s = starts(&records);
    assert_eq!(
        s[1]["backlog_records"].as_u64(),
        Some(first.len() as u64 * 2),
        "everything written is still in the ring: {}",
        s[1]
    );
    let mut all = first.clone();
    all.extend(after);
    let (g, problems) = gap(&records, &story.outside.v4(2), &all);
    report("written_not_released", &g, &problems);
    assert_eq!(g.flagged, first.len() * 2, "each record written before the crash comes back once, flagged");
}
