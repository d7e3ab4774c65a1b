//! `homing replicator ...`: the daemon and the admin commands.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::client::{self, ClientCommand};
use super::config::ReplicatorConfig;
use super::config::SyncEngineKind;
use super::engine_runner::{EngineRunner, EngineSettings};
use super::format::{Formatter, DEFAULT_WIDTH};
use super::queue::SystemClock;
use super::runner::{DoveadmServerRunner, SyncFuture, SyncOutcome, SyncRequest, SyncRunner};
use super::server::Daemon;

/// Socket options shared by the admin commands.
#[derive(clap::Args, Debug)]
pub struct SocketArgs {
    /// replicator-doveadm socket (default: from -c, else /run/dovecot/replicator-doveadm).
    #[arg(short = 'a', value_name = "SOCKET")]
    socket: Option<PathBuf>,
    /// Configuration file to take the socket path from.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// doveadm formatter: table, flow, tab, json, pager (default as doveadm).
    #[arg(long = "format", value_name = "FORMATTER")]
    format: Option<String>,
    /// Same as --format json.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ReplicatorArgs {
    #[command(subcommand)]
    command: ReplicatorCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ReplicatorCommand {
    /// Run the replicator daemon (queue, sockets, scheduler).
    Daemon {
        /// Configuration file (key = value, see docs/replicator.md).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Override a setting, e.g. -o replication_max_conns=0 (repeatable).
        #[arg(short = 'o', value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Replication overview, or per-user status for a mask.
    Status {
        #[command(flatten)]
        socket: SocketArgs,
        mask: Option<String>,
    },
    /// What each sync slot is doing.
    DsyncStatus {
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Queue users matching a mask for replication.
    Replicate {
        #[command(flatten)]
        socket: SocketArgs,
        /// Force a full sync.
        #[arg(short = 'f')]
        full: bool,
        /// none, low, high or sync.
        #[arg(short = 'p', default_value = "low")]
        priority: String,
        mask: Option<String>,
    },
    /// Add users (a mask is matched against the userdb listing).
    Add {
        #[command(flatten)]
        socket: SocketArgs,
        mask: Option<String>,
    },
    /// Remove a user from the queue.
    Remove {
        #[command(flatten)]
        socket: SocketArgs,
        user: Option<String>,
    },
}

/// Prints a usage line like doveadm does for a missing argument; exit 64.
fn usage(line: &str) -> u8 {
    eprintln!("homing replicator {line}");
    64
}

/// Fails every sync: used when no doveadm-server socket is configured.
struct NoRunner;

impl SyncRunner for NoRunner {
    fn sync(&self, _req: SyncRequest) -> SyncFuture {
        Box::pin(async {
            SyncOutcome::Failed {
                reason: "no doveadm_socket_path configured".into(),
            }
        })
    }
}

fn load_config(path: Option<&Path>, set: &[String]) -> Result<ReplicatorConfig, String> {
    let mut c = match path {
        Some(p) => ReplicatorConfig::load(p).map_err(|e| e.to_string())?,
        None => ReplicatorConfig::default(),
    };
    for kv in set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("-o {kv}: expected KEY=VALUE"))?;
        c.set(k.trim(), v.trim()).map_err(|e| e.to_string())?;
    }
    Ok(c)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

async fn run_daemon(config: ReplicatorConfig) -> Result<(), String> {
    let runner: Arc<dyn SyncRunner> = match &config.doveadm_server_socket {
        _ if config.engine == SyncEngineKind::Homing => {
            if config.replication_mail_location.is_empty() {
                return Err("replication_engine = homing needs replication_mail_location".into());
            }
            Arc::new(EngineRunner::new(EngineSettings::from_config(&config)))
        }
        Some(p) => Arc::new(
            DoveadmServerRunner::new(p.clone(), &config.dsync_parameters)
                .with_destination(Some(config.dsync_destination.clone())),
        ),
        None => Arc::new(NoRunner),
    };
    let daemon = Daemon::start(config, runner, Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    daemon.shutdown().await.map_err(|e| e.to_string())
}

fn client_command(socket: &SocketArgs, cmd: ClientCommand) -> u8 {
    let formatter = if socket.json {
        Some(Formatter::Json)
    } else {
        match socket.format.as_deref().map(Formatter::from_name) {
            None => None,
            Some(Some(f)) => Some(f),
            Some(None) => {
                eprintln!(
                    "Fatal: Unknown formatter: {}",
                    socket.format.as_deref().unwrap_or("")
                );
                return 64;
            }
        }
    };
    let path = match (&socket.socket, &socket.config) {
        (Some(p), _) => p.clone(),
        (None, c) => match load_config(c.as_deref(), &[]) {
            Ok(c) => c.doveadm_socket,
            Err(e) => {
                eprintln!("Fatal: {e}");
                return 75;
            }
        },
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Fatal: {e}");
            return 75;
        }
    };
    let out = rt.block_on(client::run(&path, &cmd, formatter, DEFAULT_WIDTH));
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    out.exit_code
}

/// Runs `homing replicator ...`; returns the process exit code.
pub fn run(args: ReplicatorArgs) -> u8 {
    match args.command {
        ReplicatorCommand::Daemon { config, set } => {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .try_init();
            let config = match load_config(config.as_deref(), &set) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("Fatal: {e}");
                    return 78;
                }
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("Fatal: {e}");
                    return 75;
                }
            };
            match rt.block_on(run_daemon(config)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("Fatal: {e}");
                    75
                }
            }
        }
        ReplicatorCommand::Status { socket, mask } => {
            client_command(&socket, ClientCommand::Status { mask })
        }
        ReplicatorCommand::DsyncStatus { socket } => {
            client_command(&socket, ClientCommand::DsyncStatus)
        }
        ReplicatorCommand::Replicate {
            socket,
            full,
            priority,
            mask,
        } => match mask {
            Some(mask) => client_command(
                &socket,
                ClientCommand::Replicate {
                    priority,
                    full,
                    mask,
                },
            ),
            None => {
                usage("replicate [-a <replicator socket path>] [-f] [-p <priority>] <user mask>")
            }
        },
        ReplicatorCommand::Add { socket, mask } => match mask {
            Some(mask) => client_command(&socket, ClientCommand::Add { mask }),
            None => usage("add [-a <replicator socket path>] <user mask>"),
        },
        ReplicatorCommand::Remove { socket, user } => match user {
            Some(user) => client_command(&socket, ClientCommand::Remove { user }),
            None => usage("remove [-a <replicator socket path>] <username>"),
        },
    }
}
