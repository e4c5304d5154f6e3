//! Bad input gets a clear error naming the problem and the fix, and a non-zero exit.
//! These checks come before anything privileged, so they run without root.

// Only the skip log of `support` (the rest of it is for the root tests).
#[path = "support/skip.rs"]
mod skip;

use std::process::Command;

fn watch(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dockexpose")).arg("watch").args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn unknown_interface_is_named_with_the_fix() {
    let (ok, err) = watch(&["--bridge", "nosuchbr0"]);
    assert!(!ok);
    assert!(err.contains("unknown interface \"nosuchbr0\""), "{err}");
    assert!(err.contains("Fix:"), "{err}");
}

#[test]
fn invalid_cidr_is_named_with_the_reason() {
    let (ok, err) = watch(&["--bridge", "lo", "--trusted", "10.0.0.0/33"]);
    assert!(!ok);
    assert!(err.contains("invalid CIDR \"10.0.0.0/33\" for --trusted"), "{err}");
    assert!(err.contains("longer than 32 bits"), "{err}");
    let (ok, err) = watch(&["--trusted", "not-an-address"]);
    assert!(!ok);
    assert!(err.contains("is not an IPv4 or IPv6 address"), "{err}");
}

#[test]
fn unwritable_json_path_is_named() {
    let (ok, err) = watch(&["--bridge", "lo", "--json", "/nonexistent-dir/audit.json"]);
    assert!(!ok);
    assert!(err.contains("cannot write the JSON audit log /nonexistent-dir/audit.json"), "{err}");
    assert!(err.contains("--json -"), "{err}");
}

#[test]
fn bad_numbers_are_refused_by_the_parser() {
    let (ok, err) = watch(&["--udp-idle", "soon"]);
    assert!(!ok);
    assert!(err.contains("--udp-idle"), "{err}");
    let (ok, err) = watch(&["--bridge", "lo", "--udp-idle", "0"]);
    assert!(!ok);
    assert!(err.contains("--udp-idle"), "{err}");
}

fn dockexpose(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dockexpose")).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("dockexpose-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_bad_config_file_names_the_key_and_the_line_and_stops() {
    let path = temp_file("bad.toml", "[watch]\nudp_idle = 3\nudp_idel = 4\n");
    let (ok, err) = watch(&["--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("udp_idel") && err.contains("line 3") && err.contains(path.to_str().unwrap()), "{err}");
    let (code, _, err) = dockexpose(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("udp_idel") && err.contains("line 3"), "{err}");
    let good = temp_file("good.toml", "[watch]\nudp_idle = 3\n[alerts]\nwindow = 30\n");
    let (code, out, err) = dockexpose(&["config", "check", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("valid"), "{out}");
    let (ok, err) = watch(&["--config", "/nonexistent/dockexpose.toml"]);
    assert!(!ok);
    assert!(err.contains("cannot read the config file /nonexistent/dockexpose.toml"), "{err}");
}

#[test]
fn print_config_shows_command_line_over_environment_over_file() {
    let path = temp_file(
        "layers.toml",
        "[watch]\nudp_idle = 45\nblocked_after = 7\nstats_interval = 9\n[alerts]\nwindow = 120\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_dockexpose"))
        .args(["watch", "--config", path.to_str().unwrap(), "--print-config", "--udp-idle", "10"])
        .env("DOCKEXPOSE_BLOCKED_AFTER", "5")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("udp_idle = 10"), "command line over the file:\n{text}");
    assert!(text.contains("blocked_after = 5"), "environment over the file:\n{text}");
    assert!(text.contains("stats_interval = 9") && text.contains("window = 120"), "the file over defaults:\n{text}");
    assert!(text.contains("uplink_hook = \"tc\""), "defaults:\n{text}");
}

#[test]
fn status_without_a_daemon_says_how_to_start_it_and_exits_2() {
    let (code, _, err) = dockexpose(&["status", "--socket", "/nonexistent/dockexpose.sock"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not running") && err.contains("dockexpose watch"), "{err}");
}

#[test]
fn metrics_on_a_public_address_need_the_explicit_flag() {
    let (ok, err) = watch(&["--bridge", "lo", "--metrics", "0.0.0.0:9464"]);
    assert!(!ok);
    assert!(err.contains("not a loopback address") && err.contains("--metrics-allow-remote"), "{err}");
    let (ok, err) = watch(&["--bridge", "lo", "--metrics", "localhost"]);
    assert!(!ok);
    assert!(err.contains("--metrics \"localhost\""), "{err}");
}

#[test]
fn trusted_networks_that_trust_everything_or_carry_host_bits_are_refused() {
    let (ok, err) = watch(&["--bridge", "lo", "--trusted", "10.8.0.1/0"]);
    assert!(!ok);
    assert!(err.contains("\"10.8.0.1/0\"") && err.contains("every IPv4 address"), "{err}");
    assert!(err.contains("Fix:") && err.contains("10.8.0.1/32"), "{err}");
    let (ok, err) = watch(&["--bridge", "lo", "--trusted", "10.8.0.1/24"]);
    assert!(!ok);
    assert!(err.contains("host bits") && err.contains("10.8.0.0/24"), "{err}");
    // From the environment and from the file alike.
    let out = Command::new(env!("CARGO_BIN_EXE_dockexpose"))
        .args(["watch", "--bridge", "lo"])
        .env("DOCKEXPOSE_TRUSTED", "198.51.100.0/24,::/0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("every IPv6 address"), "{err}");
    let path = temp_file("trust-all.toml", "[watch]\ntrusted = [\"0.0.0.0/0\"]\n");
    let (ok, err) = watch(&["--bridge", "lo", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("every IPv4 address"), "{err}");
    let (code, _, err) = dockexpose(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("watch.trusted") && err.contains("every IPv4 address"), "{err}");
}

#[test]
fn a_trusted_network_wider_than_a_slash_8_is_warned_about() {
    // It is kept (the start then stops on the bad --udp-idle, before anything privileged).
    let (ok, err) = watch(&["--bridge", "lo", "--trusted", "0.0.0.0/1", "--trusted", "fc00::/7", "--udp-idle", "0"]);
    assert!(!ok);
    assert!(err.contains("warning: --trusted 0.0.0.0/1") && err.contains("wider than /8"), "{err}");
    assert!(err.contains("warning: --trusted fc00::/7") && err.contains("wider than /16"), "{err}");
    assert!(err.contains("--udp-idle"), "{err}");
}

#[test]
fn a_bpffs_mount_root_is_refused_as_pin_dir() {
    // The check comes before the other settings' (here a bad --udp-idle).
    if !std::path::Path::new("/sys/fs/bpf").is_dir() {
        skip::skip("a_bpffs_mount_root_is_refused_as_pin_dir", "no /sys/fs/bpf");
        return;
    }
    for dir in ["/sys/fs/bpf", "/sys/fs/bpf/", "/"] {
        let (ok, err) = watch(&["--bridge", "lo", "--pin-dir", dir, "--udp-idle", "0"]);
        assert!(!ok);
        assert!(err.contains("is the root of a") && err.contains("Fix: give a directory of its own"), "{dir}: {err}");
    }
}

#[test]
fn a_closed_stderr_is_no_panic() {
    // stderr a pipe nobody reads any more (a journal gone, `2>&1 | head` done): the
    // warning and the error are not written, and the exit is the error's, not a panic's.
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = Command::new(env!("CARGO_BIN_EXE_dockexpose"))
        .args(["watch", "--bridge", "lo", "--udp-idle", "0"])
        .stderr(std::process::Stdio::from(write))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(1), "{out:?}");
}
