//! homing's replicator driving syncs on a real Dovecot 2.4 through its
//! doveadm-server socket (`DoveadmServerRunner` with
//! `replication_dsync_destination`, since 2.4 has no `-d`, `-U` or
//! `mail_replica`), fed by the filesystem watcher (2.4 has no replication
//! plugin).
//!
//! Needs a running 2.4 instance from `scripts/dovecot24` (a Debian 13 chroot
//! with users alice and bob); `scripts/check-dovecot24` builds it and runs
//! this test with `HOMING_D24_DIR` set. Without that variable the test says
//! so and passes: building the chroot needs the Debian registry and a few
//! minutes, so the default test run (and CI) does not do it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use homing::replicator::runner::DoveadmServerRunner;
use homing::replicator::{Daemon, Priority, ReplicatorConfig, SystemClock};

fn count_mails(dir: &Path) -> usize {
    let mut n = 0;
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            n += rd.flatten().count();
        }
    }
    n
}

fn doveadm24(d24: &Path, args: &[&str], input: &[u8]) {
    use std::io::Write;
    let mut child = Command::new(d24.join("bin/doveadm"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    assert!(child.wait().unwrap().success(), "2.4 doveadm {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicator_drives_dovecot24_doveadm_server() {
    let Some(d24) = std::env::var_os("HOMING_D24_DIR").map(PathBuf::from) else {
        eprintln!(
            "SKIPPED replicator_drives_dovecot24_doveadm_server: HOMING_D24_DIR is not set \
             (scripts/check-dovecot24 builds a Dovecot 2.4 chroot and runs this test)"
        );
        return;
    };
    let root = d24.join("root");
    let socket = root.join("run/dovecot/doveadm-server");
    assert!(
        socket.exists(),
        "{} missing: is the 2.4 instance running?",
        socket.display()
    );
    let vmail = root.join("srv/vmail");
    let replica_in = "/srv/vmail/homing-replica";
    let replica = root.join("srv/vmail/homing-replica");
    let _ = std::fs::remove_dir_all(&replica);
    std::fs::create_dir_all(&replica).unwrap();
    let owner = std::fs::metadata(&vmail).unwrap();
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::chown(&replica, Some(owner.uid()), Some(owner.gid())).unwrap();
    // Mail roots exist before the watcher starts.
    for u in ["alice", "bob"] {
        doveadm24(
            &d24,
            &["save", "-u", u],
            b"From: a@example.org\nSubject: before\n\nbody\n",
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ReplicatorConfig::with_dirs(&tmp.path().join("run"), &tmp.path().join("state"));
    std::fs::create_dir_all(&cfg.base_dir).unwrap();
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    cfg.doveadm_server_socket = Some(socket.clone());
    for (k, v) in [
        ("replication_max_conns", "2".to_string()),
        ("userdb_list_command", "printf 'alice\\nbob\\n'".to_string()),
        (
            "watch_mail_location",
            format!("maildir:{}/%u/Maildir", vmail.display()),
        ),
        ("watch_debounce", "200ms".to_string()),
    ] {
        cfg.set(k, &v).unwrap();
    }
    let runner = DoveadmServerRunner::new(socket, "-l 30")
        .with_destination(Some(format!("maildir:{replica_in}/%u")));
    let d = Daemon::start(cfg, Arc::new(runner), Arc::new(SystemClock))
        .await
        .unwrap();
    assert_eq!(d.watch_stats.clone().unwrap().watched_users, 2);

    // The initial full syncs copy each user's message into the replica.
    let start = Instant::now();
    loop {
        let recs = d.records();
        if recs.len() == 2 && recs.iter().all(|r| r.last_successful_sync != 0) {
            for r in &recs {
                assert!(!r.last_sync_failed, "{}", r.username);
                let st = r.state.as_deref().unwrap_or("");
                assert!(st.starts_with("AQAAA"), "{}: state {st:?}", r.username);
            }
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "initial syncs: {recs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let source = |u: &str| count_mails(&vmail.join(u).join("Maildir"));
    for u in ["alice", "bob"] {
        assert!(source(u) >= 1);
        assert_eq!(
            count_mails(&replica.join(u)),
            source(u),
            "{u}: replica complete"
        );
    }
    let bob_before = source("bob");

    // New mail in 2.4: the watcher queues it, the sync copies it.
    doveadm24(
        &d24,
        &["save", "-u", "alice"],
        b"From: a@example.org\nSubject: after\n\nbody\n",
    );
    let start = Instant::now();
    while count_mails(&replica.join("alice")) < source("alice") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "new mail not replicated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alice = d
        .records()
        .into_iter()
        .find(|r| r.username == "alice")
        .unwrap();
    assert!(!alice.last_sync_failed);
    assert_eq!(
        count_mails(&replica.join("bob")),
        bob_before,
        "bob untouched"
    );
    let bob = d
        .records()
        .into_iter()
        .find(|r| r.username == "bob")
        .unwrap();
    assert_eq!(bob.priority, Priority::None);
    d.shutdown().await.unwrap();
}
