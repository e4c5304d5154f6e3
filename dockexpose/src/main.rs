use clap::Parser;
use dockexpose::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    // One thread: the reader, the loop and the Docker client hand work to each other
    // without cross-thread wakeups (futexes), which cost more than the work itself.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime failed: {e}");
            std::process::exit(1);
        }
    };
    if let Command::Verify(args) = cli.command {
        // 0: nothing unexpected reachable, 1: something is, 2: error.
        let code = match runtime.block_on(dockexpose::verify::run(args)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                2
            }
        };
        std::process::exit(code);
    }
    let result = match cli.command {
        Command::Watch(args) => runtime.block_on(dockexpose::watch::run(args)).map_err(|e| e.to_string()),
        // `{:#}`: the whole chain (what failed, then the kernel's reason).
        Command::Bench(args) => dockexpose::bench::run(&args).map_err(|e| format!("{e:#}")),
        Command::Cleanup(args) => dockexpose::state::cleanup(&args).map_err(|e| e.to_string()),
        Command::Verify(_) => unreachable!("handled above"),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
