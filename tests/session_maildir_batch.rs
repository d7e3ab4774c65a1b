//! The receiving Maildir side commits a long run of incoming mails in
//! bounded chunks (so its memory does not grow with the mailbox), always in
//! ascending UID order, and loses nothing, also when a UID conflict makes
//! the engine save renumbered mails out of order.

use std::collections::BTreeSet;

use homing::session::maildir_store::MaildirReplica;
use homing::session::{run_local_pair, SessionOptions};
use homing::storage::maildir::MaildirStore;
use homing::storage::{flags, FlagChange, MailStore};
use sync_engine::SyncSettings;

mod common;
use common::{inbox_contents, inbox_store};

const MAILBOX_GUID: [u8; 16] = *b"batched-mailbox!";
const UID_VALIDITY: u32 = 1_700_000_000;

fn body_of(guid: &str) -> String {
    // Some bodies above the session's in-memory spool limit (256 KiB), so
    // spooled files are committed in chunks too.
    let pad = if guid.ends_with('7') { 300 * 1024 } else { 40 };
    format!(
        "Subject: {guid}\r\nMessage-ID: <{guid}@test>\r\n\r\nbody of {guid}\r\n{}\r\n",
        "x".repeat(pad)
    )
}

fn store(dir: &std::path::Path, mails: &[(u32, String)]) -> MaildirStore {
    inbox_store(dir, MAILBOX_GUID, UID_VALIDITY, mails, body_of)
}

fn mails(prefix: &str, uids: std::ops::RangeInclusive<u32>) -> Vec<(u32, String)> {
    uids.map(|u| (u, format!("{prefix}-{u}"))).collect()
}

/// Both sides' results of a local pair (master first).
type PairResults = (
    homing::session::SessionResult<MaildirReplica>,
    homing::session::SessionResult<MaildirReplica>,
);

/// A two-way sync of `a` into `b`, `b` committing its saves in batches of
/// `batch`.
async fn sync_into(a: MaildirStore, b: MaildirStore, batch: usize) -> PairResults {
    let mut rb = MaildirReplica::new(b);
    rb.set_batch_limit(batch);
    pair(MaildirReplica::new(a), rb, SyncSettings::default()).await
}

/// A sync of `a` (master) with `b` with these settings.
async fn pair(a: MaildirReplica, b: MaildirReplica, settings: SyncSettings) -> PairResults {
    run_local_pair(a, b, "h", settings, &SessionOptions::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_into_an_empty_maildir_commits_in_chunks() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = store(da.path(), &mails("src", 1..=300));
    let (ra, rb) = sync_into(a, store(db.path(), &[]), 16).await;
    assert_eq!(ra.outcome.status.code(), 0, "{:?}", ra.outcome.messages);
    assert_eq!(rb.outcome.status.code(), 0, "{:?}", rb.outcome.messages);
    assert!(ra.error.is_none() && rb.error.is_none());
    let commits = rb.store.save_commits();
    assert!(
        commits >= 300 / 16,
        "300 saves with a batch limit of 16 were committed in {commits} commits"
    );
    let (ca, cb) = (
        inbox_contents(ra.store.store()),
        inbox_contents(rb.store.store()),
    );
    assert_eq!(ca.len(), 300);
    assert_eq!(ca, cb, "the replica must hold every mail under its uid");
    let st = rb.store.store().open_mailbox("INBOX").unwrap().status();
    assert_eq!(st.uid_next, 301);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_commits_survive_renumbered_saves() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // UIDs 1..=6 hold different mails on each side: both sides renumber
    // those above every other UID while the other mails arrive in order.
    let mut on_a = mails("shared", 1..=120);
    for (uid, g) in on_a.iter_mut().take(6) {
        *g = format!("only-a-{uid}");
    }
    let mut on_b = mails("shared", 1..=8);
    for (uid, g) in on_b.iter_mut().take(6) {
        *g = format!("only-b-{uid}");
    }
    let a = store(da.path(), &on_a);
    let b = store(db.path(), &on_b);
    let (mut ra, mut rb) = (MaildirReplica::new(a), MaildirReplica::new(b));
    ra.set_batch_limit(4);
    rb.set_batch_limit(4);
    let (ra, rb) = pair(ra, rb, SyncSettings::default()).await;
    assert!(
        ra.error.is_none() && rb.error.is_none(),
        "{:?} {:?}",
        ra.error,
        rb.error
    );
    assert_eq!(ra.outcome.status.code(), 0, "{:?}", ra.outcome.messages);
    assert_eq!(rb.outcome.status.code(), 0, "{:?}", rb.outcome.messages);
    assert!(rb.store.save_commits() > 4, "no early commit was made");

    let mut want: BTreeSet<String> = on_a.iter().map(|(_, g)| g.clone()).collect();
    want.extend(on_b.iter().map(|(_, g)| g.clone()));
    for (side, st) in [("a", ra.store.store()), ("b", rb.store.store())] {
        let c = inbox_contents(st);
        let have: BTreeSet<String> = c.values().map(|(g, _)| g.clone()).collect();
        assert_eq!(have, want, "side {side} lost or gained a mail");
        assert_eq!(c.len(), want.len(), "side {side} holds a mail twice");
        for (guid, body) in c.values() {
            assert_eq!(*body, body_of(guid), "side {side}: {guid} has another body");
        }
        // Mails that were never in conflict keep their UIDs.
        for u in 9..=120u32 {
            assert_eq!(c[&u].0, format!("shared-{u}"), "side {side} uid {u}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_waiting_for_the_store_go_to_one_spill_file() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = store(da.path(), &mails("src", 1..=60));
    let b = store(db.path(), &[]);
    let mut rb = MaildirReplica::new(b);
    rb.set_batch_limit(8);
    // No backlog allowed in memory: every body is spilled.
    let opts = SessionOptions {
        spool_backlog: 0,
        ..SessionOptions::default()
    };
    let (ra, rb) = run_local_pair(
        MaildirReplica::new(a),
        rb,
        "h",
        SyncSettings::default(),
        &opts,
    )
    .await;
    assert_eq!(rb.outcome.status.code(), 0, "{:?}", rb.outcome.messages);
    assert!(ra.error.is_none() && rb.error.is_none());
    assert_eq!(rb.stats.bodies_received, 60);
    assert_eq!(
        rb.stats.bodies_spooled, 60,
        "every body goes to the spill file"
    );
    assert_eq!(
        inbox_contents(ra.store.store()),
        inbox_contents(rb.store.store())
    );
}

/// A backup onto a replica with many mails the source does not have
/// expunges them in one commit, not one commit per mail (each commit of a
/// Maildir reads its uidlist and lists it: per mail, that is quadratic in
/// the mailbox). The same holds for many renumbered mails of a conflict:
/// their source mail is read from one opened mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_expunges_and_moves_are_committed_together() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Both had the same 250 mails; the source expunged 200 of them.
    let all = mails("shared", 1..=250);
    let a = store(da.path(), &all);
    let mut t = a.begin("INBOX").unwrap();
    for uid in 51..=250 {
        t.expunge(uid, None).unwrap();
    }
    t.commit().unwrap();
    let b = store(db.path(), &all);
    let backup = SyncSettings {
        backup_send: true,
        sync_type: dsync_protocol::SyncType::Full,
        ..SyncSettings::default()
    };
    let (ra, rb) = pair(
        MaildirReplica::new(a),
        MaildirReplica::new(b),
        backup.clone(),
    )
    .await;
    assert_eq!(rb.outcome.status.code(), 0, "{:?}", rb.outcome.messages);
    let uids = |st: &MaildirStore| inbox_contents(st).into_keys().collect::<Vec<_>>();
    assert_eq!(uids(ra.store.store()), (1..=50).collect::<Vec<_>>());
    assert_eq!(uids(rb.store.store()), uids(ra.store.store()));
    assert_eq!(rb.store.change_commits(), 1, "200 expunges, one commit");

    // The destination flagged its 50 mails: the next backup reverts them,
    // in one commit too.
    let b = homing::storage::maildir::MaildirStore::open(
        db.path(),
        homing::storage::maildir::MaildirOptions::default(),
    )
    .unwrap();
    drop(rb);
    let mut t = b.begin("INBOX").unwrap();
    for uid in 1..=50 {
        t.update_flags(
            uid,
            FlagChange {
                add: flags::FLAGGED,
                ..FlagChange::default()
            },
        )
        .unwrap();
    }
    t.commit().unwrap();
    let flagged = |st: &MaildirStore| {
        let mb = st.open_mailbox("INBOX").unwrap();
        mb.messages()
            .filter(|m| m.as_ref().unwrap().flags & flags::FLAGGED != 0)
            .count()
    };
    assert_eq!(flagged(&b), 50);
    let (_, rb) = pair(ra.store, MaildirReplica::new(b), backup.clone()).await;
    assert_eq!(rb.outcome.status.code(), 0, "{:?}", rb.outcome.messages);
    assert_eq!(flagged(rb.store.store()), 0);
    assert_eq!(
        rb.store.change_commits(),
        1,
        "50 flag replacements, one commit"
    );

    // Both sides hold 100 different mails at UIDs 1..=100: each side keeps
    // its own and takes the other's, all renumbered.
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let on_a = mails("only-a", 1..=100);
    let on_b = mails("only-b", 1..=100);
    // Full: their six status numbers are equal, which a default run takes
    // for "unchanged".
    let full = SyncSettings {
        sync_type: dsync_protocol::SyncType::Full,
        ..SyncSettings::default()
    };
    let (ra, rb) = pair(
        MaildirReplica::new(store(da.path(), &on_a)),
        MaildirReplica::new(store(db.path(), &on_b)),
        full,
    )
    .await;
    assert_eq!(ra.outcome.status.code(), 0, "{:?}", ra.outcome.messages);
    let (ca, cb) = (
        inbox_contents(ra.store.store()),
        inbox_contents(rb.store.store()),
    );
    assert_eq!(ca.len(), 200, "no mail lost in the conflict");
    assert_eq!(ca, cb);
}

/// The same mail (one GUID) more than once in the peer's mailbox: the
/// receiver saves the first instance and copies it for the others, all in
/// one batch of saves. The copies read the body the batch's save reads (the
/// mail is not in the mailbox before the commit); they once made the whole
/// batch's commit fail, every mail of it missing, with exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_mail_saved_in_the_same_batch_are_committed_with_it() {
    for batch in [4096, 16, 1] {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut on_a = mails("src", 1..=40);
        // Two further instances of mail 10 (and one of the large mail 27),
        // and the last ones twice, as a re-import of the same mails makes.
        for (uid, of) in [(30, 10), (35, 10), (36, 27), (40, 39)] {
            on_a[uid as usize - 1].1 = format!("src-{of}");
        }
        let a = store(da.path(), &on_a);
        let (ra, rb) = sync_into(a, store(db.path(), &[]), batch).await;
        assert_eq!(ra.exit_code(), 0, "{:?}", ra.outcome.messages);
        assert_eq!(rb.exit_code(), 0, "{:?}", rb.outcome.messages);
        assert!(ra.error.is_none() && rb.error.is_none(), "{:?}", rb.error);
        let (ca, cb) = (
            inbox_contents(ra.store.store()),
            inbox_contents(rb.store.store()),
        );
        assert_eq!(ca.len(), 40);
        assert_eq!(ca, cb, "batch limit {batch}: every mail under its uid");
    }
}
