//! The replicator daemon: the scheduler that runs syncs, and the listeners
//! Dovecot's tools and mail processes talk to:
//!
//! * `replicator-doveadm` (admin commands from `doveadm replicator ...`, and
//!   `NOTIFY` from the peer's `dsync-server -U`),
//! * `replicator` (the aggregator protocol, `U\t<user>\t<prio>[\t<id>]`),
//! * `replication-notify-fifo` and `replication-notify` (what the aggregator
//!   reads from mail processes; homing is its own aggregator),
//! * an optional OpenMetrics HTTP endpoint.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::config::ReplicatorConfig;
use super::db;
use super::metrics::Metrics;
use super::queue::{has_wildcards, wildcard_match, Clock, Priority, Queue, SyncKind, SyncResult};
use super::runner::{SyncOutcome, SyncRequest, SyncRunner};
use super::tabescape::{escape, split_line};
use super::users::{self, UserDb};
use super::watch;

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
}

/// A dsync slot as shown by `STATUS-DSYNC`.
#[derive(Clone, Debug, Default)]
struct Slot {
    running: Option<(String, SyncKind)>,
}

pub(crate) struct State {
    pub(crate) queue: Queue,
    slots: Vec<Slot>,
    userdb: UserDb,
    pub(crate) metrics: Metrics,
}

/// What every task shares.
pub(crate) struct Shared {
    state: Mutex<State>,
    kick: Notify,
    pub(crate) clock: Arc<dyn Clock>,
    config: ReplicatorConfig,
    runner: Arc<dyn SyncRunner>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    fn is_noreplicate(st: &State, user: &str) -> bool {
        st.userdb.get(user).is_some_and(|i| i.noreplicate)
    }
}

/// A running daemon.
pub struct Daemon {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    socket_paths: Vec<PathBuf>,
    /// Address the metrics endpoint listens on, if enabled.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Watcher counters after start, if the watcher is enabled.
    pub watch_stats: Option<watch::WatchStats>,
}

/// Gives a created socket or FIFO its owner and mode.
fn set_access(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), DaemonError> {
    let err = |source| DaemonError::Listen {
        path: path.display().to_string(),
        source,
    };
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(err)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)
}

fn bind_unix(
    path: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Listen {
        path: path.display().to_string(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            // A stale socket of an earlier run; refuse if someone listens.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process is listening",
                )));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    let l = UnixListener::bind(path).map_err(err)?;
    set_access(path, mode, owner)?;
    Ok(l)
}

fn make_fifo(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), DaemonError> {
    let err = |source| DaemonError::Listen {
        path: path.display().to_string(),
        source,
    };
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_fifo() => {}
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a FIFO",
            )))
        }
        Err(_) => {
            // std has no mkfifo and the crate avoids unsafe FFI; use the tool.
            let st = std::process::Command::new("mkfifo")
                .arg(path)
                .status()
                .map_err(err)?;
            if !st.success() {
                return Err(err(std::io::Error::other(format!("mkfifo: {st}"))));
            }
        }
    }
    set_access(path, mode, owner)
}

/// Loads the userdb listing (failures are logged, as Dovecot does).
async fn discover_users(config: &ReplicatorConfig) -> UserDb {
    let mut db = UserDb::new();
    if let Some(p) = &config.userdb_passwd_file {
        match users::read_passwd_file(p) {
            Ok(u) => db.extend(u),
            Err(e) => tracing::error!("listing users failed, can't replicate existing data: {e}"),
        }
    }
    if let Some(c) = &config.userdb_list_command {
        match users::run_list_command(c).await {
            Ok(u) => {
                for (name, info) in u {
                    db.entry(name).or_insert(info);
                }
            }
            Err(e) => tracing::error!("listing users failed, can't replicate existing data: {e}"),
        }
    }
    if let Some(path) = userdb_socket(config) {
        match list_auth_users(path.clone()).await {
            Ok(names) => {
                for name in names {
                    db.entry(name).or_default();
                }
            }
            Err(e) => tracing::error!(
                "listing users through {} failed, can't replicate existing data: {e}",
                path.display()
            ),
        }
    }
    db
}

/// The auth-userdb socket to list users from: configured, or Dovecot's
/// default one when nothing else lists users and it exists.
fn userdb_socket(config: &ReplicatorConfig) -> Option<PathBuf> {
    if let Some(p) = &config.auth_socket_path {
        return Some(p.clone());
    }
    let nothing_else = config.userdb_passwd_file.is_none() && config.userdb_list_command.is_none();
    let default = config.base_dir.join("auth-userdb");
    (nothing_else && default.exists()).then_some(default)
}

/// `LIST` through the auth-userdb socket (blocking I/O, off the runtime).
async fn list_auth_users(path: PathBuf) -> Result<Vec<String>, String> {
    tokio::task::spawn_blocking(move || {
        let db = crate::userdb::Userdb {
            service: Some("replicator".into()),
            ..crate::userdb::Userdb::socket(path)
        };
        db.list()
            .map_err(|e| e.to_string())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

impl Daemon {
    /// Discovers users, imports `replicator.db`, binds every listener and
    /// starts the scheduler. When this returns, the sockets accept
    /// connections.
    pub async fn start(
        config: ReplicatorConfig,
        runner: Arc<dyn SyncRunner>,
        clock: Arc<dyn Clock>,
    ) -> Result<Daemon, DaemonError> {
        let userdb = discover_users(&config).await;
        let mut queue = Queue::new(config.queue.clone());
        for (name, info) in &userdb {
            if !info.noreplicate {
                queue.add(name, 0);
            }
        }
        let (_, corrupt) = db::import(&config.db_path(), &mut queue)?;
        if let Some(e) = corrupt {
            tracing::error!("{e}");
        }
        for (name, info) in &userdb {
            if info.noreplicate {
                queue.remove(name);
            }
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue,
                slots: Vec::new(),
                userdb,
                metrics: Metrics::default(),
            }),
            kick: Notify::new(),
            clock,
            config: config.clone(),
            runner,
        });
        let mut daemon = Daemon {
            shared: shared.clone(),
            tasks: Vec::new(),
            socket_paths: Vec::new(),
            metrics_addr: None,
            watch_stats: None,
        };
        let mode = config.socket_mode;
        let owner = config.socket_owner;

        let l = bind_unix(&config.doveadm_socket, mode, owner)?;
        daemon.socket_paths.push(config.doveadm_socket.clone());
        daemon.spawn_accept(l, serve_doveadm);
        if let Some(p) = &config.notify_socket {
            let l = bind_unix(p, mode, owner)?;
            daemon.socket_paths.push(p.clone());
            daemon.spawn_accept(l, serve_notify);
        }
        if let Some(p) = &config.aggregator_socket {
            let l = bind_unix(p, mode, owner)?;
            daemon.socket_paths.push(p.clone());
            daemon.spawn_accept(l, serve_aggregator_socket);
        }
        if let Some(p) = &config.aggregator_fifo {
            make_fifo(p, mode, owner)?;
            let rx = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(p)
                .map_err(|source| DaemonError::Listen {
                    path: p.display().to_string(),
                    source,
                })?;
            let s = shared.clone();
            daemon
                .tasks
                .push(tokio::spawn(async move { serve_fifo(s, rx).await }));
        }
        if let Some(addr) = &config.metrics_listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Listen {
                    path: addr.clone(),
                    source,
                })?;
            daemon.metrics_addr = l.local_addr().ok();
            let s = shared.clone();
            daemon.tasks.push(tokio::spawn(super::metrics::serve(s, l)));
        }
        if !config.watch.mail_location.is_empty() {
            let st = shared.lock();
            let users: Vec<(&str, Option<&str>)> = st
                .userdb
                .iter()
                .filter(|(_, i)| !i.noreplicate)
                .map(|(n, i)| (n.as_str(), i.home.as_deref()))
                .collect();
            let resolved = watch::resolve_users(&config.watch, users);
            drop(st);
            let (layout, users) = resolved?;
            let sink: Arc<dyn watch::WatchSink> = shared.clone();
            let h = watch::spawn(config.watch.clone(), layout, users, sink)?;
            daemon.watch_stats = Some(h.initial);
            daemon.tasks.push(h.task);
        }
        let s = shared.clone();
        daemon.tasks.push(tokio::spawn(scheduler(s)));
        let s = shared.clone();
        daemon.tasks.push(tokio::spawn(async move {
            let every = Duration::from_secs(s.config.dump_interval.max(1));
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                t.tick().await;
                dump(&s);
            }
        }));
        Ok(daemon)
    }

    fn spawn_accept<F, Fut>(&mut self, listener: UnixListener, serve: F)
    where
        F: Fn(Arc<Shared>, UnixStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let shared = self.shared.clone();
        self.tasks.push(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(shared.clone(), stream));
                    }
                    Err(e) => {
                        tracing::error!("accept() failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }

    /// Writes `replicator.db` now.
    pub fn dump(&self) -> Result<(), db::DbError> {
        try_dump(&self.shared)
    }

    /// The records as they would be written to `replicator.db`.
    pub fn records(&self) -> Vec<db::DbRecord> {
        db::snapshot(&self.shared.lock().queue)
    }

    /// Stops every listener and task, writes `replicator.db` and removes the
    /// sockets.
    pub async fn shutdown(self) -> Result<(), db::DbError> {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        for p in &self.socket_paths {
            let _ = std::fs::remove_file(p);
        }
        try_dump(&self.shared)
    }
}

fn try_dump(shared: &Shared) -> Result<(), db::DbError> {
    let records = db::snapshot(&shared.lock().queue);
    db::write(&shared.config.db_path(), &records)
}

fn dump(shared: &Shared) {
    if let Err(e) = try_dump(shared) {
        tracing::error!("{e}");
    }
}

/// Starts due syncs while slots are free, then sleeps until the next user or
/// sync waiter becomes due, or until something changes the queue.
async fn scheduler(shared: Arc<Shared>) {
    loop {
        let wake = {
            let now = shared.now();
            let mut st = shared.lock();
            st.queue.expire_waiters(now);
            let max = shared.config.max_conns;
            loop {
                let busy = st.slots.iter().filter(|s| s.running.is_some()).count();
                if busy >= max {
                    break;
                }
                let Some(job) = st.queue.pop_due(now) else {
                    break;
                };
                // Reuse an idle slot, or create one (slots are created lazily).
                let idx = match st.slots.iter().position(|s| s.running.is_none()) {
                    Some(i) => i,
                    None => {
                        st.slots.push(Slot::default());
                        st.slots.len() - 1
                    }
                };
                st.slots[idx].running = Some((job.username.clone(), job.kind));
                let mail_replica = st
                    .userdb
                    .get(&job.username)
                    .and_then(|u| u.mail_replica.clone());
                let req = SyncRequest {
                    username: job.username.clone(),
                    full: job.full,
                    state: job.state.clone(),
                    mail_replica,
                };
                let fut = shared.runner.sync(req);
                let s = shared.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let outcome = fut.await;
                    let elapsed = started.elapsed();
                    let now = s.now();
                    let mut st = s.lock();
                    st.slots[idx].running = None;
                    st.metrics.record(&outcome, elapsed);
                    let result = match outcome {
                        SyncOutcome::Ok { state } => SyncResult::Ok { state },
                        SyncOutcome::Again { state } => SyncResult::Again { state },
                        SyncOutcome::Failed { reason } => {
                            tracing::warn!("{}: sync failed: {reason}", job.username);
                            SyncResult::Failed
                        }
                        SyncOutcome::NoUser | SyncOutcome::NoReplicate => SyncResult::Remove,
                    };
                    st.queue.finish_sync(&job.username, result, now);
                    drop(st);
                    s.kick.notify_one();
                });
            }
            let busy = st.slots.iter().filter(|s| s.running.is_some()).count();
            let due = if busy < max {
                st.queue.next_due_time()
            } else {
                None
            };
            let waiter = st.queue.next_waiter_deadline();
            let wake = match (due, waiter) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            wake.map(|w| w.saturating_sub(now).max(1)).unwrap_or(3600)
        };
        tokio::select! {
            _ = shared.kick.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(wake)) => {}
        }
    }
}

/// Result of reading one line with a length limit.
enum Line {
    Text(String),
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line of at most `max` bytes. A too long line is
/// consumed up to its newline.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Line> {
    let mut buf: Vec<u8> = Vec::new();
    let mut too_long = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(Line::Eof);
        }
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if !too_long {
            let body = if done { &avail[..take - 1] } else { avail };
            if buf.len() + body.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(body);
            }
        }
        r.consume(take);
        if done {
            if too_long {
                return Ok(Line::TooLong);
            }
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Line::Text(String::from_utf8_lossy(&buf).into_owned()));
        }
    }
}

/// Builds the lines answering `STATUS` (overview).
pub(crate) fn status_overview(st: &State, now: u64) -> String {
    let c = st.queue.status_counts(now);
    format!(
        "Queued 'sync' requests\t{}\nQueued 'high' requests\t{}\nQueued 'low' requests\t{}\n\
         Queued 'failed' requests\t{}\nQueued 'full resync' requests\t{}\n\
         Waiting 'failed' requests\t{}\nTotal number of known users\t{}\n\n",
        c.sync, c.high, c.low, c.failed, c.full_resync, c.waiting_failed, c.total
    )
}

fn status_users(st: &State, mask: &str) -> String {
    let mut out = String::new();
    for u in st.queue.users() {
        if !wildcard_match(mask, &u.username) {
            continue;
        }
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            escape(&u.username),
            u.priority.name(),
            u.last_fast_sync,
            u.last_full_sync,
            u32::from(u.last_sync_failed),
            u.last_successful_sync
        ));
    }
    out.push('\n');
    out
}

fn status_dsync(st: &State) -> String {
    let mut out = String::new();
    for s in &st.slots {
        match &s.running {
            Some((user, kind)) => out.push_str(&format!(
                "{}\t{}\tWaiting for dsync to finish\n",
                escape(user),
                kind.name()
            )),
            // Each sync uses a fresh connection, so an idle slot is unconnected.
            None => out.push_str("\t-\tNot connected\n"),
        }
    }
    out.push('\n');
    out
}

/// What to do after a command on the doveadm socket.
enum Reply {
    Send(String),
    Disconnect(String),
}

fn doveadm_command(shared: &Shared, args: &[String]) -> Reply {
    let now = shared.now();
    let cmd = args[0].as_str();
    let rest = &args[1..];
    let invalid = || Reply::Disconnect(format!("doveadm-client: {cmd}: Invalid parameters"));
    let mut st = shared.lock();
    match cmd {
        "STATUS" => match rest.first() {
            None => Reply::Send(status_overview(&st, now)),
            Some(mask) => Reply::Send(status_users(&st, mask)),
        },
        "STATUS-DSYNC" => Reply::Send(status_dsync(&st)),
        "REPLICATE" => {
            if rest.len() != 3 {
                return invalid();
            }
            let Some(prio) = Priority::from_name(&rest[0]) else {
                return Reply::Send("-Invalid priority\n".into());
            };
            let full = rest[1].contains('f');
            let mask = &rest[2];
            if !has_wildcards(mask) && Shared::is_noreplicate(&st, mask) {
                return Reply::Send("+1\n".into());
            }
            let n = st.queue.replicate_mask(mask, prio, full, now);
            drop(st);
            shared.kick.notify_one();
            Reply::Send(format!("+{n}\n"))
        }
        "ADD" => {
            if rest.len() != 1 {
                return invalid();
            }
            let mask = &rest[0];
            if has_wildcards(mask) {
                let names: Vec<String> = st
                    .userdb
                    .iter()
                    .filter(|(n, i)| !i.noreplicate && wildcard_match(mask, n))
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in names {
                    st.queue.add(&n, now);
                }
            } else if !Shared::is_noreplicate(&st, mask) {
                st.queue.add(mask, now);
            }
            drop(st);
            shared.kick.notify_one();
            Reply::Send("+\n".into())
        }
        "REMOVE" => {
            if rest.len() != 1 {
                return invalid();
            }
            if st.queue.remove(&rest[0]) {
                Reply::Send("+\n".into())
            } else {
                Reply::Send("-User not found\n".into())
            }
        }
        "NOTIFY" => {
            if rest.len() < 3 {
                return invalid();
            }
            tracing::debug!("{}: NOTIFY flags={:?}", rest[0], rest[1]);
            if !Shared::is_noreplicate(&st, &rest[0]) {
                st.queue
                    .notify(&rest[0], rest[1].starts_with('f'), &rest[2], now);
            }
            drop(st);
            shared.kick.notify_one();
            Reply::Send("+\n".into())
        }
        _ => Reply::Disconnect(format!("doveadm-client: Unknown command: {cmd}")),
    }
}

/// Checks a `VERSION\t<name>\t<major>\t<minor>` line.
fn check_version(line: &str, name: &str) -> Result<(), String> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != 4 || f[0] != "VERSION" || f[1] != name || f[3].parse::<u32>().is_err() {
        return Err(format!("didn't reply with a valid VERSION line: {line}"));
    }
    if f[2] != "1" {
        return Err(format!(
            "Socket supports major version {}, but we support only 1 (mixed old and new binaries?)",
            f[2]
        ));
    }
    Ok(())
}

const MAX_LINE: usize = 64 * 1024;

async fn serve_doveadm(shared: Arc<Shared>, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    // A peer's dsync-server writes `VERSION` and `NOTIFY` and closes without
    // reading anything: a failed write must not lose its buffered request,
    // so input is still read and applied after the peer stopped reading.
    let mut can_write = wr
        .write_all(b"VERSION\treplicator-doveadm-server\t1\t0\n")
        .await
        .is_ok();
    let mut have_version = false;
    loop {
        let line = match read_line(&mut rd, MAX_LINE).await {
            Ok(Line::Text(l)) => l,
            Ok(Line::TooLong) => {
                tracing::warn!("doveadm-client: line too long");
                return;
            }
            Ok(Line::Eof) | Err(_) => return,
        };
        if !have_version {
            if let Err(e) = check_version(&line, "replicator-doveadm-client") {
                tracing::warn!("doveadm-client: {e}");
                return;
            }
            have_version = true;
            continue;
        }
        if line.is_empty() {
            tracing::warn!("doveadm-client: Unexpectedly received empty line");
            return;
        }
        let args = split_line(&line);
        match doveadm_command(&shared, &args) {
            Reply::Send(s) => {
                if can_write && wr.write_all(s.as_bytes()).await.is_err() {
                    can_write = false;
                }
            }
            Reply::Disconnect(msg) => {
                tracing::warn!("{msg}");
                return;
            }
        }
    }
}

impl watch::WatchSink for Shared {
    fn request(&self, username: &str, priority: Priority) {
        queue_request(self, username, priority);
    }

    fn syncing(&self, username: &str) -> bool {
        self.lock().queue.get(username).is_some_and(|r| r.popped)
    }
}

/// Queues a request from a mail process or the aggregator protocol. For
/// `sync` it returns the receiver of the answer.
fn queue_request(
    shared: &Shared,
    user: &str,
    prio: Priority,
) -> Option<tokio::sync::oneshot::Receiver<bool>> {
    tracing::debug!("{user}: {} requested", prio.name());
    let now = shared.now();
    let mut st = shared.lock();
    if Shared::is_noreplicate(&st, user) {
        // Never replicated: there is nothing to wait for.
        if prio == Priority::Sync {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(true);
            return Some(rx);
        }
        return None;
    }
    let rx = if prio == Priority::Sync {
        Some(st.queue.request_sync(user, now))
    } else {
        st.queue.request(user, prio, false, now);
        None
    };
    drop(st);
    shared.kick.notify_one();
    rx
}

/// The `replicator` socket: `VERSION\treplicator-notify\t1\t0`, then
/// `U\t<user>\t<low|high>` or `U\t<user>\tsync\t<id>` (answered `+\t<id>` or
/// `-\t<id>`).
async fn serve_notify(shared: Arc<Shared>, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(s) = rx.recv().await {
            if wr.write_all(s.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut have_version = false;
    loop {
        let line = match read_line(&mut rd, MAX_LINE).await {
            Ok(Line::Text(l)) => l,
            Ok(Line::TooLong) => {
                tracing::warn!("notify client sent too long line");
                break;
            }
            Ok(Line::Eof) | Err(_) => break,
        };
        if !have_version {
            if check_version(&line, "replicator-notify").is_err() {
                tracing::warn!(
                    "Notify client not compatible with this server (mixed old and new binaries?)"
                );
                break;
            }
            have_version = true;
            continue;
        }
        let args = split_line(&line);
        if args[0] != "U" {
            tracing::warn!("notify client sent unknown command: {}", args[0]);
            break;
        }
        if args.len() < 3 {
            tracing::warn!("notify client sent invalid input: {line}");
            break;
        }
        let prio = match Priority::from_name(&args[2]) {
            Some(p) if p != Priority::None => p,
            _ => {
                tracing::warn!("notify client sent invalid priority: {}", args[2]);
                break;
            }
        };
        if prio == Priority::Sync {
            let id = match args.get(3).and_then(|s| s.parse::<u32>().ok()) {
                Some(id) => id,
                None => {
                    tracing::warn!("notify client sent invalid sync id: {line}");
                    break;
                }
            };
            if let Some(answer) = queue_request(&shared, &args[1], prio) {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let ok = answer.await.unwrap_or(false);
                    let _ = tx.send(format!("{}\t{id}\n", if ok { '+' } else { '-' }));
                });
            }
        } else {
            queue_request(&shared, &args[1], prio);
        }
    }
    drop(tx);
    // Let pending answers go out until the writer fails or all are sent.
    let _ = writer.await;
}

/// Parses a mail-process notification line `<user>\t<low|high|sync>[\t...]`.
fn parse_aggregator_line(line: &str) -> Result<(String, Priority), String> {
    let args = split_line(line);
    if args.len() < 2 {
        return Err("Client sent invalid input".into());
    }
    match Priority::from_name(&args[1]) {
        // `none` is not a request (Dovecot's aggregator crashes on it).
        Some(p) if p != Priority::None => Ok((args[0].clone(), p)),
        _ => Err(format!("Client sent invalid priority: {}", args[1])),
    }
}

/// Line limit of the aggregator inputs.
const AGGREGATOR_MAX_LINE: usize = 8192;

async fn serve_aggregator_socket(shared: Arc<Shared>, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let line = match read_line(&mut rd, AGGREGATOR_MAX_LINE).await {
            Ok(Line::Text(l)) => l,
            Ok(Line::TooLong) => {
                tracing::warn!("Client sent too long line");
                return;
            }
            Ok(Line::Eof) | Err(_) => return,
        };
        let (user, prio) = match parse_aggregator_line(&line) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("{e}");
                return;
            }
        };
        if let Some(answer) = queue_request(&shared, &user, prio) {
            // The mail process waits for this answer before going on.
            let ok = answer.await.unwrap_or(false);
            if wr
                .write_all(if ok { b"+\n" } else { b"-\n" })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

async fn serve_fifo(shared: Arc<Shared>, rx: tokio::net::unix::pipe::Receiver) {
    let mut rd = BufReader::new(rx);
    loop {
        match read_line(&mut rd, AGGREGATOR_MAX_LINE).await {
            Ok(Line::Text(line)) => match parse_aggregator_line(&line) {
                // No one can be answered on a FIFO: treat sync as high.
                Ok((user, p)) => {
                    let p = if p == Priority::Sync {
                        Priority::High
                    } else {
                        p
                    };
                    queue_request(&shared, &user, p);
                }
                Err(e) => tracing::warn!("{e}"),
            },
            Ok(Line::TooLong) => tracing::warn!("Client sent too long line"),
            Ok(Line::Eof) => {
                // Cannot happen while we hold the write side open; avoid spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::error!("FIFO read failed: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregator_lines() {
        assert_eq!(
            parse_aggregator_line("alice\thigh"),
            Ok(("alice".into(), Priority::High))
        );
        assert_eq!(
            parse_aggregator_line("carol\tlow\textra"),
            Ok(("carol".into(), Priority::Low))
        );
        assert_eq!(
            parse_aggregator_line("bob\tsync"),
            Ok(("bob".into(), Priority::Sync))
        );
        assert_eq!(
            parse_aggregator_line("carol\tbogus"),
            Err("Client sent invalid priority: bogus".into())
        );
        assert_eq!(
            parse_aggregator_line("carol"),
            Err("Client sent invalid input".into())
        );
        assert_eq!(
            parse_aggregator_line("dave\tnone"),
            Err("Client sent invalid priority: none".into())
        );
        assert_eq!(
            parse_aggregator_line("we\u{1}tird\tlow"),
            Ok(("we\tird".into(), Priority::Low))
        );
    }

    #[test]
    fn version_lines() {
        assert!(check_version(
            "VERSION\treplicator-doveadm-client\t1\t0",
            "replicator-doveadm-client"
        )
        .is_ok());
        assert_eq!(
            check_version("VERSION\treplicator-doveadm-client\t2\t0", "replicator-doveadm-client"),
            Err("Socket supports major version 2, but we support only 1 (mixed old and new binaries?)".into())
        );
        assert!(check_version("STATUS", "replicator-doveadm-client").is_err());
    }

    #[tokio::test]
    async fn bounded_lines() {
        let data: &[u8] = b"short\nxxxxxxxxxxxxxxxxxxxx\nok\r\nlast";
        let mut r = BufReader::new(data);
        assert!(matches!(read_line(&mut r, 10).await.unwrap(), Line::Text(s) if s == "short"));
        assert!(matches!(
            read_line(&mut r, 10).await.unwrap(),
            Line::TooLong
        ));
        assert!(matches!(read_line(&mut r, 10).await.unwrap(), Line::Text(s) if s == "ok"));
        assert!(matches!(read_line(&mut r, 10).await.unwrap(), Line::Eof));
    }
}
