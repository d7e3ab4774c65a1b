//! Modseqs of a Maildir written only through homing's storage: every change
//! must get a growing modseq and show up in `changes_since`, or a later
//! incremental sync cannot see it.

use homing::storage::maildir::{MaildirOptions, MaildirStore};
use homing::storage::{flags, Changes, FlagChange, LogChangeKind, MailStore, NewMessage};

fn save(st: &MaildirStore, mailbox: &str, bodies: &[&str]) -> Vec<u32> {
    let mut tx = st.begin(mailbox).unwrap();
    for b in bodies {
        tx.save(NewMessage::default(), &mut b.as_bytes()).unwrap();
    }
    tx.commit().unwrap().saved_uids
}

fn modseqs(st: &MaildirStore, mailbox: &str) -> Vec<(u32, u64)> {
    let mb = st.open_mailbox(mailbox).unwrap();
    mb.messages()
        .map(|m| m.unwrap())
        .map(|m| (m.uid, m.modseq))
        .collect()
}

fn changes(st: &MaildirStore, mailbox: &str, since: u64) -> Vec<LogChangeKind> {
    let mb = st.open_mailbox(mailbox).unwrap();
    match mb.changes_since(since).unwrap() {
        Changes::Since(c) => {
            assert!(c.iter().all(|c| c.modseq > since), "{c:?}");
            c.into_iter().map(|c| c.kind).collect()
        }
        Changes::TooOld => panic!("log does not reach back to {since}"),
    }
}

#[test]
fn changes_written_by_homing_get_growing_modseqs() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("Maildir")).unwrap();
    let st = MaildirStore::open(d.path().join("Maildir"), MaildirOptions::default()).unwrap();
    st.create_mailbox("INBOX", None, None).unwrap();

    let uids = save(
        &st,
        "INBOX",
        &[
            "Subject: a\n\nA\n",
            "Subject: b\n\nB\n",
            "Subject: c\n\nC\n",
        ],
    );
    assert_eq!(uids, vec![1, 2, 3]);
    let st1 = st.open_mailbox("INBOX").unwrap().status();
    assert!(st1.highest_modseq > 1, "{st1:?}");
    let m1 = modseqs(&st, "INBOX");
    assert!(m1.iter().all(|(_, m)| *m > 1 && *m <= st1.highest_modseq));
    let all = changes(&st, "INBOX", 0);
    assert!(
        all.iter()
            .any(|k| matches!(k, LogChangeKind::Append { uids } if uids == &vec![1, 2, 3])),
        "{all:?}"
    );

    // A flag change raises uid 2's modseq and HIGHESTMODSEQ.
    let mut tx = st.begin("INBOX").unwrap();
    tx.update_flags(
        2,
        FlagChange {
            add: flags::SEEN,
            ..Default::default()
        },
    )
    .unwrap();
    tx.commit().unwrap();
    let st2 = st.open_mailbox("INBOX").unwrap().status();
    assert!(st2.highest_modseq > st1.highest_modseq);
    let m2 = modseqs(&st, "INBOX");
    assert_eq!(m2[1], (2, st2.highest_modseq));
    assert_eq!(m2[0], m1[0]);
    assert_eq!(m2[2], m1[2]);
    assert_eq!(
        changes(&st, "INBOX", st1.highest_modseq),
        vec![LogChangeKind::Flags {
            uid1: 2,
            uid2: 2,
            add: flags::SEEN,
            remove: 0
        }]
    );

    // A keyword, an expunge and a new mail, each in its own commit.
    let mut tx = st.begin("INBOX").unwrap();
    tx.update_flags(
        3,
        FlagChange {
            add_keywords: vec!["todo".into()],
            ..Default::default()
        },
    )
    .unwrap();
    tx.commit().unwrap();
    let mut tx = st.begin("INBOX").unwrap();
    tx.expunge(1, None).unwrap();
    tx.commit().unwrap();
    assert_eq!(save(&st, "INBOX", &["Subject: d\n\nD\n"]), vec![4]);
    let st3 = st.open_mailbox("INBOX").unwrap().status();
    assert!(st3.highest_modseq >= st2.highest_modseq + 3, "{st3:?}");
    assert_eq!(st3.uid_next, 5);
    let m3 = modseqs(&st, "INBOX");
    assert_eq!(m3.len(), 3);
    assert_eq!(m3[0], m2[1]);
    assert!(m3[1].1 > st2.highest_modseq && m3[1].0 == 3);
    assert_eq!(m3[2], (4, st3.highest_modseq));
    let later = changes(&st, "INBOX", st2.highest_modseq);
    assert!(later.iter().any(
        |k| matches!(k, LogChangeKind::Keyword { add: true, name, ranges } if name == "todo" && ranges == &vec![(3, 3)])
    ), "{later:?}");
    assert!(
        later
            .iter()
            .any(|k| matches!(k, LogChangeKind::Expunge { uid: 1, .. })),
        "{later:?}"
    );
    assert!(
        later
            .iter()
            .any(|k| matches!(k, LogChangeKind::Append { uids } if uids == &vec![4])),
        "{later:?}"
    );
}

/// A stateless sync proves that a mail missing here was expunged (and is
/// not new on the peer) only by the 128-bit GUID in the expunge record, so
/// the record must carry the mail's GUID (hashed, as Dovecot derives it from
/// a Maildir base name), never zero.
#[test]
fn expunge_records_carry_the_mail_guid() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("Maildir")).unwrap();
    let st = MaildirStore::open(d.path().join("Maildir"), MaildirOptions::default()).unwrap();
    st.create_mailbox("INBOX", None, None).unwrap();
    save(
        &st,
        "INBOX",
        &["Subject: 1\n\none\n", "Subject: 2\n\ntwo\n"],
    );
    let guid = {
        let mb = st.open_mailbox("INBOX").unwrap();
        mb.message(2).unwrap().unwrap().guid
    };
    let since = modseqs(&st, "INBOX").iter().map(|m| m.1).max().unwrap();
    let mut tx = st.begin("INBOX").unwrap();
    tx.expunge(2, None).unwrap();
    tx.commit().unwrap();
    let expunges: Vec<_> = changes(&st, "INBOX", since)
        .into_iter()
        .filter(|c| matches!(c, LogChangeKind::Expunge { .. }))
        .collect();
    assert_eq!(
        expunges,
        [LogChangeKind::Expunge {
            uid: 2,
            guid: Some(index_format::maildir::guid_128_from_string(&guid)),
        }]
    );
}
