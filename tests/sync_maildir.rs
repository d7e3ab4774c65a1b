//! Two Maildirs written only by homing, synced both ways by the command line,
//! changed on both sides through the storage, then synced again.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// Creates INBOX in `st` with `n` mails, subjects `{prefix}1`..`{prefix}n`.
fn inbox_with(st: &MaildirStore, prefix: &str, n: u32) {
    st.create_mailbox("INBOX", None, None).unwrap();
    for i in 1..=n {
        save(st, "INBOX", &format!("Subject: {prefix}{i}\n\nbody {i}\n"));
    }
}

/// Maildirs `a` and `b` below `dir`, A's INBOX with four mails, after one
/// successful sync.
fn synced_pair(dir: &Path) -> (PathBuf, PathBuf, MaildirStore, MaildirStore) {
    let (pa, pb) = (dir.join("a"), dir.join("b"));
    let (a, b) = (store(&pa), store(&pb));
    inbox_with(&a, "a", 4);
    let (code, err) = sync(&pa, &pb);
    assert_eq!(code, 0, "{err}");
    (pa, pb, a, b)
}

#[test]
fn homing_maildirs_sync_two_way_after_both_changed() {
    let d = tempfile::tempdir().unwrap();
    let (pa, pb, a, b) = synced_pair(d.path());
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

/// Name → (mailbox GUID, UIDVALIDITY, UIDNEXT).
fn tree(st: &MaildirStore) -> BTreeMap<String, ([u8; 16], u32, u32)> {
    st.list_mailboxes()
        .unwrap()
        .into_iter()
        .map(|e| (e.name, (e.guid.unwrap(), e.uid_validity, e.uid_next)))
        .collect()
}

/// Subjects of a mailbox's mails, sorted.
fn subjects(st: &MaildirStore, mailbox: &str) -> Vec<String> {
    let mb = st.open_mailbox(mailbox).unwrap();
    let mut out: Vec<String> = mb
        .messages()
        .map(|m| {
            let mut body = String::new();
            std::io::Read::read_to_string(&mut mb.open_body(m.unwrap().uid).unwrap(), &mut body)
                .unwrap();
            body.lines().next().unwrap_or_default().to_string()
        })
        .collect();
    out.sort();
    out
}

/// INBOX (and another mailbox) created independently on both sides, each
/// with its own mails, before their first sync: the side with the smaller
/// mailbox GUID adopts the larger one, and both end with every mail.
fn same_name_different_guid(local_guid: u8, remote_guid: u8) {
    let d = tempfile::tempdir().unwrap();
    let (pa, pb) = (d.path().join("a"), d.path().join("b"));
    let (a, b) = (store(&pa), store(&pb));
    a.create_mailbox("INBOX", Some([local_guid; 16]), Some(1000))
        .unwrap();
    b.create_mailbox("INBOX", Some([remote_guid; 16]), Some(2000))
        .unwrap();
    // Distinct UIDVALIDITYs: mailboxes whose six status numbers agree are
    // skipped by the default (CHANGED) sync, as by Dovecot's.
    a.create_mailbox("Work", Some([local_guid ^ 0x0f; 16]), Some(3000))
        .unwrap();
    b.create_mailbox("Work", Some([remote_guid ^ 0x0f; 16]), Some(4000))
        .unwrap();
    for i in 1..=3 {
        save(&a, "INBOX", &format!("Subject: a{i}\n\nbody a{i}\n"));
    }
    for i in 1..=2 {
        save(&b, "INBOX", &format!("Subject: b{i}\n\nbody b{i}\n"));
    }
    save(&a, "Work", "Subject: work a\n\nA\n");
    save(&b, "Work", "Subject: work b\n\nB\n");

    let (code, err) = sync(&pa, &pb);
    assert_eq!(code, 0, "{err}");
    let (ta, tb) = (tree(&a), tree(&b));
    assert_eq!(ta, tb);
    assert_eq!(ta["INBOX"].0, [local_guid.max(remote_guid); 16]);
    assert_eq!(
        ta["Work"].0,
        [(local_guid ^ 0x0f).max(remote_guid ^ 0x0f); 16]
    );
    let (sa, sb) = (state(&a), state(&b));
    assert_eq!(sa, sb);
    let want: Vec<String> = ["a1", "a2", "a3", "b1", "b2"]
        .iter()
        .map(|s| format!("Subject: {s}"))
        .collect();
    assert_eq!(subjects(&a, "INBOX"), want);
    assert_eq!(subjects(&b, "INBOX"), want);
    assert_eq!(subjects(&a, "Work"), ["Subject: work a", "Subject: work b"]);

    // A second sync has nothing left to do.
    let (code, err) = sync(&pa, &pb);
    assert_eq!(code, 0, "{err}");
    assert_eq!((tree(&a), tree(&b)), (ta, tb));
    assert_eq!((state(&a), state(&b)), (sa, sb));
}

#[test]
fn same_name_different_guid_local_adopts() {
    same_name_different_guid(0x11, 0xee);
}

#[test]
fn same_name_different_guid_remote_adopts() {
    same_name_different_guid(0xee, 0x11);
}

/// `sync -s STATE` between two local Maildirs: (exit code, printed state,
/// mails saved on the destination side per `--json`).
fn sync_state(a: &Path, b: &Path, state: &str) -> (i32, String, u64) {
    let out = Command::new(env!("CARGO_BIN_EXE_homing"))
        .env("USER", "homing-test")
        .arg("-o")
        .arg(format!("mail_location=maildir:{}", a.display()))
        .args(["sync", "--json", "-s", state])
        .arg(format!("maildir:{}", b.display()))
        .output()
        .unwrap();
    // The state line comes first, then the JSON summary.
    let json_start = out.stdout.iter().position(|&c| c == b'{').unwrap_or(0);
    let j: serde_json::Value =
        serde_json::from_slice(&out.stdout[json_start..]).unwrap_or_else(|e| {
            panic!(
                "{e}: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (
        out.status.code().unwrap_or(-1),
        j["state"].as_str().unwrap_or_default().to_string(),
        j["remote"]["local"]["flag_changes"].as_u64().unwrap_or(0),
    )
}

/// Settles a state chain from `state`: three `sync -s` runs, each run's
/// state feeding the next, each exiting 0. The last state.
fn settle(a: &Path, b: &Path, mut state: String) -> String {
    for _ in 0..3 {
        let (code, next, _) = sync_state(a, b, &state);
        assert_eq!(code, 0);
        state = next;
    }
    state
}

#[test]
fn local_state_chain_names_the_mailboxes_and_turns_incremental() {
    let d = tempfile::tempdir().unwrap();
    // The replicas equal first, so the `-s ""` run below may skip INBOX.
    let (pa, pb, a, b) = synced_pair(d.path());
    let (code, s0, _) = sync_state(&pa, &pb, "");
    assert_eq!(code, 0);
    let st = dsync_protocol::state::SyncState::parse(&s0).unwrap();
    assert_eq!(st.mailboxes.len(), 1, "the state names INBOX: {s0}");
    let s = settle(&pa, &pb, s0);
    let st = dsync_protocol::state::SyncState::parse(&s).unwrap();
    assert_eq!(st.mailboxes[0].last_common_uid, 4, "{st:?}");
    // One flag change on A: synced by the stateful run, which stays
    // incremental (its state still proves UIDs 1..4 common).
    let mut tx = a.begin("INBOX").unwrap();
    tx.update_flags(
        3,
        FlagChange {
            add: flags::FLAGGED,
            ..Default::default()
        },
    )
    .unwrap();
    tx.commit().unwrap();
    let (code, s2, flag_changes) = sync_state(&pa, &pb, &s);
    assert_eq!(code, 0);
    assert_eq!(flag_changes, 1, "only the changed mail is written on B");
    assert_eq!(state(&a), state(&b));
    let st = dsync_protocol::state::SyncState::parse(&s2).unwrap();
    assert_eq!(st.mailboxes.len(), 1);
    assert_eq!(st.mailboxes[0].last_common_uid, 4, "{st:?}");
}

#[test]
fn quick_status_equals_the_listed_status_or_declines() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("a");
    let a = store(&p);
    inbox_with(&a, "q", 3);
    let listed = a.open_mailbox("INBOX").unwrap().status();
    let inbox = p.clone();
    let dir = if inbox.join("new").is_dir() {
        inbox
    } else {
        inbox.join("INBOX")
    };
    // The file system's clock is coarse: a commit may give cur/ and the
    // uidlist the same time stamp, which reads as "maybe changed". Make
    // cur/ and new/ plainly older than the uidlist, as they are a moment
    // after a commit.
    let age_dirs = || {
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for sub in ["cur", "new"] {
            std::fs::File::open(dir.join(sub))
                .unwrap()
                .set_modified(past)
                .unwrap();
        }
    };
    age_dirs();
    // The uidlist was written after the last change of cur/.
    assert_eq!(a.quick_status("INBOX").unwrap(), Some(listed));
    // A delivery waiting in new/: the status needs a listing.
    std::fs::write(dir.join("new/1800000000.M1P1.host"), "Subject: n\n\nx\n").unwrap();
    assert_eq!(a.quick_status("INBOX").unwrap(), None);
    // Opening the mailbox gives the new mail its UID; the quick read
    // agrees again afterwards.
    let listed = a.open_mailbox("INBOX").unwrap().status();
    assert_eq!(listed.messages, 4);
    age_dirs();
    assert_eq!(a.quick_status("INBOX").unwrap(), Some(listed));
    // A rename of a mail file by another program (newer than the uidlist).
    std::thread::sleep(std::time::Duration::from_millis(20));
    common::rename_a_mail_file(&dir);
    assert_eq!(a.quick_status("INBOX").unwrap(), None);
}

/// A destination that fails while saving (its `tmp/` is a file): the run
/// exits 75, prints the saved state unchanged (not one that claims the mails
/// it did not write), and the next run from that state, with the
/// destination mended, brings every mail over and exits 0.
#[test]
fn a_failed_destination_keeps_the_saved_state() {
    let d = tempfile::tempdir().unwrap();
    let (pa, pb, a, b) = synced_pair(d.path());
    let s = settle(&pa, &pb, String::new());
    let saved = dsync_protocol::state::SyncState::parse(&s).unwrap();
    assert_eq!(saved.mailboxes[0].last_common_uid, 4, "{saved:?}");
    for i in 5..=7 {
        save(&a, "INBOX", &format!("Subject: a{i}\n\nbody {i}\n"));
    }
    std::fs::remove_dir(pb.join("tmp")).unwrap();
    std::fs::write(pb.join("tmp"), b"not a directory").unwrap();
    let (code, printed, _) = sync_state(&pa, &pb, &s);
    assert_eq!(code, 75, "a storage failure is a temporary failure");
    let printed = dsync_protocol::state::SyncState::parse(&printed).unwrap();
    assert_eq!(printed.mailboxes, saved.mailboxes, "the saved state stays");
    assert_eq!(state(&b)["INBOX"].len(), 4, "nothing written on B");

    std::fs::remove_file(pb.join("tmp")).unwrap();
    std::fs::create_dir(pb.join("tmp")).unwrap();
    let (code, next, _) = sync_state(&pa, &pb, &s);
    assert_eq!(code, 0);
    assert_eq!(state(&a), state(&b));
    assert_eq!(state(&b)["INBOX"].len(), 7);
    let next = dsync_protocol::state::SyncState::parse(&next).unwrap();
    assert_eq!(next.mailboxes[0].last_common_uid, 7, "{next:?}");
}

/// A peer command that fails after a complete session (its final commit,
/// say): the run fails with it and prints an empty state, so the next run
/// compares in full instead of trusting what the peer may not have written.
#[test]
fn a_peer_command_that_fails_after_the_session_leaves_no_state() {
    let d = tempfile::tempdir().unwrap();
    let (pa, pb, a, b) = synced_pair(d.path());
    save(&a, "INBOX", "Subject: a5\n\nbody 5\n");
    let out = Command::new(env!("CARGO_BIN_EXE_homing"))
        .env("USER", "homing-test")
        .arg("-o")
        .arg(format!("mail_location=maildir:{}", pa.display()))
        .args(["sync", "-s", ""])
        .args([
            "sh",
            "-c",
            "\"$0\" -o mail_location=maildir:\"$1\" dsync-server; exit 75",
        ])
        .arg(env!("CARGO_BIN_EXE_homing"))
        .arg(&pb)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "\n", "{stderr}");
    // The session itself was complete: the mail is there.
    assert_eq!(state(&a), state(&b));
}
