//! The real Docker engine in tests: a locally built image, and containers and
//! networks removed by guards. No registry is reachable: the image is a static echo
//! server (tests/images/echo_server.rs) imported with `docker import`.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    path::PathBuf,
    process::{Command, Stdio},
};

use super::sh;

/// True when the engine answers. Otherwise records why the test is skipped, or
/// panics when the run demands Docker tests (DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS).
pub fn available(test: &str) -> bool {
    let out = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
    let why = match out {
        Ok(o) if o.status.success() => return true,
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("no docker client: {e}"),
    };
    let why = format!("no Docker engine reachable ({why})");
    if std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_some() {
        panic!("{test}: SKIPPED: {why}, and DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS is set");
    }
    super::skip(test, &why)
}

/// Root and a Docker engine, or a recorded reason to skip.
pub fn ready(test: &str) -> bool {
    super::privileged(test) && available(test)
}

/// Builds (once per source version) the test image and returns its name.
pub fn echo_image() -> String {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/images/echo_server.rs");
    let text = std::fs::read(&src).unwrap();
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    let image = format!("dockexpose-test/echo:{:012x}", h.finish() & 0xffff_ffff_ffff);
    let exists =
        Command::new("docker").args(["image", "inspect", &image]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if exists.map(|s| s.success()).unwrap_or(false) {
        return image;
    }
    let dir = std::env::temp_dir().join(format!("dockexpose-image-{}", std::process::id()));
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let bin = rootfs.join("echo_server");
    sh(&[
        "rustc",
        "--edition",
        "2021",
        "-O",
        "-C",
        "target-feature=+crt-static",
        "-o",
        bin.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    let tar = dir.join("rootfs.tar");
    sh(&["tar", "-C", rootfs.to_str().unwrap(), "-cf", tar.to_str().unwrap(), "."]);
    sh(&["docker", "import", "--change", "ENTRYPOINT [\"/echo_server\"]", tar.to_str().unwrap(), &image]);
    let _ = std::fs::remove_dir_all(&dir);
    image
}

/// Builds (once per content) an HTTP server image: Debian's static busybox running
/// `httpd -f -p 80 -h /www` over tests/images/http_index.html (a page of a few hundred
/// bytes). The tag is a hash of the busybox binary, the page and the entrypoint, so
/// that a change to any of them builds a new image. Needs busybox-static.
pub fn http_image() -> String {
    const BUSYBOX: &str = "/bin/busybox";
    const ENTRYPOINT: &str = r#"ENTRYPOINT ["/bin/busybox","httpd","-f","-p","80","-h","/www"]"#;
    let page = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/images/http_index.html");
    let html = std::fs::read(&page).unwrap_or_else(|e| panic!("read {}: {e}", page.display()));
    let busybox = std::fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("read {BUSYBOX}: {e} (install Debian's busybox-static: `cargo xtask setup`)"));
    let mut h = DefaultHasher::new();
    (&busybox, &html, ENTRYPOINT).hash(&mut h);
    let image = format!("dockexpose-test/http:{:012x}", h.finish() & 0xffff_ffff_ffff);
    let exists =
        Command::new("docker").args(["image", "inspect", &image]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if exists.map(|s| s.success()).unwrap_or(false) {
        return image;
    }
    let dir = std::env::temp_dir().join(format!("dockexpose-http-image-{}", std::process::id()));
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "www"] {
        std::fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    std::fs::write(rootfs.join("bin/busybox"), &busybox).unwrap();
    std::fs::set_permissions(rootfs.join("bin/busybox"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(rootfs.join("www/index.html"), &html).unwrap();
    let tar = dir.join("rootfs.tar");
    sh(&["tar", "--owner=0", "--group=0", "-C", rootfs.to_str().unwrap(), "-cf", tar.to_str().unwrap(), "."]);
    sh(&["docker", "import", "--change", ENTRYPOINT, tar.to_str().unwrap(), &image]);
    let _ = std::fs::remove_dir_all(&dir);
    image
}

/// Inserts `rule` at the top of DOCKER-USER (the chain Docker leaves to operators);
/// the returned guard deletes it.
pub fn docker_user_rule(rule: &[&str]) -> super::Undo {
    let mut insert = vec!["iptables", "-I", "DOCKER-USER", "1"];
    insert.extend_from_slice(rule);
    sh(&insert);
    let mut delete = vec!["iptables", "-D", "DOCKER-USER"];
    delete.extend_from_slice(rule);
    let mut undo = super::Undo::default();
    undo.push(&delete);
    undo
}

/// A container removed (with force) on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker run -d --name NAME ARGS... IMAGE CMD...`
    pub fn run(name: &str, args: &[&str], image: &str, cmd: &[&str]) -> Self {
        let _ = Command::new("docker").args(["rm", "-f", name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let mut full = vec!["docker", "run", "-d", "--name", name];
        full.extend_from_slice(args);
        full.push(image);
        full.extend_from_slice(cmd);
        sh(&full);
        Self { name: name.to_string() }
    }

    pub fn id(&self) -> String {
        sh(&["docker", "inspect", "-f", "{{.Id}}", &self.name]).trim().to_string()
    }

    /// The container's address on `network`.
    pub fn ip(&self, network: &str) -> String {
        let fmt = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        sh(&["docker", "inspect", "-f", &fmt, &self.name]).trim().to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        super::sh_quiet(&["docker", "rm", "-f", &self.name]);
    }
}

/// A user-defined bridge network removed on drop.
pub struct Network {
    pub name: String,
}

impl Network {
    pub fn create(name: &str, subnet: &str) -> Self {
        super::sh_quiet(&["docker", "network", "rm", name]);
        sh(&["docker", "network", "create", "--driver", "bridge", "--subnet", subnet, name]);
        Self { name: name.to_string() }
    }

    /// The Linux bridge Docker made for it: br-<first 12 of the id>.
    pub fn bridge(&self) -> String {
        let id = sh(&["docker", "network", "inspect", "-f", "{{.Id}}", &self.name]);
        format!("br-{}", &id.trim()[..12])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        super::sh_quiet(&["docker", "network", "rm", &self.name]);
    }
}

/// A unix-socket relay to the Docker socket that a test can take away and bring
/// back: the daemon going away and returning, without restarting the real engine.
pub struct SocketRelay {
    pub path: std::path::PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    streams: std::sync::Arc<std::sync::Mutex<Vec<std::os::unix::net::UnixStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SocketRelay {
    pub fn start(path: &std::path::Path) -> Self {
        use std::{
            os::unix::net::{UnixListener, UnixStream},
            sync::{atomic::Ordering, Arc},
        };
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind relay socket");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let streams = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, st) = (stop.clone(), streams.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(engine) = UnixStream::connect("/var/run/docker.sock") else { continue };
                let mut list = st.lock().unwrap();
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), engine.try_clone().unwrap()),
                    (engine.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
                list.push(client);
                list.push(engine);
            }
        });
        Self { path: path.to_path_buf(), stop, streams, thread: Some(thread) }
    }

    /// Takes the socket away and cuts every open connection (the daemon "dies").
    pub fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SocketRelay {
    fn drop(&mut self) {
        self.stop();
    }
}
