//! The filesystem watcher against mail written by real Dovecot: a message
//! saved with `doveadm save` queues a `high` request, a flag change a `low`
//! one, for Maildir, sdbox and mdbox; users beyond the watch limit are found
//! by the periodic scan; a RecordingRunner sees the resulting syncs.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use homing::replicator::db::DbRecord;
use homing::replicator::runner::RecordingRunner;
use homing::replicator::{Daemon, Priority, ReplicatorConfig, SyncOutcome, SystemClock};
use test_support::{dovecot_or_skip, DovecotInstance, InstanceOptions, MailFormat};

const MAIL: &[u8] = b"From: a@example.org\nSubject: watched\n\nbody\n";

/// A passwd-file for homing naming each user's home, and a config with the
/// watcher on the instance's mail location.
fn config(
    dir: &Path,
    inst: &DovecotInstance,
    max_conns: &str,
    extra: &[(&str, &str)],
) -> ReplicatorConfig {
    let mut passwd = String::new();
    for u in inst.users() {
        passwd.push_str(&format!("{u}:x:5000:5000::{}::\n", inst.home(u).display()));
    }
    passwd.push_str("nobody-here:x:5000:5000::/nonexistent::userdb_noreplicate=y\n");
    let pw = dir.join("passwd");
    std::fs::write(&pw, passwd).unwrap();
    let mut c = ReplicatorConfig::with_dirs(&dir.join("run"), &dir.join("state"));
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    c.doveadm_server_socket = None;
    for (k, v) in [
        ("replication_max_conns", max_conns),
        ("userdb_passwd_file", pw.to_str().unwrap()),
        ("watch_mail_location", inst.mail_location()),
        ("watch_debounce", "200ms"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        c.set(k, v).unwrap();
    }
    c
}

fn priority(d: &Daemon, user: &str) -> Priority {
    d.records()
        .into_iter()
        .find(|r: &DbRecord| r.username == user)
        .map(|r| r.priority)
        .unwrap_or(Priority::None)
}

async fn wait_priority(d: &Daemon, user: &str, want: Priority, within: Duration) {
    let start = Instant::now();
    loop {
        let p = priority(d, user);
        if p == want {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{user}: priority {} after {within:?}, expected {}",
            p.name(),
            want.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With `replication_max_conns = 0` nothing syncs, so the requests the
/// watcher queued stay visible as the users' priorities.
async fn priorities_follow_changes(format: MailFormat) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("homing=debug")
        .with_test_writer()
        .try_init();
    let inst = dovecot_or_skip!(InstanceOptions::new()
        .format(format)
        .users(&["alice", "bob"]));
    // Mail roots exist before the watcher starts (Dovecot creates them on
    // first delivery).
    inst.save_message("alice", "INBOX", MAIL).unwrap();
    inst.save_message("bob", "INBOX", MAIL).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &inst, "0", &[]);
    let d = Daemon::start(
        cfg,
        Arc::new(RecordingRunner::new(
            SyncOutcome::Failed {
                reason: "unused".into(),
            },
            Duration::ZERO,
        )),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let stats = d.watch_stats.clone().unwrap();
    assert_eq!(
        (stats.watched_users, stats.scanned_users),
        (2, 0),
        "{format:?}: {stats:?}"
    );
    assert!(d.records().iter().all(|r| r.username != "nobody-here"));

    // Nothing happens: no request.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(priority(&d, "alice"), Priority::None);
    assert_eq!(priority(&d, "bob"), Priority::None);

    // New mail: high.
    inst.save_message("alice", "INBOX", MAIL).unwrap();
    wait_priority(&d, "alice", Priority::High, Duration::from_secs(5)).await;
    assert_eq!(
        priority(&d, "bob"),
        Priority::None,
        "{format:?}: bob untouched"
    );

    // A flag change on existing mail: low.
    inst.doveadm_user(
        "bob",
        &["flags", "add", "\\Seen", "mailbox", "INBOX", "all"],
    )
    .unwrap();
    wait_priority(&d, "bob", Priority::Low, Duration::from_secs(5)).await;
    // ... and it stays low (no new mail was seen).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(priority(&d, "bob"), Priority::Low, "{format:?}");

    // A new mailbox is watched too: mail saved into it is high.
    inst.create_mailboxes("bob", &["Lists"]).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    inst.save_message("bob", "Lists", MAIL).unwrap();
    wait_priority(&d, "bob", Priority::High, Duration::from_secs(5)).await;
    d.shutdown().await.unwrap();
    inst.assert_log_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maildir_changes_become_requests() {
    priorities_follow_changes(MailFormat::Maildir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdbox_changes_become_requests() {
    priorities_follow_changes(MailFormat::Sdbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdbox_changes_become_requests() {
    priorities_follow_changes(MailFormat::Mdbox).await;
}

/// Users beyond `watch_max_watches` are scanned instead, and still get
/// their requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_beyond_the_watch_limit_are_scanned() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&["alice", "bob"]));
    inst.save_message("alice", "INBOX", MAIL).unwrap();
    inst.save_message("bob", "INBOX", MAIL).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // A Maildir INBOX takes 3 watches (the mailbox, cur/, new/).
    let cfg = config(
        tmp.path(),
        &inst,
        "0",
        &[("watch_max_watches", "3"), ("watch_scan_interval", "1")],
    );
    let d = Daemon::start(
        cfg,
        Arc::new(RecordingRunner::new(SyncOutcome::NoUser, Duration::ZERO)),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let stats = d.watch_stats.clone().unwrap();
    assert_eq!(
        (stats.watched_users, stats.scanned_users, stats.watches),
        (1, 1, 3)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        priority(&d, "bob"),
        Priority::None,
        "a scan without changes asks nothing"
    );
    inst.save_message("bob", "INBOX", MAIL).unwrap();
    inst.save_message("alice", "INBOX", MAIL).unwrap();
    wait_priority(&d, "alice", Priority::High, Duration::from_secs(5)).await;
    wait_priority(&d, "bob", Priority::High, Duration::from_secs(5)).await;
    d.shutdown().await.unwrap();
}

/// End to end: the watcher's request makes the scheduler run a (fast) sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_mail_triggers_a_sync() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&["alice", "bob"]));
    inst.save_message("alice", "INBOX", MAIL).unwrap();
    inst.save_message("bob", "INBOX", MAIL).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &inst, "10", &[]);
    let runner = RecordingRunner::new(SyncOutcome::Ok { state: "s1".into() }, Duration::ZERO);
    let d = Daemon::start(cfg, Arc::new(runner.clone()), Arc::new(SystemClock))
        .await
        .unwrap();
    // First the initial full syncs of both users.
    let start = Instant::now();
    while runner.calls().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "initial syncs: {:?}",
            runner.calls()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        runner.calls().len(),
        2,
        "no sync without changes: {:?}",
        runner.calls()
    );
    inst.save_message("bob", "INBOX", MAIL).unwrap();
    while runner.calls().len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no sync after delivery"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = runner.calls();
    assert_eq!(c[2].username, "bob");
    assert!(!c[2].full, "a change is a fast sync");
    assert_eq!(c[2].state.as_deref(), Some("s1"));
    d.shutdown().await.unwrap();
}
