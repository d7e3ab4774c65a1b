//! The session state machine (§1.4, §1.5; protocol §6), one type for master
//! and slave.
//!
//! Driving a [`Brain`]:
//! 1. create it with [`Brain::master`] or [`Brain::slave`];
//! 2. repeatedly take outputs with [`Brain::poll`] and handle them in order:
//!    [`Output::Send`] → encode the item (and stream the referenced body)
//!    to the peer; [`Output::Query`] → answer with
//!    `feed(Input::Answer(..))`; [`Output::Action`] → apply to local storage
//!    (report a failure with `feed(Input::ActionFailed { .. })`);
//! 3. feed every item decoded from the peer with `feed(Input::Peer(item))`;
//!    when an `M` item carries a data block, make that block available to
//!    the storage before applying the next [`Action::SaveMail`];
//! 4. stop when [`Brain::outcome`] is `Some`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use dsync_protocol::{
    Finish, Guid128, Handshake, Item, Mail, MailChange, MailRequest, Mailbox, MailboxState,
    MailboxTreeNode, Role, SyncType,
};

use crate::mailbox::{
    self, ChangeExport, ExportFields, GuidIndex, ImportInput, MailFilter, PendingMail, UidChange,
};
use crate::storage::*;
use crate::tree::{self, Tree, TreeSyncMode};

/// What the master decides (the `doveadm sync/backup` options).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncSettings {
    pub sync_type: SyncType,
    /// This side is the backup source (`backup`, `sync -1`).
    pub backup_send: bool,
    /// This side is the backup destination (`backup -R`, `sync -1 -R`).
    pub backup_recv: bool,
    /// `-1`: merge into the destination instead of overwriting it.
    pub no_backup_overwrite: bool,
    pub purge_remote: bool,
    /// `-m ''` / `-g ''`: mailbox tree only.
    pub no_mail_sync: bool,
    /// `-l SECS`; 0 = no user lock.
    pub lock_timeout: u32,
    pub filter: MailFilter,
    /// Saved per-mailbox states (`-s STATE`).
    pub states: Vec<MailboxState>,
    /// `-m`, `-x`, `-g`: which mailboxes are visible to the sync.
    pub mailbox_filter: MailboxFilter,
}

/// Restricts the mailboxes a sync sees (§2.2 step 2). Invisible mailboxes
/// are neither created nor deleted on the other side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailboxFilter {
    /// `-m NAME`: only names matching this pattern (`*` and `%` wildcards,
    /// hierarchy separator `/`).
    pub only_name: Option<Vec<u8>>,
    /// `-x PATTERN`: names matching any of these are excluded.
    pub exclude: Vec<Vec<u8>>,
    /// `-g GUID`: only the mailbox with this GUID (directories skipped).
    pub guid: Option<Guid128>,
}

/// IMAP LIST-style wildcard match: `*` matches anything, `%` anything but
/// the separator.
fn wildcard(pat: &[u8], name: &[u8], sep: u8) -> bool {
    match pat.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| wildcard(rest, &name[i..], sep)),
        Some((b'%', rest)) => (0..=name.len())
            .take_while(|&i| i == 0 || name[i - 1] != sep)
            .any(|i| wildcard(rest, &name[i..], sep)),
        Some((c, rest)) => name.first() == Some(c) && wildcard(rest, &name[1..], sep),
    }
}

impl MailboxFilter {
    fn is_empty(&self) -> bool {
        self.only_name.is_none() && self.exclude.is_empty() && self.guid.is_none()
    }

    /// Whether a mailbox-list entry is visible.
    pub fn visible(&self, name: &[Vec<u8>], guid: Option<Guid128>, sep: u8) -> bool {
        let joined = join_name(name, sep);
        if let Some(p) = &self.only_name {
            if !wildcard(p, &joined, sep) {
                return false;
            }
        }
        if self.exclude.iter().any(|p| wildcard(p, &joined, sep)) {
            return false;
        }
        match self.guid {
            Some(g) => guid == Some(g),
            None => true,
        }
    }

    fn apply(&self, s: &mut TreeSnapshot) {
        if self.is_empty() {
            return;
        }
        let sep = s.separator;
        s.mailboxes.retain(|e| self.visible(&e.name, e.guid, sep));
        if self.guid.is_some() {
            s.subscriptions.clear();
        } else {
            s.subscriptions.retain(|n| self.visible(n, None, sep));
        }
    }
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            sync_type: SyncType::Changed,
            backup_send: false,
            backup_recv: false,
            no_backup_overwrite: false,
            purge_remote: false,
            no_mail_sync: false,
            lock_timeout: 0,
            filter: MailFilter::default(),
            states: Vec::new(),
            mailbox_filter: MailboxFilter::default(),
        }
    }
}

/// Inputs to a [`Brain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// An item decoded from the peer.
    Peer(Item),
    /// The answer to the last [`Output::Query`].
    Answer(Answer),
    /// An emitted action could not be applied.
    ActionFailed { action: Action, error: StorageError },
    /// The peer's stream ended.
    PeerClosed,
}

/// Outputs of a [`Brain`], to be handled in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send an item; for an `M` with `stream`, the body of `body` follows.
    Send {
        item: Item,
        body: Option<BodyRef>,
    },
    Query(Query),
    Action(Action),
}

/// How the session ended (doveadm's exit codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Ok,
    /// Finished, but run again (exit 2).
    ChangesDuringSync,
    /// Temporary failure (exit 75).
    TempFail,
    /// A mail error such as NOTPOSSIBLE (exit 65).
    DataErr,
}

impl ExitStatus {
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Ok => 0,
            ExitStatus::ChangesDuringSync => 2,
            ExitStatus::TempFail => 75,
            ExitStatus::DataErr => 65,
        }
    }
}

/// The result of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: ExitStatus,
    /// Warnings and errors, in order.
    pub messages: Vec<String>,
    pub require_full_resync: bool,
    /// The new state table (`None` when a full resync is required or the
    /// session broke off; the saved one, unchanged, when it failed). A
    /// slave's table starts from the states the master sent; it is what a
    /// `dsync-server -U` reports to its replicator.
    pub state: Option<Vec<MailboxState>>,
    /// The sync type this side ran: the master's setting, or what a slave
    /// adopted from the handshake.
    pub sync_type: SyncType,
}

/// A protocol violation by the peer: the session cannot continue.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("Received unexpected input {got} while {expected}")]
    Unexpected { got: char, expected: &'static str },
    #[error("Remote sent mailbox with a wrong GUID: {got} != {want}")]
    WrongGuid { got: Guid128, want: Guid128 },
    #[error("{0}")]
    Remote(String),
    #[error("peer closed the stream before the session finished")]
    Closed,
    #[error("the session already failed")]
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshake,
    /// Master, stateful run: how far back the log of each mailbox of the
    /// saved state reaches, before the state goes to the peer.
    StateCheck,
    RecvStates,
    TreeQuery,
    RecvTree,
    RecvDeletes,
    Recover,
    MailboxNext,
    /// Master, stateful run: waiting for the status of the next mailbox.
    MailboxStatusQuery,
    MailboxQuery,
    MasterWaitB,
    /// A partial snapshot did not fit the comparison: waiting for the
    /// whole one.
    WholeSnapshotQuery,
    Sync,
    /// Comparing from a partial snapshot: waiting for the local records of
    /// the mails the peer's changes name.
    RecordsQuery,
    WaitFinish,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recv {
    Attributes,
    Changes,
    Requests,
    Mails,
    State,
}

struct MailboxRun {
    guid: Guid128,
    changed_during_sync: bool,
    snapshot: MailboxSnapshot,
    remote: Mailbox,
    lcu: u32,
    lcm: u64,
    exporter: bool,
    importer: bool,
    recv: Recv,
    local_changes: BTreeMap<u32, UidChange>,
    remote_changes: Vec<MailChange>,
    requests: Vec<MailRequest>,
    /// Mails requested from the peer, in request order (the peer usually
    /// answers in that order: the front is where a mail is found).
    pending: VecDeque<PendingMail>,
    /// The local UIDs `pending` will be saved under.
    pending_uids: BTreeSet<u32>,
    last_common_uid: u32,
    messages: u32,
    require_full_resync: bool,
    sent_r_end: bool,
    sent_m_end: bool,
    recv_m_end: bool,
    sent_s: Option<MailboxState>,
    uid_validity: u32,
    /// Where the `C` list being sent stands.
    export: Option<ChangeExport>,
    /// How many of `pending` were requested (sent as `R`) so far.
    requested: usize,
    /// The peer's requests being answered, the next one's position, and the
    /// snapshot's mails by GUID.
    answering: Option<(Vec<MailRequest>, usize, GuidIndex)>,
}

/// An output waiting in the brain's queue.
enum Queued {
    Ready(Output),
    /// The rest of one of the current mailbox's lists, made one item at a
    /// time when polled: a mailbox's lists are as long as the mailbox, and
    /// the driver sends each item before polling the next.
    Lazy(LazyList),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LazyList {
    /// The `C` items of [`MailboxRun::export`].
    Changes,
    /// `R` items for [`MailboxRun::pending`].
    Requests,
    /// `M` items answering [`MailboxRun::answering`].
    Answers,
}

/// One dsync brain.
pub struct Brain {
    role: Role,
    hostname: Vec<u8>,
    now: i64,
    settings: SyncSettings,
    out: VecDeque<Queued>,
    inbox: VecDeque<Item>,
    phase: Phase,
    answer: Option<Answer>,
    local_tree: Option<Tree>,
    remote_nodes: Vec<MailboxTreeNode>,
    merged: Option<Tree>,
    states: HashMap<Guid128, MailboxState>,
    new_states: BTreeMap<Guid128, MailboxState>,
    queue: VecDeque<Guid128>,
    slave_b: Option<Mailbox>,
    master_snapshot: Option<MailboxSnapshot>,
    /// The peer's `B` while a whole snapshot replaces a partial one.
    waiting_b: Option<Mailbox>,
    run: Option<MailboxRun>,
    messages: Vec<String>,
    desync: bool,
    require_full_resync: bool,
    failure: Option<ExitStatus>,
    outcome: Option<Outcome>,
    error: Option<EngineError>,
    held_actions: Vec<Action>,
    recover: VecDeque<(Guid128, MailboxName, i64)>,
    /// Mailboxes of the saved state whose log reach is still to be checked.
    state_checks: VecDeque<Guid128>,
}

impl Brain {
    /// The master (the side running `doveadm sync/backup`): it owns the
    /// settings. `now` is used for every timestamp the brain writes.
    pub fn master(hostname: &[u8], settings: SyncSettings, now: i64) -> Brain {
        let mut b = Brain::new(Role::Master, hostname, settings, now);
        for s in &b.settings.states {
            b.states.insert(s.mailbox_guid, s.clone());
        }
        let h = b.handshake();
        b.send(Item::Handshake(Box::new(h)));
        b
    }

    /// The slave (`dsync-server`): takes all settings from the master's `H`.
    pub fn slave(hostname: &[u8], now: i64) -> Brain {
        let mut b = Brain::new(Role::Slave, hostname, SyncSettings::default(), now);
        let h = Handshake {
            hostname: hostname.to_vec(),
            send_mail_requests: true,
            ..Handshake::default()
        };
        b.send(Item::Handshake(Box::new(h)));
        b
    }

    fn new(role: Role, hostname: &[u8], settings: SyncSettings, now: i64) -> Brain {
        Brain {
            role,
            hostname: hostname.to_vec(),
            now,
            settings,
            out: VecDeque::new(),
            inbox: VecDeque::new(),
            phase: Phase::Handshake,
            answer: None,
            local_tree: None,
            remote_nodes: Vec::new(),
            merged: None,
            states: HashMap::new(),
            new_states: BTreeMap::new(),
            queue: VecDeque::new(),
            slave_b: None,
            master_snapshot: None,
            waiting_b: None,
            run: None,
            messages: Vec::new(),
            desync: false,
            require_full_resync: false,
            failure: None,
            outcome: None,
            error: None,
            held_actions: Vec::new(),
            recover: VecDeque::new(),
            state_checks: VecDeque::new(),
        }
    }

    fn handshake(&self) -> Handshake {
        let s = &self.settings;
        Handshake {
            hostname: self.hostname.clone(),
            sync_type: Some(s.sync_type),
            send_mail_requests: true,
            // Direction flags describe the slave's role.
            backup_send: s.backup_recv,
            backup_recv: s.backup_send,
            lock_timeout: s.lock_timeout,
            no_mail_sync: s.no_mail_sync,
            no_backup_overwrite: s.no_backup_overwrite,
            purge_remote: s.purge_remote,
            sync_since_timestamp: s.filter.since,
            sync_until_timestamp: s.filter.until,
            sync_max_size: s.filter.max_size,
            sync_box: s.mailbox_filter.only_name.clone(),
            sync_box_guid: s.mailbox_filter.guid,
            exclude_mailboxes: if s.mailbox_filter.exclude.is_empty() {
                None
            } else {
                Some(s.mailbox_filter.exclude.clone())
            },
            sync_flags: s.filter.flag.as_ref().map(|(neg, f)| {
                let mut v = if *neg { b"-".to_vec() } else { Vec::new() };
                v.extend_from_slice(f);
                v
            }),
            ..Handshake::default()
        }
    }

    /// The role of this brain.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<Output> {
        loop {
            let kind = match self.out.front()? {
                Queued::Ready(_) => match self.out.pop_front() {
                    Some(Queued::Ready(o)) => return Some(o),
                    _ => return None,
                },
                Queued::Lazy(kind) => *kind,
            };
            if let Some(o) = self.next_lazy(kind) {
                return Some(o);
            }
            self.out.pop_front();
        }
    }

    /// The next item of a lazy list of the current mailbox, `None` at its end.
    fn next_lazy(&mut self, kind: LazyList) -> Option<Output> {
        let run = self.run.as_mut()?;
        let item = match kind {
            LazyList::Changes => {
                let cursor = run.export.as_mut()?;
                Item::MailChange(cursor.next(&run.snapshot, &run.local_changes)?)
            }
            LazyList::Requests => {
                let p = run.pending.get(run.requested)?;
                run.requested += 1;
                Item::MailRequest(p.request(&run.remote_changes))
            }
            LazyList::Answers => {
                let (reqs, next, index) = run.answering.as_mut()?;
                let req = reqs.get(*next)?;
                *next += 1;
                let (m, body) = index.answer(&run.snapshot, req);
                return Some(Output::Send {
                    item: Item::Mail(m),
                    body,
                });
            }
        };
        Some(Output::Send { item, body: None })
    }

    /// Turns the lazy lists still queued into items, before a peer item can
    /// change what they are made from (a driver that feeds before it has
    /// drained the outputs).
    fn materialize(&mut self) {
        if !self.out.iter().any(|q| matches!(q, Queued::Lazy(_))) {
            return;
        }
        for q in std::mem::take(&mut self.out) {
            match q {
                Queued::Ready(o) => self.out.push_back(Queued::Ready(o)),
                Queued::Lazy(kind) => {
                    while let Some(o) = self.next_lazy(kind) {
                        self.out.push_back(Queued::Ready(o));
                    }
                }
            }
        }
    }

    /// The session result, once finished.
    /// While the mails of a mailbox are being received: that mailbox and
    /// the lowest UID a later save or copy into it can still get
    /// (`u32::MAX`: none). Every save and move below it has been emitted
    /// already, so a store that batches saves to commit them in ascending
    /// UID order may commit those below it now.
    pub fn save_floor(&self) -> Option<(Guid128, u32)> {
        let run = self.run.as_ref()?;
        if run.recv != Recv::Mails || !run.importer {
            return None;
        }
        let floor = run.pending_uids.first().copied().unwrap_or(u32::MAX);
        Some((run.guid, floor))
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Feeds one input and runs the state machine as far as it can go.
    pub fn feed(&mut self, input: Input) -> Result<(), EngineError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match input {
            // A slave that fails sends its finish item early, in any phase:
            // the session ends with the slave's error class.
            Input::Peer(Item::Finish(f))
                if f.error.is_some()
                    && self.role == Role::Master
                    && self.phase != Phase::WaitFinish
                    && self.phase != Phase::Done =>
            {
                self.inbox.clear();
                self.out.clear();
                self.recv_finish(f);
                return Ok(());
            }
            Input::Peer(item) => {
                self.materialize();
                self.inbox.push_back(item)
            }
            Input::Answer(a) => self.answer = Some(a),
            Input::ActionFailed { action, error } => {
                self.action_failed(action, error);
                if self.phase == Phase::Done {
                    return Ok(());
                }
            }
            Input::PeerClosed => {
                if self.phase != Phase::Done {
                    return self.fail(EngineError::Closed);
                }
            }
        }
        loop {
            match self.step() {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(e) => return self.fail(e),
            }
        }
    }

    fn fail(&mut self, e: EngineError) -> Result<(), EngineError> {
        self.error = Some(e.clone());
        self.phase = Phase::Done;
        self.messages.push(e.to_string());
        self.outcome = Some(Outcome {
            status: ExitStatus::TempFail,
            messages: self.messages.clone(),
            require_full_resync: self.require_full_resync,
            state: None,
            sync_type: self.settings.sync_type,
        });
        Err(e)
    }

    fn action_failed(&mut self, action: Action, error: StorageError) {
        if let Action::LockUser { .. } = action {
            // Without the lock nothing may be changed: stop here.
            self.out.clear();
            self.messages.push(format!("Error: {error}"));
            self.failure = Some(ExitStatus::TempFail);
            self.error = Some(EngineError::Remote(error.to_string()));
            let f = self.finish_item();
            let _ = f;
            self.finish();
            return;
        }
        let what = format!("{action:?}: {error}");
        match (&action, &error) {
            (_, StorageError::NotPossible(_)) => {
                self.messages.push(format!("Error: {what}"));
                self.failure = Some(self.failure.unwrap_or(ExitStatus::DataErr));
            }
            (_, StorageError::Temp(_)) => {
                self.messages.push(format!("Error: {what}"));
                self.failure = Some(ExitStatus::TempFail);
            }
            _ => {
                self.messages
                    .push(format!("Mailbox changes caused a desync: {what}"));
                self.desync = true;
                // A concurrent change in the mailbox being synced (a UID
                // taken meanwhile, a mail gone): the state must not claim
                // more than what was common before this run.
                if let Some(run) = self.run.as_mut() {
                    run.changed_during_sync = true;
                }
            }
        }
    }

    fn send(&mut self, item: Item) {
        self.out
            .push_back(Queued::Ready(Output::Send { item, body: None }));
    }

    /// The snapshot query of a sync run: undated unless a filter compares
    /// every mail's dates or size.
    fn sync_snapshot_query(&self, guid: Guid128) -> Query {
        let f = &self.settings.filter;
        if f.since > 0 || f.until > 0 || f.max_size > 0 {
            return Query::Mailbox(guid);
        }
        // With a saved state, the comparison reads only what changed since.
        match self.states.get(&guid) {
            Some(s) if self.settings.sync_type == SyncType::State && s.last_common_modseq > 0 => {
                Query::MailboxSince {
                    guid,
                    last_common_uid: s.last_common_uid,
                    last_common_modseq: s.last_common_modseq,
                }
            }
            _ => Query::MailboxUndated(guid),
        }
    }

    fn query(&mut self, q: Query) {
        self.out.push_back(Queued::Ready(Output::Query(q)));
    }

    fn act(&mut self, a: Action) {
        self.out.push_back(Queued::Ready(Output::Action(a)));
    }

    fn backup_send(&self) -> bool {
        self.settings.backup_send
    }

    fn tree_mode(&self) -> TreeSyncMode {
        let s = &self.settings;
        if s.no_backup_overwrite || (!s.backup_send && !s.backup_recv) {
            TreeSyncMode::TwoWay
        } else if s.backup_send {
            TreeSyncMode::PreserveLocal
        } else {
            TreeSyncMode::PreserveRemote
        }
    }

    fn take_answer(&mut self) -> Option<Answer> {
        self.answer.take()
    }

    /// Asks for the log reach of the next mailbox of the saved state; once
    /// all are known, hands the (checked) state to the peer and goes on.
    fn next_state_check(&mut self) {
        if let Some(&guid) = self.state_checks.front() {
            self.query(Query::LogReach(guid));
            self.phase = Phase::StateCheck;
            return;
        }
        let states: Vec<MailboxState> = self.settings.states.clone();
        for s in states {
            self.send(Item::MailboxState(s));
        }
        self.send(Item::EndOfList);
        self.start_tree();
    }

    /// A saved state whose modseq the local log no longer reaches cannot
    /// show what changed here since: the mailbox is compared in full this
    /// run. Its entry is dropped before the peer gets the state, so both
    /// sides compare it in full (Dovecot instead skips the mailbox, exits
    /// 2 and needs a second run).
    fn drop_state_beyond_log(&mut self, guid: Guid128, logged_since: u64) {
        let Some(s) = self.states.get(&guid) else {
            return;
        };
        let lcm = s.last_common_modseq;
        if lcm >= logged_since {
            return;
        }
        self.messages.push(format!(
            "Modseq {lcm} no longer in transaction log of mailbox {guid}: compared in full"
        ));
        self.states.remove(&guid);
        self.settings.states.retain(|s| s.mailbox_guid != guid);
    }

    /// Master: leaves this mailbox for the next run, which compares it in
    /// full (desync, exit 2, no state printed).
    fn skip_for_full_resync(&mut self, why: String) {
        self.messages.push(why);
        self.desync = true;
        self.require_full_resync = true;
        self.phase = Phase::MailboxNext;
    }

    /// Slave: this side cannot sync the mailbox the master sent with the
    /// state it holds; answers it as lost, as Dovecot's slave does.
    fn answer_lost(&mut self, guid: Guid128, why: String) {
        self.messages.push(why);
        self.require_full_resync = true;
        self.send(Item::Mailbox(Mailbox {
            mailbox_guid: guid,
            mailbox_lost: true,
            ..Mailbox::default()
        }));
        self.phase = Phase::MailboxNext;
    }

    /// The saved state's modseq for this mailbox when the local log no
    /// longer reaches back to it. The peer holds the same state and syncs
    /// incrementally, so this side cannot compare in full on its own.
    fn log_gap(&self, snap: &MailboxSnapshot) -> Option<u64> {
        if self.settings.sync_type != SyncType::State {
            return None;
        }
        let s = self.state_for(snap.status.guid, snap.status.uid_validity)?;
        let lcm = s.last_common_modseq;
        (lcm > 0 && snap.log_first_modseq > lcm.saturating_add(1)).then_some(lcm)
    }

    fn start_tree(&mut self) {
        self.query(Query::Tree);
        self.phase = Phase::TreeQuery;
    }

    fn step(&mut self) -> Result<bool, EngineError> {
        // A peer that fails (for example Dovecot as backup_recv failing to
        // delete its INBOX) ends the stream early with `X`, whatever phase
        // this side is in: end cleanly with a failure, not a protocol error.
        if self.phase != Phase::Done && matches!(self.inbox.front(), Some(Item::Done)) {
            self.inbox.clear();
            self.messages
                .push("Remote ended the session early (it failed; see its log)".into());
            self.failure = Some(self.failure.unwrap_or(ExitStatus::TempFail));
            self.finish();
            return Ok(true);
        }
        match self.phase {
            Phase::Handshake => {
                let Some(item) = self.inbox.pop_front() else {
                    return Ok(false);
                };
                let Item::Handshake(h) = item else {
                    return Err(unexpected(&item, "waiting for the handshake"));
                };
                if self.role == Role::Slave {
                    self.adopt(&h);
                }
                if self.settings.lock_timeout > 0 {
                    let we_lock = match self.hostname.cmp(&h.hostname) {
                        std::cmp::Ordering::Less => true,
                        std::cmp::Ordering::Equal => self.role == Role::Master,
                        std::cmp::Ordering::Greater => false,
                    };
                    if we_lock {
                        self.act(Action::LockUser {
                            timeout_secs: self.settings.lock_timeout,
                        });
                    }
                }
                if self.settings.sync_type == SyncType::State {
                    if self.role == Role::Master {
                        self.state_checks = self
                            .settings
                            .states
                            .iter()
                            .filter(|s| s.last_common_modseq > 0)
                            .map(|s| s.mailbox_guid)
                            .collect();
                        self.next_state_check();
                        return Ok(true);
                    } else {
                        self.phase = Phase::RecvStates;
                        return Ok(true);
                    }
                }
                self.start_tree();
                Ok(true)
            }
            Phase::StateCheck => {
                let Some(a) = self.take_answer() else {
                    return Ok(false);
                };
                let Answer::LogReach(reach) = a else {
                    return Err(EngineError::Remote("expected a log reach answer".into()));
                };
                if let (Some(guid), Some(since)) = (self.state_checks.pop_front(), reach) {
                    self.drop_state_beyond_log(guid, since);
                }
                self.next_state_check();
                Ok(true)
            }
            Phase::RecvStates => {
                let Some(item) = self.inbox.pop_front() else {
                    return Ok(false);
                };
                match item {
                    Item::MailboxState(s) => {
                        self.states.insert(s.mailbox_guid, s);
                    }
                    Item::EndOfList => self.start_tree(),
                    other => return Err(unexpected(&other, "receiving mailbox states")),
                }
                Ok(true)
            }
            Phase::TreeQuery => {
                let Some(a) = self.take_answer() else {
                    return Ok(false);
                };
                let Answer::Tree(mut snap) = a else {
                    return Err(EngineError::Remote("expected a tree answer".into()));
                };
                self.settings.mailbox_filter.apply(&mut snap);
                let t = Tree::from_snapshot(&snap);
                for n in t.to_items() {
                    self.send(Item::MailboxTreeNode(n));
                }
                self.send(Item::EndOfList);
                self.send(Item::MailboxDelete(t.deletes_item()));
                self.local_tree = Some(t);
                self.phase = Phase::RecvTree;
                Ok(true)
            }
            Phase::RecvTree => {
                let Some(item) = self.inbox.pop_front() else {
                    return Ok(false);
                };
                match item {
                    Item::MailboxTreeNode(n) => {
                        if self.remote_nodes.len() >= 1_000_000 {
                            return Err(EngineError::Remote("too many mailbox tree nodes".into()));
                        }
                        self.remote_nodes.push(n)
                    }
                    Item::EndOfList => self.phase = Phase::RecvDeletes,
                    other => return Err(unexpected(&other, "receiving the mailbox tree")),
                }
                Ok(true)
            }
            Phase::RecvDeletes => {
                let Some(item) = self.inbox.pop_front() else {
                    return Ok(false);
                };
                let Item::MailboxDelete(d) = item else {
                    return Err(unexpected(&item, "waiting for mailbox deletes"));
                };
                let remote = Tree::from_items(&self.remote_nodes, &d)
                    .map_err(|e| EngineError::Remote(e.to_string()))?;
                let local = self
                    .local_tree
                    .take()
                    .unwrap_or_else(|| Tree::from_snapshot(&empty_tree()));
                let merged = if self.backup_send() {
                    local
                } else {
                    let m = tree::merge(&local, &remote, self.tree_mode(), self.now);
                    self.held_actions = m.actions;
                    self.recover = m.deleted_by_remote.into();
                    m.local
                };
                if self.role == Role::Master && !self.settings.no_mail_sync {
                    self.queue = merged.mailbox_guids().into();
                }
                self.merged = Some(merged);
                self.phase = Phase::Recover;
                self.next_recovery();
                Ok(true)
            }
            Phase::Recover => {
                let Some(a) = self.take_answer() else {
                    return Ok(false);
                };
                let Answer::Mailbox(snap) = a else {
                    return Err(EngineError::Remote("expected a mailbox answer".into()));
                };
                if let (Some(snap), Some((_, name, ts))) = (snap, self.recover.pop_front()) {
                    self.recover_mails(&snap, &name, ts);
                }
                self.next_recovery();
                Ok(true)
            }
            Phase::MailboxNext => {
                if self.role == Role::Master {
                    match self.queue.pop_front() {
                        Some(g) => {
                            // A mailbox with a saved state may be unchanged:
                            // its status decides before its mails are read.
                            if self.has_usable_state(g) {
                                self.query(Query::MailboxStatus(g));
                                self.phase = Phase::MailboxStatusQuery;
                            } else {
                                self.query(self.sync_snapshot_query(g));
                                self.phase = Phase::MailboxQuery;
                            }
                        }
                        None => {
                            self.send(Item::EndOfList);
                            self.phase = Phase::WaitFinish;
                        }
                    }
                    return Ok(true);
                }
                let Some(item) = self.inbox.pop_front() else {
                    return Ok(false);
                };
                match item {
                    Item::EndOfList => {
                        let f = self.finish_item();
                        self.send(Item::Finish(f));
                        self.send(Item::Done);
                        self.finish();
                    }
                    Item::Mailbox(b) => {
                        self.query(self.sync_snapshot_query(b.mailbox_guid));
                        self.slave_b = Some(b);
                        self.phase = Phase::MailboxQuery;
                    }
                    other => return Err(unexpected(&other, "waiting for a mailbox")),
                }
                Ok(true)
            }
            Phase::MailboxStatusQuery => {
                let Some(a) = self.take_answer() else {
                    return Ok(false);
                };
                let Answer::MailboxStatus(st) = a else {
                    return Err(EngineError::Remote(
                        "expected a mailbox status answer".into(),
                    ));
                };
                match st {
                    // Vanished since the tree was read.
                    None => self.phase = Phase::MailboxNext,
                    Some(st) if self.unchanged_since_state(&st) => self.phase = Phase::MailboxNext,
                    Some(st) => {
                        self.query(self.sync_snapshot_query(st.guid));
                        self.phase = Phase::MailboxQuery;
                    }
                }
                Ok(true)
            }
            Phase::MailboxQuery => {
                let Some(a) = self.take_answer() else {
                    return Ok(false);
                };
                let Answer::Mailbox(snap) = a else {
                    return Err(EngineError::Remote("expected a mailbox answer".into()));
                };
                if self.role == Role::Master {
                    self.master_mailbox(snap.map(|b| *b));
                } else {
                    self.slave_mailbox(snap.map(|b| *b));
                }
                Ok(true)
            }
            Phase::MasterWaitB => {
                let Some(item) = self.inbox.pop_front() else {
                    return Ok(false);
                };
                let Item::Mailbox(b) = item else {
                    return Err(unexpected(&item, "waiting for the remote mailbox"));
                };
                let Some(snap) = self.master_snapshot.take() else {
                    return Err(EngineError::Failed);
                };
                if b.mailbox_guid != snap.status.guid {
                    return Err(EngineError::WrongGuid {
                        got: b.mailbox_guid,
                        want: snap.status.guid,
                    });
                }
                if b.mailbox_ignore {
                    self.phase = Phase::MailboxNext;
                    return Ok(true);
                }
                if b.mailbox_lost {
                    self.skip_for_full_resync(format!(
                        "Mailbox changes caused a desync: Remote lost mailbox GUID {} (maybe it was just deleted?)",
                        b.mailbox_guid
                    ));
                    return Ok(true);
                }
                self.begin_mailbox(snap, b)?;
                Ok(true)
            }
            Phase::WholeSnapshotQuery => {
                let Some(a) = self.take_answer() else {
                    return Ok(false);
                };
                let Answer::Mailbox(snap) = a else {
                    return Err(EngineError::Remote("expected a mailbox answer".into()));
                };
                let Some(remote) = self.waiting_b.take() else {
                    return Err(EngineError::Failed);
                };
                match snap {
                    Some(snap) if snap.partial.is_none() => self.begin_mailbox(*snap, remote)?,
                    Some(_) => {
                        return Err(EngineError::Remote(
                            "a partial snapshot answered a whole-mailbox query".into(),
                        ))
                    }
                    // Vanished meanwhile.
                    None => self.phase = Phase::MailboxNext,
                }
                Ok(true)
            }
            Phase::Sync => {
                let Some(item) = self.inbox.pop_front() else {
                    return Ok(false);
                };
                self.sync_item(item)?;
                Ok(true)
            }
            Phase::RecordsQuery => {
                let Some(a) = self.take_answer() else {
                    return Ok(false);
                };
                let Answer::Mails(found) = a else {
                    return Err(EngineError::Remote("expected the mails' records".into()));
                };
                // The lists queued from the snapshot are made before it grows.
                self.materialize();
                let Some(mut run) = self.run.take() else {
                    return Err(EngineError::Failed);
                };
                let mails = &mut run.snapshot.mails;
                mails.extend(found);
                mails.sort_by_key(|m| m.uid);
                mails.dedup_by_key(|m| m.uid);
                self.phase = Phase::Sync;
                self.changes_received(&mut run);
                self.run = Some(run);
                Ok(true)
            }
            Phase::WaitFinish => {
                let Some(item) = self.inbox.pop_front() else {
                    return Ok(false);
                };
                match item {
                    Item::Finish(f) => self.recv_finish(f),
                    other => return Err(unexpected(&other, "waiting for the finish item")),
                }
                Ok(true)
            }
            Phase::Done => {
                // `X` and anything after the end is ignored.
                self.inbox.clear();
                Ok(false)
            }
        }
    }

    /// The slave's finish item: its failure (with its error class) and
    /// whether it needs a full resync end the session.
    fn recv_finish(&mut self, f: Finish) {
        if let Some(e) = f.error {
            self.messages
                .push(format!("Remote: {}", String::from_utf8_lossy(&e)));
            let st = if f.mail_error == 0 || f.mail_error == 1 {
                ExitStatus::TempFail
            } else {
                ExitStatus::DataErr
            };
            self.failure = Some(self.failure.unwrap_or(st));
        }
        if f.require_full_resync {
            self.require_full_resync = true;
            self.desync = true;
        }
        self.finish();
    }

    /// Asks for the next mailbox whose deletion may destroy unseen mail,
    /// or releases the tree actions when none is left.
    fn next_recovery(&mut self) {
        match self.recover.front() {
            Some((g, _, _)) => {
                let g = *g;
                self.query(Query::Mailbox(g));
            }
            None => {
                for a in std::mem::take(&mut self.held_actions) {
                    self.act(a);
                }
                self.phase = Phase::MailboxNext;
            }
        }
    }

    /// Dovecot lets a mailbox deletion destroy mails delivered to it on the
    /// other side after the deletion. Mails saved at or after the deletion
    /// time (and not written by an earlier sync, which proves the peer had
    /// them) are first copied into a new mailbox with a new GUID, which the
    /// peer later sees as an ordinary new mailbox.
    fn recover_mails(&mut self, snap: &MailboxSnapshot, name: &MailboxName, deleted_at: i64) {
        // A mail this side received from a sync (or that a sync touched)
        // was known to the peer when it deleted the mailbox.
        let known_to_peer: std::collections::HashSet<u32> = snap
            .log
            .iter()
            .filter(|r| r.sync && r.kind == LogChangeKind::Modseq)
            .map(|r| r.uid)
            .collect();
        let rescued: Vec<&MailRecord> = snap
            .mails
            .iter()
            .filter(|m| m.saved_date >= deleted_at && !known_to_peer.contains(&m.uid))
            .collect();
        if rescued.is_empty() {
            return;
        }
        let mut seed = b"homing recovered mailbox ".to_vec();
        seed.extend_from_slice(&snap.status.guid.0);
        seed.extend_from_slice(&deleted_at.to_be_bytes());
        let guid = dsync_protocol::hash::mailbox_name_hash(&seed);
        let mut new_name = name.clone();
        if let Some(last) = new_name.last_mut() {
            last.extend_from_slice(b"-recovered-");
            last.extend_from_slice(&guid.to_hex().as_bytes()[..8]);
        }
        let uid_validity = u32::try_from(self.now).unwrap_or(1).max(1);
        self.messages.push(format!(
            "Mailbox {} was deleted by the remote after {} mail(s) arrived; they were kept in {}",
            String::from_utf8_lossy(&join_name(name, b'/')),
            rescued.len(),
            String::from_utf8_lossy(&join_name(&new_name, b'/')),
        ));
        // Exit 2: the peer gets the new mailbox on the next run.
        self.desync = true;
        self.act(Action::CreateMailbox {
            name: new_name,
            guid,
            uid_validity,
        });
        for (i, m) in rescued.iter().enumerate() {
            let mail = NewMail {
                uid: u32::try_from(i).unwrap_or(u32::MAX - 1).saturating_add(1),
                guid: m.guid.clone(),
                flags: m.flags,
                keywords: m.keywords.clone(),
                min_modseq: 0,
                received_date: m.received_date,
                saved_date: m.saved_date,
                pop3_uidl: m.pop3_uidl.clone(),
                pop3_order: m.pop3_order,
            };
            self.act(Action::CopyToMailbox {
                from_mailbox: snap.status.guid,
                from_uid: m.uid,
                to_mailbox: guid,
                mail,
            });
        }
    }

    fn adopt(&mut self, h: &Handshake) {
        let s = &mut self.settings;
        // An absent sync type makes a Dovecot slave behave as for a full sync.
        s.sync_type = h.sync_type.unwrap_or(SyncType::Full);
        s.backup_send = h.backup_send;
        s.backup_recv = h.backup_recv;
        s.no_backup_overwrite = h.no_backup_overwrite;
        s.purge_remote = h.purge_remote;
        s.no_mail_sync = h.no_mail_sync;
        s.lock_timeout = h.lock_timeout;
        s.filter.since = h.sync_since_timestamp;
        s.filter.until = h.sync_until_timestamp;
        s.filter.max_size = h.sync_max_size;
        s.mailbox_filter = MailboxFilter {
            only_name: h.sync_box.clone().filter(|b| !b.is_empty()),
            exclude: h.exclude_mailboxes.clone().unwrap_or_default(),
            guid: h.sync_box_guid.filter(|g| !g.is_empty()),
        };
        s.filter.flag = h.sync_flags.as_ref().map(|f| match f.strip_prefix(b"-") {
            Some(rest) => (true, rest.to_vec()),
            None => (false, f.clone()),
        });
    }

    fn finish_item(&self) -> Finish {
        let error = self.failure.map(|_| {
            self.messages
                .iter()
                .rev()
                .find(|m| m.starts_with("Error"))
                .cloned()
                .unwrap_or_else(|| "failed".into())
                .into_bytes()
        });
        Finish {
            error,
            mail_error: match self.failure {
                Some(ExitStatus::DataErr) => 8,
                _ => 0,
            },
            require_full_resync: self.require_full_resync,
        }
    }

    fn finish(&mut self) {
        self.phase = Phase::Done;
        let status = match self.failure {
            Some(f) => f,
            None if self.desync || self.require_full_resync => ExitStatus::ChangesDuringSync,
            None => ExitStatus::Ok,
        };
        let state = if !self.require_full_resync {
            let alive: Vec<Guid128> = self
                .merged
                .as_ref()
                .map(|t| t.mailbox_guids())
                .unwrap_or_default();
            let mut all: BTreeMap<Guid128, MailboxState> = BTreeMap::new();
            // The master starts from its own settings; a slave from the
            // states the master sent.
            match self.role {
                Role::Master => {
                    for s in &self.settings.states {
                        all.insert(s.mailbox_guid, s.clone());
                    }
                }
                Role::Slave => {
                    for (g, s) in &self.states {
                        all.insert(*g, s.clone());
                    }
                }
            }
            // A failed run may have left a mailbox half written (a commit
            // that failed after the state was sent): nothing it did is
            // claimed common, and the old state, still true, is kept.
            let failed = !matches!(status, ExitStatus::Ok | ExitStatus::ChangesDuringSync);
            if !failed {
                for (g, s) in &self.new_states {
                    all.insert(*g, s.clone());
                }
            }
            Some(alive.iter().filter_map(|g| all.get(g).cloned()).collect())
        } else {
            None
        };
        self.outcome = Some(Outcome {
            status,
            messages: self.messages.clone(),
            require_full_resync: self.require_full_resync,
            state,
            sync_type: self.settings.sync_type,
        });
    }

    /// The usable saved state of a mailbox (STATE mode only).
    fn state_for(&self, guid: Guid128, uid_validity: u32) -> Option<MailboxState> {
        if self.settings.sync_type != SyncType::State {
            return None;
        }
        self.states
            .get(&guid)
            .filter(|s| s.last_uidvalidity != 0 && s.last_uidvalidity == uid_validity)
            .cloned()
    }

    /// STATE mode: a saved entry that can make the master skip `guid`.
    fn has_usable_state(&self, guid: Guid128) -> bool {
        self.settings.sync_type == SyncType::State
            && self
                .states
                .get(&guid)
                .is_some_and(|s| s.last_uidvalidity != 0)
    }

    /// The master's skip rule of a stateful run: the mailbox's own status
    /// equals its saved state (the slave is not consulted).
    fn unchanged_since_state(&self, st: &MailboxStatus) -> bool {
        self.state_for(st.guid, st.uid_validity).is_some_and(|s| {
            s.last_common_uid.saturating_add(1) == st.uid_next
                && s.last_common_modseq == st.highest_modseq
                && s.last_common_pvt_modseq == st.highest_pvt_modseq
                && s.last_messages_count == st.messages
        })
    }

    fn master_mailbox(&mut self, snap: Option<MailboxSnapshot>) {
        let Some(snap) = snap else {
            // Vanished since the tree was read.
            self.phase = Phase::MailboxNext;
            return;
        };
        let st = &snap.status;
        if self.unchanged_since_state(st) {
            self.phase = Phase::MailboxNext;
            return;
        }
        // The log was checked before the state went out; it may have been
        // rotated since. Skipped, as Dovecot does, for a full run next time.
        if let Some(lcm) = self.log_gap(&snap) {
            self.skip_for_full_resync(format!(
                "Modseq {lcm} no longer in transaction log of mailbox {}",
                st.guid
            ));
            return;
        }
        self.send(Item::Mailbox(status_item(st)));
        self.master_snapshot = Some(snap);
        self.phase = Phase::MasterWaitB;
    }

    fn slave_mailbox(&mut self, snap: Option<MailboxSnapshot>) {
        let Some(b) = self.slave_b.take() else {
            self.phase = Phase::MailboxNext;
            return;
        };
        let Some(snap) = snap else {
            let ignore = self.settings.backup_send && self.settings.no_backup_overwrite;
            self.send(Item::Mailbox(Mailbox {
                mailbox_guid: b.mailbox_guid,
                mailbox_lost: !ignore,
                mailbox_ignore: ignore,
                ..Mailbox::default()
            }));
            self.phase = Phase::MailboxNext;
            return;
        };
        if let Some(lcm) = self.log_gap(&snap) {
            // The master syncs this mailbox incrementally; this side cannot.
            self.answer_lost(
                snap.status.guid,
                format!(
                    "Modseq {lcm} no longer in transaction log of mailbox {}, retry with a full sync",
                    snap.status.guid
                ),
            );
            return;
        }
        let st = snap.status;
        if let Some(s) = self.state_for(st.guid, st.uid_validity) {
            if st.uid_next < s.last_common_uid || st.highest_modseq < s.last_common_modseq {
                let why = format!(
                    "Failed to do incremental sync for mailbox {}, retry with a full sync (uidnext {} < {})",
                    st.guid, st.uid_next, s.last_common_uid
                );
                self.answer_lost(st.guid, why);
                return;
            }
        }
        self.send(Item::Mailbox(status_item(&st)));
        if let Err(e) = self.begin_mailbox(snap, b) {
            self.messages.push(e.to_string());
            self.failure = Some(ExitStatus::TempFail);
            self.phase = Phase::MailboxNext;
        }
    }

    /// Both sides: UIDVALIDITY reconciliation, the sync decision, and the
    /// start of the exchange.
    fn begin_mailbox(&mut self, snap: MailboxSnapshot, remote: Mailbox) -> Result<(), EngineError> {
        // A lazy list still queued is made from the run it belongs to.
        self.materialize();
        let st = snap.status;
        if let Some(since) = snap.partial {
            // A partial snapshot serves only an incremental comparison from
            // the state it was read for; anything else (a UIDVALIDITY that
            // changed, a state that no longer applies) reads the whole one.
            let fits = self.settings.sync_type == SyncType::State
                && st.uid_validity == remote.uid_validity
                && self
                    .state_for(st.guid, st.uid_validity)
                    .is_some_and(|s| (s.last_common_uid, s.last_common_modseq) == since);
            if !fits {
                self.waiting_b = Some(remote);
                self.query(Query::MailboxUndated(st.guid));
                self.phase = Phase::WholeSnapshotQuery;
                return Ok(());
            }
        }
        let mut uid_validity = st.uid_validity;
        let state = self.state_for(st.guid, st.uid_validity);
        if st.uid_validity != remote.uid_validity && remote.uid_validity != 0 {
            let keep = if st.messages > remote.messages_count {
                st.uid_validity
            } else if st.messages < remote.messages_count {
                remote.uid_validity
            } else {
                st.uid_validity.max(remote.uid_validity)
            };
            if state.as_ref().is_some_and(|s| s.last_common_uid > 0) {
                self.states.remove(&st.guid);
                self.messages
                    .push("UIDVALIDITY changed during a stateful sync, need to restart".into());
                self.failure = Some(ExitStatus::TempFail);
            }
            if keep != st.uid_validity && !self.backup_send() {
                self.act(Action::SetUidValidity {
                    mailbox: st.guid,
                    uid_validity: keep,
                });
                uid_validity = keep;
            }
        }
        let needed = match self.settings.sync_type {
            SyncType::Changed => {
                st.uid_validity != remote.uid_validity
                    || st.uid_next != remote.uid_next
                    || st.messages != remote.messages_count
                    || st.highest_modseq != remote.highest_modseq
                    || st.highest_pvt_modseq != remote.highest_pvt_modseq
                    || st.first_recent_uid != remote.first_recent_uid
            }
            SyncType::Full | SyncType::State => true,
        };
        if !needed {
            // The master still names a skipped mailbox in the state it
            // prints: its saved entry, or one that proves nothing in common
            // yet (last common UID 0), so the next stateful run compares
            // it once and from then on runs incrementally.
            if self.role == Role::Master {
                let s = self.states.get(&st.guid).cloned().unwrap_or(MailboxState {
                    mailbox_guid: st.guid,
                    last_uidvalidity: st.uid_validity,
                    ..MailboxState::default()
                });
                self.new_states.insert(st.guid, s);
            }
            self.phase = Phase::MailboxNext;
            return Ok(());
        }
        let (lcu, lcm) = match self.settings.sync_type {
            SyncType::State => state
                .map(|s| (s.last_common_uid, s.last_common_modseq))
                .unwrap_or((0, 0)),
            _ => (0, 0),
        };
        // Invariant: the local log reaches back to `lcm` (`log_gap` was
        // checked before the `B` exchange). Comparing in full on one side
        // while the peer runs incrementally would take the peer's few
        // changes for the whole mailbox.
        debug_assert!(lcm == 0 || snap.log_first_modseq <= lcm.saturating_add(1));
        let exporter = !self.settings.backup_recv;
        let importer = !self.settings.backup_send;
        let local_changes = mailbox::scan_log(&snap, lcm);
        let expected_changes = if importer && lcu == 0 {
            (remote.messages_count as usize).min(1 << 18)
        } else {
            0
        };
        let mut snap = snap;
        // The log is read once, above; a large mailbox's log is as long as
        // the mailbox.
        snap.log = Vec::new();
        let mut run = MailboxRun {
            guid: st.guid,
            changed_during_sync: false,
            messages: st.messages,
            snapshot: snap,
            remote,
            lcu,
            lcm,
            exporter,
            importer,
            recv: if importer {
                Recv::Attributes
            } else {
                Recv::Requests
            },
            local_changes,
            // In a full comparison the peer sends a change per mail: room
            // for them at once (growth by doubling copies the list and
            // leaves up to half of it unused). Capped, as the count is the
            // peer's word.
            remote_changes: Vec::with_capacity(expected_changes),
            requests: Vec::new(),
            pending: VecDeque::new(),
            pending_uids: BTreeSet::new(),
            last_common_uid: 0,
            require_full_resync: false,
            sent_r_end: false,
            sent_m_end: false,
            recv_m_end: false,
            sent_s: None,
            uid_validity,
            export: None,
            requested: 0,
            answering: None,
        };
        if exporter {
            for a in mailbox::export_attributes(&run.snapshot, lcm) {
                self.send(Item::Attribute(a));
            }
            self.send(Item::EndOfList);
            let fields = ExportFields {
                received_timestamp: self.settings.filter.since > 0
                    || self.settings.filter.until > 0,
                virtual_size: self.settings.filter.max_size > 0,
            };
            run.export = Some(ChangeExport::new(lcu, fields));
            self.out.push_back(Queued::Lazy(LazyList::Changes));
            self.send(Item::EndOfList);
        }
        run.last_common_uid = run.snapshot.status.uid_next.saturating_sub(1);
        self.run = Some(run);
        self.phase = Phase::Sync;
        Ok(())
    }

    fn sync_item(&mut self, item: Item) -> Result<(), EngineError> {
        let Some(mut run) = self.run.take() else {
            return Err(EngineError::Failed);
        };
        let r = self.sync_item_in(&mut run, item);
        self.run = Some(run);
        if self.phase != Phase::Sync && self.phase != Phase::RecordsQuery {
            // The mailbox is done: what is still queued of its lists is made
            // now, while its run exists.
            self.materialize();
            self.run = None;
        }
        r
    }

    fn sync_item_in(&mut self, run: &mut MailboxRun, item: Item) -> Result<(), EngineError> {
        match (run.recv, item) {
            (Recv::Attributes, Item::Attribute(a)) => {
                if a.value == dsync_protocol::AttributeValue::Stream {
                    // The value is in a data block the engine does not
                    // receive; leave the local value alone rather than
                    // mistake it for a deletion.
                    self.messages.push(format!(
                        "Attribute {} has a streamed value; not synced",
                        String::from_utf8_lossy(&a.key)
                    ));
                } else if run.importer {
                    let local = run
                        .snapshot
                        .attributes
                        .iter()
                        .find(|x| x.attr_type == a.attr_type && x.key == a.key);
                    if let Some(value) = mailbox::import_attribute(local, &a, run.lcm) {
                        self.act(Action::SetAttribute {
                            mailbox: run.guid,
                            attr_type: a.attr_type,
                            key: a.key.clone(),
                            value,
                            last_change: a.last_change,
                        });
                    }
                }
            }
            (Recv::Attributes, Item::EndOfList) => run.recv = Recv::Changes,
            (Recv::Changes, Item::MailChange(c)) => {
                if run.remote_changes.len() >= 10_000_000 {
                    return Err(EngineError::Remote("too many mail changes".into()));
                }
                let len = run.remote_changes.len();
                if len == run.remote_changes.capacity() {
                    // By a 32nd, not double: a list sized from the peer's
                    // count outgrows it only by the peer's logged expunges,
                    // and doubling would leave half of it unused.
                    run.remote_changes.reserve_exact((len / 32).max(1024));
                }
                run.remote_changes.push(c);
            }
            (Recv::Changes, Item::EndOfList) => {
                let missing = missing_records(run);
                if missing.is_empty() {
                    self.changes_received(run);
                } else {
                    self.query(Query::Mails {
                        guid: run.guid,
                        uids: missing,
                    });
                    self.phase = Phase::RecordsQuery;
                }
            }
            (Recv::Requests, Item::MailRequest(r)) => {
                if run.requests.len() >= 10_000_000 {
                    return Err(EngineError::Remote("too many mail requests".into()));
                }
                run.requests.push(r);
            }
            (Recv::Requests, Item::EndOfList) => {
                let reqs = std::mem::take(&mut run.requests);
                let index = GuidIndex::new(&run.snapshot);
                run.answering = Some((reqs, 0, index));
                self.out.push_back(Queued::Lazy(LazyList::Answers));
                self.send(Item::EndOfList);
                run.sent_m_end = true;
                run.recv = if run.importer {
                    Recv::Mails
                } else {
                    Recv::State
                };
                self.maybe_send_state(run);
            }
            (Recv::Mails, Item::Mail(m)) => self.receive_mail(run, &m),
            (Recv::Mails, Item::EndOfList) => {
                run.recv_m_end = true;
                run.pending_uids.clear();
                for p in std::mem::take(&mut run.pending) {
                    let c = p.first_change(&run.remote_changes);
                    self.messages.push(format!(
                        "Error: Remote didn't send mail GUID={} (UID={})",
                        String::from_utf8_lossy(
                            c.and_then(|c| c.guid.as_deref()).unwrap_or_default()
                        ),
                        c.map_or(0, |c| c.uid)
                    ));
                    self.failure = Some(self.failure.unwrap_or(ExitStatus::TempFail));
                }
                if !run.require_full_resync {
                    self.act(Action::RaiseStatus {
                        mailbox: run.guid,
                        uid_next: run
                            .remote
                            .uid_next
                            .max(run.last_common_uid.saturating_add(1)),
                        highest_modseq: run.remote.highest_modseq,
                        first_recent_uid: run
                            .last_common_uid
                            .saturating_add(1)
                            .min(run.remote.first_recent_uid),
                    });
                }
                run.recv = Recv::State;
                self.maybe_send_state(run);
            }
            (Recv::State, Item::MailboxState(s)) => {
                self.maybe_send_state(run);
                let mine = run.sent_s.clone().unwrap_or_default();
                let merged = MailboxState {
                    mailbox_guid: run.guid,
                    last_uidvalidity: mine.last_uidvalidity,
                    last_common_uid: mine.last_common_uid.min(s.last_common_uid),
                    last_common_modseq: mine.last_common_modseq.min(s.last_common_modseq),
                    last_common_pvt_modseq: mine
                        .last_common_pvt_modseq
                        .min(s.last_common_pvt_modseq),
                    last_messages_count: mine.last_messages_count,
                    changes_during_sync: false,
                };
                if s.changes_during_sync && self.role == Role::Master {
                    self.messages
                        .push("Remote notified that changes happened during sync".into());
                    self.desync = true;
                }
                self.new_states.insert(run.guid, merged);
                self.phase = Phase::MailboxNext;
            }
            (phase, other) => {
                return Err(unexpected(
                    &other,
                    match phase {
                        Recv::Attributes => "receiving attributes",
                        Recv::Changes => "receiving mail changes",
                        Recv::Requests => "receiving mail requests",
                        Recv::Mails => "receiving mails",
                        Recv::State => "waiting for the mailbox state",
                    },
                ))
            }
        }
        Ok(())
    }

    /// The peer's change list is complete (and every local record it
    /// names is at hand): import it.
    fn changes_received(&mut self, run: &mut MailboxRun) {
        self.import_changes(run);
        run.recv = if run.exporter {
            Recv::Requests
        } else {
            Recv::Mails
        };
    }

    fn import_changes(&mut self, run: &mut MailboxRun) {
        let revert = self.settings.backup_recv && !self.settings.no_backup_overwrite;
        let filter = self.settings.filter.clone();
        let plan = mailbox::import(&ImportInput {
            local: &run.snapshot,
            local_changes: &run.local_changes,
            remote: &run.remote,
            remote_changes: &run.remote_changes,
            last_common_uid: run.lcu,
            last_common_modseq: run.lcm,
            master: self.role == Role::Master,
            revert,
            filter: &filter,
        });
        if let Some(reason) = &plan.require_full_resync {
            self.messages.push(format!(
                "Mailbox {}: {reason}: full resync required",
                run.guid
            ));
            run.require_full_resync = true;
            self.require_full_resync = true;
            self.desync = true;
        } else if let Some(reason) = &plan.delete_mailbox {
            self.messages
                .push(format!("Error: Deleting mailbox {}: {reason}", run.guid));
            self.act(Action::DeleteMailbox {
                guid: run.guid,
                timestamp: self.now,
            });
            self.failure = Some(self.failure.unwrap_or(ExitStatus::TempFail));
            run.require_full_resync = true;
        } else {
            // Keep the exporter's view current: bodies are read from the
            // UIDs the mails have after our own moves. Found by halving,
            // before any UID changes (the list is in UID order).
            let mails = &mut run.snapshot.mails;
            let mut gone = vec![false; mails.len()];
            let mut moved: Vec<(usize, u32)> = Vec::new();
            for a in &plan.actions {
                let at = |uid: u32| mails.binary_search_by_key(&uid, |m| m.uid).ok();
                match a {
                    Action::MoveMail {
                        from_uid, to_uid, ..
                    } => moved.extend(at(*from_uid).map(|i| (i, *to_uid))),
                    Action::Expunge { uid, .. } => {
                        if let Some(i) = at(*uid) {
                            gone[i] = true;
                        }
                    }
                    _ => {}
                }
                self.act(a.clone());
            }
            for (i, to_uid) in moved {
                mails[i].uid = to_uid;
            }
            let mut i = 0;
            mails.retain(|_| {
                i += 1;
                !gone[i - 1]
            });
            mails.sort_by_key(|m| m.uid);
            run.last_common_uid = plan.last_common_uid;
            run.messages = (run.messages + plan.saved).saturating_sub(plan.expunged);
            run.pending_uids = plan
                .pending
                .iter()
                .flat_map(|p| p.instances().map(|(uid, _)| uid))
                .collect();
            run.pending = plan.pending.into();
        }
        if !run.require_full_resync {
            run.requested = 0;
            self.out.push_back(Queued::Lazy(LazyList::Requests));
        }
        self.send(Item::EndOfList);
        run.sent_r_end = true;
    }

    fn receive_mail(&mut self, run: &mut MailboxRun, m: &Mail) {
        let changes = &run.remote_changes;
        let idx = run.pending.iter().position(|p| {
            let Some(c) = p.first_change(changes) else {
                return false;
            };
            let guid = c.guid.as_deref().unwrap_or_default();
            match &m.guid {
                Some(g) if !g.is_empty() => guid == g.as_slice(),
                _ => guid.is_empty() && c.uid == m.uid,
            }
        });
        let Some(idx) = idx else {
            if m.stream {
                self.messages
                    .push(format!("Ignoring unrequested mail UID={}", m.uid));
            }
            return;
        };
        let Some(p) = run.pending.remove(idx) else {
            return;
        };
        for (uid, _) in p.instances() {
            run.pending_uids.remove(&uid);
        }
        if !m.stream {
            // Expunged on the remote meanwhile.
            return;
        }
        let mut first: Option<u32> = None;
        for (uid, ci) in p.instances() {
            let Some(change) = run.remote_changes.get(ci) else {
                continue;
            };
            let uid = &uid;
            let mail = mailbox::new_mail_from_change(change, *uid, Some(m));
            match first {
                None => {
                    self.act(Action::SaveMail {
                        mailbox: run.guid,
                        mail,
                        body: BodySource::Incoming,
                    });
                    first = Some(*uid);
                }
                Some(from_uid) => self.act(Action::CopyMail {
                    mailbox: run.guid,
                    from_uid,
                    mail,
                }),
            }
            run.messages += 1;
        }
    }

    fn maybe_send_state(&mut self, run: &mut MailboxRun) {
        if run.sent_s.is_some() {
            return;
        }
        let export_done = !run.exporter || run.sent_m_end;
        let import_done = !run.importer || (run.sent_r_end && run.recv_m_end);
        if !(export_done && import_done) {
            return;
        }
        let st = &run.snapshot.status;
        let s = if run.importer {
            MailboxState {
                mailbox_guid: run.guid,
                last_uidvalidity: if run.require_full_resync {
                    0
                } else {
                    run.uid_validity
                },
                last_common_uid: if run.changed_during_sync {
                    st.uid_next.saturating_sub(1)
                } else {
                    run.last_common_uid
                },
                last_common_modseq: if run.changed_during_sync {
                    st.highest_modseq
                } else {
                    run.remote.highest_modseq
                },
                last_common_pvt_modseq: if run.changed_during_sync {
                    st.highest_pvt_modseq
                } else {
                    run.remote.highest_pvt_modseq
                },
                last_messages_count: run.messages,
                changes_during_sync: run.require_full_resync || run.changed_during_sync,
            }
        } else {
            MailboxState {
                mailbox_guid: run.guid,
                last_uidvalidity: run.uid_validity,
                last_common_uid: st.uid_next.saturating_sub(1),
                last_common_modseq: st.highest_modseq,
                last_common_pvt_modseq: st.highest_pvt_modseq,
                last_messages_count: st.messages,
                changes_during_sync: false,
            }
        };
        self.send(Item::MailboxState(s.clone()));
        run.sent_s = Some(s);
    }
}

/// Comparing from a partial snapshot: the UIDs (ascending) of the mails
/// the peer's changes name at or below the last common UID that the
/// snapshot left out. Above it every local mail is in the snapshot.
fn missing_records(run: &MailboxRun) -> Vec<u32> {
    if run.snapshot.partial.is_none() || !run.importer {
        return Vec::new();
    }
    let mails = &run.snapshot.mails;
    let mut uids: Vec<u32> = run
        .remote_changes
        .iter()
        .map(|c| c.uid)
        .filter(|&u| u <= run.lcu && mails.binary_search_by_key(&u, |m| m.uid).is_err())
        .collect();
    uids.sort_unstable();
    uids.dedup();
    uids
}

fn status_item(st: &MailboxStatus) -> Mailbox {
    Mailbox {
        mailbox_guid: st.guid,
        uid_validity: st.uid_validity,
        uid_next: st.uid_next,
        messages_count: st.messages,
        first_recent_uid: st.first_recent_uid,
        highest_modseq: st.highest_modseq,
        highest_pvt_modseq: st.highest_pvt_modseq,
        have_guids: true,
        have_save_guids: true,
        ..Mailbox::default()
    }
}

fn empty_tree() -> TreeSnapshot {
    TreeSnapshot {
        separator: b'/',
        mailboxes: Vec::new(),
        subscriptions: Vec::new(),
        log: Vec::new(),
    }
}

fn unexpected(item: &Item, expected: &'static str) -> EngineError {
    EngineError::Unexpected {
        got: item.letter() as char,
        expected,
    }
}
