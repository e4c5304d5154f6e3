//! A real NATS server with JetStream (Debian's nats-server 2.9) for the fleet tests:
//! on 127.0.0.1, a free port, its config and store under a temp dir of its own;
//! started as a plain process (the package starts no service), stopped by PID and
//! its dir removed on drop, also when the test panics.
#![allow(dead_code, reason = "each test binary uses a different part of it")]

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Nats {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Nats {
    /// A server with JetStream on, answering. Panics (with the fix) when nats-server
    /// is not installed: `cargo xtask setup` installs it.
    pub fn start(name: &str) -> Self {
        Self::start_with(name, None)
    }

    /// With `user` (user, password) the only one allowed in.
    pub fn start_with(name: &str, user: Option<(&str, &str)>) -> Self {
        let installed = Command::new("sh").args(["-c", "command -v nats-server"]).output();
        assert!(
            installed.is_ok_and(|o| o.status.success()),
            "nats-server is not installed: run `cargo xtask setup` (Debian's nats-server package)"
        );
        let dir = std::env::temp_dir().join(format!("dockexpose-nats-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("store")).expect("nats dir");
        let port = free_port();
        let config = format!(
            "listen: 127.0.0.1:{port}\nserver_name: dockexpose-test\nmax_payload: 1MB\n\
             jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 4GB\n}}\n",
            dir.join("store").display()
        );
        let config = match user {
            Some((user, password)) => {
                format!("{config}authorization {{\n  user: \"{user}\"\n  password: \"{password}\"\n}}\n")
            }
            None => config,
        };
        std::fs::write(dir.join("nats.conf"), config).expect("nats config");
        let log = std::fs::File::create(dir.join("server.log")).expect("log");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(dir.join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        let me = Self { port, dir, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen within 20 s; see {}", me.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    /// The store URL for `subject`.
    pub fn url(&self, subject: &str) -> String {
        format!("nats://127.0.0.1:{}/{subject}", self.port)
    }

    /// The server's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
