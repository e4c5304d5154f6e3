//! The daemon as a service: continuity across restarts, upgrades and crashes (pinned
//! kernel side adopted, ring resumed, records at least once with detectable
//! duplicates), the one-daemon lock, and readiness for the service manager.

pub mod continuity;
pub mod lock;
pub mod notify;
pub mod pending;
pub mod release;

/// `dockexpose cleanup`: removes what dockexpose pinned (links first: the programs detach).
pub fn cleanup(args: &crate::cli::CleanupArgs) -> crate::error::Result<()> {
    // A running daemon holds the lock: removing its pins under it would detach it.
    // The pin directory's own lock too: a daemon started with another --lock-file.
    let pins = args.pin_dir.is_dir().then_some(args.pin_dir.as_path());
    if let Some(root) = pins {
        crate::kernel::pins::check_bpffs(root)?;
        crate::kernel::pin_root::check_pin_root(root)?;
    }
    let _lock = lock::DaemonLock::acquire_with_pins(&args.lock_file, pins)?;
    // What killed verify runs left (their sentinels gone too): pins, trace tables, veths.
    let verify_left = crate::verify::sentinel::remove_stale();
    if verify_left > 0 {
        crate::say_out!("dockexpose cleanup: removed {verify_left} objects killed verify runs left (guard pins, trace tables, veths)");
    }
    // Kernels without TCX: our cls_bpf filters hold no pin; find them by name on every
    // interface, then the clsact qdiscs dockexpose made (marked under the pins).
    let filters = crate::kernel::cls_bpf::remove_everywhere();
    if !filters.is_empty() {
        crate::say_out!("dockexpose cleanup: removed the cls_bpf filters of dockexpose on {}", filters.join(", "));
    }
    let mut qdiscs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&args.pin_dir) {
        for dir in entries.flatten().map(|e| e.path()).filter(|p| crate::kernel::pin_root::is_ours(p)) {
            qdiscs.extend(crate::kernel::cls_bpf::release_marked(&dir));
        }
    }
    if !qdiscs.is_empty() {
        crate::say_out!("dockexpose cleanup: removed the clsact qdisc dockexpose had added on {}", qdiscs.join(", "));
    }
    let removed = crate::kernel::pins::cleanup(&args.pin_dir)?;
    if removed.is_empty() {
        crate::say_out!("dockexpose cleanup: nothing pinned at {}", args.pin_dir.display());
    } else {
        crate::say_out!(
            "dockexpose cleanup: removed {} pinned objects under {} ({})",
            removed.len(),
            args.pin_dir.display(),
            removed.join(", ")
        );
    }
    Ok(())
}
