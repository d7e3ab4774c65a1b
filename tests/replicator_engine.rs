//! homing's replicator running syncs with homing's own engine
//! (`replication_engine = homing`): the local Maildir (of a private Dovecot,
//! so Dovecot can read it back) is replicated to a real Dovecot peer over
//! `tcp:` (doveadm-server), first in full, then incrementally from the saved
//! state after a local change requested with `replicate`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use homing::replicator::client::{self, ClientCommand};
use homing::replicator::db::DbRecord;
use homing::replicator::engine_runner::{EngineRunner, EngineSettings};
use homing::replicator::{Daemon, ReplicatorConfig, SystemClock};
use test_support::{dovecot_or_skip, DovecotInstance, InstanceOptions, MailFormat, MailRow};

const USER: &str = "alice";

fn message(id: &str) -> Vec<u8> {
    format!("From: a@example.org\r\nMessage-ID: <{id}@example.org>\r\nSubject: {id}\r\n\r\nbody of {id}\r\n")
        .into_bytes()
}

/// Mailboxes (name, GUID, UIDVALIDITY) and mails (mailbox, UID, GUID, flags).
fn view(inst: &DovecotInstance) -> (Vec<(String, String, u32)>, Vec<MailRow>) {
    let snap = inst.snapshot(USER).expect("snapshot");
    (snap.mailbox_rows(), snap.mail_rows())
}

fn record(d: &Daemon) -> Option<DbRecord> {
    d.records().into_iter().find(|r| r.username == USER)
}

/// Waits until alice's record shows a successful sync newer than `after`.
async fn wait_synced(d: &Daemon, after: u64) -> DbRecord {
    let start = Instant::now();
    loop {
        if let Some(r) = record(d) {
            assert!(!r.last_sync_failed, "sync failed: {r:?}");
            if r.last_successful_sync > after {
                return r;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no successful sync: {:?}",
            record(d)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_runner_replicates_local_maildir_to_dovecot_peer() {
    let local = dovecot_or_skip!(InstanceOptions::new()
        .format(MailFormat::Maildir)
        .users(&[USER]));
    let peer = dovecot_or_skip!(InstanceOptions::new().users(&[USER]).doveadm_tcp(true));
    local
        .create_mailboxes(USER, &["Work"])
        .expect("create mailboxes");
    local.save_message(USER, "INBOX", &message("m1")).unwrap();
    local.save_message(USER, "INBOX", &message("m2")).unwrap();
    local.save_message(USER, "Work", &message("w1")).unwrap();
    local
        .doveadm_user(
            USER,
            &["flags", "add", "\\Seen", "mailbox", "INBOX", "uid", "1"],
        )
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ReplicatorConfig::with_dirs(&tmp.path().join("run"), &tmp.path().join("state"));
    std::fs::create_dir_all(&cfg.base_dir).unwrap();
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    cfg.doveadm_server_socket = None;
    // The userdb gives the home the location's %h expands to.
    let passwd = tmp.path().join("passwd");
    std::fs::write(
        &passwd,
        format!("{USER}:x:5000:5000::{}::\n", local.home(USER).display()),
    )
    .unwrap();
    cfg.userdb_passwd_file = Some(passwd);
    for (k, v) in [
        ("replication_max_conns", "1".to_string()),
        ("replication_engine", "homing".to_string()),
        // %h comes from the passwd-file's home field.
        (
            "replication_mail_location",
            "maildir:%h/Maildir".to_string(),
        ),
        ("replication_dsync_destination", peer.tcp_destination()),
        ("doveadm_password", peer.doveadm_password().to_string()),
    ] {
        cfg.set(k, &v).unwrap();
    }
    let runner = EngineRunner::new(EngineSettings::from_config(&cfg));
    let sock = cfg.doveadm_socket.clone();
    let d = Daemon::start(cfg, Arc::new(runner), Arc::new(SystemClock))
        .await
        .unwrap();

    // The daemon's first full sync of a new user copies everything.
    let replicate = |full: bool| ClientCommand::Replicate {
        priority: "high".into(),
        full,
        mask: USER.into(),
    };
    let out = client::run(&sock, &replicate(true), None, 80).await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    wait_synced(&d, 0).await;
    // Let a start-up sync and the requested one both finish.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let first = record(&d).unwrap();
    let state = first.state.clone().unwrap_or_default();
    assert!(
        !state.is_empty(),
        "no state after the first sync: {first:?}"
    );
    let (lb, lm) = tokio::task::block_in_place(|| view(&local));
    let (pb, pm) = tokio::task::block_in_place(|| view(&peer));
    assert_eq!(lb, pb, "mailboxes replicated");
    assert_eq!(lm, pm, "mails replicated");
    assert_eq!(pm.len(), 3, "{pm:?}");

    // A local change, then an incremental (state-based) replication.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    local.save_message(USER, "Work", &message("w2")).unwrap();
    local
        .doveadm_user(
            USER,
            &["flags", "add", "\\Flagged", "mailbox", "INBOX", "uid", "2"],
        )
        .unwrap();
    let out = client::run(&sock, &replicate(false), None, 80).await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let second = wait_synced(&d, first.last_successful_sync).await;
    assert_eq!(
        second.last_full_sync, first.last_full_sync,
        "the second sync was not a full one: {second:?}"
    );
    assert_ne!(second.state, first.state, "state advanced");
    let (lb, lm) = tokio::task::block_in_place(|| view(&local));
    let (pb, pm) = tokio::task::block_in_place(|| view(&peer));
    assert_eq!(lb, pb);
    assert_eq!(lm, pm, "incremental change replicated");
    assert_eq!(pm.len(), 4, "{pm:?}");
    assert!(
        pm.iter()
            .any(|m| m.0 == "INBOX" && m.1 == 2 && m.3.contains(&"\\Flagged".to_string())),
        "{pm:?}"
    );
    d.shutdown().await.unwrap();
    let log = peer.log();
    assert!(!log.contains("Error"), "peer log has errors:\n{log}");
}
