//! The Maildir storage on a copy of the real Maildir fixture (written by
//! Dovecot 2.3.19.1; see `fixtures/index/maildir/Maildir/*.dump.txt`).

use std::path::Path;

use homing::storage::maildir::{MaildirOptions, MaildirStore};
use homing::storage::{flags, MailStore, MailboxLogKind, NewMessage};
use index_format::mailbox_log::mailbox_name_hash;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).unwrap();
        }
    }
}

fn fixture() -> (tempfile::TempDir, MaildirStore) {
    let d = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/index/maildir/Maildir");
    copy_dir(&src, &d.path().join("Maildir"));
    let st = MaildirStore::open(d.path().join("Maildir"), MaildirOptions::default()).unwrap();
    (d, st)
}

#[test]
fn tree_subscriptions_and_mailbox_log() {
    let (_d, st) = fixture();
    let list = st.list_mailboxes().unwrap();
    let names: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec!["INBOX", "Work", "Work/Reports"]);
    assert_eq!(
        index_format::hex(&list[0].guid.unwrap()),
        "19f21e0927110b6bce42000083ecc375"
    );
    assert_eq!(list[0].uid_validity, 1795887401);
    assert!(list.iter().all(|e| e.subscribed));
    assert_eq!(
        st.subscriptions().unwrap(),
        vec!["INBOX", "Work", "Work/Reports"]
    );

    // Subscription records carry SHA-1 name hashes of the names with '/'.
    let log = st.mailbox_log().unwrap();
    assert_eq!(log.len(), 5);
    let sub_ids: Vec<[u8; 16]> = log
        .iter()
        .filter(|e| e.kind == MailboxLogKind::Subscribe)
        .map(|e| e.id)
        .collect();
    for name in ["INBOX", "Work", "Work/Reports"] {
        assert!(
            sub_ids.contains(&mailbox_name_hash(name.as_bytes())),
            "{name}"
        );
    }
    assert_eq!(log[3].kind, MailboxLogKind::DeleteMailbox);
    assert_eq!(
        index_format::hex(&log[3].id),
        "38b33e1227110b6bf542000083ecc375"
    );
}

#[test]
fn inbox_messages_from_names_uidlist_and_index() {
    let (_d, st) = fixture();
    let mb = st.open_mailbox("INBOX").unwrap();
    let msgs: Vec<_> = mb.messages().map(|m| m.unwrap()).collect();
    // uid 4 is still listed in the uidlist but its file is gone (expunged).
    let uids: Vec<u32> = msgs.iter().map(|m| m.uid).collect();
    assert_eq!(uids, vec![1, 2, 3]);
    assert_eq!(msgs[0].flags, flags::DRAFT | flags::ANSWERED | flags::SEEN);
    assert_eq!(msgs[0].keywords, vec!["project-x"]);
    assert_eq!(msgs[0].guid, "1795887399.M162685P17102.vm,S=160,W=167");
    assert_eq!(msgs[0].physical_size, Some(160));
    assert_eq!(msgs[0].virtual_size, Some(167));
    assert_eq!(msgs[1].keywords, vec!["$Important"]);
    assert_eq!(msgs[2].flags, flags::FLAGGED | flags::SEEN);
    let s = mb.status();
    assert_eq!(s.messages, 3);
    assert_eq!(s.uid_next, 5);
    assert_eq!(s.uid_validity, 1795887401);
    assert!(s.highest_modseq >= msgs.iter().map(|m| m.modseq).max().unwrap());
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut mb.open_body(3).unwrap(), &mut body).unwrap();
    assert_eq!(body.len(), 344);
    assert!(mb.open_body(4).is_err());
}

#[test]
fn save_refuses_uid_below_uidnext_and_leaves_nothing() {
    let (d, st) = fixture();
    let mut tx = st.begin("INBOX").unwrap();
    tx.save(
        NewMessage {
            uid: Some(3),
            ..Default::default()
        },
        &mut &b"Subject: x\n\nbody\n"[..],
    )
    .unwrap();
    let err = tx.commit().unwrap_err();
    assert!(
        matches!(
            err,
            homing::storage::StorageError::UidTooLow {
                uid: 3,
                next_uid: 5
            }
        ),
        "{err}"
    );
    let tmp = d.path().join("Maildir/tmp");
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != ".keep")
        .collect();
    assert!(left.is_empty(), "temporary file removed: {left:?}");
    assert!(!d.path().join("Maildir/dovecot-uidlist.lock").exists());
}

#[test]
fn bad_names_are_refused() {
    let (_d, st) = fixture();
    for bad in ["", "a//b", "../x", "a.b", "x/\u{1}"] {
        assert!(st.create_mailbox(bad, None, None).is_err(), "{bad:?}");
    }
}

/// In Maildir++ a parent such as `Archive` of `Archive/Lists` has no
/// directory: Dovecot opens any `.Name` directory as a selectable mailbox.
/// Creating it as a directory when it has children must therefore leave the
/// disk alone (Dovecot answers "exists"), and it stays unlisted.
#[test]
fn maildirpp_parent_of_a_mailbox_gets_no_directory() {
    let (d, st) = fixture();
    st.create_mailbox("Archive/Lists", None, None).unwrap();
    st.create_dir("Archive").unwrap();
    let root = d.path().join("Maildir");
    assert!(root.join(".Archive.Lists").is_dir());
    assert!(!root.join(".Archive").exists());
    let names: Vec<String> = st
        .list_mailboxes()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.contains(&"Archive/Lists".to_string()), "{names:?}");
    assert!(!names.contains(&"Archive".to_string()), "{names:?}");
}
