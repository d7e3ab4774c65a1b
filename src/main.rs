//! The `homing` command line.

use std::process::ExitCode;

use clap::Parser;
use homing::cli::sync::{run_dsync_server, run_sync, Globals, Mode};
use homing::cli::{options::Settings, Cli, Command, EX_USAGE};

/// The process exit status of a doveadm exit code: the low byte, as the
/// OS keeps it (doveadm's internal NOREPLICATE, 1001, becomes 233).
fn exit(code: i32) -> ExitCode {
    ExitCode::from((code & 0xff) as u8)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => exit(EX_USAGE),
            };
        }
    };
    let mut cli = match cli.command {
        // The replicator sets up its own logging and runtime.
        Command::Replicator(args) => return ExitCode::from(homing::replicator::cli::run(args)),
        command => Cli { command, ..cli },
    };
    let level = if cli.debug {
        "debug"
    } else if cli.verbose {
        "info"
    } else {
        "warn"
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOMING_LOG")
                // Dovecot's tcps: client sends the peer's IP address as SNI,
                // which rustls reports (and ignores) on every connection.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(format!(
                        "{level},rustls::msgs::handshake=error"
                    ))
                }),
        )
        .try_init();
    let globals = || -> Result<Globals, i32> {
        let settings = Settings::load(cli.config.as_deref(), &cli.overrides).map_err(|e| {
            eprintln!("Fatal: {e}");
            75
        })?;
        Ok(Globals {
            settings,
            debug: cli.debug,
            verbose: cli.verbose,
        })
    };
    // One thread runs a session's reader and writer tasks (the brain and
    // the store run on a blocking thread of their own): a worker per core
    // would add threads, and their allocator arenas, for nothing.
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match &cli.command {
        Command::Replicator(_) | Command::Server(_) => {
            // Both daemons set up their own logging and runtime.
            match std::mem::replace(&mut cli.command, Command::Demo { dir: None }) {
                Command::Replicator(args) => ExitCode::from(homing::replicator::cli::run(args)),
                Command::Server(args) => ExitCode::from(homing::server::cli::run(args)),
                _ => exit(EX_USAGE),
            }
        }
        Command::Dump { path, json } => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            match homing::dump::run(path, *json, &mut lock) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("homing: {e:#}");
                    // doveadm's EX_DATAERR-like code for bad input
                    ExitCode::from(65)
                }
            }
        }
        Command::Sync { .. }
        | Command::Backup { .. }
        | Command::DsyncServer(_)
        | Command::Demo { .. } => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("Fatal: cannot start the runtime: {e}");
                    return exit(75);
                }
            };
            let code = match &cli.command {
                Command::Demo { dir } => {
                    let mut out = std::io::stdout();
                    match rt.block_on(homing::demo::run(dir.as_deref(), &mut out)) {
                        Ok(()) => 0,
                        Err(e) => {
                            eprintln!("homing demo: {e}");
                            1
                        }
                    }
                }
                Command::Sync { oneway, args } => match globals() {
                    Ok(g) => rt.block_on(run_sync(&g, Mode::Sync { oneway: *oneway }, args)),
                    Err(c) => c,
                },
                Command::Backup { args } => match globals() {
                    Ok(g) => rt.block_on(run_sync(&g, Mode::Backup, args)),
                    Err(c) => c,
                },
                Command::DsyncServer(a) => match globals() {
                    Ok(g) => rt.block_on(run_dsync_server(&g, a)),
                    Err(c) => c,
                },
                Command::Dump { .. } | Command::Replicator(_) | Command::Server(_) => 0,
            };
            // The stdio reader of dsync-server may still block on stdin.
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            exit(code)
        }
    }
}
