//! The command line: doveadm-compatible `sync`, `backup` and `dsync-server`
//! plus homing's own commands.
//!
//! doveadm's rules kept here: global options (`-c -o -D -v`) come before the
//! subcommand; a subcommand's options come before the destination, and
//! everything from the first non-option word on is the destination; usage
//! errors exit 64.

pub mod config;
pub mod options;
pub mod sync;
pub mod via_server;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// doveadm's usage exit code.
pub const EX_USAGE: i32 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "homing",
    version,
    about = "Replication engine for Dovecot mail servers (dsync-compatible)"
)]
pub struct Cli {
    /// Dovecot configuration file to read `mail_location` and the userdb from.
    #[arg(short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Setting override, `KEY=VALUE` (`mail_location`, `dsync_remote_cmd`,
    /// `doveadm_port`, `doveadm_password`, `ssl_client_ca_file`, `mail_replica`).
    #[arg(short = 'o', value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Debug logging.
    #[arg(short = 'D')]
    pub debug: bool,
    /// Verbose logging.
    #[arg(short = 'v')]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the parsed content of a Dovecot index/log/cache/uidlist/dbox file or a captured dsync stream.
    Dump {
        /// The file to read.
        path: PathBuf,
        /// Print JSON (schema: docs/dump-json.md) instead of indented text.
        #[arg(long)]
        json: bool,
    },
    /// Two-way sync of a user's mail with a destination (like `doveadm sync`).
    Sync {
        /// `-1`: one-way merge into the destination, deleting nothing there.
        #[arg(short = '1')]
        oneway: bool,
        #[command(flatten)]
        args: SyncArgs,
    },
    /// One-way sync: make the destination identical to this side (like `doveadm backup`).
    Backup {
        #[command(flatten)]
        args: SyncArgs,
    },
    /// The dsync peer over stdin/stdout (like `doveadm dsync-server`).
    #[command(name = "dsync-server")]
    DsyncServer(ServerArgs),
    /// Build two sample Maildir replicas, change both, sync them, verify and explain the result.
    Demo {
        /// Keep the replicas in DIR/A and DIR/B (new, or empty) instead of a temporary directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Replication queue daemon and its admin commands (drop-in for Dovecot's replicator).
    Replicator(crate::replicator::cli::ReplicatorArgs),
    /// doveadm-server protocol daemon: the peer of `doveadm sync/backup tcp:`/`tcps:` and of Dovecot's replicator.
    Server(crate::server::cli::ServerArgs),
}

/// Options shared by `sync` and `backup` (doveadm's letters and meanings).
#[derive(Args, Debug, Default, Clone)]
pub struct SyncArgs {
    /// The user.
    #[arg(short = 'u', value_name = "USER")]
    pub user: Option<String>,
    /// All users of the userdb.
    #[arg(short = 'A')]
    pub all_users: bool,
    /// Users listed in a file, one per line.
    #[arg(short = 'F', value_name = "FILE")]
    pub user_file: Option<PathBuf>,
    /// Run the command on a doveadm server instead of here: its unix socket
    /// (a path, e.g. `/run/dovecot/doveadm-server`) or `host[:port]` (TCP,
    /// authenticated with `doveadm_password`; default port `doveadm_port`).
    #[arg(short = 'S', value_name = "SOCKET")]
    pub socket: Option<String>,
    /// Full sync: every mailbox, every message.
    #[arg(short = 'f')]
    pub full: bool,
    /// Purge the remote storage after syncing.
    #[arg(short = 'P')]
    pub purge_remote: bool,
    /// Reverse the direction of a one-way sync (remote to local).
    #[arg(short = 'R')]
    pub reverse: bool,
    /// Ask the remote dsync-server to notify its replicator.
    #[arg(short = 'U')]
    pub replicator_notify: bool,
    /// Take the per-user sync lock, waiting up to SECS for it.
    #[arg(short = 'l', value_name = "SECS")]
    pub lock_timeout: Option<String>,
    /// Write raw remote I/O to files (not supported; ignored with a warning).
    #[arg(short = 'r', value_name = "PATH")]
    pub rawlog: Option<PathBuf>,
    /// Only this mailbox ('' = mailbox list only, no mails).
    #[arg(short = 'm', value_name = "MAILBOX")]
    pub mailbox: Option<String>,
    /// Only the mailbox with this GUID ('' = mailbox list only).
    #[arg(short = 'g', value_name = "GUID")]
    pub mailbox_guid: Option<String>,
    /// Only these namespaces (by prefix).
    #[arg(short = 'n', value_name = "NAMESPACE")]
    pub namespace: Vec<String>,
    /// Also namespaces with their own location.
    #[arg(short = 'N')]
    pub all_namespaces: bool,
    /// Exclude mailboxes matching this mask.
    #[arg(short = 'x', value_name = "MASK")]
    pub exclude: Vec<String>,
    /// Name of a virtual all-mails mailbox (accepted; mails are saved normally).
    #[arg(short = 'a', value_name = "MAILBOX")]
    pub all_mailbox: Option<String>,
    /// Stateful sync from this state ('' = unknown); the new state is printed.
    #[arg(short = 's', value_name = "STATE")]
    pub state: Option<String>,
    /// Skip mails received before this date.
    #[arg(short = 't', value_name = "DATE")]
    pub since: Option<String>,
    /// Skip mails received after this date.
    #[arg(short = 'e', value_name = "DATE")]
    pub until: Option<String>,
    /// Only mails with this flag (leading `-`: without it).
    #[arg(short = 'O', value_name = "FLAG")]
    pub sync_flag: Vec<String>,
    /// Skip mails larger than this size.
    #[arg(short = 'I', value_name = "SIZE")]
    pub max_size: Option<String>,
    /// Stalled-I/O timeout in seconds (default 600).
    #[arg(short = 'T', value_name = "SECS")]
    pub timeout: Option<String>,
    /// The destination is the user's `mail_replica` setting.
    #[arg(short = 'd')]
    pub default_destination: bool,
    /// Print a JSON summary of what changed on each side to stdout.
    #[arg(long)]
    pub json: bool,
    /// The destination: a mail location (`maildir:/path`), `remote:[login@]host`,
    /// `[user@]host`, a command, `tcp:host[:port]` or `tcps:host[:port]`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "DEST"
    )]
    pub destination: Vec<String>,
}

/// `dsync-server` options.
#[derive(Args, Debug, Default, Clone)]
pub struct ServerArgs {
    #[arg(short = 'u', value_name = "USER")]
    pub user: Option<String>,
    /// Legacy marker (accepted, ignored).
    #[arg(short = 'E')]
    pub legacy: bool,
    /// Raw log path (not supported; ignored with a warning).
    #[arg(short = 'r', value_name = "PATH")]
    pub rawlog: Option<PathBuf>,
    /// I/O timeout in seconds (default 600).
    #[arg(short = 'T', value_name = "SECS")]
    pub timeout: Option<String>,
    /// After a successful run, tell the local replicator (`<base_dir>/replicator-doveadm`)
    /// that the user was just synced (`NOTIFY`).
    #[arg(short = 'U')]
    pub replicator_notify: bool,
    /// Ignored words (old setups pass `dsync-server` twice). Hyphen words
    /// are not taken here: that would swallow a joined `-uUSER`, the form
    /// `dsync_remote_cmd` (`-u%u`) produces.
    #[arg(trailing_var_arg = true, hide = true)]
    pub ignored: Vec<String>,
}
