//! A UID conflict between two Maildir replicas: both saved different mails
//! under the same UIDs, so each side renumbers its own and the peer asks for
//! bodies while the renumbered saves are still being applied. Nothing may be
//! lost and both sides must end with the same UIDs.

use std::collections::BTreeMap;
use std::io::Read;

use homing::session::maildir_store::MaildirReplica;
use homing::session::{run_local_pair, SessionOptions};
use homing::storage::maildir::{MaildirOptions, MaildirStore};
use homing::storage::{MailStore, NewMessage};
use sync_engine::SyncSettings;

const MAILBOX_GUID: [u8; 16] = *b"conflict-mailbox";
const UID_VALIDITY: u32 = 1_700_000_000;

fn store(dir: &std::path::Path, mails: &[(u32, &str)]) -> MaildirStore {
    let st = MaildirStore::open(dir, MaildirOptions::default()).unwrap();
    st.create_mailbox("INBOX", Some(MAILBOX_GUID), Some(UID_VALIDITY))
        .unwrap();
    let mut t = st.begin("INBOX").unwrap();
    for (uid, guid) in mails {
        let body =
            format!("Subject: {guid}\r\nMessage-ID: <{guid}@test>\r\n\r\nbody of {guid}\r\n");
        t.save(
            NewMessage {
                uid: Some(*uid),
                guid: Some((*guid).to_string()),
                flags: 0,
                keywords: Vec::new(),
                received: Some(1_700_000_000 + i64::from(*uid)),
                saved: Some(1_700_000_000 + i64::from(*uid)),
                pop3_uidl: None,
                pop3_order: None,
            },
            &mut body.as_bytes(),
        )
        .unwrap();
    }
    t.commit().unwrap();
    st
}

/// uid -> (guid, body) of the INBOX.
fn contents(st: &MaildirStore) -> BTreeMap<u32, (String, String)> {
    let mb = st.open_mailbox("INBOX").unwrap();
    let mut out = BTreeMap::new();
    for m in mb.messages() {
        let m = m.unwrap();
        let mut body = String::new();
        mb.open_body(m.uid)
            .unwrap()
            .read_to_string(&mut body)
            .unwrap();
        out.insert(m.uid, (m.guid, body));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uid_conflict_between_two_maildirs_keeps_every_mail() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Same first two mails; uid 3 (and 4 on one side) differ.
    let a = store(
        da.path(),
        &[(1, "shared-1"), (2, "shared-2"), (3, "only-a-3")],
    );
    let b = store(
        db.path(),
        &[
            (1, "shared-1"),
            (2, "shared-2"),
            (3, "only-b-3"),
            (4, "only-b-4"),
        ],
    );
    let (ra, rb) = run_local_pair(
        MaildirReplica::new(a),
        MaildirReplica::new(b),
        "h",
        SyncSettings::default(),
        &SessionOptions::default(),
    )
    .await;
    assert_eq!(
        ra.outcome.status.code(),
        0,
        "master: {:?}",
        ra.outcome.messages
    );
    assert_eq!(
        rb.outcome.status.code(),
        0,
        "slave: {:?}",
        rb.outcome.messages
    );
    assert!(
        ra.error.is_none() && rb.error.is_none(),
        "{:?} {:?}",
        ra.error,
        rb.error
    );

    let (ca, cb) = (contents(ra.store.store()), contents(rb.store.store()));
    assert_eq!(
        ca, cb,
        "both replicas must hold the same mails under the same uids"
    );
    let mut guids: Vec<&str> = ca.values().map(|(g, _)| g.as_str()).collect();
    guids.sort_unstable();
    assert_eq!(
        guids,
        ["only-a-3", "only-b-3", "only-b-4", "shared-1", "shared-2"],
        "a mail was lost or duplicated: {ca:?}"
    );
    for (guid, body) in ca.values() {
        assert!(
            body.contains(&format!("body of {guid}")),
            "{guid} has another body: {body}"
        );
    }
    assert_eq!(ca[&1].0, "shared-1");
    assert_eq!(ca[&2].0, "shared-2");
}
