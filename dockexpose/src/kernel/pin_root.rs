//! The pin root is shared ground: what dockexpose may remove there, and what it
//! refuses to use.
//!
//! A bpffs mount root (`/sys/fs/bpf` itself) is refused as `--pin-dir`: other tools
//! pin there, and their directories are not ours to remove. Under any root, only the
//! layout directories dockexpose made are removed or reset: a directory is ours when
//! its name is `v` and 12 hex digits (`pins::layout_version`) *and* it holds the mark
//! directory dockexpose makes in it first thing (bpffs holds only directories and BPF
//! objects, and refuses names with a dot: the mark is an empty directory,
//! `made-by-dockexpose`). A directory made before
//! the mark existed is recognised by its record ring pinned at `maps/EVENTS`. A name
//! alone proves nothing: another tool may well version its pins `v1`, or `v` + a hash.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapType};
use dockexpose_common::map_names;

use crate::error::{Error, Result};

/// The mark inside each layout directory dockexpose makes.
pub const OWNER_MARK: &str = "made-by-dockexpose";

/// Whether `name` has the shape of a layout directory: `v` and 12 lowercase hex digits.
pub fn is_layout_name(name: &str) -> bool {
    name.len() == 13
        && name.starts_with('v')
        && name[1..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `dir`, an entry of the pin root, is a layout directory dockexpose made.
pub fn is_ours(dir: &Path) -> bool {
    let Some(name) = dir.file_name().and_then(|n| n.to_str()) else { return false };
    if !is_layout_name(name) || !dir.is_dir() {
        return false;
    }
    if dir.join(OWNER_MARK).is_dir() {
        return true;
    }
    // Made before the mark: its ring buffer is pinned where ours is.
    MapData::from_pin(dir.join("maps").join(map_names::EVENTS))
        .ok()
        .and_then(|m| m.info().ok())
        .is_some_and(|i| i.map_type().ok() == Some(MapType::RingBuf))
}

/// Refuses a pin root that is the root of a mount (`/sys/fs/bpf`, `/`, a private
/// bpffs mount): everything pinned there is everyone's.
pub fn check_pin_root(root: &Path) -> Result<()> {
    // A root that does not exist yet is made by dockexpose: no mount there.
    let Ok(canon) = std::fs::canonicalize(root) else { return Ok(()) };
    if !is_mount_point(&canon) {
        return Ok(());
    }
    let kind = if super::pins::check_bpffs(&canon).is_ok() { "bpffs" } else { "file system" };
    Err(Error::PinDirIsMountRoot { path: root.to_path_buf(), kind, suggestion: canon.join("dockexpose") })
}

/// Whether `path` (canonical) is where a file system is mounted: listed as a mount
/// point in /proc/self/mountinfo (bind mounts included), or on another device than
/// its parent.
fn is_mount_point(path: &Path) -> bool {
    let Some(parent) = path.parent() else { return true };
    if let (Ok(a), Ok(b)) = (std::fs::metadata(path), std::fs::metadata(parent)) {
        if a.dev() != b.dev() || a.ino() == b.ino() {
            return true;
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let listed = mount_points(&mountinfo).any(|m| m == path);
    listed
}

/// The mount points of /proc/self/mountinfo (the fifth field, octal escapes undone).
fn mount_points(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).map(unescape_octal).map(PathBuf::from)
}

/// `\040` and the like (how mountinfo writes a space, a tab, a newline, a backslash).
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code =
            b.get(i + 1..i + 4).and_then(|d| std::str::from_utf8(d).ok()).and_then(|d| u8::from_str_radix(d, 8).ok());
        match (b[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_layout_shape_is_a_candidate() {
        assert!(is_layout_name("v0123456789ab"));
        for other in
            ["v1", "vendor", "v0123456789AB", "v0123456789abc", "x0123456789ab", "v0123456789ag", "vé23456789ab"]
        {
            assert!(!is_layout_name(other), "{other}");
        }
    }

    #[test]
    fn a_directory_of_our_shape_without_our_mark_is_not_ours() {
        let dir = std::env::temp_dir().join(format!("dx17-ours-{}", std::process::id())).join("v0123456789ab");
        std::fs::create_dir_all(dir.join("maps")).unwrap();
        assert!(!is_ours(&dir), "a name is no proof");
        std::fs::create_dir(dir.join(OWNER_MARK)).unwrap();
        assert!(is_ours(&dir));
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn mount_roots_are_refused_and_their_subdirectories_taken() {
        let e = check_pin_root(Path::new("/")).unwrap_err().to_string();
        assert!(e.contains("is the root of a file system mount") && e.contains("Fix:"), "{e}");
        let sub = std::env::temp_dir().join(format!("dx17-root-{}", std::process::id()));
        assert!(check_pin_root(&sub).is_ok(), "not there yet: made by dockexpose");
        std::fs::create_dir_all(&sub).unwrap();
        assert!(check_pin_root(&sub).is_ok(), "a directory of its own");
        std::fs::remove_dir(&sub).unwrap();
        if Path::new("/sys/fs/bpf").is_dir() {
            let e = check_pin_root(Path::new("/sys/fs/bpf/")).unwrap_err().to_string();
            assert!(e.contains("/sys/fs/bpf/dockexpose"), "{e}");
        }
    }

    #[test]
    fn mountinfo_mount_points_are_unescaped() {
        let info = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    40 25 0:33 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:16 - bpf bpf rw,mode=700\n";
        let points: Vec<PathBuf> = mount_points(info).collect();
        assert_eq!(points, [PathBuf::from("/mnt/with space"), PathBuf::from("/sys/fs/bpf")]);
    }
}
