//! What the next daemon adopts and what it refuses: a changed layout or bogus pins, a
//! second daemon on the same ring, links it does not claim, XDP links, detach on exit.

use super::*;

#[test]
fn a_layout_change_or_bogus_pins_start_fresh_and_say_so() {
    if !docker::ready("a_layout_change_or_bogus_pins_start_fresh_and_say_so") {
        return;
    }
    let story = Story::new("r", 64);
    let w1 = story.start();
    let old_dir = story.pins.version_dir();
    let (_, status, _) = w1.stop();
    assert!(status.success());
    // A build with another layout (the hidden salt stands for one).
    let mut cmd = Command::new(BIN);
    cmd.env("DOCKEXPOSE_LAYOUT_SALT", "dx10-next-layout");
    let mut w2 = story.start_cmd(cmd);
    w2.wait_for_line("kernel state reset", Duration::from_secs(5));
    assert!(!old_dir.exists(), "the old layout's pins are removed (its programs detached)");
    let new_dir = story.pins.version_dir();
    assert_ne!(new_dir, old_dir);
    let after_reset = story.connect().expect("bypass");
    std::thread::sleep(Duration::from_millis(300));
    let (_, status, _) = w2.stop();
    assert!(status.success());

    // Bogus pins: a map of the wrong shape where FLOWS should be.
    let flows = new_dir.join("maps/FLOWS");
    std::fs::remove_file(&flows).unwrap();
    let o = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&flows)
        .args(["type", "hash", "key", "4", "value", "4", "entries", "16", "name", "FLOWS"])
        .output()
        .expect("bpftool");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut cmd = Command::new(BIN);
    cmd.env("DOCKEXPOSE_LAYOUT_SALT", "dx10-next-layout");
    let mut w3 = story.start_cmd(cmd);
    w3.wait_for_line("kernel state reset", Duration::from_secs(5));
    let after_bogus = story.connect().expect("bypass");
    std::thread::sleep(Duration::from_millis(300));
    let (_, status, _) = w3.stop();
    assert!(status.success());

    let records = story.records();
    let resets: Vec<&Value> = records.iter().filter(|r| r["event"] == "kernel_state_reset").collect();
    assert_eq!(resets.len(), 2, "{resets:#?}");
    assert!(resets[0]["reason"].as_str().unwrap().contains("layout"), "{}", resets[0]);
    assert!(resets[1]["reason"].as_str().unwrap().contains("map FLOWS is"), "{}", resets[1]);
    let s = starts(&records);
    let states: Vec<&str> = s.iter().map(|r| r["kernel_state"].as_str().unwrap()).collect();
    assert_eq!(states, ["fresh", "reset", "reset"]);
    let (g, problems) = gap(&records, &story.outside.v4(2), &[after_reset, after_bogus]);
    report("layout_reset", &g, &problems);
    // A fresh ring numbers above the old one: no (boot, cpu, kseq) repeats.
    let mut names: Vec<(String, u64, u64)> = records
        .iter()
        .filter(|r| r["kseq"].is_u64())
        .map(|r| (r["boot_id"].as_str().unwrap().to_string(), r["cpu"].as_u64().unwrap(), r["kseq"].as_u64().unwrap()))
        .collect();
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "record names are unique across resets");
}

#[test]
fn a_second_daemon_on_the_same_ring_is_refused_naming_the_first() {
    if !docker::ready("a_second_daemon_on_the_same_ring_is_refused_naming_the_first") {
        return;
    }
    let story = Story::new("l", 65);
    let w1 = story.start();
    let args = story.args();
    let out = Command::new(BIN).arg("watch").args(&args).args(["--json", "/dev/null"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("another dockexpose (pid {})", w1.pid())), "{err}");
    assert!(err.contains("Fix:"), "{err}");
    // cleanup refuses too while it runs.
    let out = Command::new(BIN)
        .args(["cleanup", "--pin-dir", &story.pins.dir, "--lock-file", &story.pins.lock])
        .output()
        .unwrap();
    assert!(!out.status.success(), "cleanup under a running daemon: {}", String::from_utf8_lossy(&out.stdout));
    let sport = story.connect().expect("bypass");
    std::thread::sleep(Duration::from_millis(300));
    let (_, status, _) = w1.stop();
    assert!(status.success());
    assert!(story.records().iter().any(|r| r["src_port"] == sport && r["stage"] == "reached"));
    // Once it stopped, cleanup removes everything and the programs detach.
    let out = Command::new(BIN)
        .args(["cleanup", "--pin-dir", &story.pins.dir, "--lock-file", &story.pins.lock])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!Path::new(&story.pins.dir).exists());
    assert!(!tcx_programs(&story.outside.uplink, false).iter().any(|p| p.starts_with("uplink")), "detached by cleanup");
}

#[test]
fn detach_on_exit_leaves_nothing() {
    if !docker::ready("detach_on_exit_leaves_nothing") {
        return;
    }
    let story = Story::new("d", 66);
    let mut args = story.args();
    args.push("--detach-on-exit".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let w = Watcher::restart(&args, story.json.clone());
    assert_eq!(tcx_programs(&story.outside.uplink, false), ["uplink_ingress"]);
    let (_, status, lines) = w.stop();
    assert!(status.success());
    assert!(lines.iter().any(|l| l.contains("detached from")), "{lines:#?}");
    assert!(tcx_programs(&story.outside.uplink, false).is_empty());
    assert!(!Path::new(&story.pins.dir).exists(), "pins removed");
    assert!(story.records().iter().any(|r| r["event"] == "daemon_stop" && r["kernel_side"] == "detached"));
}

#[test]
fn links_the_next_daemon_does_not_claim_are_detached() {
    if !privileged("links_the_next_daemon_does_not_claim_are_detached") {
        return;
    }
    let pins = Pins::new("c");
    let id = std::process::id() % 1000;
    let (keep, drop_) = (format!("dx10ck{id}"), format!("dx10cd{id}"));
    let mut undo = Undo::default();
    for (i, b) in [&keep, &drop_].into_iter().enumerate() {
        let net = format!("10.251.{}.0/24", 73 + i);
        assert_unrouted(&net);
        sh(&["ip", "link", "add", b, "type", "bridge"]);
        undo.push(&["ip", "link", "del", b]);
        sh(&["ip", "addr", "add", &format!("10.251.{}.1/24", 73 + i), "dev", b]);
        sh(&["ip", "link", "set", b, "up"]);
    }
    let json = json_path("dx10-claim");
    let common =
        ["--no-docker", "--stats-interval", "0", "--pin-dir", pins.dir.as_str(), "--lock-file", pins.lock.as_str()];
    let mut a = common.to_vec();
    a.extend(["--bridge", keep.as_str(), "--bridge", drop_.as_str()]);
    let (_, status, _) = Watcher::restart(&a, json.clone()).stop();
    assert!(status.success());
    assert_eq!(tcx_programs(&drop_, true), ["bridge_egress"], "kept attached after SIGTERM");
    let mut b = common.to_vec();
    b.extend(["--bridge", keep.as_str()]);
    let mut w = Watcher::restart(&b, json.clone());
    // Until claimed or released, the previous daemon's program keeps recording there.
    assert_eq!(tcx_programs(&drop_, true), ["bridge_egress"]);
    w.wait_for_line("is not watched now: detached", Duration::from_secs(25));
    assert!(tcx_programs(&drop_, true).is_empty(), "released");
    assert_eq!(tcx_programs(&keep, true), ["bridge_egress"], "claimed: still attached");
    let links: Vec<String> = std::fs::read_dir(pins.version_dir().join("links"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(links.len(), 2, "only the kept bridge's two links stay pinned: {links:?}");
    let (_, status, _) = w.stop();
    assert!(status.success());
    let _ = std::fs::remove_file(&json);
    drop(pins);
    assert!(tcx_programs(&keep, true).is_empty(), "cleanup detached the rest");
}

#[test]
fn xdp_links_are_adopted_too_and_dropped_when_the_hook_changes() {
    if !docker::ready("xdp_links_are_adopted_too_and_dropped_when_the_hook_changes") {
        return;
    }
    let story = Story::new("x", 74);
    let start = |hook: &str| {
        let mut args = story.args();
        args.extend(["--uplink-hook".to_string(), hook.to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Watcher::restart(&args, story.json.clone())
    };
    let (_, status, _) = start("xdp").stop();
    assert!(status.success());
    assert!(xdp_attached(&story.outside.uplink), "the XDP link stays attached after SIGTERM");
    let xdp_pin =
        format!("uplink_xdp@{}", sh(&["cat", &format!("/sys/class/net/{}/ifindex", story.outside.uplink)]).trim());
    let before = link_programs(&story.pins.version_dir());
    let during = story.connect().expect("bypass");
    let mut w = start("xdp");
    w.wait_for_line("the previous daemon's pinned link, program replaced", Duration::from_secs(5));
    let after = link_programs(&story.pins.version_dir());
    let (b, a) = (before.get(&xdp_pin).unwrap(), after.get(&xdp_pin).unwrap());
    assert_eq!(b.0, a.0, "the same XDP link");
    assert_ne!(b.1, a.1, "its program replaced");
    let (_, status, _) = w.stop();
    assert!(status.success());
    // Back to the default hook: the pinned XDP link goes, TCX ingress takes over.
    let (_, status, _) = start("tc").stop();
    assert!(status.success());
    assert!(!xdp_attached(&story.outside.uplink), "the XDP link of the other hook is detached");
    assert_eq!(tcx_programs(&story.outside.uplink, false), ["uplink_ingress"]);
    let records = story.records();
    let (g, problems) = gap(&records, &story.outside.v4(2), &[during]);
    report("xdp_adoption", &g, &problems);
}
