//! Drift both ways: an `exposure changed` line naming the process, within seconds.

use super::*;

/// A rule in DOCKER-USER that holds new connections to host port 8080.
const HOLD_8080: [&str; 9] = ["DOCKER-USER", "-p", "tcp", "-m", "conntrack", "--ctorigdstport", "8080", "-j", "DROP"];

#[test]
fn drift_both_ways_is_an_exposure_changed_line_naming_the_process_within_seconds() {
    let test = "drift_both_ways_is_an_exposure_changed_line_naming_the_process_within_seconds";
    if !docker::ready(test) {
        return;
    }
    let e = engine("ud");
    let _web = e.run(&format!("dxe-web-{}", e.n), &["-p", "8080:80"], &e.image, &[]);
    let json = std::env::temp_dir().join(format!("dx-intent-drift-{}.jsonl", run_id()));
    let from = format!("{}/32", e.outside_v4());
    // An hour between scheduled runs: any run within the test is drift's.
    let mut w = e.watch(&["--verify-every", "1h", "--verify-from", &from], json.clone());
    w.wait_for_line("verify (scheduled)", Duration::from_secs(30));

    let changed = |json: &Path, n: usize, timeout: Duration| -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines: Vec<Value> = std::fs::read_to_string(json)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["event"] == "exposure_changed")
                .collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Held by a rule in DOCKER-USER: EXPOSED -> HELD, caused by iptables.
    let t0 = Instant::now();
    let mut child = Command::new("nsenter")
        .args([&format!("--net=/run/netns/{}", e.ns), "iptables", "-I"])
        .args(HOLD_8080)
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let lines = changed(&json, 1, Duration::from_secs(30));
    let held_after = t0.elapsed();
    assert_eq!(lines.len(), 1, "one line for the one port and family that changed: {lines:#?}");
    let l = &lines[0];
    assert_eq!(
        (l["host_port"].as_u64(), l["proto"].as_str(), l["family"].as_str()),
        (Some(8080), Some("tcp"), Some("ipv4")),
        "{l}"
    );
    assert_eq!((l["from"].as_str(), l["to"].as_str()), (Some("EXPOSED"), Some("HELD")), "{l}");
    assert_eq!(l["uplink"], e.uplink.as_str());
    assert_eq!(l["cause"]["kind"], "ruleset", "{l}");
    assert_eq!(l["cause"]["process"], "iptables", "{l}");
    assert_eq!(l["cause"]["pid"], pid, "the pid of the process that changed the ruleset: {l}");
    assert!(l["ts"].is_string());

    // Removed again: HELD -> EXPOSED.
    let t1 = Instant::now();
    e.in_ns(&[&["iptables", "-D"][..], &HOLD_8080[..]].concat());
    let lines = changed(&json, 2, Duration::from_secs(30));
    let open_after = t1.elapsed();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!((lines[1]["from"].as_str(), lines[1]["to"].as_str()), (Some("HELD"), Some("EXPOSED")));
    assert_eq!(lines[1]["cause"]["process"], "iptables");
    eprintln!("drift: change to record {held_after:?} (EXPOSED -> HELD), {open_after:?} (HELD -> EXPOSED)");

    // A burst of 40 rule edits in a few seconds: a few verification runs at most.
    let runs_before = w.lines().iter().filter(|l| l.contains("dockexpose: verify (after")).count();
    for i in 0..20 {
        let port = (40000 + i).to_string();
        e.in_ns(&["iptables", "-A", "DOCKER-USER", "-p", "udp", "--dport", &port, "-j", "DROP"]);
        e.in_ns(&["iptables", "-D", "DOCKER-USER", "-p", "udp", "--dport", &port, "-j", "DROP"]);
    }
    std::thread::sleep(Duration::from_secs(6));
    let runs = w.lines().iter().filter(|l| l.contains("dockexpose: verify (after")).count() - runs_before;
    eprintln!("drift: 40 rule edits gave {runs} verify runs");
    assert!((1..=3).contains(&runs), "40 edits: {runs} runs");
    let alerts = w.lines().iter().filter(|l| l.contains("EXPOSURE CHANGED: 8080/tcp")).count();
    assert_eq!(alerts, 2, "one alert per change");
    let (_, _, _) = w.stop();
    let _ = std::fs::remove_file(&json);
}
