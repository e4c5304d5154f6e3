use clap::{CommandFactory, FromArgMatches};
use dockexpose::cli::{Cli, Command, ConfigCommand, FleetCommand};

fn main() {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // One thread: the reader, the loop and the Docker client hand work to each other
    // without cross-thread wakeups (futexes), which cost more than the work itself.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            dockexpose::say!("error: starting the async runtime failed: {e}");
            std::process::exit(1);
        }
    };
    let result = match cli.command {
        Command::Verify(args) => {
            // 0: nothing unexpected reachable, 1: something is, 2: error.
            let code = match runtime.block_on(dockexpose::verify::run(args)) {
                Ok(code) => code,
                Err(e) => {
                    dockexpose::say!("error: {e:#}");
                    2
                }
            };
            std::process::exit(code);
        }
        Command::Explain(args) => {
            // 0: intent and reality agree, 1: they contradict somewhere, 2: error.
            let code = match runtime.block_on(dockexpose::explain::run(args)) {
                Ok(code) => code,
                Err(e) => {
                    dockexpose::say!("error: {e:#}");
                    2
                }
            };
            std::process::exit(code);
        }
        // 0 healthy, 1 degraded, 2 unreachable.
        Command::Status(args) => std::process::exit(runtime.block_on(dockexpose::status::client::run(&args))),
        Command::Config(ConfigCommand::Check { path }) => {
            let path = path.unwrap_or_else(|| dockexpose::config::DEFAULT_PATH.into());
            match dockexpose::config::FileConfig::load(Some(&path)) {
                Ok(_) => {
                    dockexpose::say_out!("{}: valid", path.display());
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Command::Fleet(FleetCommand::Schema { shards, table }) => {
            dockexpose::fleet::schema::print(&table, shards.as_deref())
        }
        Command::Fleet(FleetCommand::Exposures { store, since, host, json, ca_file }) => {
            // 0: no exposure, 1: some, 2: error.
            let req = dockexpose::fleet::exposures::Request {
                store,
                since,
                host,
                json,
                ca_file,
                timeout: std::time::Duration::from_secs(60),
            };
            let code = runtime.block_on(dockexpose::fleet::exposures::run(req)).unwrap_or_else(|e| {
                dockexpose::say!("error: {e}");
                2
            });
            std::process::exit(code);
        }
        Command::Fleet(FleetCommand::Bridge(args)) => {
            // 0: stopped by a signal, 1: bad arguments, 2: refused by NATS or ClickHouse.
            if let Err(e) = runtime.block_on(dockexpose::fleet::bridge::run(args)) {
                dockexpose::say!("error: {e}");
                std::process::exit(e.exit_code());
            }
            Ok(())
        }
        Command::Watch(args) => {
            let sub = matches.subcommand_matches("watch").cloned().unwrap_or_default();
            runtime.block_on(dockexpose::watch::run(args, sub)).map_err(|e| e.to_string())
        }
        Command::Cleanup(args) => dockexpose::state::cleanup(&args).map_err(|e| e.to_string()),
        Command::VerifySentinel { parent, pins } => {
            std::process::exit(dockexpose::verify::sentinel::run(parent, &pins))
        }
    };
    if let Err(e) = result {
        dockexpose::say!("error: {e}");
        std::process::exit(1);
    }
}
