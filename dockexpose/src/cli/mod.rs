//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod fleet;

pub use fleet::{BridgeArgs, FleetCommand, ShipArgs};

pub use crate::output::formats::JsonFormat;

#[derive(Debug, Parser)]
#[command(
    name = "dockexpose",
    version,
    about = "Tells which Docker published ports the outside world really reaches, from the kernel"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "one value per process, parsed once: its size does not matter")]
pub enum Command {
    /// Watch container bridges and report every new inbound connection from outside.
    Watch(WatchArgs),
    /// One shot: probe every published port on every uplink, as if from outside, and say
    /// which ones reach a container (EXPOSED), the host itself (PROXY) or nothing (HELD).
    /// Exit code 0: nothing unexpected reachable; 1: something is; 2: error.
    Verify(VerifyArgs),
    /// The firewall's word against reality: for each published port, family and
    /// uplink, what UFW, firewalld or INPUT says (intent), what a probe from outside
    /// finds (verify's verdict), whether they contradict, why, and the one rule that
    /// makes reality match the intent. Exit code 0: no contradiction; 1: some; 2: error.
    Explain(ExplainArgs),
    /// Ask the running daemon what is exposed and how healthy it is.
    /// Exit code 0: healthy; 1: degraded; 2: the daemon cannot be reached.
    Status(StatusArgs),
    /// Configuration file tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Many hosts in one store (ClickHouse): its schema, and what the fleet exposes.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Remove the pinned kernel side (programs, links, maps under the pin directory):
    /// detaches every program a stopped or killed `watch` left attached.
    Cleanup(CleanupArgs),
    /// Internal: started by each verify run; cleans up after it if it is killed.
    #[command(hide = true)]
    VerifySentinel {
        #[arg(long)]
        parent: u32,
        #[arg(long)]
        pins: PathBuf,
    },
}

#[derive(Debug, Args, Clone)]
pub struct CleanupArgs {
    /// The pin directory `watch` used.
    #[arg(long, value_name = "DIR", default_value = crate::kernel::pins::DEFAULT_PIN_ROOT)]
    pub pin_dir: PathBuf,

    /// The lock file of the daemon that reads it: cleanup refuses while it runs.
    #[arg(long, value_name = "PATH", default_value = crate::state::lock::DEFAULT_LOCK_FILE)]
    pub lock_file: PathBuf,
}

/// How `watch` runs as a service: what outlives it, and the one-daemon lock.
#[derive(Debug, Args, Clone)]
pub struct ServiceArgs {
    /// Pin the kernel side (programs, links, maps) here, on bpffs; a later `watch`
    /// adopts it and loses no record in between.
    #[arg(long, value_name = "DIR", default_value = crate::kernel::pins::DEFAULT_PIN_ROOT)]
    pub pin_dir: PathBuf,

    /// Pin nothing: the kernel programs detach when this process ends (the behaviour
    /// before pinning; connections while no daemon runs are not recorded).
    #[arg(long, conflicts_with = "detach_on_exit")]
    pub no_pin: bool,

    /// On SIGTERM/SIGINT, detach everything and remove the pins (as `dockexpose
    /// cleanup`), instead of leaving the kernel side recording for the next daemon.
    #[arg(long)]
    pub detach_on_exit: bool,

    /// Lock file that keeps a second daemon off the same ring (holds the pid).
    #[arg(long, value_name = "PATH", default_value = crate::state::lock::DEFAULT_LOCK_FILE)]
    pub lock_file: PathBuf,
}

#[derive(Debug, Args, Clone)]
pub struct StatusArgs {
    /// The daemon's status socket.
    #[arg(long, value_name = "PATH", default_value = crate::status::DEFAULT_SOCKET, env = "DOCKEXPOSE_STATUS_SOCKET")]
    pub socket: PathBuf,

    /// JSON for scripts instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand, Clone)]
pub enum ConfigCommand {
    /// Check a configuration file: exit 0 when valid, 1 with the key and line when not.
    Check {
        /// Default: /etc/dockexpose/dockexpose.toml.
        path: Option<PathBuf>,
    },
}

#[derive(Debug, Args, Clone)]
pub struct VerifyArgs {
    /// Probe only this host port (repeatable), e.g. 8080/tcp or 5353/udp. Default:
    /// every port Docker publishes.
    #[arg(long = "port", value_name = "PORT/PROTO")]
    pub ports: Vec<String>,

    /// Uplink to probe through (repeatable). Default: chosen as `watch` does.
    #[arg(long = "uplink", value_name = "IFACE")]
    pub uplinks: Vec<String>,

    /// Probe from this network (repeatable; its first host address), to test an
    /// allow-list. Default: 198.51.100.77 and 2001:db8:dc::77 (documentation ranges).
    #[arg(long = "from", value_name = "CIDR")]
    pub from: Vec<String>,

    /// A port meant to be public (repeatable): reachable, it does not fail the run.
    #[arg(long = "expect-exposed", value_name = "PORT/PROTO")]
    pub expect_exposed: Vec<String>,

    /// Probes per second.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub rate: u32,

    /// How long to wait after the last probe of an uplink, in milliseconds.
    #[arg(long = "window-ms", value_name = "MS", default_value_t = 300)]
    pub window_ms: u64,

    /// Docker (or Podman) API endpoint. Default: $DOCKER_HOST, else unix:///var/run/docker.sock.
    #[arg(long, value_name = "URL")]
    pub docker_host: Option<String>,

    /// How probes enter the uplink: XDP live frames (Linux 5.18+), a private veth and
    /// bpf_redirect (any kernel with TC BPF), or auto (live frames where the kernel
    /// takes them).
    #[arg(long, value_enum, default_value_t = InjectionArg::Auto)]
    pub injection: InjectionArg,

    /// Exposure without publishing: probe every listening socket of every running
    /// container at the container's own address, as a neighbour routing to the
    /// bridge would (Docker before 28, routed / nat-unprotected gateway modes,
    /// iptables: false). Reports EXPOSED (direct) with what let it through, or HELD.
    #[arg(long)]
    pub direct: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ExplainArgs {
    /// Explain only these host ports, e.g. 8080/tcp 5353/udp. Default: every port
    /// Docker publishes.
    #[arg(value_name = "PORT/PROTO")]
    pub ports: Vec<String>,

    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,

    /// Uplink to probe through (repeatable). Default: chosen as `watch` does.
    #[arg(long = "uplink", value_name = "IFACE")]
    pub uplinks: Vec<String>,

    /// Probe from this network (repeatable), as verify does.
    #[arg(long = "from", value_name = "CIDR")]
    pub from: Vec<String>,

    /// Where the host's root is, for its firewall configuration (/etc/ufw,
    /// /etc/firewalld): / on the host; the host's root mounted elsewhere in a container.
    #[arg(long = "intent-root", value_name = "DIR", default_value = "/")]
    pub intent_root: PathBuf,

    /// Docker (or Podman) API endpoint. Default: $DOCKER_HOST, else unix:///var/run/docker.sock.
    #[arg(long, value_name = "URL")]
    pub docker_host: Option<String>,

    /// How probes enter the uplink (as verify).
    #[arg(long, value_enum, default_value_t = InjectionArg::Auto)]
    pub injection: InjectionArg,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InjectionArg {
    #[default]
    Auto,
    LiveFrames,
    Redirect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UplinkHookArg {
    Xdp,
    Tc,
}

#[derive(Debug, Args, Clone)]
pub struct WatchArgs {
    /// Container bridge to watch (repeatable). Without it, every Linux bridge that
    /// carries an address is watched, including ones that appear later.
    #[arg(env = "DOCKEXPOSE_BRIDGE", value_delimiter = ',', long = "bridge", value_name = "IFACE")]
    pub bridges: Vec<String>,

    /// Source network never reported (repeatable), e.g. an admin VPN: 10.8.0.0/24.
    #[arg(env = "DOCKEXPOSE_TRUSTED", value_delimiter = ',', long = "trusted", value_name = "CIDR")]
    pub trusted: Vec<String>,

    /// Write the JSON-lines audit log here (appended); `-` for stdout.
    #[arg(env = "DOCKEXPOSE_JSON", long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// The shape of the audit log's lines and of the webhook and syslog sinks' JSON:
    /// `native` (dockexpose's record, the documented contract), `ecs` (Elastic Common
    /// Schema) or `ocsf` (OCSF Network Activity).
    #[arg(env = "DOCKEXPOSE_JSON_FORMAT", long, value_name = "FORMAT", value_enum, default_value_t = JsonFormat::Native)]
    pub json_format: JsonFormat,

    /// The name every record and event gives this host (`host`; ECS host.name, OCSF
    /// device.hostname). Default: the hostname.
    #[arg(env = "DOCKEXPOSE_HOST_NAME", long, value_name = "NAME")]
    pub host_name: Option<String>,

    /// The hook that sees attempts on the uplinks: `tc` (TCX ingress, the default:
    /// ahead of every firewall table, reading each packet where it is) or `xdp` (the
    /// earliest hook; native XDP on veth and virtio NICs converts every packet and
    /// cost 20 % of a sequential client's connection rate here, TCX ingress 4 %).
    #[arg(env = "DOCKEXPOSE_UPLINK_HOOK", long, value_name = "HOOK", value_enum, default_value_t = UplinkHookArg::Tc)]
    pub uplink_hook: UplinkHookArg,

    /// A UDP flow silent for this many seconds counts as new again.
    #[arg(env = "DOCKEXPOSE_UDP_IDLE", long, value_name = "SECONDS", default_value_t = 30)]
    pub udp_idle: u64,

    /// Print kernel counters every this many seconds (0: only at exit).
    #[arg(env = "DOCKEXPOSE_STATS_INTERVAL", long, value_name = "SECONDS", default_value_t = 60)]
    pub stats_interval: u64,

    /// No human line per connection on stderr (alerts and warnings stay).
    #[arg(long, env = "DOCKEXPOSE_QUIET")]
    pub quiet: bool,

    /// Docker (or Podman) API endpoint: unix:///path/to.sock or tcp://host:port.
    /// Default: $DOCKER_HOST, else unix:///var/run/docker.sock.
    #[arg(env = "DOCKEXPOSE_DOCKER_HOST", long, value_name = "URL")]
    pub docker_host: Option<String>,

    /// Do not ask Docker: no container identity, bridges found on the host.
    #[arg(env = "DOCKEXPOSE_NO_DOCKER", long, conflicts_with = "docker_host")]
    pub no_docker: bool,

    /// Uplink to watch for attempts (repeatable). Without it: every interface that is up,
    /// has a global address, and is not a bridge, a container veth or loopback.
    #[arg(
        env = "DOCKEXPOSE_UPLINK",
        value_delimiter = ',',
        long = "uplink",
        value_name = "IFACE",
        conflicts_with = "no_uplinks"
    )]
    pub uplinks: Vec<String>,

    /// No uplink programs: only what reaches containers is reported, no attempts.
    #[arg(long, env = "DOCKEXPOSE_NO_UPLINKS")]
    pub no_uplinks: bool,

    /// An attempt neither reached nor answered within this many seconds is blocked.
    #[arg(env = "DOCKEXPOSE_BLOCKED_AFTER", long, value_name = "SECONDS", default_value_t = 2)]
    pub blocked_after: u64,

    /// Alerts: one line per new (container, port, source) in this many seconds,
    /// then a count.
    #[arg(env = "DOCKEXPOSE_ALERT_WINDOW", long, value_name = "SECONDS", default_value_t = 60)]
    pub alert_window: u64,

    /// Run `verify`'s probes at start, then this often (e.g. 1h, 30m; at least 10s),
    /// and on the new ports a few seconds after Docker publishes them. Default: off.
    #[arg(env = "DOCKEXPOSE_VERIFY_EVERY", long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "no_docker")]
    pub verify_every: Option<std::time::Duration>,

    /// Probe from this network (repeatable; its first host address), as verify's
    /// --from. Default: 198.51.100.77 and 2001:db8:dc::77 (documentation ranges).
    #[arg(
        env = "DOCKEXPOSE_VERIFY_FROM",
        value_delimiter = ',',
        long = "verify-from",
        value_name = "CIDR",
        requires = "verify_every"
    )]
    pub verify_from: Vec<String>,

    /// Where the host's root is, for its firewall's word (/etc/ufw, /etc/firewalld),
    /// set against every `reached` record: / on the host; the host's root mounted
    /// elsewhere when dockexpose runs in a container.
    #[arg(env = "DOCKEXPOSE_INTENT_ROOT", long = "intent-root", value_name = "DIR", default_value = "/")]
    pub intent_root: PathBuf,

    /// The configuration file (TOML). Default: /etc/dockexpose/dockexpose.toml when it
    /// exists. Command line > environment (DOCKEXPOSE_…) > file > defaults.
    #[arg(long, value_name = "PATH", env = "DOCKEXPOSE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (as a config file) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Rotate the audit log past this many MiB (path.1, path.2, ...; 0: never, leave it
    /// to logrotate).
    #[arg(long, value_name = "MIB", default_value_t = 0, env = "DOCKEXPOSE_ROTATE_SIZE_MB")]
    pub rotate_size_mb: u64,

    /// Old audit-log files kept by --rotate-size-mb.
    #[arg(long, value_name = "N", default_value_t = 5, env = "DOCKEXPOSE_MAX_FILES")]
    pub max_files: u32,

    /// The unix socket `dockexpose status` asks (mode 0600).
    #[arg(long, value_name = "PATH", default_value = crate::status::DEFAULT_SOCKET, env = "DOCKEXPOSE_STATUS_SOCKET")]
    pub status_socket: PathBuf,

    /// Serve Prometheus metrics (/metrics, /healthz, /readyz) on this address, e.g.
    /// 127.0.0.1:9464. Off by default; an address that is not loopback needs
    /// --metrics-allow-remote.
    #[arg(long, value_name = "HOST:PORT", env = "DOCKEXPOSE_METRICS")]
    pub metrics: Option<String>,

    /// Allow --metrics on an address that is not loopback.
    #[arg(long, env = "DOCKEXPOSE_METRICS_ALLOW_REMOTE")]
    pub metrics_allow_remote: bool,

    /// Send alerts to this webhook (repeatable; POST of the JSON record).
    #[arg(long = "webhook", value_name = "URL", env = "DOCKEXPOSE_WEBHOOK", value_delimiter = ',')]
    pub webhooks: Vec<String>,

    /// Send alerts to syslog (repeatable): unix:///dev/log, udp://host:514, tcp://host:514.
    #[arg(long = "syslog", value_name = "ADDRESS", env = "DOCKEXPOSE_SYSLOG", value_delimiter = ',')]
    pub syslogs: Vec<String>,

    /// Send alerts to the systemd journal (default when stderr is the journal).
    #[arg(long, env = "DOCKEXPOSE_JOURNALD")]
    pub journald: bool,

    #[command(flatten)]
    pub ship: ShipArgs,

    #[command(flatten)]
    pub service: ServiceArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dockexpose").chain(args.iter().copied()))
    }

    #[test]
    fn repeatable_bridges_and_trusted_networks() {
        let cli =
            parse(&["watch", "--bridge", "docker0", "--bridge", "br-1", "--trusted", "10.8.0.0/24", "--json", "-"])
                .unwrap();
        let Command::Watch(w) = cli.command else { panic!("expected the watch command") };
        assert_eq!(w.bridges, ["docker0", "br-1"]);
        assert_eq!(w.trusted, ["10.8.0.0/24"]);
        assert_eq!(w.json.as_deref(), Some(std::path::Path::new("-")));
        assert_eq!((w.udp_idle, w.stats_interval, w.quiet), (30, 60, false));
    }

    #[test]
    fn verify_options() {
        let Command::Verify(v) = parse(&["verify"]).unwrap().command else { panic!("expected verify") };
        assert!(v.ports.is_empty() && v.from.is_empty() && v.uplinks.is_empty());
        assert_eq!((v.rate, v.window_ms), (200, 300));
        let cli = parse(&[
            "verify",
            "--port",
            "80/tcp",
            "--port",
            "53/udp",
            "--from",
            "10.8.0.0/24",
            "--uplink",
            "eth0",
            "--expect-exposed",
            "443/tcp",
            "--rate",
            "50",
        ])
        .unwrap();
        let Command::Verify(v) = cli.command else { panic!("expected verify") };
        assert_eq!(v.ports, ["80/tcp", "53/udp"]);
        assert_eq!((v.from.len(), v.uplinks.len(), v.expect_exposed.len(), v.rate), (1, 1, 1, 50));
        assert!(parse(&["verify", "--rate", "fast"]).is_err());
    }

    #[test]
    fn verify_every_takes_a_duration_and_sources() {
        let Command::Watch(w) = parse(&["watch"]).unwrap().command else { panic!("expected watch") };
        assert_eq!(w.verify_every, None, "off by default");
        let cli =
            parse(&["watch", "--verify-every", "1h", "--verify-from", "198.18.5.77/32", "--verify-from", "fd42::/64"])
                .unwrap();
        let Command::Watch(w) = cli.command else { panic!("expected watch") };
        assert_eq!(w.verify_every, Some(std::time::Duration::from_secs(3600)));
        assert_eq!(w.verify_from, ["198.18.5.77/32", "fd42::/64"]);
        let Command::Watch(w) = parse(&["watch", "--verify-every", "10m"]).unwrap().command else {
            panic!("expected watch")
        };
        assert_eq!(w.verify_every, Some(std::time::Duration::from_secs(600)));
        assert!(parse(&["watch", "--verify-every", "often"]).is_err());
        assert!(parse(&["watch", "--verify-from", "10.0.0.0/8"]).is_err(), "--verify-from needs --verify-every");
        assert!(
            parse(&["watch", "--verify-every", "1h", "--no-docker"]).is_err(),
            "verify needs Docker's published ports"
        );
    }

    #[test]
    fn service_options_default_to_pinning_with_the_lock() {
        let Command::Watch(w) = parse(&["watch"]).unwrap().command else { panic!("expected watch") };
        assert_eq!(w.service.pin_dir, std::path::Path::new("/sys/fs/bpf/dockexpose"));
        assert_eq!(w.service.lock_file, std::path::Path::new("/run/dockexpose/lock"));
        assert!(!w.service.no_pin && !w.service.detach_on_exit);
        assert!(parse(&["watch", "--no-pin", "--detach-on-exit"]).is_err(), "nothing pinned, nothing to detach");
        let Command::Cleanup(c) = parse(&["cleanup", "--pin-dir", "/sys/fs/bpf/x"]).unwrap().command else {
            panic!("expected cleanup")
        };
        assert_eq!(c.pin_dir, std::path::Path::new("/sys/fs/bpf/x"));
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["watch", "--udp-idle", "soon"]).is_err());
        assert!(parse(&["watch", "--bridge"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
        assert!(parse(&[]).is_err());
    }
}
