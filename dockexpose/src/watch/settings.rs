//! The watch options, validated: every mistake fails at start with the fix.

use std::{net::IpAddr, time::Duration};

use crate::{
    cli::WatchArgs,
    error::{Error, Result},
    host::interfaces::{self, HostSnapshot},
    inventory::docker,
    kernel::{
        loader::{KernelSettings, UplinkHook},
        pin_root,
    },
    net::prefix::{self, Prefix},
    output::{audit::Rotation, human},
    verify::{self, daemon as verifyd},
};

use super::WAKEUP_BYTES;

/// `--verify-every`, validated.
pub(super) struct VerifySettings {
    pub(super) every: Duration,
    pub(super) sources: Vec<IpAddr>,
    /// --uplink as given (empty: chosen as verify does).
    pub(super) uplinks: Vec<String>,
}

/// Where attempts are watched for.
pub(super) enum UplinkSelection {
    /// --no-uplinks, or --no-docker (the reason).
    Off(&'static str),
    /// --uplink: these; one that vanishes is attached again when it comes back.
    Given(Vec<String>),
    /// Every up interface with a global address that is not a bridge, port or loopback.
    Auto,
}

/// The options, validated.
pub(super) struct Settings {
    /// Bridges named with --bridge; one that vanishes is attached again when it comes back.
    pub(super) explicit_bridges: Vec<String>,
    pub(super) uplinks: UplinkSelection,
    pub(super) uplink_hook: UplinkHook,
    pub(super) blocked_after_ns: u64,
    /// None with --no-docker.
    pub(super) docker_endpoint: Option<String>,
    pub(super) alert_window: Duration,
    pub(super) trusted: Vec<Prefix>,
    pub(super) stats_interval: Option<Duration>,
    pub(super) quiet: bool,
    pub(super) kernel: KernelSettings,
    /// None without --verify-every.
    pub(super) verify: Option<VerifySettings>,
}

pub(super) fn validate(args: &WatchArgs, host: &HostSnapshot) -> Result<Settings> {
    if !args.service.no_pin {
        // Before anything else: `/sys/fs/bpf` itself is everyone's (see `pin_root`).
        pin_root::check_pin_root(&args.service.pin_dir)?;
    }
    let trusted = trusted(&args.trusted)?;
    for name in &args.bridges {
        if !interfaces::exists(name) {
            return Err(Error::UnknownInterface { name: name.clone(), hint: host.suggest(name) });
        }
        if !interfaces::is_bridge(name) {
            crate::say!(
                "warning: {} is not a Linux bridge; watching its egress anyway, but container \
                 traffic normally leaves through docker0 or a br-* bridge",
                human::escape_untrusted(name)
            );
        }
    }
    for name in &args.uplinks {
        if !interfaces::exists(name) {
            return Err(Error::UnknownInterface { name: name.clone(), hint: host.suggest(name) });
        }
        if interfaces::is_bridge(name) {
            crate::say!(
                "dockexpose: uplink {} is a bridge: its ports are watched, where traffic from outside arrives",
                human::escape_untrusted(name)
            );
        }
    }
    if args.blocked_after == 0 {
        return Err(Error::InvalidSetting { name: "--blocked-after", reason: "must be at least 1 second".into() });
    }
    if args.udp_idle == 0 {
        return Err(Error::InvalidSetting { name: "--udp-idle", reason: "must be at least 1 second".into() });
    }
    if args.alert_window == 0 {
        return Err(Error::InvalidSetting { name: "--alert-window", reason: "must be at least 1 second".into() });
    }
    if args.no_docker && !args.uplinks.is_empty() {
        crate::say!(
            "warning: --uplink is ignored with --no-docker: attempts are attempts at Docker's published \
             ports, which only Docker's inventory names; only what reaches the bridges is reported"
        );
    }
    let verify =
        match args.verify_every {
            None => None,
            Some(every) if every < verifyd::MIN_EVERY => {
                return Err(Error::InvalidSetting {
                    name: "--verify-every",
                    reason: format!(
                        "must be at least {} (new published ports are verified on their own)",
                        humantime::format_duration(verifyd::MIN_EVERY)
                    ),
                })
            }
            Some(every) => {
                let sources = verify::sources_from(&args.verify_from)
                    .map_err(|(input, reason)| Error::InvalidCidr { option: "--verify-from", input, reason })?;
                Some(VerifySettings { every, sources, uplinks: args.uplinks.clone() })
            }
        };
    Ok(Settings {
        verify,
        explicit_bridges: args.bridges.clone(),
        uplinks: if args.no_uplinks {
            UplinkSelection::Off("off (--no-uplinks)")
        } else if args.no_docker {
            UplinkSelection::Off(
                "off (--no-docker: without Docker's published ports there is nothing to call an attempt)",
            )
        } else if args.uplinks.is_empty() {
            UplinkSelection::Auto
        } else {
            UplinkSelection::Given(args.uplinks.clone())
        },
        uplink_hook: match args.uplink_hook {
            crate::cli::UplinkHookArg::Xdp => UplinkHook::Xdp,
            crate::cli::UplinkHookArg::Tc => UplinkHook::Tcx,
        },
        blocked_after_ns: args.blocked_after.saturating_mul(1_000_000_000),
        docker_endpoint: (!args.no_docker).then(|| docker::endpoint(args.docker_host.as_deref())),
        alert_window: Duration::from_secs(args.alert_window),
        trusted,
        stats_interval: (args.stats_interval > 0).then(|| Duration::from_secs(args.stats_interval)),
        quiet: args.quiet,
        kernel: KernelSettings {
            udp_idle_ns: args.udp_idle.saturating_mul(1_000_000_000),
            wakeup_bytes: WAKEUP_BYTES,
            ..KernelSettings::default()
        },
    })
}

/// Size-based rotation of the audit log, when asked for.
pub(super) fn rotation(args: &WatchArgs) -> Option<Rotation> {
    (args.rotate_size_mb > 0)
        .then(|| Rotation { size: args.rotate_size_mb.saturating_mul(1 << 20), max_files: args.max_files })
}

/// The trusted networks (command line, environment or file), checked: a /0 or host
/// bits are refused, a network wider than /8 (IPv6: /16) is warned about. At start and
/// on SIGHUP (where a refusal keeps the running configuration).
pub(super) fn trusted(list: &[String]) -> Result<Vec<Prefix>> {
    list.iter()
        .map(|s| {
            s.parse::<Prefix>().map_err(|e| Error::InvalidCidr {
                option: "--trusted",
                input: s.clone(),
                reason: e.0,
            })?;
            let (p, warning) = prefix::trusted_network(s).map_err(|r| Error::TrustedRefused {
                option: "--trusted",
                input: s.clone(),
                reason: r.reason,
                fix: r.fix,
            })?;
            if let Some(w) = warning {
                crate::say!("warning: --trusted {w}");
            }
            Ok(p)
        })
        .collect()
}

/// `--host-name`: written into every record, so a name a store can key on: 1 to 255
/// printable characters, no whitespace.
pub(super) fn host_name(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_graphic() || (!c.is_ascii() && !c.is_control() && !c.is_whitespace()));
    if !ok {
        return Err(Error::Config(format!(
            "--host-name {:?}: a host name is 1 to 255 printable characters without spaces.\n  Fix: give e.g. --host-name web-01, or leave it out to use the hostname",
            crate::output::human::escape_untrusted(name)
        )));
    }
    Ok(name.to_string())
}

/// `--ship`, checked: a store URL, an audit log file in the native format to ship
/// from, credentials from the environment over the file's.
pub(super) fn ship(args: &WatchArgs) -> Result<Option<crate::fleet::ship::ShipSettings>> {
    let s = &args.ship;
    let Some(url) = &s.url else { return Ok(None) };
    let bad = |reason: String| Error::Config(format!("--ship {url}: {reason}"));
    let target = crate::fleet::target::parse(url).map_err(&bad)?;
    // Checked again where the store is made (fleet/ship/shipper.rs `connect`); here so
    // that it fails before the kernel side is loaded.
    crate::fleet::ship::shipper::available(&target).map_err(&bad)?;
    let log = match args.json.as_deref() {
        Some(p) if p != std::path::Path::new("-") => p.to_path_buf(),
        _ => {
            return Err(bad(
                "shipping reads the audit log from its file, and there is none.\n  Fix: add --json /var/log/dockexpose/audit.jsonl (audit.path)".into(),
            ))
        }
    };
    if args.json_format != crate::cli::JsonFormat::Native {
        return Err(bad(
            "the store takes dockexpose's native records.\n  Fix: --json-format native (ship, and send ECS or OCSF to the alert sinks' own JSON)".into(),
        ));
    }
    if s.batch_records == 0 || s.every == 0 {
        return Err(bad("--ship-batch-records and --ship-every must be at least 1".into()));
    }
    Ok(Some(crate::fleet::ship::ShipSettings {
        target,
        credentials: crate::fleet::target::Credentials::from_env().or_else(|| s.credentials.clone()),
        ca_file: s.ca_file.clone(),
        batch_records: s.batch_records,
        every: Duration::from_secs(s.every),
        lag_degraded_seconds: s.lag_degraded_seconds,
        log,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn shipping_needs_an_audit_log_file_in_the_native_format() {
        use clap::Parser as _;
        let args = |extra: &[&str]| {
            let mut argv = vec!["dockexpose", "watch", "--ship", "clickhouse+http://127.0.0.1:8123/dockexpose.records"];
            argv.extend_from_slice(extra);
            let crate::cli::Command::Watch(w) = crate::cli::Cli::try_parse_from(argv).unwrap().command else {
                panic!("watch")
            };
            w
        };
        let e = super::ship(&args(&[])).unwrap_err().to_string();
        assert!(e.contains("--json") && e.contains("Fix:"), "{e}");
        let e = super::ship(&args(&["--json", "-"])).unwrap_err().to_string();
        assert!(e.contains("--json"), "{e}");
        let e = super::ship(&args(&["--json", "/tmp/a.jsonl", "--json-format", "ecs"])).unwrap_err().to_string();
        assert!(e.contains("native"), "{e}");
        let s = super::ship(&args(&["--json", "/tmp/a.jsonl", "--ship-batch-records", "7"])).unwrap().unwrap();
        assert_eq!((s.batch_records, s.every.as_secs(), s.lag_degraded_seconds), (7, 5, 300));
    }

    #[test]
    fn a_host_name_is_printable_and_without_spaces() {
        assert_eq!(super::host_name("web-01.example").unwrap(), "web-01.example");
        for bad in ["", "web 01", "evil\n", "tab\there", &"x".repeat(256)] {
            let e = super::host_name(bad).unwrap_err().to_string();
            assert!(e.contains("--host-name") && e.contains("Fix:"), "{e}");
        }
    }

    use super::*;

    #[test]
    fn a_reload_refuses_what_a_start_refuses() {
        // SIGHUP reads the trusted networks through this: a refused one keeps the
        // running configuration (and the daemon says why).
        let e = trusted(&["198.51.100.0/24".into(), "10.8.0.1/0".into()]).expect_err("refused").to_string();
        assert!(e.contains("every IPv4 address") && e.contains("Fix:"), "{e}");
        assert!(trusted(&["10.8.0.1/24".into()]).is_err());
        assert_eq!(trusted(&["10.8.0.0/24".into()]).unwrap().len(), 1);
    }
}
