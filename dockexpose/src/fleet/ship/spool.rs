//! The audit log as a spool: followed from a checkpoint, whole lines only, across
//! rotation (the audit log's own `path.1`, `path.2`, ... or logrotate's rename).
//!
//! Every file of the log still to ship is held open (a segment), oldest first, so a
//! rotation that renames or deletes it does not take its lines from under the
//! shipper. A held file whose last name is gone (deleted by rotation) is counted to
//! its end, its unshipped records added to `lost` and let go: what rotated away
//! unshipped is known exactly, never dropped silently. Only a file deleted before the
//! shipper ever opened it (the daemon stopped meanwhile) goes uncounted, and is said.

use std::{
    collections::VecDeque,
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use bytes::Bytes;

use super::checkpoint::Checkpoint;
use crate::fleet::{rows, store::ShipRecord};

/// Most bytes read at once (a batch stops at a line boundary within them).
const CHUNK: usize = 4 << 20;
/// Rotated files looked for at start: path.1 ... path.MAX_NUMBERED.
const MAX_NUMBERED: u32 = 64;

struct Segment {
    file: File,
    dev: u64,
    ino: u64,
    /// Read up to here (handed out in batches).
    read: u64,
    /// Counted up to here (just past a newline).
    scanned: u64,
    /// Records in [read, scanned).
    pending: u64,
    /// The time of the first record in [read, scanned), when known.
    next_ts: Option<SystemTime>,
}

/// Records read, not yet taken by the store, with where the log stands after them.
#[derive(Debug)]
pub struct Batch {
    pub records: Vec<ShipRecord>,
    pub oldest: Option<SystemTime>,
}

pub struct Spool {
    path: PathBuf,
    segments: VecDeque<Segment>,
    lost: u64,
}

fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

fn open_segment(path: &Path) -> std::io::Result<Segment> {
    let file = File::open(path)?;
    let (dev, ino) = identity(&file.metadata()?);
    Ok(Segment { file, dev, ino, read: 0, scanned: 0, pending: 0, next_ts: None })
}

/// `path.N`.
pub fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl Spool {
    /// The log's files from the checkpoint's on (all of them without one), oldest
    /// first. The warning says when the checkpoint's file is gone.
    pub fn open(path: &Path, checkpoint: Option<&Checkpoint>) -> std::io::Result<(Self, Option<String>)> {
        let mut files: Vec<Segment> = Vec::new();
        let mut names: Vec<PathBuf> = (1..=MAX_NUMBERED).map(|n| numbered(path, n)).collect();
        names.reverse();
        names.push(path.to_path_buf());
        for name in names {
            match open_segment(&name) {
                Ok(s) if !files.iter().any(|f| (f.dev, f.ino) == (s.dev, s.ino)) => files.push(s),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let mut warning = None;
        if let Some(cp) = checkpoint {
            match files.iter().position(|f| (f.dev, f.ino) == (cp.dev, cp.ino)) {
                Some(i) => {
                    files.drain(..i);
                    let head = &mut files[0];
                    // A file shorter than the checkpoint was truncated in place: from its start.
                    if head.file.metadata()?.len() >= cp.offset {
                        head.read = cp.offset;
                        head.scanned = cp.offset;
                    }
                }
                None => {
                    warning = Some(format!(
                        "the file the shipping checkpoint points into is gone (rotated away while dockexpose was stopped): its unshipped records are lost, uncounted; shipping {} from its oldest file kept",
                        path.display()
                    ))
                }
            }
        }
        let mut spool = Self { path: path.to_path_buf(), segments: files.into(), lost: 0 };
        spool.poll()?;
        Ok((spool, warning))
    }

    /// Takes in what was written since: a new file at the path, new lines, files
    /// deleted by rotation (their unshipped records counted as lost).
    pub fn poll(&mut self) -> std::io::Result<()> {
        if let Ok(m) = std::fs::metadata(&self.path) {
            let id = identity(&m);
            if !self.segments.iter().any(|s| (s.dev, s.ino) == id) {
                match open_segment(&self.path) {
                    Ok(s) => self.segments.push_back(s),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut i = 0;
        while i < self.segments.len() {
            scan(&mut self.segments[i])?;
            let gone = self.segments[i].file.metadata()?.nlink() == 0;
            if gone {
                // The last name went: nothing more is written to it, and nobody can read it after us.
                if let Some(s) = self.segments.remove(i) {
                    self.lost += s.pending;
                }
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Up to `max` records from where reading stands. A file finished (a newer one
    /// follows) is let go; the batch may then hold no records but moves the position.
    pub fn read(&mut self, max: usize) -> std::io::Result<Option<Batch>> {
        let mut moved = false;
        loop {
            let more_files = self.segments.len() > 1;
            let Some(head) = self.segments.front_mut() else { return Ok(None) };
            if head.read == head.scanned {
                if more_files {
                    // A newer file exists, so this one was scanned to its end after the rotation.
                    self.segments.pop_front();
                    moved = true;
                    continue;
                }
                return Ok(moved.then(|| Batch { records: Vec::new(), oldest: None }));
            }
            return read_from(head, max).map(Some);
        }
    }

    /// Where shipping stands once the batch read last is taken: the head file and
    /// how far it was read.
    pub fn position(&self) -> Option<(u64, u64, u64)> {
        self.segments.front().map(|s| (s.dev, s.ino, s.read))
    }

    /// Records read from no batch yet.
    pub fn pending(&self) -> u64 {
        self.segments.iter().map(|s| s.pending).sum()
    }

    /// The time of the oldest record not read yet.
    pub fn oldest_pending(&self) -> Option<SystemTime> {
        self.segments.iter().find(|s| s.pending > 0).and_then(|s| s.next_ts)
    }

    /// Records that rotated away unshipped (since this spool was opened).
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

/// Counts the records of whole lines past `scanned`.
fn scan(s: &mut Segment) -> std::io::Result<()> {
    let len = s.file.metadata()?.len();
    if len < s.scanned {
        // Truncated in place (copytruncate): from its start again.
        (s.read, s.scanned, s.pending, s.next_ts) = (0, 0, 0, None);
    }
    while s.scanned < len {
        let want = usize::try_from(len - s.scanned).unwrap_or(CHUNK).min(CHUNK);
        let mut buf = vec![0u8; want];
        s.file.seek(SeekFrom::Start(s.scanned))?;
        let got = s.file.read(&mut buf)?;
        buf.truncate(got);
        let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else { break };
        for l in buf[..last_nl].split(|&b| b == b'\n') {
            if let Some(head) = rows::head(l) {
                if s.pending == 0 {
                    s.next_ts = time_of(&head);
                }
                s.pending += 1;
            }
        }
        s.scanned += last_nl as u64 + 1;
    }
    Ok(())
}

/// A record's `ts` (RFC 3339), for the lag in seconds.
fn time_of(head: &rows::Head<'_>) -> Option<SystemTime> {
    humantime::parse_rfc3339(head.ts?).ok()
}

fn read_from(s: &mut Segment, max: usize) -> std::io::Result<Batch> {
    let want = usize::try_from(s.scanned - s.read).unwrap_or(CHUNK).min(CHUNK);
    let mut buf = vec![0u8; want];
    s.file.seek(SeekFrom::Start(s.read))?;
    s.file.read_exact(&mut buf)?;
    let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let buf = Bytes::from(buf);
    let mut records = Vec::new();
    let mut oldest = None;
    let mut at = 0;
    s.next_ts = None;
    while at < end {
        let nl = at + buf[at..end].iter().position(|&b| b == b'\n').unwrap_or(end - at);
        let l = &buf[at..nl];
        if let Some(head) = rows::head(l) {
            if records.len() == max {
                s.next_ts = time_of(&head);
                break;
            }
            if records.is_empty() {
                oldest = time_of(&head);
            }
            records.push(ShipRecord { record_id: head.record_id.to_string(), line: buf.slice(at..nl) });
        }
        at = nl + 1;
    }
    let at = at.min(end);
    s.read += at as u64;
    s.pending = s.pending.saturating_sub(records.len() as u64);
    if s.pending > 0 && s.next_ts.is_none() && s.read < s.scanned {
        // The next record lies beyond this chunk: its time comes with the next batch.
        s.next_ts = oldest;
    }
    Ok(Batch { records, oldest })
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;
