//! Real ClickHouse servers (Debian's clickhouse-server) for the fleet tests: each a
//! shard on 127.0.0.1 with its own config, data and ports under a temp dir, all in
//! one `remote_servers` cluster named `fleet`; started as plain processes (no
//! systemd), stopped by PID on drop. Users: `default` (no password, loopback only,
//! for the tests' own queries and the shards' talk) and `shipper` (password
//! `SHIPPER_PASSWORD`). Queries go through curl, whose status code is checked
//! (curl exits 0 on HTTP 500).
#![allow(dead_code, reason = "each test binary uses a different part of it")]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const CLUSTER: &str = "fleet";
pub const SHIPPER_USER: &str = "shipper";
pub const SHIPPER_PASSWORD: &str = "s3cret-for-tests";

/// One shard.
pub struct Shard {
    pub http_port: u16,
    pub tcp_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// The servers of one test, and their temp dir.
pub struct ClickHouse {
    pub shards: Vec<Shard>,
    root: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn users_xml() -> String {
    let user = |name: &str, password: &str| {
        format!(
            "<{name}><password>{password}</password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>\
             <profile>default</profile><quota>default</quota></{name}>"
        )
    };
    format!(
        "<?xml version=\"1.0\"?>\n<yandex>\n<profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>\n\
         <users>{}{}</users>\n<quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>\
         <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>\n</yandex>\n",
        user("default", ""),
        user(SHIPPER_USER, SHIPPER_PASSWORD),
    )
}

fn config_xml(dir: &Path, http_port: u16, tcp_port: u16, cluster: &str) -> String {
    let d = dir.display();
    format!(
        "<?xml version=\"1.0\"?>\n<yandex>\n\
         <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog><size>10M</size><count>1</count></logger>\n\
         <http_port>{http_port}</http_port>\n<tcp_port>{tcp_port}</tcp_port>\n<listen_host>127.0.0.1</listen_host>\n\
         <path>{d}/data/</path>\n<tmp_path>{d}/tmp/</tmp_path>\n<user_files_path>{d}/user_files/</user_files_path>\n\
         <format_schema_path>{d}/format_schemas/</format_schema_path>\n<users_config>{d}/users.xml</users_config>\n\
         <default_profile>default</default_profile>\n<default_database>default</default_database>\n\
         <mark_cache_size>67108864</mark_cache_size>\n<uncompressed_cache_size>67108864</uncompressed_cache_size>\n\
         <max_concurrent_queries>50</max_concurrent_queries>\n\
         <remote_servers><{CLUSTER}>{cluster}</{CLUSTER}></remote_servers>\n</yandex>\n"
    )
}

impl ClickHouse {
    /// `n` shards, running and answering. Panics (with the fix) when
    /// clickhouse-server is not installed: `cargo xtask setup` installs it.
    pub fn start(name: &str, n: usize) -> Self {
        let installed = Command::new("sh").args(["-c", "command -v clickhouse-server"]).output();
        assert!(
            installed.is_ok_and(|o| o.status.success()),
            "clickhouse-server is not installed: run `cargo xtask setup` (Debian's clickhouse-server package)"
        );
        let root = std::env::temp_dir().join(format!("dockexpose-ch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster: String = ports
            .iter()
            .map(|(_, tcp)| format!("<shard><replica><host>127.0.0.1</host><port>{tcp}</port></replica></shard>"))
            .collect();
        let mut me = Self { shards: Vec::new(), root: root.clone() };
        for (i, (http_port, tcp_port)) in ports.into_iter().enumerate() {
            let dir = root.join(format!("shard{i}"));
            std::fs::create_dir_all(&dir).expect("shard dir");
            std::fs::write(dir.join("config.xml"), config_xml(&dir, http_port, tcp_port, &cluster)).expect("config");
            std::fs::write(dir.join("users.xml"), users_xml()).expect("users");
            me.shards.push(Shard { http_port, tcp_port, dir, child: None });
        }
        for i in 0..n {
            me.start_shard(i);
        }
        me
    }

    /// Starts shard `i` (again, after `stop_shard`), on the same ports and data.
    pub fn start_shard(&mut self, i: usize) {
        let shard = &mut self.shards[i];
        assert!(shard.child.is_none(), "shard {i} runs already");
        let log = std::fs::File::create(shard.dir.join("stdout.log")).expect("log");
        let child = Command::new("clickhouse-server")
            .arg(format!("--config-file={}", shard.dir.join("config.xml").display()))
            .current_dir(&shard.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start clickhouse-server");
        shard.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.try_query(i, "SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "clickhouse-server shard {i} did not answer within 60 s; see {}",
                self.shards[i].dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops shard `i` (SIGKILL: a store that vanishes), keeping its data.
    pub fn stop_shard(&mut self, i: usize) {
        if let Some(mut child) = self.shards[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The store URL of shard `i` for `table` (DATABASE.TABLE).
    pub fn url(&self, i: usize, table: &str) -> String {
        format!("clickhouse+http://127.0.0.1:{}/{table}", self.shards[i].http_port)
    }

    /// Runs `sql` on shard `i` as `default`; Err: curl's failure or the server's
    /// answer when not 200.
    pub fn try_query(&self, i: usize, sql: &str) -> Result<String, String> {
        let url = format!("http://127.0.0.1:{}/", self.shards[i].http_port);
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}", "--data-binary", "@-", &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().expect("stdin").write_all(sql.as_bytes())?;
                child.wait_with_output()
            })
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        if !out.status.success() || code != "200" {
            return Err(format!("{code} {body} {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(body.to_string())
    }

    /// `try_query`, panicking with the server's answer on failure.
    pub fn query(&self, i: usize, sql: &str) -> String {
        self.try_query(i, sql).unwrap_or_else(|e| panic!("shard {i}: {sql}: {e}"))
    }

    /// POSTs JSONEachRow `rows` into `table` through shard `i`, with the settings a
    /// shipper sends; panics unless the answer is 200.
    pub fn insert_rows(&self, i: usize, table: &str, rows: &str) {
        let settings: Vec<String> =
            dockexpose::fleet::schema::INSERT_SETTINGS.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let url = format!(
            "http://127.0.0.1:{}/?query=INSERT%20INTO%20{table}%20FORMAT%20JSONEachRow&{}",
            self.shards[i].http_port,
            settings.join("&")
        );
        // The body and then the status on a line of its own, both on stdout: never
        // `-o /dev/stderr`, whose O_TRUNC empties the file the test's stderr goes to
        // (a CI log redirected into a file was found full of NUL bytes).
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--data-binary", "@-", &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(rows.as_bytes())?;
                c.wait_with_output()
            })
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        assert_eq!(code, "200", "insert into {table} refused: {body}");
    }

    /// Waits until `table` on shard 0 holds `n` rows (a Distributed insert is
    /// forwarded in the background).
    pub fn wait_rows(&self, table: &str, n: usize) {
        let sql = format!("SELECT count() FROM {table}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.query(0, &sql).trim() != n.to_string() {
            assert!(Instant::now() < deadline, "rows forwarded: {} of {n}", self.query(0, &sql));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Creates `table` (DATABASE.TABLE) on every shard from `dockexpose fleet schema
    /// --shards fleet` (the binary's own DDL).
    pub fn create_schema(&self, binary: &Path, table: &str) {
        let out = Command::new(binary)
            .args(["fleet", "schema", "--shards", CLUSTER, "--table", table])
            .output()
            .expect("run dockexpose fleet schema");
        assert!(out.status.success(), "fleet schema: {}", String::from_utf8_lossy(&out.stderr));
        let ddl = String::from_utf8_lossy(&out.stdout).into_owned();
        for i in 0..self.shards.len() {
            for statement in dockexpose::fleet::schema::statements(&ddl) {
                self.query(i, &statement);
            }
        }
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        for i in 0..self.shards.len() {
            self.stop_shard(i);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
