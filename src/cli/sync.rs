//! `homing sync`, `homing backup` and `homing dsync-server`.

use std::io::Write;
use std::time::Duration;

use dsync_protocol::state::{StateRecord, SyncState};
use dsync_protocol::SyncType;
use serde::Serialize;
use sync_engine::mailbox::MailFilter;
use sync_engine::memory::MemoryReplica;
use sync_engine::{ExitStatus, MailboxFilter, SyncSettings};

use super::options::{self, OptionError, Settings};
use super::{ServerArgs, SyncArgs, EX_USAGE};
use crate::session::maildir_store::MaildirReplica;
use crate::session::{
    hostname, now, run_local_pair, run_master_over, run_slave_session, SessionOptions,
    SessionResult, SessionStats, SessionStore,
};
use crate::transport::{self, Destination, OpenOptions, EX_NOHOST, EX_TEMPFAIL};

const SYNC_USAGE: &str = "doveadm sync [-1fPRU] [-l <secs>] [-r <rawlog path>] [-m <mailbox>] [-g <mailbox guid>] [-n <namespace> | -N] [-x <exclude>] [-a <all mailbox>] [-s <state>] [-T <secs>] [-t <start date>] [-e <end date>] [-O <sync flag>] [-I <max size>] -d|<dest>";

/// Global options that matter to these commands.
#[derive(Debug, Clone, Default)]
pub struct Globals {
    pub settings: Settings,
    pub debug: bool,
    pub verbose: bool,
}

/// Which command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sync { oneway: bool },
    Backup,
}

/// A failure with doveadm's exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

fn fatal(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

impl From<OptionError> for Failure {
    fn from(e: OptionError) -> Failure {
        fatal(EX_TEMPFAIL, format!("Fatal: {e}"))
    }
}

/// The local replica a command works on.
pub enum LocalReplica {
    /// `memory:`: an empty in-memory replica, dropped at exit (tests, dry runs).
    Memory(MemoryReplica),
    /// `maildir:PATH[:LAYOUT=fs]`.
    Maildir(Box<MaildirReplica>),
}

impl SessionStore for LocalReplica {
    fn answer(&mut self, q: &sync_engine::Query) -> sync_engine::Answer {
        match self {
            LocalReplica::Memory(m) => SessionStore::answer(m, q),
            LocalReplica::Maildir(m) => m.answer(q),
        }
    }
    fn apply(&mut self, a: &sync_engine::Action) -> Result<(), sync_engine::StorageError> {
        match self {
            LocalReplica::Memory(m) => SessionStore::apply(m, a),
            LocalReplica::Maildir(m) => m.apply(a),
        }
    }
    fn open_body(
        &mut self,
        b: &sync_engine::BodyRef,
    ) -> std::io::Result<Option<Box<dyn std::io::Read + Send>>> {
        match self {
            LocalReplica::Memory(m) => m.open_body(b),
            LocalReplica::Maildir(m) => m.open_body(b),
        }
    }
    fn set_incoming_body(&mut self, body: crate::session::IncomingBody) -> std::io::Result<()> {
        match self {
            LocalReplica::Memory(m) => SessionStore::set_incoming_body(m, body),
            LocalReplica::Maildir(m) => m.set_incoming_body(body),
        }
    }
    fn saves_settled_below(
        &mut self,
        mailbox: dsync_protocol::Guid128,
        uid: u32,
    ) -> Result<(), sync_engine::StorageError> {
        match self {
            LocalReplica::Memory(_) => Ok(()),
            LocalReplica::Maildir(m) => m.saves_settled_below(mailbox, uid),
        }
    }
    fn finish(&mut self) -> Result<(), sync_engine::StorageError> {
        match self {
            LocalReplica::Memory(_) => Ok(()),
            LocalReplica::Maildir(m) => m.finish(),
        }
    }
    fn spool_dir(&self) -> Option<std::path::PathBuf> {
        match self {
            LocalReplica::Memory(_) => None,
            LocalReplica::Maildir(m) => m.spool_dir(),
        }
    }
}

/// Expands `%u`, `%n`, `%d` of a mail location for `user`.
fn expand_location(loc: &str, user: &str) -> Result<String, Failure> {
    let (n, d) = user.split_once('@').unwrap_or((user, ""));
    let mut out = String::new();
    let mut chars = loc.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => out.push_str(user),
            Some('n') => out.push_str(n),
            Some('d') => out.push_str(d),
            Some('%') => out.push('%'),
            other => {
                return Err(fatal(
                    EX_TEMPFAIL,
                    format!(
                        "Fatal: mail_location {loc}: %{} is not supported (only %u, %n, %d)",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        }
    }
    if out.contains('~') {
        return Err(fatal(
            EX_TEMPFAIL,
            format!("Fatal: mail_location {loc}: home directories (~) are not supported; give an absolute path"),
        ));
    }
    Ok(out)
}

/// Opens the replica a mail location names.
pub fn open_location(location: &str) -> Result<LocalReplica, Failure> {
    let scheme = location.split(':').next().unwrap_or("");
    match scheme {
        "memory" => Ok(LocalReplica::Memory(MemoryReplica::new())),
        "maildir" => MaildirReplica::open_location(location)
            .map(|m| LocalReplica::Maildir(Box::new(m)))
            .map_err(|e| fatal(EX_TEMPFAIL, format!("Fatal: {e}"))),
        _ => Err(fatal(
            EX_TEMPFAIL,
            format!("Fatal: mail location {location}: storage '{scheme}' is not available in this build (supported: maildir:, memory:)"),
        )),
    }
}

/// What `--json` prints.
#[derive(Serialize)]
struct Summary<'a> {
    user: &'a str,
    destination: String,
    exit_code: i32,
    status: String,
    messages: &'a [String],
    /// This side: changes applied locally and traffic.
    local: &'a SessionStats,
    /// The other side's changes as applied by it (local destinations only).
    #[serde(skip_serializing_if = "Option::is_none")]
    remote: Option<&'a SessionStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<String>,
}

fn io_timeout(v: Option<&str>) -> Option<Duration> {
    match options::int_or_ignore(v) {
        Some(0) => None,
        Some(n) if n > 0 => Some(Duration::from_secs(n as u64)),
        _ => Some(Duration::from_secs(600)),
    }
}

/// Builds the engine settings from the options.
pub fn settings(mode: Mode, a: &SyncArgs, now: i64) -> Result<(SyncSettings, bool), Failure> {
    let mut s = SyncSettings::default();
    let mut state_fallback = false;
    match mode {
        Mode::Sync { oneway: true } | Mode::Backup => {
            if a.reverse {
                s.backup_recv = true;
            } else {
                s.backup_send = true;
            }
            s.no_backup_overwrite = mode == Mode::Sync { oneway: true };
        }
        Mode::Sync { oneway: false } => {}
    }
    s.purge_remote = a.purge_remote;
    s.lock_timeout = options::int_or_ignore(a.lock_timeout.as_deref())
        .map(|n| n.clamp(0, u32::MAX as i64) as u32)
        .unwrap_or(0);
    if let Some(st) = a.state.as_deref().filter(|s| !s.is_empty()) {
        match SyncState::parse(st) {
            Ok(parsed) => {
                s.states = parsed.mailboxes.iter().map(Into::into).collect();
                s.sync_type = SyncType::State;
            }
            Err(e) => {
                eprintln!("Error: Saved sync state is invalid, falling back to full sync: {e}");
                state_fallback = true;
            }
        }
    }
    if a.full || state_fallback {
        s.sync_type = SyncType::Full;
    }
    if let Some(m) = &a.mailbox {
        if m.is_empty() {
            s.no_mail_sync = true;
        } else {
            s.mailbox_filter.only_name = Some(m.as_bytes().to_vec());
        }
    }
    if let Some(g) = &a.mailbox_guid {
        match options::mailbox_guid(g)? {
            Some(guid) => s.mailbox_filter.guid = Some(guid),
            None => s.no_mail_sync = true,
        }
    }
    s.mailbox_filter = MailboxFilter {
        exclude: a.exclude.iter().map(|x| x.as_bytes().to_vec()).collect(),
        ..s.mailbox_filter
    };
    let since = a
        .since
        .as_deref()
        .map(|v| options::date('t', v, now))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|v| options::date('e', v, now))
        .transpose()?;
    if let (Some(t), Some(e)) = (since, until) {
        if t > e {
            return Err(OptionError::DateOrder.into());
        }
    }
    s.filter = MailFilter {
        since: since.unwrap_or(0),
        until: until.unwrap_or(0),
        max_size: a
            .max_size
            .as_deref()
            .map(options::size)
            .transpose()?
            .unwrap_or(0),
        flag: options::sync_flag(&a.sync_flag)?,
    };
    Ok((s, a.state.is_some()))
}

fn print_outcome<S>(user: &str, r: &SessionResult<S>) {
    let prefix = format!("dsync-local({user})");
    if let Some(e) = &r.error {
        eprintln!("{prefix}: Error: {e}");
    }
    if let Some(e) = &r.transport_error {
        eprintln!("{prefix}: Error: {e}");
    }
    for m in &r.outcome.messages {
        if r.outcome.status == ExitStatus::ChangesDuringSync {
            eprintln!("dsync({user}): Warning: Mailbox changes caused a desync. You may want to run dsync again: {m}");
        } else if r.outcome.status == ExitStatus::Ok {
            eprintln!("{prefix}: Warning: {m}");
        } else if r.error.is_none() {
            eprintln!("{prefix}: Error: {m}");
        }
    }
}

pub(crate) fn state_string<S>(r: &SessionResult<S>) -> String {
    match (&r.outcome.state, r.outcome.require_full_resync) {
        (Some(states), false) => SyncState {
            mailboxes: states.iter().map(StateRecord::from).collect(),
            ..SyncState::default()
        }
        .encode(),
        _ => String::new(),
    }
}

/// `homing sync` / `homing backup`: returns the exit code.
pub async fn run_sync(globals: &Globals, mode: Mode, a: &SyncArgs) -> i32 {
    match run_sync_inner(globals, mode, a).await {
        Ok(code) => code,
        Err(f) => {
            eprintln!("{}", f.message);
            f.code
        }
    }
}

async fn run_sync_inner(globals: &Globals, mode: Mode, a: &SyncArgs) -> Result<i32, Failure> {
    if let Some(w) = a
        .destination
        .first()
        .filter(|w| w.starts_with('-') && w.len() > 1)
    {
        let name = if mode == Mode::Backup {
            "backup"
        } else {
            "sync"
        };
        let letter = w.chars().nth(1).unwrap_or('-');
        return Err(fatal(
            EX_USAGE,
            format!("{name}: invalid option -- '{letter}'"),
        ));
    }
    if a.all_users || a.user_file.is_some() {
        return Err(fatal(
            EX_TEMPFAIL,
            "Fatal: -A and -F (several users) are not supported; run once per user with -u",
        ));
    }
    if a.socket.is_some() {
        return Err(fatal(
            EX_TEMPFAIL,
            "Fatal: -S (run through a doveadm server) is not supported",
        ));
    }
    let user = match a.user.clone().or_else(|| std::env::var("USER").ok()) {
        Some(u) if !u.is_empty() => u,
        _ => {
            return Err(fatal(
                EX_USAGE,
                "Fatal: USER environment is missing and -u option not used",
            ))
        }
    };
    let cfg = &globals.settings;
    let words: Vec<String> = if a.default_destination {
        if !a.destination.is_empty() {
            eprintln!("Error: Don't give mail location with -d parameter");
        }
        match cfg.get("mail_replica").filter(|s| !s.is_empty()) {
            Some(r) => vec![r.to_string()],
            None => {
                return Err(fatal(
                    EX_NOHOST,
                    "Error: User has no mail_replica in userdb",
                ))
            }
        }
    } else if a.destination.is_empty() {
        let usage = if mode == Mode::Backup {
            SYNC_USAGE.replace("sync [-1fPRU]", "backup [-fPRU]")
        } else {
            SYNC_USAGE.to_string()
        };
        return Err(fatal(EX_USAGE, format!("doveadm: Usage: {usage}")));
    } else {
        a.destination.clone()
    };
    for ns in &a.namespace {
        if !ns.is_empty() {
            return Err(fatal(
                EX_USAGE,
                format!("Error: Namespace not found: '{ns}'"),
            ));
        }
    }
    if a.rawlog.is_some() {
        eprintln!("Warning: -r (rawlog) is not supported; continuing without it");
    }
    let now = now();
    let (settings, print_state) = settings(mode, a, now)?;
    let dest =
        Destination::parse(&words).map_err(|e| fatal(e.exit_code(), format!("Error: {e}")))?;
    if a.all_namespaces && matches!(dest, Destination::Location(_)) {
        return Err(fatal(
            EX_TEMPFAIL,
            "Fatal: -N parameter requires syncing with remote host",
        ));
    }
    let location = match cfg.get("mail_location") {
        Some(l) if !l.is_empty() => expand_location(l, &user)?,
        _ => {
            return Err(fatal(
                EX_TEMPFAIL,
                "Fatal: no mail_location: give -o mail_location=LOCATION or -c with a config that sets it",
            ))
        }
    };
    let local = open_location(&location)?;
    let host = hostname();
    let opts = SessionOptions::default();
    let json = a.json;
    let mut out = std::io::stdout().lock();

    let (result, remote_stats, dest_text) = match &dest {
        Destination::Location(loc) => {
            if *loc == location {
                return Err(fatal(EX_TEMPFAIL, format!("Error: Both source and destination mail_location points to same directory: {loc}")));
            }
            let other = open_location(loc)?;
            let (m, s) = run_local_pair(local, other, &host, settings, &opts).await;
            let code_s = s.outcome.status.code();
            if code_s != 0 {
                for msg in &s.outcome.messages {
                    eprintln!("dsync({user}): Error: {msg}");
                }
            }
            (m, Some(s.stats), loc.clone())
        }
        _ => {
            let open = OpenOptions {
                user: Some(user.clone()),
                remote_cmd: cfg
                    .get("dsync_remote_cmd")
                    .unwrap_or(transport::DEFAULT_REMOTE_CMD)
                    .to_string(),
                default_port: cfg.get("doveadm_port").and_then(|p| p.parse().ok()),
                doveadm_password: cfg.get("doveadm_password").map(String::from),
                ca_path: cfg
                    .get("ssl_client_ca_file")
                    .or(cfg.get("ssl_client_ca_dir"))
                    .map(Into::into),
                flags: transport::CommandFlags {
                    debug: globals.debug,
                    verbose: globals.verbose,
                },
                replicator_notify: a.replicator_notify,
                io_timeout: io_timeout(a.timeout.as_deref()),
                ..OpenOptions::default()
            };
            let stream = transport::open(&dest, &open)
                .await
                .map_err(|e| fatal(e.exit_code(), format!("Error: {e}")))?;
            let r = run_master_over(stream, local, &host, settings, &opts).await;
            (r, None, words.join(" "))
        }
    };
    print_outcome(&user, &result);
    let code = result.exit_code();
    let state = print_state.then(|| state_string(&result));
    if let Some(s) = &state {
        let _ = writeln!(out, "{s}");
    }
    if json {
        let summary = Summary {
            user: &user,
            destination: dest_text,
            exit_code: code,
            status: format!("{:?}", result.outcome.status),
            messages: &result.outcome.messages,
            local: &result.stats,
            remote: remote_stats.as_ref(),
            state,
        };
        if let Ok(j) = serde_json::to_string_pretty(&summary) {
            let _ = writeln!(out, "{j}");
        }
    }
    Ok(code)
}

/// `homing dsync-server`: the slave over stdin/stdout. Returns the exit code.
pub async fn run_dsync_server(globals: &Globals, a: &ServerArgs) -> i32 {
    let user = match a.user.clone().or_else(|| std::env::var("USER").ok()) {
        Some(u) if !u.is_empty() => u,
        _ => {
            eprintln!("Fatal: USER environment is missing and -u option not used");
            return EX_USAGE;
        }
    };
    if a.rawlog.is_some() {
        eprintln!("Warning: -r (rawlog) is not supported; continuing without it");
    }
    let location = match globals.settings.get("mail_location") {
        Some(l) if !l.is_empty() => l.to_string(),
        _ => "memory:".to_string(),
    };
    let store = match expand_location(&location, &user).and_then(|l| open_location(&l)) {
        Ok(s) => s,
        Err(f) => {
            eprintln!("{}", f.message);
            return f.code;
        }
    };
    let timeout = io_timeout(a.timeout.as_deref());
    let reader = transport::timeout::IdleTimeout::new(tokio::io::stdin(), timeout, "remote");
    let writer = tokio::io::stdout();
    let r = run_slave_session(
        reader,
        writer,
        store,
        &hostname(),
        "remote",
        &SessionOptions::default(),
    )
    .await;
    let prefix = format!("dsync-remote({user})");
    if let Some(e) = &r.error {
        eprintln!("{prefix}: Error: {e}");
    }
    let level = if r.outcome.status == ExitStatus::Ok {
        "Warning"
    } else {
        "Error"
    };
    for m in &r.outcome.messages {
        eprintln!("{prefix}: {level}: {m}");
    }
    r.exit_code()
}
