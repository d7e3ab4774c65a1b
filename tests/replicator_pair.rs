//! End-to-end replication on an A/B pair (spec §7.3): two real Dovecot 2.3
//! servers with their own replicator and aggregator disabled, each with
//! `mail_plugins = notify replication` writing into the FIFO of a homing
//! replicator beside it. Each homing replicator runs syncs with homing's
//! engine (`replication_engine = homing`): its own server's Maildir against
//! the other server's doveadm-server over `tcp:` (with `-U`, so the peer's
//! dsync-server sends NOTIFY to the homing replicator beside the peer).
//!
//! Checked: a save on A reaches B promptly; flag changes, expunges and
//! mailbox create/rename/delete replicate in both directions; with B stopped
//! the user goes to the failed queue (seen through the stock
//! `doveadm replicator status` and `homing replicator status`), is retried,
//! and recovers with nothing lost once B is back; a restart of the homing
//! replicator keeps the state from `replicator.db` and the next sync is
//! incremental; and the status output for the failed-queue situation is the
//! one a real Dovecot replicator prints for the same `replicator.db`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homing::replicator::db::{self, DbRecord};
use homing::replicator::engine_runner::{EngineRunner, EngineSettings};
use homing::replicator::{
    Daemon, ReplicatorConfig, SyncFuture, SyncOutcome, SyncRequest, SyncRunner, SystemClock,
};
use test_support::{DovecotInstance, InstanceOptions, MailFormat};

const USERS: [&str; 2] = ["alice", "bob"];
/// How long any one replication may take before the test fails.
const PROMPT: Duration = Duration::from_secs(15);
/// Failed-sync retry interval of the homing replicators (Dovecot: 300 s).
const RETRY_SECS: u64 = 4;

/// Dovecot side of the pair: the replication plugin on, Dovecot's own
/// replicator and aggregator listeners disabled (mode 0) so that homing owns
/// `replication-notify-fifo`, `replication-notify`, `replicator` and
/// `replicator-doveadm` in `base_dir`. The plugin only needs a non-empty
/// `mail_replica` to be active; homing's `replication_dsync_destination`
/// names the real peer.
const PAIR_CONF: &str = "mail_plugins = $mail_plugins notify replication\n\
     plugin {\n  mail_replica = tcp:127.0.0.1\n}\n\
     service aggregator {\n  fifo_listener replication-notify-fifo {\n    mode = 0\n  }\n  unix_listener replication-notify {\n    mode = 0\n  }\n}\n\
     service replicator {\n  unix_listener replicator {\n    mode = 0\n  }\n  unix_listener replicator-doveadm {\n    mode = 0\n  }\n}\n";

/// One sync as the test saw it.
#[derive(Clone, Debug)]
struct Seen {
    request: SyncRequest,
    outcome: SyncOutcome,
    at: Instant,
}

/// Runs syncs with [`EngineRunner`] and remembers requests and outcomes.
#[derive(Clone)]
struct Recorder {
    label: &'static str,
    inner: EngineRunner,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl SyncRunner for Recorder {
    fn sync(&self, request: SyncRequest) -> SyncFuture {
        let fut = self.inner.sync(request.clone());
        let seen = self.seen.clone();
        let label = self.label;
        Box::pin(async move {
            let outcome = fut.await;
            eprintln!(
                "[{}] sync {} full={} state={:?} -> {:?}",
                label, request.username, request.full, request.state, outcome
            );
            seen.lock().unwrap().push(Seen {
                request,
                outcome: outcome.clone(),
                at: Instant::now(),
            });
            outcome
        })
    }
}

impl Recorder {
    fn of(&self, user: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.request.username == user)
            .cloned()
            .collect()
    }
}

struct Side {
    inst: DovecotInstance,
    cfg: ReplicatorConfig,
    recorder: Recorder,
    daemon: Option<Daemon>,
}

impl Side {
    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    fn record(&self, user: &str) -> DbRecord {
        self.daemon()
            .records()
            .into_iter()
            .find(|r| r.username == user)
            .unwrap_or_else(|| panic!("{user} not known"))
    }

    async fn start(&mut self) {
        self.recorder = Recorder {
            label: self.recorder.label,
            inner: EngineRunner::new(EngineSettings::from_config(&self.cfg)),
            seen: Arc::default(),
        };
        let d = Daemon::start(
            self.cfg.clone(),
            Arc::new(self.recorder.clone()),
            Arc::new(SystemClock),
        )
        .await
        .expect("homing replicator starts");
        self.daemon = Some(d);
    }

    fn sock(&self) -> PathBuf {
        self.cfg.doveadm_socket.clone()
    }

    /// `doveadm <args>` of this side's Dovecot (its `base_dir` holds homing's
    /// `replicator-doveadm`, so `doveadm replicator ...` reaches homing).
    fn doveadm(&self, args: &[&str]) -> (String, i32) {
        let out = tokio::task::block_in_place(|| self.inst.doveadm(args)).unwrap();
        (
            out.stdout_str() + &out.stderr_str(),
            out.code().unwrap_or(-1),
        )
    }

    fn user(&self, user: &str, args: &[&str]) {
        tokio::task::block_in_place(|| self.inst.doveadm_user(user, args))
            .unwrap_or_else(|e| panic!("doveadm {args:?} -u {user}: {e}"));
    }

    /// Expunges the mail with Subject `id` as an IMAP client does, in one
    /// imap process (`doveadm exec imap`): `\Deleted` (found with SEARCHRES)
    /// and `EXPUNGE`. On Maildir, Dovecot 2.3.19.1's replication plugin
    /// notifies for the flag change but not for the expunge itself
    /// (`doveadm expunge`, or `EXPUNGE` alone, sends nothing), so the
    /// notification sent at logout covers both.
    fn expunge(&self, user: &str, mailbox: &str, id: &str) {
        let script = format!(
            "a SELECT {mailbox}\r\nb SEARCH RETURN (SAVE) HEADER Subject {id}\r\n\
             c STORE $ +FLAGS (\\Deleted)\r\nd EXPUNGE\r\ne LOGOUT\r\n"
        );
        let out = tokio::task::block_in_place(|| {
            self.inst
                .doveadm_with_input(["exec", "imap", "-u", user], Some(script.as_bytes()))
        })
        .unwrap();
        let text = out.stdout_str();
        assert!(
            text.contains("c OK") && text.contains("* 1 EXPUNGE") || text.contains(" EXPUNGE\r\n"),
            "{text}{}",
            out.stderr_str()
        );
        assert!(text.contains("d OK Expunge completed"), "{text}");
    }

    fn save(&self, user: &str, mailbox: &str, id: &str) {
        tokio::task::block_in_place(|| self.inst.save_message(user, mailbox, &message(id)))
            .unwrap_or_else(|e| panic!("save {id}: {e}"));
    }
}

fn message(id: &str) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: {id}@example.org\r\nMessage-ID: <{id}@example.org>\r\n\
         Subject: {id}\r\n\r\nbody of {id}\r\n"
    )
    .into_bytes()
}

/// A user's mailboxes (name, GUID) and mails (mailbox, Message-ID, GUID,
/// flags and keywords) as Dovecot shows them.
type View = (
    Vec<(String, String)>,
    Vec<(String, String, String, Vec<String>)>,
);

fn view(inst: &DovecotInstance, user: &str) -> View {
    try_view(inst, user).expect("snapshot")
}

/// [`view`], or the error of a snapshot taken while a sync changes the
/// tree under doveadm ("Mailbox was deleted under us"): polled again.
fn try_view(inst: &DovecotInstance, user: &str) -> Result<View, test_support::HarnessError> {
    let snap = tokio::task::block_in_place(|| inst.snapshot(user))?;
    let mut boxes: Vec<(String, String)> = snap
        .mailboxes
        .iter()
        .map(|m| (m.name.clone(), m.guid.clone()))
        .collect();
    boxes.sort();
    let mut mails: Vec<(String, String, String, Vec<String>)> = snap
        .mails
        .iter()
        .map(|m| {
            (
                m.mailbox.clone(),
                m.message_id.clone(),
                m.guid.clone(),
                m.flags_and_keywords(),
            )
        })
        .collect();
    mails.sort();
    Ok((boxes, mails))
}

/// Waits until `user` looks the same on A and B and `ok` holds for that
/// view; returns the view and how long it took.
async fn converge(
    a: &Side,
    b: &Side,
    user: &str,
    what: &str,
    ok: impl Fn(&View) -> bool,
) -> (View, Duration) {
    let start = Instant::now();
    loop {
        // A replication running meanwhile may rename or delete a mailbox
        // under doveadm's snapshot: look again.
        let (va, vb) = match (try_view(&a.inst, user), try_view(&b.inst, user)) {
            (Ok(va), Ok(vb)) => (va, vb),
            (va, vb) => {
                assert!(
                    start.elapsed() < PROMPT,
                    "{what}: no snapshot within {PROMPT:?}: {va:?} {vb:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if va == vb && ok(&va) {
            return (va, start.elapsed());
        }
        assert!(
            start.elapsed() < PROMPT,
            "{what}: not replicated within {PROMPT:?}\nA: {va:?}\nB: {vb:?}\nA's log:\n{}\nB's log:\n{}\nrecords A {:?}\nrecords B {:?}",
            a.inst.log(),
            b.inst.log(),
            a.daemon().records(),
            b.daemon().records()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn has_mail(v: &View, mailbox: &str, id: &str) -> bool {
    v.1.iter()
        .any(|m| m.0 == mailbox && m.1 == format!("<{id}@example.org>"))
}

fn mail_flags<'a>(v: &'a View, id: &str) -> &'a [String] {
    v.1.iter()
        .find(|m| m.1 == format!("<{id}@example.org>"))
        .map(|m| m.3.as_slice())
        .unwrap_or(&[])
}

fn has_box(v: &View, name: &str) -> bool {
    v.0.iter().any(|b| b.0 == name)
}

/// Waits until `side`'s replicator has a sync of `user` matching `pred`.
async fn wait_sync(side: &Side, user: &str, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
    let start = Instant::now();
    loop {
        if let Some(s) = side.recorder.of(user).into_iter().find(&pred) {
            return s;
        }
        assert!(
            start.elapsed() < PROMPT,
            "{what}: no such sync of {user} within {PROMPT:?}: {:#?}",
            side.recorder.of(user)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every user's sync on `side` is finished and nothing is queued.
async fn settle(side: &Side) {
    let start = Instant::now();
    loop {
        let (out, code) = side.doveadm(&["-f", "tab", "replicator", "dsync-status"]);
        let busy = code != 0 || out.lines().skip(1).any(|l| !l.starts_with("\t-\t"));
        let recs = side.daemon().records();
        let queued = recs
            .iter()
            .any(|r| r.priority != homing::replicator::Priority::None);
        if !busy && !queued {
            return;
        }
        assert!(
            start.elapsed() < PROMPT,
            "replicator did not settle: {out}\n{recs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A count of the `replicator status` overview table.
fn count(overview: &str, label: &str) -> Option<u64> {
    overview
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.trim().parse().ok())
}

fn homing_status(sock: &Path, mask: Option<&str>) -> (String, i32) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_homing"));
    cmd.args(["replicator", "status", "-a"]).arg(sock);
    if let Some(m) = mask {
        cmd.arg(m);
    }
    let out = cmd.output().expect("homing replicator status");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// Elapsed times (`HH:MM:SS`) replaced by `T`s of the same width: the two
/// replicators are asked a few seconds apart.
fn mask_times(s: &str) -> String {
    let b: Vec<char> = s.chars().collect();
    let mut out = b.clone();
    for i in 0..b.len() {
        if b[i] == ':' && i >= 1 && i + 2 < b.len() && b[i - 1].is_ascii_digit() {
            for c in out.iter_mut().skip(i + 1).take(2) {
                *c = 'T';
            }
            let mut j = i;
            while j > 0 && b[j - 1].is_ascii_digit() {
                j -= 1;
                out[j] = 'T';
            }
        }
    }
    out.into_iter().collect()
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(String::from).collect();
    let head = if v.is_empty() {
        None
    } else {
        Some(v.remove(0))
    };
    v.sort();
    head.into_iter().chain(v).collect()
}

fn make_side() -> DovecotInstance {
    tokio::task::block_in_place(|| {
        DovecotInstance::start(
            InstanceOptions::new()
                .format(MailFormat::Maildir)
                .users(&USERS)
                .doveadm_tcp(true)
                .extra_conf(PAIR_CONF),
        )
    })
    .expect("private Dovecot instance")
}

fn side_config(
    name: &str,
    tmp: &Path,
    inst: &DovecotInstance,
    peer: &DovecotInstance,
) -> ReplicatorConfig {
    let state = tmp.join(format!("{name}-state"));
    std::fs::create_dir_all(&state).unwrap();
    let mut cfg = ReplicatorConfig::with_dirs(&inst.run_dir(), &state);
    // Syncs run in-process; no Dovecot doveadm-server socket is used.
    cfg.doveadm_server_socket = None;
    // Mail processes and the peer's dsync-server run as vmail.
    cfg.socket_owner = Some(inst.vmail_ids());
    let passwd = tmp.join(format!("{name}-passwd"));
    let lines: String = USERS
        .iter()
        .map(|u| format!("{u}:x:5000:5000::{}::\n", inst.home(u).display()))
        .collect();
    std::fs::write(&passwd, lines).unwrap();
    cfg.userdb_passwd_file = Some(passwd);
    for (k, v) in [
        ("replication_max_conns", "2".to_string()),
        ("replication_engine", "homing".to_string()),
        (
            "replication_mail_location",
            "maildir:%h/Maildir".to_string(),
        ),
        ("replication_dsync_destination", peer.tcp_destination()),
        ("doveadm_password", peer.doveadm_password().to_string()),
        ("replication_failed_retry_interval", RETRY_SECS.to_string()),
    ] {
        cfg.set(k, &v).unwrap();
    }
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ab_pair_replicates_both_ways_and_recovers() {
    if !test_support::require_dovecot("ab_pair_replicates_both_ways_and_recovers") {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let ia = make_side();
    let ib = make_side();
    let ca = side_config("a", tmp.path(), &ia, &ib);
    let cb = side_config("b", tmp.path(), &ib, &ia);
    let idle = |label| Recorder {
        label,
        inner: EngineRunner::new(EngineSettings::default()),
        seen: Arc::default(),
    };
    let mut a = Side {
        inst: ia,
        cfg: ca,
        recorder: idle("A"),
        daemon: None,
    };
    let mut b = Side {
        inst: ib,
        cfg: cb,
        recorder: idle("B"),
        daemon: None,
    };

    // Existing mail on A; B is empty (its Maildirs are made by its dsync-server
    // during the first sync, so Dovecot owns them and INBOX keeps A's GUID).
    a.user("alice", &["mailbox", "create", "Work"]);
    a.save("alice", "INBOX", "a1");
    a.save("alice", "Work", "w1");
    a.save("bob", "INBOX", "b1");

    // 1. homing beside A: the userdb users are new, so both get a full sync
    //    at start (spec 2.3, 7.2.4), which copies A's mail to B.
    a.start().await;
    for u in USERS {
        let s = wait_sync(&a, u, "start-up sync", |s| {
            matches!(s.outcome, SyncOutcome::Ok { .. })
        })
        .await;
        assert!(s.request.full && s.request.state.is_none(), "{s:?}");
    }
    let (v, _) = converge(&a, &b, "alice", "start-up", |v| {
        has_mail(v, "INBOX", "a1") && has_mail(v, "Work", "w1")
    })
    .await;
    assert_eq!(v.1.len(), 2, "{v:?}");
    converge(&a, &b, "bob", "start-up", |v| has_mail(v, "INBOX", "b1")).await;
    settle(&a).await;

    // 2. homing beside B: its start-up syncs find nothing to copy.
    b.start().await;
    for u in USERS {
        wait_sync(&b, u, "B start-up sync", |s| {
            matches!(s.outcome, SyncOutcome::Ok { .. })
        })
        .await;
    }
    settle(&b).await;
    settle(&a).await;
    let before = view(&a.inst, "alice");
    // Times are whole seconds: let the NOTIFY below land in a later one.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // 3. A save on A: the plugin writes `alice\thigh` into homing-A's FIFO,
    //    homing-A runs a state-based (incremental) sync and B has the mail.
    let b_alice = b.record("alice");
    let n = a.recorder.of("alice").len();
    let saved_at = Instant::now();
    a.save("alice", "INBOX", "a2");
    let (v, took) = converge(&a, &b, "alice", "save on A", |v| has_mail(v, "INBOX", "a2")).await;
    eprintln!("save on A visible on B after {:?}", saved_at.elapsed());
    assert_eq!(v.1.len(), before.1.len() + 1);
    assert!(took < Duration::from_secs(5), "not prompt: {took:?}");
    let s = a.recorder.of("alice")[n..]
        .iter()
        .find(|s| matches!(s.outcome, SyncOutcome::Ok { .. }))
        .cloned()
        .expect("a sync of alice after the save");
    assert!(
        !s.request.full && s.request.state.as_deref().is_some_and(|x| !x.is_empty()),
        "incremental from the saved state: {:?}",
        s.request
    );
    // NOTIFY from B's dsync-server (-U) reached homing-B: fast sync time
    // moved, success time did not (spec 2.6, 7.3.2).
    let start = Instant::now();
    loop {
        let r = b.record("alice");
        if r.last_fast_sync > b_alice.last_fast_sync {
            assert_eq!(
                r.last_successful_sync, b_alice.last_successful_sync,
                "{r:?}"
            );
            break;
        }
        assert!(
            start.elapsed() < PROMPT,
            "no NOTIFY on B: before {b_alice:?} now {r:?}\nB's log:\n{}",
            b.inst.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle(&a).await;
    settle(&b).await;

    // 4. Flags both ways, expunges both ways.
    a.user(
        "alice",
        &[
            "flags", "add", "\\Seen", "mailbox", "INBOX", "header", "Subject", "a1",
        ],
    );
    converge(&a, &b, "alice", "flag on A", |v| {
        mail_flags(v, "a1").contains(&"\\Seen".to_string())
    })
    .await;
    b.user(
        "alice",
        &[
            "flags",
            "add",
            "\\Flagged $Work",
            "mailbox",
            "INBOX",
            "header",
            "Subject",
            "a2",
        ],
    );
    converge(&a, &b, "alice", "flag on B", |v| {
        let f = mail_flags(v, "a2");
        f.contains(&"\\Flagged".to_string()) && f.contains(&"$Work".to_string())
    })
    .await;
    b.expunge("alice", "Work", "w1");
    converge(&a, &b, "alice", "expunge on B", |v| {
        !has_mail(v, "Work", "w1")
    })
    .await;
    a.save("alice", "Work", "w2");
    converge(&a, &b, "alice", "save on A", |v| has_mail(v, "Work", "w2")).await;
    a.expunge("alice", "INBOX", "a1");
    converge(&a, &b, "alice", "expunge on A", |v| {
        !has_mail(v, "INBOX", "a1")
    })
    .await;

    // 5. Mailboxes both ways: create on A, rename on B, delete on A,
    //    create with mail on B.
    a.user("alice", &["mailbox", "create", "Projects"]);
    converge(&a, &b, "alice", "create on A", |v| has_box(v, "Projects")).await;
    settle(&a).await;
    settle(&b).await;
    b.user("alice", &["mailbox", "rename", "Projects", "Archive"]);
    converge(&a, &b, "alice", "rename on B", |v| {
        has_box(v, "Archive") && !has_box(v, "Projects")
    })
    .await;
    settle(&a).await;
    settle(&b).await;
    a.user("alice", &["mailbox", "delete", "Archive"]);
    converge(&a, &b, "alice", "delete on A", |v| !has_box(v, "Archive")).await;
    settle(&a).await;
    settle(&b).await;
    b.save("alice", "Lists", "l1");
    let (v, _) = converge(&a, &b, "alice", "create and save on B", |v| {
        has_box(v, "Lists") && has_mail(v, "Lists", "l1")
    })
    .await;
    settle(&a).await;
    settle(&b).await;
    let alive = v.1.len();

    // 6. B stopped: A's syncs of alice fail, alice waits in the failed queue.
    tokio::task::block_in_place(|| b.inst.stop());
    let n = a.recorder.of("alice").len();
    a.save("alice", "INBOX", "down1");
    let failed = wait_sync(&a, "alice", "sync while B is down", |s| {
        matches!(s.outcome, SyncOutcome::Failed { .. })
    })
    .await;
    assert!(a.recorder.of("alice").len() > n);
    let rec = a.record("alice");
    assert!(rec.last_sync_failed, "{rec:?}");
    // The state is kept for the retry (a deliberate difference from 2.3.19.1).
    assert!(rec.state.is_some(), "{rec:?}");
    // Stock doveadm against homing's socket (default path in A's base_dir),
    // and homing's own client: both show the failed user.
    let (overview, code) = a.doveadm(&["replicator", "status"]);
    let (users_table, code2) = a.doveadm(&["replicator", "status", "*"]);
    let records_then = a.daemon().records();
    assert_eq!((code, code2), (0, 0), "{overview}{users_table}");
    assert!(
        failed.at.elapsed() < Duration::from_secs(RETRY_SECS),
        "the retry may have run meanwhile"
    );
    assert_eq!(
        count(&overview, "Waiting 'failed' requests"),
        Some(1),
        "{overview}"
    );
    let alice_row = users_table
        .lines()
        .find(|l| l.starts_with("alice "))
        .expect("alice row");
    assert!(alice_row.trim_end().ends_with(" y"), "{users_table}");
    let (hs, hcode) = homing_status(&a.sock(), Some("alice"));
    assert_eq!(hcode, 0);
    assert!(
        hs.lines().nth(1).unwrap_or("").trim_end().ends_with(" y"),
        "{hs}"
    );
    let (ho, _) = homing_status(&a.sock(), None);
    assert_eq!(ho, overview, "homing and doveadm print the same bytes");

    // More changes while B is down; the retry (after RETRY_SECS) fails again.
    a.save("alice", "Work", "down2");
    a.user(
        "alice",
        &[
            "flags",
            "add",
            "\\Answered",
            "mailbox",
            "INBOX",
            "header",
            "Subject",
            "a2",
        ],
    );
    let first_fail = failed.at;
    wait_sync(&a, "alice", "retry while B is down", |s| {
        matches!(s.outcome, SyncOutcome::Failed { .. }) && s.at > first_fail
    })
    .await;

    // 7. B back: the next retry succeeds, nothing lost.
    tokio::task::block_in_place(|| b.inst.restart()).expect("B restarts");
    let down_since = Instant::now();
    let (v, _) = converge(&a, &b, "alice", "recovery", |v| {
        has_mail(v, "INBOX", "down1")
            && has_mail(v, "Work", "down2")
            && mail_flags(v, "a2").contains(&"\\Answered".to_string())
    })
    .await;
    eprintln!("recovered {:?} after B came back", down_since.elapsed());
    assert_eq!(v.1.len(), alive + 2, "nothing lost: {v:?}");
    let start = Instant::now();
    while a.record("alice").last_sync_failed {
        assert!(start.elapsed() < PROMPT, "alice still failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle(&a).await;
    let (recovered, _) = a.doveadm(&["replicator", "status"]);
    assert_eq!(
        count(&recovered, "Waiting 'failed' requests"),
        Some(0),
        "{recovered}"
    );

    // 8. Restart of homing-A: replicator.db keeps the state; the next sync
    //    is incremental from it and no start-up full sync runs.
    settle(&b).await;
    let kept = a.record("alice");
    a.daemon.take().unwrap().shutdown().await.unwrap();
    let parsed = db::read(&a.cfg.db_path()).unwrap();
    let on_disk = parsed
        .records
        .iter()
        .find(|r| r.username == "alice")
        .expect("alice in replicator.db")
        .clone();
    assert_eq!(on_disk.state, kept.state);
    assert!(
        on_disk
            .state
            .as_deref()
            .is_some_and(|s| s.starts_with("AQAAA")),
        "{on_disk:?}"
    );
    a.start().await;
    assert_eq!(a.record("alice").state, kept.state, "state after restart");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        a.recorder.seen.lock().unwrap().is_empty(),
        "recently synced users are not synced again at start"
    );
    a.save("alice", "INBOX", "after-restart");
    converge(&a, &b, "alice", "save after restart", |v| {
        has_mail(v, "INBOX", "after-restart")
    })
    .await;
    let first = a.recorder.of("alice").first().cloned().expect("a sync");
    assert!(!first.request.full, "{:?}", first.request);
    assert_eq!(
        first.request.state, kept.state,
        "incremental from the kept state"
    );
    assert!(matches!(first.outcome, SyncOutcome::Ok { .. }), "{first:?}");

    // 9. The failed-queue status from step 6, printed by a real Dovecot
    //    replicator that loads the same records: same bytes (times masked).
    let c = tokio::task::block_in_place(|| {
        DovecotInstance::start(
            InstanceOptions::new().users(&USERS).extra_conf(
                "replication_max_conns = 0\n\
                 service replicator {\n  unix_listener replicator-doveadm {\n    mode = 0600\n  }\n}\n",
            ),
        )
    })
    .expect("Dovecot with its replicator");
    db::write(&c.root().join("state/replicator.db"), &records_then).unwrap();
    let csock = c.run_dir().join("replicator-doveadm");
    let real = |args: &[&str]| -> String {
        let out = tokio::task::block_in_place(|| c.doveadm(args)).unwrap();
        assert!(out.success(), "{}", out.stderr_str());
        out.stdout_str()
    };
    let real_overview = real(&["replicator", "status", "-a", &csock.display().to_string()]);
    let real_users = real(&[
        "replicator",
        "status",
        "-a",
        &csock.display().to_string(),
        "*",
    ]);
    assert_eq!(
        real_overview,
        overview,
        "real:\n{real_users}\nhoming:\n{users_table}\nrecords: {records_then:?}\n{}",
        std::fs::read_to_string(c.root().join("state/replicator.db")).unwrap_or_default()
    );
    assert_eq!(
        sorted_lines(&mask_times(&real_users)),
        sorted_lines(&mask_times(&users_table))
    );

    a.daemon.take().unwrap().shutdown().await.unwrap();
    b.daemon.take().unwrap().shutdown().await.unwrap();
    for (name, side) in [("A", &a), ("B", &b)] {
        let problems: Vec<String> = side
            .inst
            .log_problems()
            .into_iter()
            // The first syncs create B's mailboxes before homing-B runs, so
            // B's dsync-server finds no FIFO to notify then.
            .filter(|l| {
                !(name == "B" && l.contains("replication-notify-fifo) failed: No such file"))
            })
            .collect();
        assert!(problems.is_empty(), "{name}'s Dovecot log: {problems:#?}");
    }
    eprintln!("pair test took {:?}", t0.elapsed());
}
