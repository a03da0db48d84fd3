//! `cnspr`: the daemon (`cnspr serve`) and the command-line client of its socket.

use std::process::ExitCode;

use clap::Parser;
use serde_json::json;
use transport::Identity;

use cnspr::cli::{self, Cli, Command};
use cnspr::paths::Paths;
use cnspr::{commands, daemon};

fn init_logging(verbose: u8, daemon: bool) {
    let default = match (verbose, daemon) {
        (0, true) => "info",
        (0, false) => "warn",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    // The completion scripts' helper: not a command of the interface, so not in `--help`
    // or in the scripts themselves.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__complete-peers")
    {
        return ExitCode::from(commands::complete::peers_from_env() as u8);
    }
    let cli = Cli::parse();
    let g = cli.global.clone();
    let long_running = match &cli.command {
        Command::Serve(_) => true,
        Command::Relay(a) => a.action.is_none(),
        _ => false,
    };
    init_logging(g.verbose, long_running);
    let paths = Paths::resolve(g.state_dir.clone(), g.socket.clone(), g.config.clone());
    match run(cli.command, &g, &paths) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            let text = format!("{e:#}").replace('\n', " ");
            if g.json {
                // With --json an error is a JSON object too: the daemon's own (its code,
                // message and fields), or `client_error` for one found on this side.
                let body = match e.downcast_ref::<cnspr::client::ApiError>() {
                    Some(a) => serde_json::to_value(&a.0).unwrap_or_default(),
                    None => json!({"code": "client_error", "message": text}),
                };
                let _ = cnspr::output::print_error_json(&body);
            }
            eprintln!("cnspr: {text}");
            ExitCode::from(1)
        }
    }
}

fn run(cmd: Command, g: &cli::Global, paths: &Paths) -> anyhow::Result<i32> {
    match cmd {
        Command::Serve(args) => {
            // One thread: a personal-device daemon should be small and quiet when idle.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(daemon::serve(paths.clone(), args))?;
            Ok(0)
        }
        Command::Init { name } => {
            let (id, created) = Identity::load_or_create(&paths.state_dir, name.as_deref())?;
            if g.json {
                println!(
                    "{}",
                    json!({"id": id.id.to_string(), "name": id.name, "created": created})
                );
            } else {
                let what = if created { "Created" } else { "Existing" };
                println!("{what} identity in {}", paths.state_dir.display());
                println!("Device ID: {}", id.id);
                println!("Name:      {}", id.name);
            }
            Ok(0)
        }
        Command::Id => {
            // A fresh device has no identity yet: create it, as `init` (or the first
            // `serve`) would, so the ID to give the other device is there at once.
            let (id, _) = Identity::load_or_create(&paths.state_dir, None)?;
            if g.json {
                println!("{}", json!({"id": id.id.to_string(), "name": id.name}));
            } else {
                println!("{}", id.id);
            }
            Ok(0)
        }
        Command::Completions { shell } => {
            print!("{}", commands::complete::script(shell));
            Ok(0)
        }
        Command::Relay(args) if args.action.is_none() => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(cnspr::relay::run(args, g.json))?;
            Ok(0)
        }
        other => commands::run(other, g, paths),
    }
}
