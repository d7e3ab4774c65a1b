//! `homing sync`, `homing backup` and `homing dsync-server`.

use std::io::Write;
use std::sync::Arc;
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
    hostname, now, run_local_pair, run_master_over, run_slave_session, Progress, SessionOptions,
    SessionResult, SessionStats, SessionStore,
};
use crate::storage::lock::Owner;
use crate::transport::{self, Destination, OpenOptions, EX_NOHOST, EX_TEMPFAIL};
use crate::userdb::UserInfo;

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

impl LocalReplica {
    /// Sets the user's home (where `-l` takes `.dovecot-sync.lock`).
    pub fn set_home(&mut self, home: std::path::PathBuf) {
        if let LocalReplica::Maildir(m) = self {
            m.set_home(Some(home));
        }
    }
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
    fn body_dates(&mut self, b: &sync_engine::BodyRef) -> Option<(i64, i64)> {
        match self {
            LocalReplica::Memory(_) => None,
            LocalReplica::Maildir(m) => m.body_dates(b),
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

/// Expands a mail location for `user`: `%u %n %d` (and `%h` with a home),
/// and `~` at the start of the path and of `KEY=` parameter values.
pub fn expand_location(loc: &str, user: &str, home: Option<&str>) -> Result<String, Failure> {
    let bad = |why: String| fatal(EX_TEMPFAIL, format!("Fatal: mail_location {loc}: {why}"));
    let out = crate::userdb::expand_vars(loc, user, home).map_err(bad)?;
    if !out.contains('~') {
        return Ok(out);
    }
    let (scheme, rest) = out.split_once(':').unwrap_or(("", out.as_str()));
    let mut parts = Vec::new();
    for (i, part) in rest.split(':').enumerate() {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) if i > 0 => (Some(k), v),
            _ => (None, part),
        };
        let value = match value.strip_prefix('~') {
            Some(tail) if tail.is_empty() || tail.starts_with('/') => {
                let h = home.ok_or_else(|| {
                    bad(format!(
                        "~ needs the home directory of {user}, and the userdb gives none"
                    ))
                })?;
                format!("{}{tail}", h.trim_end_matches('/'))
            }
            _ => value.to_string(),
        };
        parts.push(match key {
            Some(k) => format!("{k}={value}"),
            None => value,
        });
    }
    Ok(format!("{scheme}:{}", parts.join(":")))
}

/// One user's local side: what the userdb says and where its mail is.
#[derive(Debug, Clone, Default)]
pub struct LocalUser {
    pub user: String,
    /// The userdb's answer; `None` when homing runs without a userdb.
    pub info: Option<UserInfo>,
    /// The expanded mail location (`-o mail_location`, else the userdb's
    /// `mail`, else the configuration's); `None` when nothing sets one.
    pub location: Option<String>,
    /// Who owns what is created, when running as root: the userdb's uid and gid.
    pub owner: Option<Owner>,
}

impl LocalUser {
    /// A setting for this user: `-o` first, then the userdb's field, then
    /// the configuration file.
    pub fn setting<'a>(&'a self, settings: &'a Settings, key: &str) -> Option<&'a str> {
        if settings.overridden.contains(key) {
            return settings.get(key);
        }
        self.info
            .as_ref()
            .and_then(|i| i.get(key))
            .or_else(|| settings.get(key))
    }

    /// The home directory: the userdb's `home`, else `mail_home` (as Dovecot
    /// uses it when the userdb gives none). Only absolute paths count.
    pub fn home(&self, settings: &Settings) -> Option<std::path::PathBuf> {
        let from_userdb = self.info.as_ref().and_then(|i| i.home.clone());
        let h = match from_userdb {
            Some(h) => h,
            None => {
                let t = settings.get("mail_home").filter(|h| !h.is_empty())?;
                crate::userdb::expand_vars(t, &self.user, None).ok()?
            }
        };
        h.starts_with('/').then(|| h.into())
    }
}

/// Looks `user` up as doveadm does. `Ok(None)`: the userdb does not know it.
pub fn resolve_user(settings: &Settings, user: &str) -> Result<Option<LocalUser>, Failure> {
    let info = match settings.userdb() {
        None => None,
        Some(db) => match db.lookup(user) {
            Ok(Some(info)) => Some(info),
            Ok(None) => return Ok(None),
            // Without a reachable userdb, a location given with -o (or a
            // configuration naming no userdb) is enough.
            Err(e)
                if e.is_unavailable()
                    && (settings.overridden.contains("mail_location")
                        || settings.userdbs.is_empty()) =>
            {
                tracing::debug!("no userdb lookup for {user}: {e}");
                None
            }
            Err(e) => {
                return Err(fatal(
                    EX_TEMPFAIL,
                    format!("doveadm({user}): Error: User lookup failed: {e}"),
                ))
            }
        },
    };
    let name = info
        .as_ref()
        .map(|i| i.user.clone())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| user.to_string());
    let home = info.as_ref().and_then(|i| i.home.clone());
    let raw = if settings.overridden.contains("mail_location") {
        settings.get("mail_location")
    } else {
        info.as_ref()
            .and_then(UserInfo::mail)
            .or_else(|| settings.get("mail_location"))
    };
    let location = match raw.filter(|l| !l.is_empty()) {
        Some(l) => Some(expand_location(l, &name, home.as_deref())?),
        None => None,
    };
    let owner = info.as_ref().and_then(|i| {
        let uid = i.uid?;
        let gid = i.gid.or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.gid.as_raw())
        })?;
        Some(Owner { uid, gid })
    });
    Ok(Some(LocalUser {
        user: name,
        info,
        location,
        owner,
    }))
}

/// Opens the replica a mail location names.
pub fn open_location(location: &str) -> Result<LocalReplica, Failure> {
    open_replica(location, None, None, None)
}

/// Opens a user's replica at `location` with what goes with it: the owner
/// of created files, the attribute dict (`mail_attribute_dict`, `~` and `%h`
/// = the home) and the home (for the `-l` lock).
pub fn open_user_location(
    settings: &Settings,
    user: &LocalUser,
    location: &str,
) -> Result<LocalReplica, Failure> {
    let home = user.home(settings);
    let home_str = home.as_ref().map(|h| h.display().to_string());
    let dict = match user
        .setting(settings, "mail_attribute_dict")
        .filter(|d| !d.is_empty())
    {
        None => None,
        Some(d) => Some(expand_location(d, &user.user, home_str.as_deref())?),
    };
    open_replica(location, user.owner, dict.as_deref(), home)
}

/// Opens the replica at `location`: created files belong to `owner` when
/// running as root, attributes in `attribute_dict`, the `-l` lock in
/// `home`.
pub fn open_replica(
    location: &str,
    owner: Option<Owner>,
    attribute_dict: Option<&str>,
    home: Option<std::path::PathBuf>,
) -> Result<LocalReplica, Failure> {
    let scheme = location.split(':').next().unwrap_or("");
    match scheme {
        "memory" => Ok(LocalReplica::Memory(MemoryReplica::new())),
        "maildir" => MaildirReplica::open_for_user(location, owner, attribute_dict)
            .map(|mut m| {
                m.set_home(home);
                LocalReplica::Maildir(Box::new(m))
            })
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
    // A peer that failed after its last item (its final commit, say) may
    // not have written what the state would call common.
    if r.transport_error.is_some() && r.exit_code() != 0 {
        return String::new();
    }
    match (&r.outcome.state, r.outcome.require_full_resync) {
        (Some(states), false) => SyncState {
            mailboxes: states.iter().map(StateRecord::from).collect(),
            ..SyncState::default()
        }
        .encode(),
        _ => String::new(),
    }
}

/// Exit code of several users' runs: the first failure is kept, a
/// temporary failure (75) overrides any other, and a failure is never
/// hidden by a later "run again" (2).
pub fn combine_exit_codes(acc: i32, code: i32) -> i32 {
    match (acc, code) {
        (_, 0) => acc,
        (_, EX_TEMPFAIL) => EX_TEMPFAIL,
        (0, c) | (2, c) => c,
        (a, _) => a,
    }
}

/// Which users a command runs for.
enum Users {
    One(String),
    /// `-A`, `-F` or a `-u` mask (`*`, `?`).
    Many(Vec<String>),
}

/// What is checked once, before any user.
struct Prepared<'a> {
    globals: &'a Globals,
    args: &'a SyncArgs,
    settings: SyncSettings,
    print_state: bool,
    /// `None` with `-d`: each user's `mail_replica`.
    dest: Option<(Destination, Vec<String>)>,
    many: bool,
}

/// The usage line of `sync` or `backup`.
pub(crate) fn usage_line(mode: Mode) -> String {
    if mode == Mode::Backup {
        SYNC_USAGE.replace("sync [-1fPRU]", "backup [-fPRU]")
    } else {
        SYNC_USAGE.to_string()
    }
}

fn usage(mode: Mode) -> Failure {
    fatal(EX_USAGE, format!("doveadm: Usage: {}", usage_line(mode)))
}

/// The users of `-A`, `-F`, a `-u` mask, or the one user.
fn select_users(globals: &Globals, a: &SyncArgs) -> Result<Users, Failure> {
    let mask = a.user.as_deref().filter(|u| u.contains(['*', '?']));
    if !a.all_users && a.user_file.is_none() && mask.is_none() {
        return match a.user.clone().or_else(|| std::env::var("USER").ok()) {
            Some(u) if !u.is_empty() => Ok(Users::One(u)),
            _ => Err(fatal(
                EX_USAGE,
                "Fatal: USER environment is missing and -u option not used",
            )),
        };
    }
    let iter_failed = |why: String| {
        fatal(
            EX_TEMPFAIL,
            format!("doveadm: Error: {why}\ndoveadm: Error: Failed to iterate through some users"),
        )
    };
    if let Some(path) = &a.user_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| iter_failed(format!("read({}) failed: {e}", path.display())))?;
        // Blank lines name no user.
        return Ok(Users::Many(
            text.lines()
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
        ));
    }
    let Some(db) = globals.settings.userdb() else {
        return Err(fatal(
            EX_TEMPFAIL,
            "Fatal: listing users needs Dovecot's configuration (-c) and its userdb",
        ));
    };
    let mut users = Vec::new();
    for u in db
        .list()
        .map_err(|e| iter_failed(format!("listing users failed: {e}")))?
    {
        let u = u.map_err(|e| iter_failed(format!("listing users failed: {e}")))?;
        if mask.is_none_or(|m| super::config::wildcard_match_icase(m, &u)) {
            users.push(u);
        }
    }
    Ok(Users::Many(users))
}

/// `homing sync` / `homing backup`: returns the exit code.
pub async fn run_sync(globals: &Globals, mode: Mode, a: &SyncArgs) -> i32 {
    let report = |f: Failure| {
        eprintln!("{}", f.message);
        f.code
    };
    // doveadm: option errors first, then the user selection, then the rest.
    if let Some(f) = invalid_option(mode, a) {
        return report(f);
    }
    let single = !a.all_users
        && a.user_file.is_none()
        && !a.user.as_deref().is_some_and(|u| u.contains(['*', '?']));
    if single && a.user.is_none() && std::env::var("USER").map_or(true, |u| u.is_empty()) {
        return report(fatal(
            EX_USAGE,
            "Fatal: USER environment is missing and -u option not used",
        ));
    }
    if let Some(socket) = a.socket.as_deref() {
        if let Err((code, message)) = super::via_server::check_locally(mode, a) {
            return report(fatal(code, message));
        }
        let (users, many) = match select_users(globals, a) {
            Ok(Users::One(u)) => (vec![u], false),
            Ok(Users::Many(v)) => (v, true),
            Err(f) => return report(f),
        };
        return super::via_server::run(globals, mode, a, socket, &users, many).await;
    }
    let prepared = match prepare(globals, mode, a, !single) {
        Ok(p) => p,
        Err(f) => return report(f),
    };
    let users = match select_users(globals, a) {
        Ok(u) => u,
        Err(f) => return report(f),
    };
    match users {
        Users::One(user) => match run_user(&prepared, &user).await {
            Ok(Some(code)) => code,
            Ok(None) => {
                eprintln!("doveadm({user}): Error: User doesn't exist");
                EX_NOUSER
            }
            Err(f) => report(f),
        },
        Users::Many(users) => {
            let mut code = 0;
            for user in users {
                match run_user(&prepared, &user).await {
                    Ok(Some(c)) => code = combine_exit_codes(code, c),
                    Ok(None) => eprintln!("doveadm({user}): Info: User no longer exists, skipping"),
                    // As doveadm: a user that cannot be set up stops the run.
                    Err(f) => {
                        eprintln!("{}", f.message);
                        eprintln!("doveadm: Error: Failed to iterate through some users");
                        return EX_TEMPFAIL;
                    }
                }
            }
            code
        }
    }
}

/// doveadm's exit code for an unknown user.
pub const EX_NOUSER: i32 = 67;

/// An option letter doveadm does not know, given where the destination starts.
fn invalid_option(mode: Mode, a: &SyncArgs) -> Option<Failure> {
    let w = a
        .destination
        .first()
        .filter(|w| w.starts_with('-') && w.len() > 1)?;
    let name = if mode == Mode::Backup {
        "backup"
    } else {
        "sync"
    };
    let letter = w.chars().nth(1).unwrap_or('-');
    Some(fatal(
        EX_USAGE,
        format!("{name}: invalid option -- '{letter}'"),
    ))
}

fn prepare<'a>(
    globals: &'a Globals,
    mode: Mode,
    a: &'a SyncArgs,
    many: bool,
) -> Result<Prepared<'a>, Failure> {
    if let Some(f) = invalid_option(mode, a) {
        return Err(f);
    }
    let dest = if a.default_destination {
        if !a.destination.is_empty() {
            eprintln!("Error: Don't give mail location with -d parameter");
        }
        None
    } else if a.destination.is_empty() {
        return Err(usage(mode));
    } else {
        let words = a.destination.clone();
        let dest =
            Destination::parse(&words).map_err(|e| fatal(e.exit_code(), format!("Error: {e}")))?;
        Some((dest, words))
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
    let (settings, print_state) = settings(mode, a, now())?;
    if a.all_namespaces && matches!(dest, Some((Destination::Location(_), _))) {
        return Err(fatal(
            EX_TEMPFAIL,
            "Fatal: -N parameter requires syncing with remote host",
        ));
    }
    Ok(Prepared {
        globals,
        args: a,
        settings,
        print_state,
        dest,
        many,
    })
}

/// Whether a progress bar is drawn: stderr is a terminal and nothing else
/// writes there or to stdout for a machine.
fn progress_wanted(p: &Prepared) -> bool {
    use std::io::IsTerminal;
    !p.globals.debug
        && !p.globals.verbose
        && !p.args.json
        && std::env::var_os("HOMING_NO_PROGRESS").is_none()
        && std::io::stderr().is_terminal()
}

/// Syncs one user. `Ok(None)`: the userdb does not know the user.
async fn run_user(p: &Prepared<'_>, user: &str) -> Result<Option<i32>, Failure> {
    let cfg = &p.globals.settings;
    let Some(local_user) = resolve_user(cfg, user)? else {
        return Ok(None);
    };
    let user = local_user.user.as_str();
    let (dest, words) = match &p.dest {
        Some((d, w)) => (d.clone(), w.clone()),
        None => match local_user
            .setting(cfg, "mail_replica")
            .filter(|s| !s.is_empty())
        {
            Some(r) => {
                let words = vec![r.to_string()];
                let d = Destination::parse(&words)
                    .map_err(|e| fatal(e.exit_code(), format!("Error: {e}")))?;
                (d, words)
            }
            None => {
                return Err(fatal(
                    EX_NOHOST,
                    format!("doveadm({user}): Error: User has no mail_replica in userdb"),
                ))
            }
        },
    };
    if p.args.all_namespaces && matches!(dest, Destination::Location(_)) {
        return Err(fatal(
            EX_TEMPFAIL,
            "Fatal: -N parameter requires syncing with remote host",
        ));
    }
    let location = local_user.location.clone().ok_or_else(|| {
        fatal(
            EX_TEMPFAIL,
            "Fatal: no mail_location: give -o mail_location=LOCATION, or -c with a config (or a userdb `mail` field) that sets it",
        )
    })?;
    let local = open_user_location(cfg, &local_user, &location)?;
    let host = hostname();
    let progress = progress_wanted(p).then(|| Arc::new(Progress::default()));
    let opts = SessionOptions {
        progress: progress.clone(),
        ..SessionOptions::default()
    };
    let bar = progress.map(|c| ProgressBar::start(c, user));
    let json = p.args.json;
    let settings = p.settings.clone();

    let (result, remote_stats, dest_text) = match &dest {
        Destination::Location(loc) => {
            if *loc == location {
                return Err(fatal(EX_TEMPFAIL, format!("Error: Both source and destination mail_location points to same directory: {loc}")));
            }
            // doveadm leaves %-variables of this argument unexpanded; the
            // second replica is the same user's, with the same owner.
            let other = open_user_location(cfg, &local_user, loc)?;
            let (mut m, s) = run_local_pair(local, other, &host, settings, &opts).await;
            let code_s = s.exit_code();
            if code_s != 0 {
                for msg in &s.outcome.messages {
                    eprintln!("dsync({user}): Error: {msg}");
                }
                // The destination's failure is the run's: no success, and
                // the saved state stays (nothing past what it did not write).
                if m.exit_code() == 0 {
                    m.outcome.status = match s.outcome.status {
                        sync_engine::ExitStatus::Ok => sync_engine::ExitStatus::TempFail,
                        other => other,
                    };
                    let saved = &p.settings.states;
                    m.outcome.state = m.outcome.state.take().map(|_| saved.clone());
                }
            }
            (m, Some(s.stats), loc.clone())
        }
        _ => {
            let open = OpenOptions {
                user: Some(user.to_string()),
                remote_cmd: local_user
                    .setting(cfg, "dsync_remote_cmd")
                    .unwrap_or(transport::DEFAULT_REMOTE_CMD)
                    .to_string(),
                default_port: cfg.get("doveadm_port").and_then(|p| p.parse().ok()),
                doveadm_password: cfg.get("doveadm_password").map(String::from),
                ca_path: cfg
                    .get("ssl_client_ca_file")
                    .or(cfg.get("ssl_client_ca_dir"))
                    .map(Into::into),
                flags: transport::CommandFlags {
                    debug: p.globals.debug,
                    verbose: p.globals.verbose,
                },
                replicator_notify: p.args.replicator_notify,
                io_timeout: io_timeout(p.args.timeout.as_deref()),
                ..OpenOptions::default()
            };
            let stream = transport::open(&dest, &open)
                .await
                .map_err(|e| fatal(e.exit_code(), format!("Error: {e}")))?;
            let r = run_master_over(stream, local, &host, settings, &opts).await;
            (r, None, words.join(" "))
        }
    };
    if let Some(b) = bar {
        b.finish().await;
    }
    print_outcome(user, &result);
    let code = result.exit_code();
    let state = p.print_state.then(|| state_string(&result));
    let mut out = std::io::stdout().lock();
    if let Some(s) = &state {
        // Several users: each state with its own user (doveadm shows the
        // next user's name there, an off-by-one not copied).
        if p.many {
            let _ = writeln!(out, "{s} {user}");
        } else {
            let _ = writeln!(out, "{s}");
        }
    }
    if json {
        let summary = Summary {
            user,
            destination: dest_text,
            exit_code: code,
            status: format!("{:?}", result.outcome.status),
            messages: &result.outcome.messages,
            local: &result.stats,
            remote: remote_stats.as_ref(),
            state,
        };
        let text = if p.many {
            serde_json::to_string(&summary)
        } else {
            serde_json::to_string_pretty(&summary)
        };
        if let Ok(j) = text {
            let _ = writeln!(out, "{j}");
        }
    }
    Ok(Some(code))
}

/// The terminal progress display of one user's sync: drawn only once the
/// sync has run for a second, cleared at the end.
struct ProgressBar {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressBar {
    const DELAY: Duration = Duration::from_secs(1);
    const TICK: Duration = Duration::from_millis(200);

    fn start(counters: Arc<Progress>, user: &str) -> ProgressBar {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let user = user.to_string();
        let task = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut bar: Option<indicatif::ProgressBar> = None;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(Self::TICK) => {}
                }
                if started.elapsed() < Self::DELAY {
                    continue;
                }
                let (done, total, mails, bytes) = counters.snapshot();
                let b = bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::with_draw_target(
                        Some(total),
                        indicatif::ProgressDrawTarget::stderr(),
                    );
                    let style = indicatif::ProgressStyle::with_template(
                        "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} mailboxes, {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                    b.set_style(style);
                    b.set_prefix(user.clone());
                    b.with_elapsed(started.elapsed())
                });
                b.set_length(total.max(done));
                b.set_position(done);
                b.set_message(format!("{mails} mails, {}", indicatif::HumanBytes(bytes)));
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        });
        ProgressBar { stop, task }
    }

    async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
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
    let local_user = match resolve_user(&globals.settings, &user) {
        Ok(Some(u)) => u,
        Ok(None) => {
            eprintln!("doveadm({user}): Error: User doesn't exist");
            return EX_NOUSER;
        }
        Err(f) => {
            eprintln!("{}", f.message);
            return f.code;
        }
    };
    // Without any mail location, an empty in-memory replica (a blank peer).
    let location = local_user
        .location
        .clone()
        .unwrap_or_else(|| "memory:".to_string());
    let store = match open_user_location(&globals.settings, &local_user, &location) {
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
    let prefix = format!("dsync-remote({})", local_user.user);
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
    let code = r.exit_code();
    if a.replicator_notify && code == 0 {
        let socket = replicator_socket(&globals.settings);
        let full = r.outcome.sync_type == SyncType::Full;
        if let Err(e) =
            crate::replicator::client::notify(&socket, &user, full, &state_string(&r)).await
        {
            eprintln!("{prefix}: Error: {e}");
        }
    }
    code
}

/// The local replicator's `replicator-doveadm` socket: `<base_dir>/replicator-doveadm`
/// (`base_dir` from the Dovecot configuration or `-o`, default `/run/dovecot`).
pub fn replicator_socket(settings: &Settings) -> std::path::PathBuf {
    let base = settings
        .get("base_dir")
        .filter(|b| !b.is_empty())
        .unwrap_or("/run/dovecot");
    std::path::Path::new(base).join("replicator-doveadm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_users_exit_code() {
        let all = |codes: &[i32]| codes.iter().fold(0, |a, &c| combine_exit_codes(a, c));
        assert_eq!(all(&[0, 0]), 0);
        assert_eq!(all(&[0, 65, 0]), 65);
        assert_eq!(all(&[65, 67]), 65, "the first failure is kept");
        assert_eq!(all(&[65, 75, 67]), 75, "tempfail overrides");
        assert_eq!(all(&[2, 65]), 65, "a failure is not hidden by 'run again'");
        assert_eq!(all(&[65, 2]), 65);
        assert_eq!(all(&[0, 2, 0]), 2);
    }

    #[test]
    fn home_and_variables_in_locations() {
        let h = Some("/home/bob");
        assert_eq!(
            expand_location("maildir:~/Maildir:INDEX=~/idx:LAYOUT=fs", "bob", h).unwrap(),
            "maildir:/home/bob/Maildir:INDEX=/home/bob/idx:LAYOUT=fs"
        );
        assert_eq!(
            expand_location("maildir:%h/M/%d/%n", "bob@x.org", h).unwrap(),
            "maildir:/home/bob/M/x.org/bob"
        );
        assert_eq!(
            expand_location("maildir:/m/~x", "bob", None).unwrap(),
            "maildir:/m/~x"
        );
        let e = expand_location("maildir:~/Maildir", "bob", None).unwrap_err();
        assert_eq!(e.code, EX_TEMPFAIL);
        assert!(e.message.contains("home"), "{}", e.message);
        assert!(expand_location("maildir:%h/x", "bob", None).is_err());
    }

    #[test]
    fn standalone_with_a_location_override() {
        let s = Settings::load(None, &["mail_location=maildir:/m/%u".into()]).unwrap();
        assert!(s.config_file.is_none());
        assert!(s.userdb().is_none());
        let u = resolve_user(&s, "ann").unwrap().unwrap();
        assert_eq!(u.location.as_deref(), Some("maildir:/m/ann"));
        assert!(u.info.is_none() && u.owner.is_none());
    }

    #[test]
    fn passwd_file_userdb_gives_home_mail_and_owner() {
        let d = tempfile::tempdir().unwrap();
        let users = d.path().join("users");
        std::fs::write(
            &users,
            "ann:x:4321:8765::/h/ann::userdb_mail=maildir:~/Mail userdb_mail_replica=tcp:peer\n",
        )
        .unwrap();
        let conf = d.path().join("dovecot.conf");
        std::fs::write(
            &conf,
            format!(
                "base_dir = {}/run\nmail_location = maildir:~/Maildir\nmail_replica = tcp:other\n\
                 userdb {{\n  driver = passwd-file\n  args = {}\n}}\n",
                d.path().display(),
                users.display()
            ),
        )
        .unwrap();
        let s = Settings::load(Some(&conf), &[]).unwrap();
        let u = resolve_user(&s, "ann").unwrap().unwrap();
        assert_eq!(u.location.as_deref(), Some("maildir:/h/ann/Mail"));
        assert_eq!(
            u.owner,
            Some(Owner {
                uid: 4321,
                gid: 8765
            })
        );
        assert_eq!(u.setting(&s, "mail_replica"), Some("tcp:peer"));
        assert!(resolve_user(&s, "bob").unwrap().is_none());
        // -o beats the userdb.
        let s = Settings::load(
            Some(&conf),
            &[
                "mail_location=maildir:/o/%u".into(),
                "mail_replica=tcp:o".into(),
            ],
        )
        .unwrap();
        let u = resolve_user(&s, "ann").unwrap().unwrap();
        assert_eq!(u.location.as_deref(), Some("maildir:/o/ann"));
        assert_eq!(u.setting(&s, "mail_replica"), Some("tcp:o"));
    }
}
