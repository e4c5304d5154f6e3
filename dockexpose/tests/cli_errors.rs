//! Bad input gets a clear error naming the problem and the fix, and a non-zero exit.
//! These checks come before anything privileged, so they run without root.

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
