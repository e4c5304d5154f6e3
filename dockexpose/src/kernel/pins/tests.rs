//! Unit tests of pins.rs.

use super::*;

#[test]
fn the_layout_version_is_stable_and_salted_apart() {
    let v = layout_version(None);
    assert_eq!(v.len(), 13);
    assert!(v.starts_with('v'));
    assert_eq!(v, layout_version(None));
    assert_eq!(v, layout_version(Some("")));
    assert_ne!(v, layout_version(Some("other")));
}

#[test]
fn the_layout_covers_record_fields_and_map_shapes() {
    let d = layout_description();
    assert!(d.starts_with("revision:1;ConnEvent:88:"), "{d}");
    assert!(d.contains("EVENTS:RingBuf:0:0:4194304;"), "{d}");
    assert!(d.contains("ATTEMPTS:LruHash:40:16:65536;"), "{d}");
    let names: Vec<&str> = expected_maps().iter().map(|m| m.name).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "each map once");
}

#[test]
fn pin_paths_name_program_and_interface() {
    let d = PinDir::new(Path::new("/sys/fs/bpf/dockexpose"), "v0123456789ab".into());
    assert_eq!(d.link("bridge_egress", 7), Path::new("/sys/fs/bpf/dockexpose/v0123456789ab/links/bridge_egress@7"));
    assert_eq!(d.map("EVENTS"), Path::new("/sys/fs/bpf/dockexpose/v0123456789ab/maps/EVENTS"));
}

#[test]
fn a_directory_outside_bpffs_is_refused_with_the_fix() {
    let e = check_bpffs(Path::new("/tmp/dockexpose-not-bpffs")).unwrap_err().to_string();
    assert!(e.contains("mount -t bpf"), "{e}");
}
