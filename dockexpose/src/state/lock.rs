//! One daemon per ring: an exclusive `flock` on the pin directory itself, and one on a
//! lock file that holds the pid.
//!
//! Two daemons reading the same pinned ring would each release records the other has
//! not written. The ring lives in the pin directory, so that is what is locked: two
//! daemons with one `--pin-dir` exclude each other whatever their `--lock-file` (the
//! systemd unit's /run and a container's own /run are different files). bpffs holds
//! no pid, so the holder's is read from /proc/locks. The lock file stays too (it
//! holds the pid for people and scripts to read). Both locks are
//! advisory and tied to open files: a daemon killed with SIGKILL releases them with
//! its last fd, so a stale lock never blocks a restart.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::{fd::AsRawFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// Default lock file (systemd: RuntimeDirectory=dockexpose).
pub const DEFAULT_LOCK_FILE: &str = "/run/dockexpose/lock";

/// Held for the daemon's life; released when dropped (or when the process ends).
pub struct DaemonLock {
    _file: File,
    /// The pin directory, locked (None with --no-pin).
    _pin_dir: Option<File>,
    pub path: PathBuf,
}

impl DaemonLock {
    /// Takes the lock file's lock, then the pin directory's (which must exist).
    pub fn acquire_with_pins(path: &Path, pin_dir: Option<&Path>) -> Result<Self> {
        let mut lock = Self::acquire(path)?;
        if let Some(dir) = pin_dir {
            lock._pin_dir = Some(lock_dir(dir)?);
        }
        Ok(lock)
    }

    /// Takes the lock, or says which process holds it.
    pub fn acquire(path: &Path) -> Result<Self> {
        let lock_err = |source| Error::Lock { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(lock_err)?;
        }
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(lock_err)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                    pid: if pid.is_empty() { "unknown".into() } else { pid.to_string() },
                });
            }
            return Err(lock_err(err));
        }
        file.set_len(0).map_err(lock_err)?;
        file.rewind().map_err(lock_err)?;
        writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
        file.flush().map_err(lock_err)?;
        Ok(Self { _file: file, _pin_dir: None, path: path.to_path_buf() })
    }
}

/// An exclusive flock on the directory itself, or who holds it.
fn lock_dir(dir: &Path) -> Result<File> {
    let lock_err = |source| Error::Lock { path: dir.to_path_buf(), source };
    let file = File::open(dir).map_err(lock_err)?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(file);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(lock_err(err));
    }
    let meta = file.metadata().map_err(lock_err)?;
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let pid = flock_holder(&locks, libc::major(meta.dev()), libc::minor(meta.dev()), meta.ino());
    Err(Error::Locked { path: dir.to_path_buf(), pid: pid.map_or_else(|| "unknown".into(), |p| p.to_string()) })
}

/// The pid holding a FLOCK on the inode (device major:minor, inode number), from
/// /proc/locks (`1: FLOCK  ADVISORY  WRITE 4242 00:1d:12345 0 EOF`; waiters are `->`).
fn flock_holder(locks: &str, major: u32, minor: u32, ino: u64) -> Option<u32> {
    let inode = format!("{major:02x}:{minor:02x}:{ino}");
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&inode.as_str())).then(|| f[4].parse().ok()).flatten()
    })
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

    #[test]
    fn the_holder_of_a_directory_lock_is_read_from_proc_locks() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 00:1d:12345 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 4343 00:1d:12345 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 77 00:1d:999 0 EOF\n";
        assert_eq!(flock_holder(locks, 0, 0x1d, 12345), Some(4242));
        assert_eq!(flock_holder(locks, 0, 0x1d, 999), None, "a POSIX lock is not ours");
        assert_eq!(flock_holder(locks, 0, 0x1e, 12345), None);
    }

    #[test]
    fn a_locked_directory_names_the_pid_of_its_holder() {
        let dir = std::env::temp_dir().join(format!("dockexpose-dirlock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = lock_dir(&dir).unwrap();
        let e = lock_dir(&dir).expect_err("second lock refused").to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        assert!(lock_dir(&dir).is_ok(), "released with its holder");
        std::fs::remove_dir(&dir).unwrap();
    }
}
