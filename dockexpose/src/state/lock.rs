//! One daemon per ring: an exclusive `flock` on a lock file that holds the pid.
//!
//! Two daemons reading the same pinned ring would each release records the other has
//! not written. The lock is advisory and tied to the open file: a daemon killed with
//! SIGKILL releases it with its last fd, so a stale lock never blocks a restart.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// Default lock file (systemd: RuntimeDirectory=dockexpose).
pub const DEFAULT_LOCK_FILE: &str = "/run/dockexpose/lock";

/// Held for the daemon's life; released when dropped (or when the process ends).
pub struct DaemonLock {
    _file: File,
    pub path: PathBuf,
}

impl DaemonLock {
    /// Takes the lock, or says which process holds it.
    pub fn acquire(path: &Path) -> Result<Self> {
        let lock_err = |source| Error::Lock { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(lock_err)?;
        }
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(lock_err)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(Error::Locked { path: path.to_path_buf(), pid: if pid.is_empty() { "unknown".into() } else { pid.to_string() } });
            }
            return Err(lock_err(err));
        }
        file.set_len(0).map_err(lock_err)?;
        file.rewind().map_err(lock_err)?;
        writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
        file.flush().map_err(lock_err)?;
        Ok(Self { _file: file, path: path.to_path_buf() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_pid_of_the_first() {
        let path = std::env::temp_dir().join(format!("dockexpose-lock-test-{}", std::process::id()));
        let first = DaemonLock::acquire(&path).unwrap();
        let e = DaemonLock::acquire(&path).err().expect("second lock refused").to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains("Fix:"), "{e}");
        drop(first);
        let again = DaemonLock::acquire(&path);
        assert!(again.is_ok(), "released with its holder");
        let _ = std::fs::remove_file(&path);
    }
}
