mod parsing {
    use clap::{CommandFactory, FromArgMatches};

    use super::super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> (WatchArgs, ArgMatches) {
        let m = Cli::command().try_get_matches_from(std::iter::once("dockexpose").chain(args.iter().copied())).unwrap();
        let cli = Cli::from_arg_matches(&m).unwrap();
        let Command::Watch(w) = cli.command else { panic!("watch expected") };
        let sub = m.subcommand_matches("watch").unwrap().clone();
        (w, sub)
    }

    const FILE: &str = r#"
[watch]
bridges = ["docker0"]
udp_idle = 45
quiet = true
trusted = ["10.8.0.0/24"]

[alerts]
window = 120

[audit]
path = "/var/log/dockexpose/audit.jsonl"
rotate_size_mb = 100
max_files = 3

[metrics]
listen = "127.0.0.1:9464"
"#;

    #[test]
    fn the_file_fills_what_the_command_line_left_to_defaults() {
        let file = FileConfig::parse(Path::new("t.toml"), FILE).unwrap();
        let (args, m) = parse(&["watch", "--udp-idle", "10"]);
        let eff = merge(&args, &m, &file).unwrap();
        assert_eq!(eff.udp_idle, 10, "the command line wins");
        assert_eq!(
            (eff.alert_window, eff.quiet, eff.bridges.as_slice()),
            (120, true, ["docker0".to_string()].as_slice())
        );
        assert_eq!(eff.json.as_deref(), Some(Path::new("/var/log/dockexpose/audit.jsonl")));
        assert_eq!((eff.rotate_size_mb, eff.max_files), (100, 3));
        assert_eq!(eff.metrics.as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(eff.blocked_after, 2, "neither: the default");
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_line() {
        let e = FileConfig::parse(Path::new("/etc/x.toml"), "[watch]\nudp_idle = 3\nudp_idel = 4\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("udp_idel") && e.contains("line 3") && e.contains("/etc/x.toml"), "{e}");
        let e = FileConfig::parse(Path::new("x.toml"), "[wacth]\n").unwrap_err().to_string();
        assert!(e.contains("wacth") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e =
            FileConfig::parse(Path::new("x.toml"), "[watch]\ntrusted = [\"10.0.0.0/33\"]\n").unwrap_err().to_string();
        assert!(e.contains("watch.trusted") && e.contains("10.0.0.0/33"), "{e}");
        let e = FileConfig::parse(Path::new("x.toml"), "[watch]\nverify_every = \"often\"\n").unwrap_err().to_string();
        assert!(e.contains("watch.verify_every"), "{e}");
        let e = FileConfig::parse(Path::new("x.toml"), "[watch]\nudp_idle = \"soon\"\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn a_missing_default_file_is_fine_a_missing_explicit_one_is_not() {
        assert!(FileConfig::load(Some(Path::new("/nonexistent/dockexpose.toml"))).is_err());
    }

    #[test]
    fn metrics_on_a_public_address_need_the_explicit_flag() {
        let (args, _) = parse(&["watch", "--metrics", "0.0.0.0:9464"]);
        let e = metrics_addr(&args).unwrap_err();
        assert!(e.contains("--metrics-allow-remote"), "{e}");
        let (args, _) = parse(&["watch", "--metrics", "0.0.0.0:9464", "--metrics-allow-remote"]);
        assert!(metrics_addr(&args).unwrap().is_some());
        let (args, _) = parse(&["watch", "--metrics", "127.0.0.1:9464"]);
        assert!(metrics_addr(&args).unwrap().is_some());
        let (args, _) = parse(&["watch"]);
        assert_eq!(metrics_addr(&args).unwrap(), None, "off by default");
    }

    #[test]
    fn the_effective_config_round_trips_through_the_file_format() {
        let file = FileConfig::parse(Path::new("t.toml"), FILE).unwrap();
        let (args, m) = parse(&["watch"]);
        let eff = merge(&args, &m, &file).unwrap();
        let printed = toml::to_string(&effective_file(&eff, &sinks(&eff, &file))).unwrap();
        let again = FileConfig::parse(Path::new("printed"), &printed).unwrap();
        let (args2, m2) = parse(&["watch"]);
        assert_eq!(merge(&args2, &m2, &again).unwrap().udp_idle, 45, "{printed}");
    }

    #[test]
    fn a_reload_tells_what_needs_a_restart() {
        let (a, _) = parse(&["watch"]);
        let (b, _) = parse(&["watch", "--udp-idle", "5", "--trusted", "10.0.0.0/8"]);
        assert_eq!(needs_restart(&a, &b), ["watch.udp_idle"]);
    }
}

mod shipped {
    use super::super::*;

    /// `key = value`, as opposed to prose.
    fn is_setting(line: &str) -> bool {
        line.split_once(" = ")
            .is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    }

    #[test]
    fn the_shipped_example_file_is_valid() {
        let text = include_str!("../../packaging/config/dockexpose.toml");
        let cfg = FileConfig::parse(Path::new("packaging/config/dockexpose.toml"), text).unwrap();
        assert_eq!(cfg.audit.path.as_deref(), Some(Path::new("/var/log/dockexpose/audit.jsonl")));
        // Every commented key, uncommented, is a key the file accepts.
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if is_setting(rest) || rest.starts_with('[') && !rest.contains(' ') => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        FileConfig::parse(Path::new("uncommented"), &uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    }

    #[test]
    fn a_file_holding_the_store_password_must_be_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("dockexpose-ship-cfg-{}.toml", std::process::id()));
        std::fs::write(&path, "[ship]\nurl = \"clickhouse+https://ch.example:8443/dockexpose.records\"\nuser = \"shipper\"\npassword = \"pw\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = FileConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("644"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (_, cfg) = FileConfig::load(Some(&path)).unwrap().unwrap();
        assert_eq!(cfg.ship.user.as_deref(), Some("shipper"));
        std::fs::remove_file(&path).unwrap();
        let e = FileConfig::parse(Path::new("f"), "[ship]\nurl = \"clickhouse://x/y\"\n").unwrap_err().to_string();
        assert!(e.contains("ship.url"), "{e}");
    }
}
