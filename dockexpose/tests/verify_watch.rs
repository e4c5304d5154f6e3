//! `dockexpose watch --verify-every` against the real Docker engine: verify's probes
//! from the daemon at start and on a port Docker publishes while it runs, `verified`
//! records and alerts, and none of its own probes reported as outside connections.
//! Needs root and Docker.

mod support;

use std::time::{Duration, Instant};

use support::{craft::craft, docker, *};

/// The records in the audit log so far (the watcher flushes after every wakeup).
fn read_log(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // The last line may be half written: only whole lines.
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Waits for a `verified` record of `host_port`; returns it and when it was seen.
fn wait_verified(path: &std::path::Path, host_port: u16, timeout: Duration) -> (serde_json::Value, Instant) {
    let deadline = Instant::now() + timeout;
    loop {
        let found = read_log(path).into_iter().find(|r| r["stage"] == "verified" && r["host_port"] == host_port);
        if let Some(r) = found {
            return (r, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "no verified record for port {host_port} within {timeout:?}: {:?}",
            read_log(path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn watch_verifies_at_start_and_new_ports_and_never_reports_its_probes() {
    if !docker::ready("watch_verifies_at_start_and_new_ports_and_never_reports_its_probes") {
        return;
    }
    scenario("vw", "xdp", 37000);
}

/// With attempts seen on TCX ingress, the probes (passed up to the stack from the
/// injector) are seen as attempts too: they must still not be reported.
#[test]
fn with_the_tc_uplink_hook_the_probes_are_not_reported_either() {
    if !docker::ready("with_the_tc_uplink_hook_the_probes_are_not_reported_either") {
        return;
    }
    scenario("vt", "tc", 37300);
}

fn scenario(tag: &str, hook: &str, base: u16) {
    let image = docker::echo_image();
    let outside = OutsideHost::new(tag);
    let n = outside.n as u16;
    let (open, dropped, later) = (base + n, base + 1000 + n, base + 2000 + n);
    let name = format!("dx-{tag}atch-{n}");
    let _c = docker::Container::run(
        &name,
        &["-p", &format!("{open}:80"), "-p", &format!("{dropped}:80")],
        &image,
        &["80", "5300"],
    );
    let dropped_s = dropped.to_string();
    let _rule = docker::docker_user_rule(&[
        "-i",
        &outside.uplink,
        "-p",
        "tcp",
        "-m",
        "conntrack",
        "--ctorigdstport",
        &dropped_s,
        "-j",
        "DROP",
    ]);
    std::thread::sleep(Duration::from_millis(500));

    let probe_src = outside.v4(77);
    let from = format!("{probe_src}/32");
    let json = std::env::temp_dir().join(format!("dx-verify-watch-{tag}-{}.jsonl", std::process::id()));
    let started = Instant::now();
    let mut w = Watcher::start(
        &["--uplink", &outside.uplink, "--uplink-hook", hook, "--verify-every", "1h", "--verify-from", &from],
        json.clone(),
    );

    // At start: every published port, within seconds.
    let (exposed, _) = wait_verified(&json, open, Duration::from_secs(10));
    let (held, _) = wait_verified(&json, dropped, Duration::from_secs(2));
    eprintln!("first verified records {} ms after start", started.elapsed().as_millis());
    let h1 = outside.v4(1);
    for (r, verdict) in [(&exposed, "EXPOSED"), (&held, "HELD")] {
        assert_eq!(r["verdict"], verdict, "{r}");
        assert_eq!(r["src_ip"], probe_src.as_str(), "{r}");
        assert_eq!(r["dst_ip"], h1.as_str(), "{r}");
        assert_eq!(r["host_ip"], h1.as_str(), "{r}");
        assert_eq!(r["iface"], outside.uplink.as_str(), "{r}");
        assert_eq!(r["container"]["name"], name.as_str(), "{r}");
        assert_eq!(r["exposure"], "published", "{r}");
        assert!(r["path"].is_null(), "{r}");
        assert!(r["why"].as_str().is_some_and(|w| !w.is_empty()), "{r}");
    }
    // The netfilter trace names the DOCKER-USER rule that dropped it.
    assert!(held["why"].as_str().is_some_and(|w| w.starts_with("dropped by ip filter DOCKER-USER: ")), "{held}");
    let alert = w.wait_for_line("EXPOSED (verified)", Duration::from_secs(5));
    assert_eq!(
        alert,
        format!(
            "EXPOSED (verified) {name} ({image}) {h1}:{open} -> 80/tcp reachable from outside on {}",
            outside.uplink
        )
    );
    let summary = w.wait_for_line("dockexpose: verify (scheduled)", Duration::from_secs(5));
    assert!(summary.contains("1 exposed, 0 through a proxy, 1 held") && summary.contains(" 0 remain"), "{summary}");

    // Within the grace after the run, an outsider spoofs the probe source (a one-packet
    // exploit timed to the schedule): only the probes' exact tuples are the daemon's own,
    // so this one is reported.
    let spoof_port = 43_210;
    craft(
        &outside.ns,
        "tcp4-plain",
        probe_src.parse().unwrap(),
        outside.host4(open),
        spoof_port,
        Duration::from_millis(300),
    );

    // An outsider is still reported while the daemon verifies.
    let sport = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(open))
        .expect("published port reachable from outside");

    // A container started while the watcher runs: its port is verified within seconds.
    let name2 = format!("dx-{tag}atch-new-{n}");
    let _c2 = docker::Container::run(&name2, &["-p", &format!("{later}:80")], &image, &["80", "5300"]);
    let run_at = Instant::now();
    let (new, seen) = wait_verified(&json, later, Duration::from_secs(10));
    eprintln!("new port verified {} ms after `docker run -p` returned", seen.duration_since(run_at).as_millis());
    assert_eq!(new["verdict"], "EXPOSED", "{new}");
    assert_eq!(new["container"]["name"], name2.as_str(), "{new}");
    w.wait_for_line(&format!("EXPOSED (verified) {name2} ({image}) {h1}:{later} -> 80/tcp"), Duration::from_secs(5));
    let summary = w.wait_for_line("dockexpose: verify (new ports", Duration::from_secs(5));
    assert!(summary.contains(&format!("{later}/tcp")), "{summary}");
    // Past the grace after the run, so that its probes' records would have arrived.
    std::thread::sleep(Duration::from_secs(3));

    let (records, status, lines) = w.stop();
    assert!(status.success(), "{status}");
    let ours = outside.own(records.clone());
    let from_probes: Vec<&serde_json::Value> = ours
        .iter()
        .filter(|r| r["src_ip"] == probe_src.as_str() && r["stage"] != "verified" && r["src_port"] != spoof_port)
        .collect();
    assert!(from_probes.is_empty(), "the daemon's own probes were reported as outside connections: {from_probes:#?}");
    assert!(
        ours.iter()
            .any(|r| r["stage"] == "reached" && r["src_ip"] == probe_src.as_str() && r["src_port"] == spoof_port),
        "a packet spoofed from the probe source right after a run is reported: {ours:#?}"
    );
    let verified: Vec<&serde_json::Value> = ours.iter().filter(|r| r["stage"] == "verified").collect();
    // The scheduled run and the new port's, plus any drift run (Docker's own rule
    // changes for the new container move the ground): one record per probe sent.
    let probes_sent: usize = lines
        .iter()
        .filter(|l| l.contains("dockexpose: verify ("))
        .filter_map(|l| l.split_once(" probes on ")?.0.rsplit(' ').next()?.parse::<usize>().ok())
        .sum();
    assert!(
        verified.len() >= 3,
        "at least the scheduled run's 2 and the new port's 1 (IPv4 only: no IPv6 source): {verified:#?}"
    );
    assert_eq!(verified.len(), probes_sent, "one record per probe: {verified:#?}");
    assert!(
        ours.iter().any(|r| r["stage"] == "reached" && r["src_ip"] == outside.v4(2).as_str() && r["src_port"] == sport),
        "the outsider's connection is in the log: {ours:#?}"
    );
    assert!(!records
        .iter()
        .any(|r| r["stage"] != "verified" && (r.get("verdict").is_some() || r.get("why").is_some())));
    let counters = lines.iter().find(|l| l.contains("final counters")).expect("final counters line");
    let probe_records: u64 = counters
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("probe_records="))
        .expect("probe_records in the counters")
        .parse()
        .unwrap();
    assert!(probe_records > 0, "the probes' kernel records were counted: {counters}");
    let _ = std::fs::remove_file(&json);
}
