//! Where shipping stands: the file (device, inode) and the offset past the last line a
//! store took, and how many records went. Written after every batch the store took:
//! temp file, fsync, rename, fsync of the directory, so a crash leaves the old or the
//! new one, never half of one.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub dev: u64,
    pub ino: u64,
    /// Bytes of that file shipped (always just past a newline).
    pub offset: u64,
    /// Records shipped since the checkpoint was first written.
    pub shipped: u64,
    /// Records that rotated away unshipped, since then.
    #[serde(default)]
    pub lost: u64,
}

/// The checkpoint of an audit log: `<log>.ship-checkpoint`, next to it.
pub fn path_for(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".ship-checkpoint");
    PathBuf::from(s)
}

/// None when there is none yet; Err when there is one that cannot be read (a
/// checkpoint silently ignored would ship everything again).
pub fn load(path: &Path) -> Result<Option<Checkpoint>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "the shipping checkpoint {} is unreadable: {e}.\n  Fix: remove it to ship the whole audit log again (the store counts each record once)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read the shipping checkpoint {}: {e}", path.display())),
    }
}

pub fn save(path: &Path, cp: &Checkpoint) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(cp).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_then_loaded() {
        let dir = std::env::temp_dir().join(format!("dockexpose-cp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = path_for(&dir.join("audit.jsonl"));
        assert_eq!(load(&p).unwrap(), None);
        let cp = Checkpoint { dev: 1, ino: 2, offset: 3, shipped: 4, lost: 5 };
        save(&p, &cp).unwrap();
        save(&p, &cp).unwrap();
        assert_eq!(load(&p).unwrap(), Some(cp));
        std::fs::write(&p, b"{bad").unwrap();
        assert!(load(&p).unwrap_err().contains("Fix:"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
