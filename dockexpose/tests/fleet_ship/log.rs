//! An audit log in a temp dir (removed on drop, also on panic), written and rotated
//! as the daemon's audit log is: whole lines appended, `path` renamed to `path.1`.

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

pub struct Log {
    dir: PathBuf,
    path: PathBuf,
}

pub fn record(host: &str, n: usize) -> String {
    format!(
        r#"{{"schema":1,"ts":"{}","stage":"reached","proto":"tcp","family":"ipv4","src_ip":"198.18.7.{}","src_port":{},"dst_ip":"172.17.0.2","dst_port":80,"host_ip":"198.18.7.1","host_port":8080,"community_id":"1:x","iface":"docker0","container":null,"exposure":"published","published":[],"path":"bridge","spoofed_local":false,"shape":[],"boot_id":"b","cpu":0,"kseq":{n},"record_id":"{host}-{n:08}","host":"{host}","host_id":"m"}}"#,
        humantime::format_rfc3339_micros(std::time::SystemTime::now()),
        n % 250 + 2,
        40000 + n % 20000,
    )
}

impl Log {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dockexpose-ship-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        // The daemon's own first line: not a record, never shipped.
        std::fs::write(&path, "{\"event\":\"start\",\"host\":\"h\"}\n").unwrap();
        Self { dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&self, host: &str, from: usize, n: usize) {
        append(&self.path, host, from, n);
    }

    /// Size rotation with max_files 1: path.1 replaced.
    pub fn rotate(&self) {
        std::fs::rename(&self.path, self.dir.join("audit.jsonl.1")).unwrap();
        std::fs::write(&self.path, "").unwrap();
    }

    /// The record ids in the log (all its files).
    pub fn record_ids(&self) -> BTreeSet<String> {
        let text = std::fs::read_to_string(&self.path).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("stage").is_some())
            .map(|v| v["record_id"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn append(path: &Path, host: &str, from: usize, n: usize) {
    let mut text = String::new();
    for i in from..from + n {
        text += &record(host, i);
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Appends `per_tick` records every `tick` until stopped (the live connections).
pub struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<usize>>,
}

impl Writer {
    pub fn start(path: &Path, host: &str, per_tick: usize, tick: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (path, host, s) = (path.to_path_buf(), host.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                append(&path, &host, n, per_tick);
                n += per_tick;
                std::thread::sleep(tick);
            }
            n
        });
        Self { stop, thread: Some(thread) }
    }

    /// How many records it wrote.
    pub fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
