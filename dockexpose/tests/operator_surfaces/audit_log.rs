//! The audit log through logrotate and a full disk, and SIGHUP reloading the config.

use super::*;

#[test]
fn the_audit_log_follows_logrotate_and_survives_a_full_disk() {
    if !privileged("the_audit_log_follows_logrotate_and_survives_a_full_disk") {
        return;
    }
    let bed = Bed::new("lg");
    let _c1 = Services::start(&bed.c1_ns, C_TCP, C_UDP);
    let dir = temp_dir("tmpfs");
    let fs = Tmpfs::mount(&dir.join("fs"), "256k");
    let log = fs.0.join("audit.jsonl");
    let socket = dir.join("dockexpose.sock");
    let mut w = Watcher::start(
        &[
            "--bridge",
            &bed.bridge,
            "--no-uplinks",
            "--stats-interval",
            "0",
            "--quiet",
            "--status-socket",
            socket.to_str().unwrap(),
        ],
        log.clone(),
    );
    let src = Some(bed.outside.v4(2).parse().unwrap());
    let connect = || tcp_connect(&bed.outside.ns, src, bed.host_tcp_v4()).expect("outside reaches the container");

    // The real logrotate with the shipped snippet (its path and its signal aimed at
    // this daemon): rename + create, then SIGUSR1; the next record goes to the new file.
    let first = connect();
    assert!(within(Duration::from_secs(5), || has_port(&log, first).then_some(())).is_some(), "first record written");
    let snippet = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/logrotate/dockexpose"))
        .unwrap()
        .replace("/var/log/dockexpose/audit.jsonl", log.to_str().unwrap())
        .lines()
        .map(|l| if l.contains("systemctl kill") { format!("        kill -USR1 {}", w.pid()) } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(snippet.contains("create 0640") && !snippet.lines().any(|l| l.trim() == "copytruncate"), "{snippet}");
    let conf = dir.join("logrotate.conf");
    std::fs::write(&conf, format!("{snippet}\n")).unwrap();
    let require = std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_some();
    let have =
        Command::new("sh").args(["-c", "command -v logrotate"]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(have || !require, "logrotate is not installed: run `cargo xtask setup`");
    assert!(have, "logrotate is not installed: run `cargo xtask setup`");
    sh(&["logrotate", "-f", "-s", dir.join("logrotate.state").to_str().unwrap(), conf.to_str().unwrap()]);
    w.wait_for_line("SIGUSR1: audit log", Duration::from_secs(5));
    let rotated = fs.0.join("audit.jsonl.1");
    let second = connect();
    assert!(
        within(Duration::from_secs(5), || has_port(&log, second).then_some(())).is_some(),
        "the new file gets the next record"
    );
    assert!(has_port(&rotated, first) && !has_port(&rotated, second), "the old file keeps only what came before");
    std::fs::remove_file(&rotated).unwrap();

    // The disk fills: detection goes on, the records are held (in memory and in the
    // ring, which is not released past them), and it is said.
    let filler = fs.0.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=4k"])
        .stderr(Stdio::null())
        .status();
    // tmpfs fills page by page: connect until a write fails.
    let mut made = Vec::new();
    let failed = within(Duration::from_secs(30), || {
        made.push(connect());
        w.lines().iter().any(|l| l.contains("WARNING: writing the audit log")).then_some(())
    });
    assert!(failed.is_some(), "no write failure said after {} connections: {:?}", made.len(), w.lines());
    // 30 more while it is full.
    for _ in 0..30 {
        made.push(connect());
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(w.is_running(), "a full disk does not stop the daemon");
    let (code, out, _) = dockexpose(&["status", "--socket", socket.to_str().unwrap(), "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(code, Some(1), "degraded while the log fails: {:#}", report["health"]);
    let audit = &report["health"]["audit"];
    assert_eq!(audit["failing"], true);
    assert!(audit["lines_held"].as_u64().unwrap() >= 30, "the held records are said: {audit:#}");
    assert!(audit["ring_bytes_unreleased"].as_u64().unwrap() > 0, "the ring is held: {audit:#}");
    assert_eq!(report["health"]["losses"]["audit_lines_lost"], 0, "{:#}", report["health"]);

    // Space returns: everything held is written, and it is said.
    std::fs::remove_file(&filler).unwrap();
    let after = connect();
    w.wait_for_line("is written again", Duration::from_secs(10));
    assert!(within(Duration::from_secs(5), || has_port(&log, after).then_some(())).is_some(), "writing resumed");
    let written = records(&log);
    assert!(written.iter().all(|r| r["schema"] == 1), "only whole lines in the file");
    let missing: Vec<u16> = made.iter().copied().filter(|p| !has_port(&log, *p)).collect();
    eprintln!(
        "full disk: {} connections made while it filled and was full, {} missing from the log",
        made.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "every connection made while the disk was full is in the log: missing {missing:?}");
    let (records, status, _) = w.stop();
    assert!(status.success());
    assert!(records.iter().any(|r| r["src_port"] == after));
}

#[test]
fn sighup_reloads_the_config_and_keeps_the_old_one_when_the_file_is_bad() {
    if !privileged("sighup_reloads_the_config_and_keeps_the_old_one_when_the_file_is_bad") {
        return;
    }
    let bed = Bed::new("hu");
    let _c1 = Services::start(&bed.c1_ns, C_TCP, C_UDP);
    let dir = temp_dir("reload");
    let config = dir.join("dockexpose.toml");
    std::fs::write(&config, "[watch]\ntrusted = []\nstats_interval = 0\n").unwrap();
    let log = dir.join("audit.jsonl");
    let mut w = Watcher::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--bridge",
            &bed.bridge,
            "--no-uplinks",
            "--status-socket",
            dir.join("s.sock").to_str().unwrap(),
        ],
        log.clone(),
    );
    assert!(
        w.lines().iter().any(|l| l.contains("configuration from") && l.contains("dockexpose.toml")),
        "{:?}",
        w.lines()
    );
    let from = |host: u32| {
        tcp_connect(&bed.outside.ns, Some(bed.outside.v4(host).parse().unwrap()), bed.host_tcp_v4()).expect("connect")
    };

    let before = from(2);
    assert!(
        within(Duration::from_secs(5), || has_port(&log, before).then_some(())).is_some(),
        "reported before the reload"
    );

    // The .2 source becomes trusted: not reported any more; .3 still is.
    std::fs::write(
        &config,
        format!("[watch]\ntrusted = [\"{}/32\"]\nstats_interval = 0\n[alerts]\nwindow = 30\n", bed.outside.v4(2)),
    )
    .unwrap();
    unsafe { libc::kill(w.pid() as i32, libc::SIGHUP) };
    let said = w.wait_for_line("SIGHUP: configuration reloaded", Duration::from_secs(5));
    assert!(said.contains("1 trusted networks") && said.contains("alert window 30 s"), "{said}");
    let trusted = from(2);
    let other = from(3);
    assert!(
        within(Duration::from_secs(5), || has_port(&log, other).then_some(())).is_some(),
        "an untrusted source is still reported"
    );
    assert!(!has_port(&log, trusted), "the newly trusted source is not reported");

    // A bad file: the running configuration stays, and the reason is given.
    std::fs::write(&config, "[watch]\ntrusted = []\nstats_intervall = 0\n").unwrap();
    unsafe { libc::kill(w.pid() as i32, libc::SIGHUP) };
    w.wait_for_line("the configuration was not reloaded", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    let said = w.lines().join("\n");
    assert!(said.contains("stats_intervall") && said.contains("line 3"), "{said}");
    assert!(w.is_running());
    let still_trusted = from(2);
    let still_reported = from(3);
    assert!(
        within(Duration::from_secs(5), || has_port(&log, still_reported).then_some(())).is_some(),
        "detection goes on"
    );
    assert!(!has_port(&log, still_trusted), "the previous configuration still holds");

    // A change that needs a restart is said, not half-applied.
    std::fs::write(
        &config,
        format!("[watch]\ntrusted = [\"{}/32\"]\nstats_interval = 0\nudp_idle = 5\n", bed.outside.v4(2)),
    )
    .unwrap();
    unsafe { libc::kill(w.pid() as i32, libc::SIGHUP) };
    let said = w.wait_for_line("applied at the next restart", Duration::from_secs(5));
    assert!(said.contains("watch.udp_idle"), "{said}");
    let (_, status, _) = w.stop();
    assert!(status.success());
}
