//! Two Maildirs written only by homing, synced both ways by the command line,
//! changed on both sides through the storage, then synced again.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use homing::storage::maildir::{MaildirOptions, MaildirStore};
use homing::storage::{flags, FlagChange, MailStore, NewMessage};

fn store(p: &Path) -> MaildirStore {
    std::fs::create_dir_all(p).unwrap();
    MaildirStore::open(p, MaildirOptions::default()).unwrap()
}

fn sync(a: &Path, b: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_homing"))
        .env("USER", "homing-test")
        .arg("-o")
        .arg(format!("mail_location=maildir:{}", a.display()))
        .args(std::env::var("SYNC_DEBUG").ok().map(|_| "-D"))
        .arg("sync")
        .arg(format!("maildir:{}", b.display()))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

type State = BTreeMap<String, BTreeMap<u32, (String, u8, Vec<String>)>>;

fn state(st: &MaildirStore) -> State {
    let mut out = State::new();
    for e in st.list_mailboxes().unwrap() {
        let mb = st.open_mailbox(&e.name).unwrap();
        let msgs = mb
            .messages()
            .map(|m| m.unwrap())
            .map(|m| {
                let mut k = m.keywords.clone();
                k.sort();
                (m.uid, (m.guid, m.flags & flags::IMAP_MASK, k))
            })
            .collect();
        out.insert(e.name, msgs);
    }
    out
}

fn save(st: &MaildirStore, mailbox: &str, body: &str) -> u32 {
    let mut tx = st.begin(mailbox).unwrap();
    tx.save(NewMessage::default(), &mut body.as_bytes())
        .unwrap();
    tx.commit().unwrap().saved_uids[0]
}

#[test]
fn homing_maildirs_sync_two_way_after_both_changed() {
    let d = tempfile::tempdir().unwrap();
    let (pa, pb) = (d.path().join("a"), d.path().join("b"));
    let (a, b) = (store(&pa), store(&pb));
    a.create_mailbox("INBOX", None, None).unwrap();
    for i in 1..=4 {
        save(&a, "INBOX", &format!("Subject: a{i}\n\nbody {i}\n"));
    }
    let (code, err) = sync(&pa, &pb);
    assert_eq!(code, 0, "{err}");
    assert_eq!(state(&a), state(&b));

    // Both sides change: new mail on each, flags on A, an expunge on B.
    save(&a, "INBOX", "Subject: new on a\n\nA\n");
    save(&b, "INBOX", "Subject: new on b\n\nB\n");
    let mut tx = a.begin("INBOX").unwrap();
    tx.update_flags(
        1,
        FlagChange {
            add: flags::SEEN | flags::FLAGGED,
            add_keywords: vec!["todo".into()],
            ..Default::default()
        },
    )
    .unwrap();
    tx.commit().unwrap();
    let mut tx = b.begin("INBOX").unwrap();
    tx.expunge(2, None).unwrap();
    tx.commit().unwrap();

    let (code, err) = sync(&pa, &pb);
    assert_eq!(code, 0, "{err}");
    let (sa, sb) = (state(&a), state(&b));
    assert_eq!(sa, sb);
    let inbox = &sa["INBOX"];
    assert!(!inbox.contains_key(&2), "{inbox:?}");
    assert_eq!(inbox[&1].1, flags::SEEN | flags::FLAGGED);
    assert_eq!(inbox[&1].2, vec!["todo".to_string()]);
    assert_eq!(inbox.len(), 5, "{inbox:?}");
    // A third sync has nothing left to do and changes nothing.
    let (code, err) = sync(&pa, &pb);
    assert_eq!(code, 0, "{err}");
    assert_eq!(state(&a), sa);
    assert_eq!(state(&b), sb);
}
