//! The Debian tree the machine boots: the host's release and mirror (both source
//! formats), and the tree built once with debootstrap.

use super::*;

pub(super) fn demanded() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_some()
}

/// The program is installed, or the test is skipped (a failure when the run demands it).
pub(super) fn have(program: &str, package: &str, test: &str) -> bool {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(program).is_file());
    if found {
        return true;
    }
    let why =
        format!("{test}: SKIPPED: {program} not installed (Debian package {package}; `cargo xtask setup` installs it)");
    assert!(!demanded(), "{why}, and this run demands it");
    eprintln!("{why}");
    false
}

/// The host's Debian codename (the tree's glibc must be at least the one the binary
/// was built against: the same release is) and the mirror that apt uses for it, read
/// from /etc/apt at run time (one-line and deb822 sources).
pub(super) fn host_release_and_mirror() -> Option<(String, String)> {
    let os = std::fs::read_to_string("/etc/os-release").ok()?;
    let codename = os.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME="))?.trim_matches('"').to_string();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(uri) = mirror_for(&text, &codename) {
            return Some((codename, uri));
        }
    }
    None
}

/// The first URI of a plain `deb` source carrying suite `codename` exactly.
pub(super) fn mirror_for(sources: &str, codename: &str) -> Option<String> {
    // One-line format: "deb [options] URI SUITE COMPONENTS..."
    for line in sources.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let end = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
            rest.drain(..=end);
        }
        if rest.get(1) == Some(&codename) {
            return rest.first().map(|u| u.to_string());
        }
    }
    // deb822: stanzas separated by blank lines, with Types:, URIs:, Suites:.
    for stanza in sources.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        };
        let (Some(types), Some(uris), Some(suites)) = (field("Types:"), field("URIs:"), field("Suites:")) else {
            continue;
        };
        if types.iter().any(|t| t == "deb") && suites.iter().any(|s| s == codename) {
            return uris.into_iter().next();
        }
    }
    None
}

/// The cached tree: built once (debootstrap into NAME.partial, then renamed, so that an
/// interrupted build is never taken for a tree), rebuilt when INCLUDE changes.
pub(super) fn debian_tree(test: &str) -> Option<PathBuf> {
    let Some((codename, mirror)) = host_release_and_mirror() else {
        let why = format!("{test}: SKIPPED: no Debian codename in /etc/os-release or no apt source for it in /etc/apt");
        assert!(!demanded(), "{why}, and this run demands it");
        eprintln!("{why}");
        return None;
    };
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nspawn");
    let tree = base.join(format!("debian-{codename}"));
    let stamp = tree.join(".dockexpose-tree");
    let wanted = format!("{codename} minbase {INCLUDE}\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        eprintln!("Debian tree: {} (cached)", tree.display());
        return Some(tree);
    }
    let partial = base.join(format!("debian-{codename}.partial"));
    for dir in [&tree, &partial] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("removing {}: {e}", dir.display()));
        }
    }
    std::fs::create_dir_all(&base).unwrap();
    let started = Instant::now();
    eprintln!(
        "Debian tree: debootstrap --variant=minbase --include={INCLUDE} {codename} {} {mirror}",
        partial.display()
    );
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), &codename])
        .arg(&partial)
        .arg(&mirror)
        .output()
        .expect("run debootstrap");
    assert!(
        out.status.success(),
        "debootstrap failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The container shares the host's network namespace and may write its net sysctls
    // (as the daemon does on a host): systemd-sysctl must not apply Debian's defaults
    // (rp_filter, default_qdisc ...) to the host. Nothing in it needs a console.
    for unit in ["systemd-sysctl.service", "getty.target", "console-getty.service"] {
        let link = partial.join("etc/systemd/system").join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    }
    std::fs::write(partial.join(".dockexpose-tree"), &wanted).unwrap();
    std::fs::rename(&partial, &tree).unwrap();
    eprintln!("Debian tree: built in {:.0} s", started.elapsed().as_secs_f64());
    Some(tree)
}

#[test]
fn the_mirror_is_read_from_both_source_formats() {
    let deb822 =
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                  Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
    assert_eq!(mirror_for(deb822, "bookworm").as_deref(), Some("http://mirror.example/debian"));
    assert_eq!(mirror_for(deb822, "trixie"), None);
    let one_line = "# comment\ndeb-src http://src.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://other.example/apt cloud-bookworm main\n\
                    deb [signed-by=/k.gpg] http://mirror.example/debian bookworm main\n";
    assert_eq!(mirror_for(one_line, "bookworm").as_deref(), Some("http://mirror.example/debian"));
}
