//! The `homing` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "homing",
    version,
    about = "Replication engine for Dovecot mail servers (dsync-compatible)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the parsed content of a Dovecot index/log/cache/uidlist/dbox file or a captured dsync stream.
    Dump {
        /// The file to read.
        path: PathBuf,
        /// Print JSON (schema: docs/dump-json.md) instead of indented text.
        #[arg(long)]
        json: bool,
    },
    /// Replication queue daemon and its admin commands (drop-in for Dovecot's replicator).
    Replicator(homing::replicator::cli::ReplicatorArgs),
    /// doveadm-server protocol daemon: the peer of `doveadm sync/backup tcp:`/`tcps:` and of Dovecot's replicator.
    Server(homing::server::cli::ServerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replicator(args) => return ExitCode::from(homing::replicator::cli::run(args)),
        Command::Server(args) => return ExitCode::from(homing::server::cli::run(args)),
        Command::Dump { path, json } => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            homing::dump::run(&path, json, &mut lock)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("homing: {e:#}");
            // doveadm's EX_DATAERR-like code for bad input
            ExitCode::from(65)
        }
    }
}
