//! `homing server`: command-line flags over the configuration file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::{CommandHandler, Server, ServerConfig, SessionHandler};

/// Flags of `homing server`; each overrides the same setting of `--config`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Configuration file (`key = value` lines; see docs/server.md).
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Plain listener address (repeatable), e.g. 0.0.0.0:12345.
    #[arg(long)]
    pub listen: Vec<SocketAddr>,
    /// TLS listener address (repeatable).
    #[arg(long)]
    pub tls_listen: Vec<SocketAddr>,
    /// Server certificate chain (PEM).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// File whose first line is the doveadm_password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// passwd-file user database (default: static, homes from --home).
    #[arg(long)]
    pub passwd_file: Option<PathBuf>,
    /// Home directory template (%u, %n, %d).
    #[arg(long)]
    pub home: Option<String>,
    /// Mail location template (%h, %u, %n, %d).
    #[arg(long)]
    pub mail_location: Option<String>,
    /// dsync sessions at once.
    #[arg(long)]
    pub max_sessions: Option<usize>,
    /// Delegate sessions to this command (%u, %h, %m expanded).
    #[arg(long)]
    pub dsync_command: Option<String>,
    /// Any other setting, `key=value` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Builds the configuration from the file and the flags.
pub fn build_config(args: &ServerArgs) -> anyhow::Result<ServerConfig> {
    let mut cfg = match &args.config {
        Some(p) => ServerConfig::load(p)?,
        None => ServerConfig::default(),
    };
    if !args.listen.is_empty() {
        cfg.listen = args.listen.clone();
    }
    if !args.tls_listen.is_empty() {
        cfg.tls_listen = args.tls_listen.clone();
    }
    let mut set = |k: &str, v: &str| cfg.set(k, v);
    if let Some(p) = &args.tls_cert {
        set("tls_cert", &p.display().to_string())?;
    }
    if let Some(p) = &args.tls_key {
        set("tls_key", &p.display().to_string())?;
    }
    if let Some(p) = &args.password_file {
        set("doveadm_password_file", &p.display().to_string())?;
    }
    if let Some(p) = &args.passwd_file {
        set("userdb", &format!("passwd-file:{}", p.display()))?;
    }
    if let Some(v) = &args.home {
        set("home", v)?;
    }
    if let Some(v) = &args.mail_location {
        set("mail_location", v)?;
    }
    if let Some(v) = args.max_sessions {
        set("max_sessions", &v.to_string())?;
    }
    if let Some(v) = &args.dsync_command {
        set("dsync_command", v)?;
    }
    for kv in &args.set {
        let Some((k, v)) = kv.split_once('=') else {
            anyhow::bail!("--set {kv:?}: expected KEY=VALUE");
        };
        set(k.trim(), v.trim())?;
    }
    Ok(cfg)
}

/// The session handler for a configuration: the delegate command if one is
/// set, else the built-in dsync slave.
pub fn handler_for(cfg: &ServerConfig) -> anyhow::Result<Arc<dyn SessionHandler>> {
    match &cfg.dsync_command {
        Some(cmd) => Ok(Arc::new(Arc::new(CommandHandler::new(cmd)))),
        None => Ok(Arc::new(super::handler::SlaveHandler::default())),
    }
}

async fn sigterm_or_ctrl_c() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Runs the daemon; returns the process exit code.
pub fn run(args: ServerArgs) -> u8 {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // Dovecot's tcps: client sends the peer's IP address as SNI,
                // which rustls reports (and ignores) on every connection.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,rustls::msgs::handshake=error")
                }),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let result = (|| -> anyhow::Result<()> {
        let cfg = build_config(&args)?;
        let handler = handler_for(&cfg)?;
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(async move {
            let server = Server::new(cfg, handler)?.bind().await?;
            for a in server.local_addrs() {
                tracing::info!("listening on {a}");
            }
            for a in server.tls_local_addrs() {
                tracing::info!("listening on {a} (TLS)");
            }
            let stats = server.run(sigterm_or_ctrl_c()).await;
            tracing::info!(?stats, "stopped");
            Ok::<(), anyhow::Error>(())
        })
    })();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("homing server: {e:#}");
            75
        }
    }
}
