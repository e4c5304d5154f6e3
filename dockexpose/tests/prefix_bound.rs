//! More host addresses than the kernel's prefix tries hold never end the daemon (root).
//! In a namespace of its own: a bridge, and a veth holding 16 500 IPv6
//! addresses (one trie holds 16 384 per family). The daemon starts, says what it left
//! out, reports itself degraded, and keeps running. Names dx17p*, 10.251.118.0/24.

mod support;

use std::{io::Write, process::Command, time::Duration};

use support::*;

const ADDRESSES: u32 = 16_500;

#[test]
fn more_host_prefixes_than_the_tries_hold_degrade_and_never_end_the_daemon() {
    if !privileged("more_host_prefixes_than_the_tries_hold_degrade_and_never_end_the_daemon") {
        return;
    }
    let id = std::process::id() % 10_000;
    let ns = format!("dx17p{id}");
    let mut undo = Undo::default();
    sh(&["ip", "netns", "add", &ns]);
    undo.push(&["ip", "netns", "del", &ns]);
    for cmd in [
        "link add br0 type bridge",
        "addr add 10.251.118.1/24 dev br0",
        "link set br0 up",
        "link set lo up",
        "link add d0 type veth peer name d1",
        "link set d0 up",
    ] {
        let mut args = vec!["ip", "-n", &ns];
        args.extend(cmd.split(' '));
        sh(&args);
    }
    let mut batch =
        Command::new("ip").args(["-n", &ns, "-b", "-"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    {
        let mut stdin = batch.stdin.take().unwrap();
        for i in 0..ADDRESSES {
            writeln!(stdin, "addr add fd42:251:118:{:x}::{:x}/128 dev d0 nodad", i >> 12, (i & 0xfff) + 1).unwrap();
        }
    }
    assert!(batch.wait().unwrap().success());
    let socket = std::env::temp_dir().join(format!("dx17p-{id}.sock"));
    let socket_arg = socket.to_str().unwrap();
    let mut w = Watcher::start_in_netns(
        &ns,
        &["--no-docker", "--no-pin", "--bridge", "br0", "--stats-interval", "0", "--status-socket", socket_arg],
        json_path("dx17p"),
    );
    let json = w.json.clone();
    let warning = w.wait_for_line("left out of the kernel's tries", Duration::from_secs(5));
    assert!(warning.contains("16384 per address family"), "{warning}");
    let out = Command::new(env!("CARGO_BIN_EXE_dockexpose"))
        .args(["status", "--socket", socket_arg, "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "degraded:\n{text}");
    assert!(text.contains("over the kernel's bound and left out"), "{text}");
    // The next host refreshes leave it running.
    std::thread::sleep(Duration::from_secs(6));
    assert!(w.is_running(), "{:?}", w.lines());
    let (_, status, lines) = w.stop();
    assert!(status.success(), "{lines:?}");
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&json);
}
