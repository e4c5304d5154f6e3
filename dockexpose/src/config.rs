//! The configuration file (`/etc/dockexpose/dockexpose.toml`, or `--config PATH`) and
//! how it meets the command line.
//!
//! Precedence: command line > environment (`DOCKEXPOSE_…`, read by clap) > file >
//! defaults. clap says where each value came from; a value that came from clap's
//! default is replaced by the file's, when the file has one.
//!
//! Unknown keys are errors that name the key and the line (serde's deny_unknown_fields,
//! located by the TOML parser). `dockexpose config check` validates a file;
//! `watch --print-config` shows the effective configuration.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{parser::ValueSource, ArgMatches};
use serde::{Deserialize, Serialize};

use crate::cli::{JsonFormat, UplinkHookArg, WatchArgs};

/// Where the file is looked for without --config (a missing file there is fine).
pub const DEFAULT_PATH: &str = "/etc/dockexpose/dockexpose.toml";

/// The file, as written. Every key is optional.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub watch: WatchSection,
    #[serde(default)]
    pub alerts: AlertsSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub status: StatusSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub ship: ShipSection,
    /// Alert sinks (`[sinks.journald]`, `[[sinks.syslog]]`, `[[sinks.webhook]]`).
    #[serde(default)]
    pub sinks: crate::output::sinks::SinksConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSection {
    pub bridges: Option<Vec<String>>,
    pub uplinks: Option<Vec<String>>,
    pub uplink_hook: Option<UplinkHookArg>,
    pub no_uplinks: Option<bool>,
    pub trusted: Option<Vec<String>>,
    pub udp_idle: Option<u64>,
    pub blocked_after: Option<u64>,
    pub stats_interval: Option<u64>,
    pub quiet: Option<bool>,
    pub docker_host: Option<String>,
    pub no_docker: Option<bool>,
    /// A duration: "1h", "30m".
    pub verify_every: Option<String>,
    pub verify_from: Option<Vec<String>>,
    /// Where the host's root is, for its firewall's word ("/" on the host).
    pub intent_root: Option<PathBuf>,
    /// The name records give this host (default: the hostname).
    pub host_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// Seconds.
    pub window: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// The JSON-lines audit log; "-" for stdout.
    pub path: Option<PathBuf>,
    /// Rotate past this many MiB (0: never; logrotate can do it instead).
    pub rotate_size_mb: Option<u64>,
    /// Old files kept by size rotation.
    pub max_files: Option<u32>,
    /// "native", "ecs" or "ocsf": the audit log's lines and the sinks' JSON.
    pub json_format: Option<JsonFormat>,
}

/// `[ship]`: `watch --ship`. A file holding `password` must be mode 0600.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShipSection {
    /// clickhouse+http(s)://HOST:PORT/DB.TABLE
    pub url: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub batch_records: Option<usize>,
    /// Seconds.
    pub every: Option<u64>,
    pub ca_file: Option<PathBuf>,
    /// Seconds.
    pub lag_degraded_seconds: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSection {
    pub socket: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// host:port for /metrics, /healthz and /readyz. Off when absent.
    pub listen: Option<String>,
    /// Needed for an address that is not loopback.
    pub allow_remote: Option<bool>,
}

/// A configuration problem: which file, and what (the TOML parser's message names the
/// line and the key).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}.\n  Fix: check the path, or leave out --config to use {DEFAULT_PATH} when it exists")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}\n  Fix: correct the key or value named above; `dockexpose config check {path}` checks a file")]
    Parse { path: PathBuf, message: String },
    #[error("the config file {path} holds the store's password ([ship] password) and can be read by others (mode {mode:o}).\n  Fix: chmod 600 {path}")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("invalid config file {path}: {key} = {value:?}: {reason}")]
    Value { path: PathBuf, key: &'static str, value: String, reason: String },
}

impl FileConfig {
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.check(path)?;
        Ok(cfg)
    }

    /// Reads the file: `--config PATH` must exist; the default path may not.
    pub fn load(explicit: Option<&Path>) -> Result<Option<(PathBuf, Self)>, ConfigError> {
        let path = explicit.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let cfg = Self::parse(&path, &text)?;
        if cfg.ship.password.is_some() {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            let mode = mode.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(ConfigError::Exposed { path, mode });
            }
        }
        Ok(Some((path, cfg)))
    }

    /// Values serde cannot check on its own.
    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key, value: &str, reason: String| ConfigError::Value {
            path: path.to_path_buf(),
            key,
            value: value.to_string(),
            reason,
        };
        if let Some(v) = &self.watch.verify_every {
            humantime::parse_duration(v)
                .map_err(|e| bad("watch.verify_every", v, format!("{e} (write e.g. \"1h\" or \"30m\")")))?;
        }
        for t in self.watch.trusted.iter().flatten() {
            crate::net::prefix::trusted_network(t)
                .map_err(|r| bad("watch.trusted", t, format!("{}.\n  Fix: {}", r.reason, r.fix)))?;
        }
        if let Some(u) = &self.ship.url {
            crate::fleet::target::parse(u).map_err(|e| bad("ship.url", u, e))?;
        }
        if let Some(l) = &self.metrics.listen {
            l.parse::<SocketAddr>()
                .map_err(|e| bad("metrics.listen", l, format!("{e} (write host:port, e.g. \"127.0.0.1:9464\")")))?;
        }
        Ok(())
    }
}

/// The command line's value, unless it came from clap's default (or is absent) and
/// the file has one.
fn pick<T>(m: &ArgMatches, id: &str, cli: T, file: Option<T>) -> T {
    match (m.value_source(id), file) {
        (None | Some(ValueSource::DefaultValue), Some(f)) => f,
        _ => cli,
    }
}

/// The effective watch options: the command line (and environment) over the file.
pub fn merge(args: &WatchArgs, m: &ArgMatches, file: &FileConfig) -> Result<WatchArgs, String> {
    let w = &file.watch;
    let verify_every = match (&args.verify_every, m.value_source("verify_every"), &w.verify_every) {
        (Some(v), _, _) => Some(*v),
        (None, _, Some(s)) => Some(humantime::parse_duration(s).map_err(|e| e.to_string())?),
        (None, _, None) => None,
    };
    Ok(WatchArgs {
        bridges: pick(m, "bridges", args.bridges.clone(), w.bridges.clone()),
        trusted: pick(m, "trusted", args.trusted.clone(), w.trusted.clone()),
        json: pick(m, "json", args.json.clone(), file.audit.path.clone().map(Some)),
        json_format: pick(m, "json_format", args.json_format, file.audit.json_format),
        uplink_hook: pick(m, "uplink_hook", args.uplink_hook, w.uplink_hook),
        udp_idle: pick(m, "udp_idle", args.udp_idle, w.udp_idle),
        stats_interval: pick(m, "stats_interval", args.stats_interval, w.stats_interval),
        quiet: pick(m, "quiet", args.quiet, w.quiet),
        docker_host: pick(m, "docker_host", args.docker_host.clone(), w.docker_host.clone().map(Some)),
        no_docker: pick(m, "no_docker", args.no_docker, w.no_docker),
        uplinks: pick(m, "uplinks", args.uplinks.clone(), w.uplinks.clone()),
        no_uplinks: pick(m, "no_uplinks", args.no_uplinks, w.no_uplinks),
        blocked_after: pick(m, "blocked_after", args.blocked_after, w.blocked_after),
        alert_window: pick(m, "alert_window", args.alert_window, file.alerts.window),
        verify_every,
        verify_from: pick(m, "verify_from", args.verify_from.clone(), w.verify_from.clone()),
        intent_root: pick(m, "intent_root", args.intent_root.clone(), w.intent_root.clone()),
        host_name: pick(m, "host_name", args.host_name.clone(), w.host_name.clone().map(Some)),
        rotate_size_mb: pick(m, "rotate_size_mb", args.rotate_size_mb, file.audit.rotate_size_mb),
        max_files: pick(m, "max_files", args.max_files, file.audit.max_files),
        status_socket: pick(m, "status_socket", args.status_socket.clone(), file.status.socket.clone()),
        metrics: pick(m, "metrics", args.metrics.clone(), file.metrics.listen.clone().map(Some)),
        metrics_allow_remote: pick(m, "metrics_allow_remote", args.metrics_allow_remote, file.metrics.allow_remote),
        webhooks: args.webhooks.clone(),
        syslogs: args.syslogs.clone(),
        journald: args.journald,
        config: args.config.clone(),
        print_config: args.print_config,
        ship: ship(args, m, &file.ship),
        service: args.service.clone(),
    })
}

/// `--ship` and its options over the file's `[ship]`; the file's user and password.
fn ship(args: &WatchArgs, m: &ArgMatches, f: &ShipSection) -> crate::cli::ShipArgs {
    let a = &args.ship;
    crate::cli::ShipArgs {
        url: pick(m, "url", a.url.clone(), f.url.clone().map(Some)),
        batch_records: pick(m, "batch_records", a.batch_records, f.batch_records),
        every: pick(m, "every", a.every, f.every),
        ca_file: pick(m, "ca_file", a.ca_file.clone(), f.ca_file.clone().map(Some)),
        lag_degraded_seconds: pick(m, "lag_degraded_seconds", a.lag_degraded_seconds, f.lag_degraded_seconds),
        credentials: f
            .user
            .clone()
            .map(|user| crate::fleet::target::Credentials { user, password: f.password.clone().unwrap_or_default() }),
    }
}

/// The alert sinks: the file's, with every kind given on the command line replacing
/// the file's list of that kind.
pub fn sinks(args: &WatchArgs, file: &FileConfig) -> crate::output::sinks::SinksConfig {
    use crate::output::sinks::{JournaldConfig, SyslogConfig, WebhookConfig};
    let mut s = file.sinks.clone();
    if !args.webhooks.is_empty() {
        s.webhook =
            args.webhooks.iter().map(|u| WebhookConfig { url: u.clone(), ..WebhookConfig::default() }).collect();
    }
    if !args.syslogs.is_empty() {
        s.syslog =
            args.syslogs.iter().map(|a| SyslogConfig { address: a.clone(), ..SyslogConfig::default() }).collect();
    }
    if args.journald {
        s.journald.get_or_insert_with(JournaldConfig::default);
    }
    s
}

/// The effective configuration, as a file that would give it (`--print-config`).
pub fn effective_file(args: &WatchArgs, sinks: &crate::output::sinks::SinksConfig) -> FileConfig {
    FileConfig {
        watch: WatchSection {
            bridges: Some(args.bridges.clone()),
            uplinks: Some(args.uplinks.clone()),
            uplink_hook: Some(args.uplink_hook),
            no_uplinks: Some(args.no_uplinks),
            trusted: Some(args.trusted.clone()),
            udp_idle: Some(args.udp_idle),
            blocked_after: Some(args.blocked_after),
            stats_interval: Some(args.stats_interval),
            quiet: Some(args.quiet),
            docker_host: args.docker_host.clone(),
            no_docker: Some(args.no_docker),
            verify_every: args.verify_every.map(|d| humantime::format_duration(d).to_string()),
            verify_from: Some(args.verify_from.clone()),
            intent_root: Some(args.intent_root.clone()),
            host_name: args.host_name.clone(),
        },
        alerts: AlertsSection { window: Some(args.alert_window) },
        audit: AuditSection {
            path: args.json.clone(),
            rotate_size_mb: Some(args.rotate_size_mb),
            max_files: Some(args.max_files),
            json_format: Some(args.json_format),
        },
        status: StatusSection { socket: Some(args.status_socket.clone()) },
        metrics: MetricsSection { listen: args.metrics.clone(), allow_remote: Some(args.metrics_allow_remote) },
        ship: ShipSection {
            url: args.ship.url.clone(),
            user: args.ship.credentials.as_ref().map(|c| c.user.clone()),
            // Never printed.
            password: args.ship.credentials.as_ref().map(|_| "<redacted>".into()),
            batch_records: Some(args.ship.batch_records),
            every: Some(args.ship.every),
            ca_file: args.ship.ca_file.clone(),
            lag_degraded_seconds: Some(args.ship.lag_degraded_seconds),
        },
        sinks: sinks.clone(),
    }
}

/// The metrics address, checked: loopback unless allowed explicitly.
pub fn metrics_addr(args: &WatchArgs) -> Result<Option<SocketAddr>, String> {
    let Some(s) = &args.metrics else { return Ok(None) };
    let addr: SocketAddr =
        s.parse().map_err(|e| format!("--metrics {s:?}: {e}; write host:port, e.g. 127.0.0.1:9464"))?;
    if !addr.ip().is_loopback() && !args.metrics_allow_remote {
        return Err(format!(
            "--metrics {addr} is not a loopback address: the metrics name containers and ports to whoever asks.\n  Fix: use 127.0.0.1:PORT, or add --metrics-allow-remote (metrics.allow_remote = true) and firewall the port"
        ));
    }
    Ok(Some(addr))
}

/// What a reload may change without a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct Reloadable {
    pub trusted: Vec<String>,
    pub alert_window: u64,
    pub quiet: bool,
    pub sinks: crate::output::sinks::SinksConfig,
    pub rotate_size_mb: u64,
    pub max_files: u32,
}

impl Reloadable {
    pub fn of(args: &WatchArgs, sinks: &crate::output::sinks::SinksConfig) -> Self {
        Self {
            trusted: args.trusted.clone(),
            alert_window: args.alert_window,
            quiet: args.quiet,
            sinks: sinks.clone(),
            rotate_size_mb: args.rotate_size_mb,
            max_files: args.max_files,
        }
    }
}

/// The settings a reload changed that only a restart applies, by name.
pub fn needs_restart(old: &WatchArgs, new: &WatchArgs) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name, changed: bool| {
        if changed {
            out.push(name);
        }
    };
    check("watch.bridges", old.bridges != new.bridges);
    check("watch.uplinks", old.uplinks != new.uplinks);
    check("watch.uplink_hook", old.uplink_hook != new.uplink_hook);
    check("watch.no_uplinks", old.no_uplinks != new.no_uplinks);
    check("watch.udp_idle", old.udp_idle != new.udp_idle);
    check("watch.blocked_after", old.blocked_after != new.blocked_after);
    check("watch.stats_interval", old.stats_interval != new.stats_interval);
    check("watch.docker_host", old.docker_host != new.docker_host);
    check("watch.no_docker", old.no_docker != new.no_docker);
    check("watch.verify_every", old.verify_every != new.verify_every);
    check("watch.verify_from", old.verify_from != new.verify_from);
    check("audit.path", old.json != new.json);
    check("audit.json_format", old.json_format != new.json_format);
    check("watch.host_name", old.host_name != new.host_name);
    check("status.socket", old.status_socket != new.status_socket);
    check("ship", old.ship.url != new.ship.url || old.ship.credentials != new.ship.credentials);
    check("metrics.listen", old.metrics != new.metrics || old.metrics_allow_remote != new.metrics_allow_remote);
    out
}

/// Seconds as a Duration (the file and the flags count seconds).
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
