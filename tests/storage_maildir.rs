//! The Maildir storage against a real Dovecot 2.3: what homing reads equals
//! what `doveadm` reports, and after each kind of homing write `doveadm`
//! shows exactly the intended state with a clean Dovecot log.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use homing::storage::maildir::{MaildirOptions, MaildirStore};
use homing::storage::{
    flags, Changes, FlagChange, LogChangeKind, MailStore, MessageInfo, NewMessage,
};
use test_support::{dovecot_or_skip, DovecotInstance, InstanceOptions};

const USER: &str = "alice";

fn store(inst: &DovecotInstance) -> MaildirStore {
    MaildirStore::open(inst.mail_dir(USER), MaildirOptions::default()).expect("open store")
}

/// `doveadm -f tab fetch` rows as field maps.
fn fetch(inst: &DovecotInstance, mailbox: &str, fields: &str) -> Vec<BTreeMap<String, String>> {
    let out = inst
        .doveadm([
            "-f", "tab", "fetch", "-u", USER, fields, "mailbox", mailbox, "all",
        ])
        .expect("run doveadm")
        .ok()
        .expect("doveadm fetch");
    table(&out.stdout_str())
}

/// `doveadm -f tab mailbox status` rows (one for each mailbox `pattern` matches).
fn status_rows(
    inst: &DovecotInstance,
    fields: &str,
    pattern: &str,
) -> Vec<BTreeMap<String, String>> {
    let out = inst
        .doveadm([
            "-f", "tab", "mailbox", "status", "-u", USER, fields, pattern,
        ])
        .expect("run doveadm")
        .ok()
        .expect("doveadm mailbox status");
    table(&out.stdout_str())
}

fn status(inst: &DovecotInstance, mailbox: &str) -> BTreeMap<String, String> {
    status_rows(
        inst,
        "messages uidnext uidvalidity highestmodseq guid",
        mailbox,
    )
    .into_iter()
    .next()
    .expect("one row")
}

fn table(s: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = s.lines();
    let Some(head) = lines.next() else {
        return Vec::new();
    };
    let cols: Vec<&str> = head.split('\t').collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            cols.iter()
                .zip(l.split('\t').chain(std::iter::repeat("")))
                .map(|(c, v)| (c.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// IMAP flags text as doveadm prints it (without \Recent), sorted.
fn flag_words(system: u8, keywords: &[String]) -> Vec<String> {
    let mut v = Vec::new();
    for (bit, name) in [
        (flags::ANSWERED, "\\Answered"),
        (flags::FLAGGED, "\\Flagged"),
        (flags::DELETED, "\\Deleted"),
        (flags::SEEN, "\\Seen"),
        (flags::DRAFT, "\\Draft"),
    ] {
        if system & bit != 0 {
            v.push(name.to_string());
        }
    }
    v.extend(keywords.iter().cloned());
    v.sort();
    v
}

fn doveadm_flag_words(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .split(' ')
        .filter(|w| !w.is_empty() && *w != "\\Recent")
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every file and directory below `dir` belongs to the mail user.
fn assert_owned_by(dir: &Path, uid: u32) {
    for e in walk(dir) {
        let md = std::fs::symlink_metadata(&e).unwrap();
        assert_eq!(
            md.uid(),
            uid,
            "{} is not owned by the mail user",
            e.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

fn mail(n: u32) -> Vec<u8> {
    format!(
        "From: sender{n}@example.org\nTo: alice@example.org\nSubject: message {n}\nMessage-ID: <m{n}@example.org>\n\nbody line {n}\nsecond line\n"
    )
    .into_bytes()
}

/// Saves `mail(n)` for each `n` through Dovecot.
fn save_mails(inst: &DovecotInstance, mailbox: &str, ns: impl IntoIterator<Item = u32>) {
    for n in ns {
        inst.save_message(USER, mailbox, &mail(n)).unwrap();
    }
}

/// `doveadm flags add WORDS mailbox MAILBOX uid UIDS`.
fn add_flags(inst: &DovecotInstance, mailbox: &str, words: &str, uids: &str) {
    inst.doveadm_user(
        USER,
        &["flags", "add", words, "mailbox", mailbox, "uid", uids],
    )
    .unwrap();
}

/// The mailbox names homing lists.
fn names(st: &MaildirStore) -> Vec<String> {
    st.list_mailboxes()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect()
}

/// homing's messages and doveadm's fetched rows (with uid, guid and flags)
/// describe the same mails, in the same order.
fn assert_same_messages(ours: &[MessageInfo], theirs: &[BTreeMap<String, String>]) {
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(o.uid.to_string(), t["uid"]);
        assert_eq!(o.guid, t["guid"]);
        assert_eq!(
            flag_words(o.flags, &o.keywords),
            doveadm_flag_words(&t["flags"])
        );
    }
}

/// Every file below the user's Maildir belongs to the mail user.
fn assert_mail_dir_owned(inst: &DovecotInstance) {
    let (vuid, _) = inst.vmail_ids();
    assert_owned_by(&inst.mail_dir(USER), vuid);
}

#[test]
fn reads_what_dovecot_wrote() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    save_mails(&inst, "INBOX", 0..5);
    inst.save_message(USER, "Work/Reports", &mail(9)).unwrap();
    add_flags(&inst, "INBOX", "\\Seen $Label1", "2:3");
    add_flags(&inst, "INBOX", "\\Flagged", "4");
    inst.doveadm_user(USER, &["expunge", "mailbox", "INBOX", "uid", "5"])
        .unwrap();
    // A plain Maildir delivery Dovecot has not seen yet.
    let root = inst.mail_dir(USER);
    let delivered = root.join("new").join("1700000000.M1P1.delivered");
    std::fs::write(&delivered, mail(42)).unwrap();
    let (vuid, vgid) = inst.vmail_ids();
    std::os::unix::fs::chown(&delivered, Some(vuid), Some(vgid)).unwrap();

    let st = store(&inst);
    let names = names(&st);
    assert_eq!(names, vec!["INBOX", "Work/Reports"]);

    let mb = st.open_mailbox("INBOX").unwrap();
    let ours: Vec<_> = mb.messages().collect::<Result<_, _>>().unwrap();
    let theirs = fetch(
        &inst,
        "INBOX",
        "uid guid flags modseq size.virtual size.physical",
    );
    assert_eq!(ours.len(), 5, "4 saved + 1 delivered");
    assert_same_messages(&ours, &theirs);
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!(
            o.virtual_size.map(|v| v.to_string()).as_deref(),
            Some(t["size.virtual"].as_str())
        );
        assert_eq!(
            o.physical_size.map(|v| v.to_string()).as_deref(),
            Some(t["size.physical"].as_str())
        );
    }
    // The delivered file got the next UID (6) from us, and Dovecot agrees.
    assert_eq!(ours[4].uid, 6);
    assert_eq!(ours[4].guid, "1700000000.M1P1.delivered");

    // Modseqs and status agree once Dovecot has synced the same state.
    let mb = st.open_mailbox("INBOX").unwrap();
    let theirs = fetch(&inst, "INBOX", "uid modseq");
    let mb2 = st.open_mailbox("INBOX").unwrap();
    for (o, t) in mb2.messages().map(|m| m.unwrap()).zip(&theirs) {
        assert_eq!(o.modseq.to_string(), t["modseq"], "modseq of uid {}", o.uid);
    }
    let s = mb2.status();
    let ds = status(&inst, "INBOX");
    assert_eq!(s.messages.to_string(), ds["messages"]);
    assert_eq!(s.uid_next.to_string(), ds["uidnext"]);
    assert_eq!(s.uid_validity.to_string(), ds["uidvalidity"]);
    assert_eq!(s.highest_modseq.to_string(), ds["highestmodseq"]);
    assert_eq!(hex(&s.guid), ds["guid"]);
    drop(mb);

    // The log scan sees the expunge of uid 5 and the flag changes.
    match mb2.changes_since(1).unwrap() {
        Changes::Since(ch) => {
            assert!(ch
                .iter()
                .any(|c| matches!(c.kind, LogChangeKind::Expunge { uid: 5, .. }) && c.external));
            assert!(ch.iter().any(|c| matches!(&c.kind, LogChangeKind::Keyword { add: true, name, .. } if name == "$Label1")));
        }
        Changes::TooOld => panic!("log starts at the mailbox creation"),
    }
    let mut body = String::new();
    std::io::Read::read_to_string(&mut mb2.open_body(1).unwrap(), &mut body).unwrap();
    assert_eq!(body.as_bytes(), mail(0));
    inst.assert_log_clean();
}

#[test]
fn saves_flags_and_expunges_as_dovecot_does() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    save_mails(&inst, "INBOX", 0..3);
    let before = status(&inst, "INBOX");
    let hm0: u64 = before["highestmodseq"].parse().unwrap();
    let st = store(&inst);

    // Save with explicit UIDs, GUID, flags, keywords, dates and POP3 fields.
    let mut tx = st.begin("INBOX").unwrap();
    tx.save(
        NewMessage {
            uid: Some(10),
            guid: Some("replicated-guid-10".into()),
            flags: flags::SEEN | flags::ANSWERED,
            keywords: vec!["$Label1".into(), "project-x".into()],
            received: Some(1_700_000_000),
            pop3_uidl: Some("uidl-10".into()),
            pop3_order: Some(4),
            ..Default::default()
        },
        &mut &mail(10)[..],
    )
    .unwrap();
    tx.save(
        NewMessage {
            uid: Some(11),
            ..Default::default()
        },
        &mut &mail(11)[..],
    )
    .unwrap();
    let r = tx.commit().unwrap();
    assert_eq!(r.saved_uids, vec![10, 11]);
    assert_eq!(r.uid_next, 12);
    // Two appends + two keyword records.
    assert_eq!(r.highest_modseq, hm0 + 3);
    // Our records are in the log, external, before Dovecot touched anything.
    let mb = st.open_mailbox("INBOX").unwrap();
    let Changes::Since(ch) = mb.changes_since(hm0).unwrap() else {
        panic!("log must reach back")
    };
    assert!(ch
        .iter()
        .any(|c| c.external && c.kind == LogChangeKind::Append { uids: vec![10, 11] }));
    assert_eq!(mb.status().highest_modseq, hm0 + 3);
    let m10 = mb.message(10).unwrap().unwrap();
    assert_eq!(m10.received, Some(1_700_000_000));
    assert_eq!(m10.pop3_uidl.as_deref(), Some("uidl-10"));
    assert_eq!(m10.pop3_order, Some(4));
    assert_eq!(m10.keywords.len(), 2);
    drop(mb);

    let rows = fetch(
        &inst,
        "INBOX",
        "uid guid flags modseq pop3.uidl date.received size.virtual size.physical",
    );
    assert_eq!(rows.len(), 5);
    let r10 = &rows[3];
    assert_eq!(r10["uid"], "10");
    assert_eq!(r10["guid"], "replicated-guid-10");
    assert_eq!(
        doveadm_flag_words(&r10["flags"]),
        vec!["$Label1", "\\Answered", "\\Seen", "project-x"]
    );
    assert_eq!(r10["pop3.uidl"], "uidl-10");
    assert_eq!(r10["date.received"], "2023-11-14 22:13:20");
    let m10 = mail(10);
    assert_eq!(r10["size.physical"], m10.len().to_string());
    let lfs = m10.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(r10["size.virtual"], (m10.len() + lfs).to_string());
    assert_eq!(rows[4]["uid"], "11");
    let s = status(&inst, "INBOX");
    assert_eq!(s["uidnext"], "12");
    assert_eq!(
        s["highestmodseq"],
        (hm0 + 3).to_string(),
        "Dovecot accepted our modseqs without a resync"
    );
    let body = inst
        .doveadm(["fetch", "-u", USER, "body", "mailbox", "INBOX", "uid", "10"])
        .unwrap()
        .ok()
        .unwrap()
        .stdout_str();
    assert!(body.contains("body line 10"));

    // Flag and keyword changes.
    let mut tx = st.begin("INBOX").unwrap();
    tx.update_flags(
        1,
        FlagChange {
            add: flags::FLAGGED | flags::SEEN,
            add_keywords: vec!["project-x".into()],
            ..Default::default()
        },
    )
    .unwrap();
    tx.update_flags(
        10,
        FlagChange {
            remove: flags::SEEN,
            remove_keywords: vec!["$Label1".into()],
            ..Default::default()
        },
    )
    .unwrap();
    tx.commit().unwrap();
    let rows = fetch(&inst, "INBOX", "uid flags");
    assert_eq!(
        doveadm_flag_words(&rows[0]["flags"]),
        vec!["\\Flagged", "\\Seen", "project-x"]
    );
    assert_eq!(
        doveadm_flag_words(&rows[3]["flags"]),
        vec!["\\Answered", "project-x"]
    );

    // Expunge (one real, one already gone).
    let mut tx = st.begin("INBOX").unwrap();
    tx.expunge(2, None).unwrap();
    tx.expunge(99, None).unwrap();
    let r = tx.commit().unwrap();
    assert_eq!(r.already_expunged, vec![99]);
    let rows = fetch(&inst, "INBOX", "uid");
    let uids: Vec<&str> = rows.iter().map(|r| r["uid"].as_str()).collect();
    assert_eq!(uids, vec!["1", "3", "10", "11"]);

    // Raising UIDNEXT.
    let mut tx = st.begin("INBOX").unwrap();
    tx.raise_uid_next(50).unwrap();
    tx.commit().unwrap();
    assert_eq!(status(&inst, "INBOX")["uidnext"], "50");

    // Raising HIGHESTMODSEQ (the index has no modseq extension yet: homing
    // introduces it the way Dovecot does).
    let mut tx = st.begin("INBOX").unwrap();
    tx.raise_highest_modseq(500).unwrap();
    let r = tx.commit().unwrap();
    assert_eq!(r.highest_modseq, 500);
    assert_eq!(status(&inst, "INBOX")["highestmodseq"], "500");
    let mut tx = st.begin("INBOX").unwrap();
    tx.update_flags(
        3,
        FlagChange {
            add: flags::DELETED,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(tx.commit().unwrap().highest_modseq, 501);
    assert_eq!(status(&inst, "INBOX")["highestmodseq"], "501");

    // Our view agrees with Dovecot's after all of it.
    let mb = st.open_mailbox("INBOX").unwrap();
    let ours: Vec<_> = mb.messages().map(|m| m.unwrap()).collect();
    let theirs = fetch(&inst, "INBOX", "uid guid flags modseq");
    assert_same_messages(&ours, &theirs);
    assert_mail_dir_owned(&inst);
    inst.assert_log_clean();
}

#[test]
fn tree_changes_as_dovecot_sees_them() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    inst.save_message(USER, "INBOX", &mail(1)).unwrap();
    let st = store(&inst);
    let guid = [0x5a; 16];
    assert_eq!(
        st.create_mailbox("Projects/Alpha", Some(guid), Some(4242))
            .unwrap(),
        guid
    );
    st.create_mailbox("Projects/Alpha/Sub", None, None).unwrap();
    let s = status(&inst, "Projects/Alpha");
    assert_eq!(s["guid"], hex(&guid));
    assert_eq!(s["uidvalidity"], "4242");
    assert_eq!(s["uidnext"], "1");

    // A new UIDVALIDITY for the empty mailbox (replication picked the peer's).
    let mut tx = st.begin("Projects/Alpha").unwrap();
    tx.set_uid_validity(5000).unwrap();
    tx.commit().unwrap();
    assert_eq!(status(&inst, "Projects/Alpha")["uidvalidity"], "5000");

    // A save into the new mailbox.
    let mut tx = st.begin("Projects/Alpha").unwrap();
    tx.save(
        NewMessage {
            uid: Some(7),
            flags: flags::SEEN,
            ..Default::default()
        },
        &mut &mail(7)[..],
    )
    .unwrap();
    tx.commit().unwrap();
    let rows = fetch(&inst, "Projects/Alpha", "uid flags");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["uid"], "7");

    st.set_subscribed("Projects/Alpha", true, 1_800_000_000)
        .unwrap();
    st.set_subscribed("INBOX", true, 1_800_000_001).unwrap();
    let subs = inst.doveadm_user(USER, &["mailbox", "list", "-s"]).unwrap();
    let mut subs: Vec<&str> = subs.lines().collect();
    subs.sort();
    assert_eq!(subs, vec!["INBOX", "Projects/Alpha"]);

    st.rename_mailbox("Projects/Alpha", "Archive/Alpha", 1_800_000_002)
        .unwrap();
    let mut names = inst.mailbox_names(USER).unwrap();
    names.sort();
    assert!(names.contains(&"Archive/Alpha".to_string()), "{names:?}");
    assert!(
        names.contains(&"Archive/Alpha/Sub".to_string()),
        "{names:?}"
    );
    assert!(!names.contains(&"Projects/Alpha".to_string()), "{names:?}");
    assert_eq!(status(&inst, "Archive/Alpha")["guid"], hex(&guid));

    st.delete_mailbox("Archive/Alpha/Sub", None, 1_800_000_003)
        .unwrap();
    let sub_guid = {
        let log = st.mailbox_log().unwrap();
        log.last().copied().unwrap()
    };
    let names = inst.mailbox_names(USER).unwrap();
    assert!(
        !names.contains(&"Archive/Alpha/Sub".to_string()),
        "{names:?}"
    );

    // The mailbox log as doveadm dump reads it.
    let dump = inst
        .doveadm([
            "dump",
            inst.mail_dir(USER)
                .join("dovecot.mailbox.log")
                .to_str()
                .unwrap(),
        ])
        .unwrap()
        .ok()
        .unwrap()
        .stdout_str();
    assert!(dump.contains("subscribe"), "{dump}");
    assert!(dump.contains("rename"), "{dump}");
    assert!(dump.contains("delete-mailbox"), "{dump}");
    assert!(dump.contains(&hex(&sub_guid.id)), "{dump}");
    let kinds: Vec<_> = st.mailbox_log().unwrap().iter().map(|e| e.kind).collect();
    use homing::storage::MailboxLogKind as K;
    assert_eq!(
        kinds,
        vec![K::Subscribe, K::Subscribe, K::Rename, K::DeleteMailbox]
    );
    assert!(st.delete_mailbox("INBOX", None, 0).is_err());
    assert_mail_dir_owned(&inst);
    inst.assert_log_clean();
}

/// Dovecot saves, flags and expunges in a loop in the same mailbox while
/// homing commits saves and flag changes; afterwards nothing is lost, both
/// sides see the same state and Dovecot's log is clean.
#[test]
fn concurrent_with_dovecot() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    save_mails(&inst, "INBOX", 0..20);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    let dovecot_saved = std::thread::scope(|s| {
        let inst = &inst;
        let dovecot = s.spawn(move || {
            let mut saved = Vec::new();
            let mut i = 0u32;
            while std::time::Instant::now() < deadline {
                let n = 1000 + i;
                inst.save_message(USER, "INBOX", &mail(n)).unwrap();
                saved.push(n);
                let uid = (i % 10 + 1).to_string();
                inst.doveadm_user(
                    USER,
                    &[
                        "flags",
                        "add",
                        "\\Flagged $Dove",
                        "mailbox",
                        "INBOX",
                        "uid",
                        &uid,
                    ],
                )
                .unwrap();
                if i < 5 {
                    // Dovecot expunges uids 1..5 (mails it saved at the start).
                    inst.doveadm_user(
                        USER,
                        &["expunge", "mailbox", "INBOX", "uid", &(i + 1).to_string()],
                    )
                    .unwrap();
                }
                i += 1;
            }
            saved
        });
        let st = store(inst);
        let mut ours = Vec::new();
        let mut i = 0u32;
        while std::time::Instant::now() < deadline {
            let n = 2000 + i;
            let mut tx = st.begin("INBOX").unwrap();
            tx.save(
                NewMessage {
                    flags: if i % 2 == 0 { flags::SEEN } else { 0 },
                    keywords: vec!["homing".into()],
                    ..Default::default()
                },
                &mut &mail(n)[..],
            )
            .unwrap();
            tx.update_flags(
                11 + i % 10,
                FlagChange {
                    add: flags::ANSWERED,
                    add_keywords: vec![format!("kw{}", i % 3)],
                    ..Default::default()
                },
            )
            .unwrap();
            let r = tx.commit().unwrap();
            ours.push((n, r.saved_uids[0]));
            i += 1;
        }
        (dovecot.join().unwrap(), ours)
    });
    let (dsaved, hsaved) = dovecot_saved;
    assert!(!dsaved.is_empty() && !hsaved.is_empty());
    eprintln!(
        "concurrent: Dovecot saved {} mails, homing committed {} transactions",
        dsaved.len(),
        hsaved.len()
    );

    let rows = fetch(&inst, "INBOX", "uid guid flags hdr.subject");
    let subjects: Vec<&str> = rows.iter().map(|r| r["hdr.subject"].as_str()).collect();
    for n in (5..20).chain(dsaved.iter().copied()) {
        assert!(
            subjects.contains(&format!("message {n}").as_str()),
            "Dovecot's mail {n} lost"
        );
    }
    for (n, uid) in &hsaved {
        let row = rows
            .iter()
            .find(|r| r["hdr.subject"] == format!("message {n}"))
            .unwrap_or_else(|| panic!("homing's mail {n} lost"));
        assert_eq!(
            row["uid"],
            uid.to_string(),
            "mail {n} kept the uid homing gave it"
        );
        assert!(doveadm_flag_words(&row["flags"]).contains(&"homing".to_string()));
    }
    for n in 0..5 {
        assert!(
            !subjects.contains(&format!("message {n}").as_str()),
            "expunged mail {n} came back"
        );
    }
    for uid in 11..=20u32 {
        let row = rows.iter().find(|r| r["uid"] == uid.to_string()).unwrap();
        assert!(
            doveadm_flag_words(&row["flags"]).contains(&"\\Answered".to_string()),
            "uid {uid}"
        );
    }
    // Both readers agree.
    let st = store(&inst);
    let mb = st.open_mailbox("INBOX").unwrap();
    let ours: Vec<_> = mb.messages().map(|m| m.unwrap()).collect();
    assert_same_messages(&ours, &rows);
    let s = status(&inst, "INBOX");
    assert_eq!(s["messages"], rows.len().to_string());
    assert_eq!(mb.status().highest_modseq.to_string(), s["highestmodseq"]);
    inst.assert_log_clean();
}

/// The writer side of `crash_while_writing`: runs only when the parent test
/// starts this test binary with `HOMING_CRASH_ROOT` set; commits batches and
/// reports each committed batch on stdout until it is killed.
#[test]
fn crash_writer_child() {
    let Ok(root) = std::env::var("HOMING_CRASH_ROOT") else {
        return;
    };
    let round: u32 = std::env::var("HOMING_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let st = MaildirStore::open(root, MaildirOptions::default()).unwrap();
    for batch in 0.. {
        let mut tx = st.begin("INBOX").unwrap();
        let mut subjects = Vec::new();
        for i in 0..3 {
            let n = round * 100_000 + batch * 10 + i;
            tx.save(
                NewMessage {
                    flags: flags::SEEN,
                    keywords: vec![format!("r{round}")],
                    ..Default::default()
                },
                &mut &mail(n)[..],
            )
            .unwrap();
            subjects.push(n.to_string());
        }
        tx.update_flags(
            1 + batch % 5,
            FlagChange {
                add: flags::FLAGGED,
                add_keywords: vec![format!("b{}", batch % 4)],
                ..Default::default()
            },
        )
        .unwrap();
        tx.commit().unwrap();
        println!("committed {}", subjects.join(" "));
        std::io::Write::flush(&mut std::io::stdout()).unwrap();
    }
}

/// homing's writer is killed with SIGKILL at random points during batches of
/// writes, repeatedly; afterwards Dovecot reads the mailbox without loss or
/// corruption and agrees with homing's reader.
#[test]
fn crash_while_writing() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    save_mails(&inst, "INBOX", 0..5);
    let root = inst.mail_dir(USER);
    let mut committed = Vec::new();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    for round in 1..=8u32 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HOMING_CRASH_ROOT", &root)
            .env("HOMING_CRASH_ROUND", round.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = 100 + seed % 900;
        std::thread::sleep(std::time::Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("committed ") {
                committed.extend(rest.split(' ').map(str::to_string));
            }
        }
        // Dovecot works on the mailbox between crashes, as it would in production.
        inst.save_message(USER, "INBOX", &mail(900 + round))
            .unwrap();
    }
    assert!(!committed.is_empty(), "the writer never committed");
    eprintln!(
        "crash: {} mails committed before the kills",
        committed.len()
    );

    let rows = fetch(&inst, "INBOX", "uid guid flags hdr.subject");
    let subjects: std::collections::HashSet<&str> =
        rows.iter().map(|r| r["hdr.subject"].as_str()).collect();
    for n in &committed {
        assert!(
            subjects.contains(format!("message {n}").as_str()),
            "committed mail {n} lost"
        );
    }
    for n in (0..5).chain(901..=908) {
        assert!(
            subjects.contains(format!("message {n}").as_str()),
            "Dovecot's mail {n} lost"
        );
    }
    let mut uids: Vec<u32> = rows.iter().map(|r| r["uid"].parse().unwrap()).collect();
    let len = uids.len();
    uids.dedup();
    assert_eq!(uids.len(), len, "duplicate uids");
    let st = store(&inst);
    let mb = st.open_mailbox("INBOX").unwrap();
    let ours: Vec<_> = mb.messages().map(|m| m.unwrap()).collect();
    assert_same_messages(&ours, &rows);
    assert_eq!(
        mb.status().highest_modseq.to_string(),
        status(&inst, "INBOX")["highestmodseq"]
    );
    inst.assert_log_clean();
}

/// `LAYOUT=fs`: folders are nested directories; INBOX stays at the root.
#[test]
fn layout_fs() {
    let inst =
        dovecot_or_skip!(InstanceOptions::new().mail_location("maildir:~/Maildir:LAYOUT=fs"));
    inst.save_message(USER, "INBOX", &mail(1)).unwrap();
    inst.save_message(USER, "Lists/rust", &mail(2)).unwrap();
    let st = MaildirStore::open(
        inst.mail_dir(USER),
        MaildirOptions {
            layout: homing::storage::maildir::Layout::Fs,
            ..Default::default()
        },
    )
    .unwrap();
    let names = names(&st);
    assert!(names.contains(&"INBOX".to_string()), "{names:?}");
    assert!(names.contains(&"Lists/rust".to_string()), "{names:?}");
    let mb = st.open_mailbox("Lists/rust").unwrap();
    assert_eq!(mb.messages().count(), 1);
    drop(mb);
    st.create_mailbox("Projects/Beta", Some([7; 16]), Some(77))
        .unwrap();
    let mut tx = st.begin("Projects/Beta").unwrap();
    tx.save(NewMessage::default(), &mut &mail(3)[..]).unwrap();
    tx.commit().unwrap();
    let s = status(&inst, "Projects/Beta");
    assert_eq!(s["guid"], hex(&[7; 16]));
    assert_eq!(s["uidvalidity"], "77");
    assert_eq!(s["messages"], "1");
    assert!(inst.mail_dir(USER).join("Projects/Beta/cur").is_dir());
    inst.assert_log_clean();
}

#[test]
fn modseqs_of_a_mailbox_only_homing_wrote() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    // Dovecot creates the user's Maildir; "Fresh" is homing's alone.
    inst.save_message(USER, "INBOX", &mail(9)).unwrap();
    let st = store(&inst);
    st.create_mailbox("Fresh", None, None).unwrap();
    let mut tx = st.begin("Fresh").unwrap();
    for n in 1..=3 {
        tx.save(NewMessage::default(), &mut &mail(n)[..]).unwrap();
    }
    tx.commit().unwrap();
    let mut tx = st.begin("Fresh").unwrap();
    tx.update_flags(
        2,
        FlagChange {
            add: flags::SEEN,
            add_keywords: vec!["todo".into()],
            ..Default::default()
        },
    )
    .unwrap();
    tx.commit().unwrap();
    let mut tx = st.begin("Fresh").unwrap();
    tx.expunge(1, None).unwrap();
    tx.commit().unwrap();

    // Dovecot derives the same per-mail modseqs and HIGHESTMODSEQ.
    let mb = st.open_mailbox("Fresh").unwrap();
    let ours: Vec<(String, String)> = mb
        .messages()
        .map(|m| m.unwrap())
        .map(|m| (m.uid.to_string(), m.modseq.to_string()))
        .collect();
    let highest = mb.status().highest_modseq;
    drop(mb);
    assert!(highest >= 5, "{highest}");
    let theirs: Vec<(String, String)> = fetch(&inst, "Fresh", "uid modseq")
        .into_iter()
        .map(|r| (r["uid"].clone(), r["modseq"].clone()))
        .collect();
    assert_eq!(theirs, ours);
    assert_eq!(ours[0].0, "2");
    assert_ne!(ours[0].1, ours[1].1, "the flag change raised uid 2 only");
    assert_eq!(status(&inst, "Fresh")["highestmodseq"], highest.to_string());

    // A change Dovecot makes afterwards is seen above that modseq.
    add_flags(&inst, "Fresh", "\\Flagged", "3");
    let mb = st.open_mailbox("Fresh").unwrap();
    let Changes::Since(later) = mb.changes_since(highest).unwrap() else {
        panic!("log reaches back");
    };
    assert!(
        later.iter().any(|c| matches!(
            c.kind,
            LogChangeKind::Flags { uid1: 3, uid2: 3, add, .. } if add == flags::FLAGGED
        )),
        "{later:?}"
    );
    assert!(mb.status().highest_modseq > highest);
    inst.assert_log_clean();
}

/// Mailbox attributes in the file dict: homing reads what Dovecot set (with
/// the modseqs of its log records), and what homing sets, Dovecot reads;
/// each set is one logged change that raises HIGHESTMODSEQ, as Dovecot's.
#[test]
fn attributes_in_the_file_dict() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    inst.save_message(USER, "INBOX", &mail(1)).unwrap();
    let meta = |args: &[&str]| {
        let mut a = vec!["mailbox", "metadata", args[0], "-u", USER];
        a.extend_from_slice(&args[1..]);
        inst.doveadm(a).unwrap().ok().unwrap().stdout_str()
    };
    meta(&["set", "INBOX", "/private/comment", "from dovecot"]);
    meta(&["set", "INBOX", "/shared/note", "shared value"]);
    let dict = inst.home(USER).join("dovecot-attributes");
    assert!(dict.exists(), "the instance keeps attributes in {dict:?}");
    let st = MaildirStore::open(
        inst.mail_dir(USER),
        MaildirOptions {
            attribute_dict: Some(dict.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let modseq_before = status(&inst, "INBOX")["highestmodseq"]
        .parse::<u64>()
        .unwrap();
    {
        let mb = st.open_mailbox("INBOX").unwrap();
        let mut attrs = mb.attributes().unwrap();
        attrs.sort_by(|a, b| a.key.cmp(&b.key));
        let got: Vec<_> = attrs
            .iter()
            .map(|a| (a.private, a.key.as_str(), a.value.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (true, "comment", &b"from dovecot"[..]),
                (false, "note", &b"shared value"[..])
            ]
        );
        let Changes::Since(ch) = mb.changes_since(0).unwrap() else {
            panic!("log too old")
        };
        let logged: Vec<_> = ch
            .iter()
            .filter_map(|c| match &c.kind {
                LogChangeKind::Attribute { key, set, private } => {
                    Some((c.modseq, key.clone(), *set, *private))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            logged,
            vec![
                (modseq_before - 1, "comment".to_string(), true, true),
                (modseq_before, "note".to_string(), true, false),
            ]
        );
    }

    // homing's changes, one transaction.
    let mut tx = st.begin("INBOX").unwrap();
    tx.set_attribute(true, "comment", Some(b"from homing\twith tab"), 0)
        .unwrap();
    tx.set_attribute(false, "note", None, 0).unwrap();
    tx.set_attribute(true, "vendor/x/new", Some(b"n"), 0)
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(
        meta(&["get", "INBOX", "/private/comment"]).trim_end(),
        "from homing\twith tab"
    );
    assert_eq!(meta(&["get", "INBOX", "/shared/note"]).trim_end(), "");
    assert_eq!(
        meta(&["get", "INBOX", "/private/vendor/x/new"]).trim_end(),
        "n"
    );
    let modseq_after = status(&inst, "INBOX")["highestmodseq"]
        .parse::<u64>()
        .unwrap();
    assert_eq!(modseq_after, modseq_before + 1, "one record, one modseq");

    // Dovecot's next change follows ours in the same modseq sequence.
    meta(&["set", "INBOX", "/private/comment", "again"]);
    let mb = st.open_mailbox("INBOX").unwrap();
    let Changes::Since(ch) = mb.changes_since(modseq_before).unwrap() else {
        panic!("log too old")
    };
    let logged: Vec<_> = ch
        .iter()
        .filter_map(|c| match &c.kind {
            LogChangeKind::Attribute { key, set, .. } => Some((c.modseq, key.clone(), *set)),
            _ => None,
        })
        .collect();
    assert_eq!(
        logged,
        vec![
            (modseq_after, "comment".to_string(), true),
            (modseq_after, "note".to_string(), false),
            (modseq_after, "vendor/x/new".to_string(), true),
            (modseq_after + 1, "comment".to_string(), true),
        ]
    );
    let (vuid, _) = inst.vmail_ids();
    assert_eq!(std::fs::metadata(&dict).unwrap().uid(), vuid);
    assert!(!inst.home(USER).join("dovecot-attributes.lock").exists());
    inst.assert_log_clean();
}

/// Dovecot 2.3 keeps a mailbox list index (`dovecot.list.index*`, on by
/// default) with names, GUIDs and cached STATUS. homing does not write it:
/// this shows that Dovecot notices homing's tree changes at once anyway —
/// listing re-reads the directory, and a cached STATUS is only used while
/// the mailbox's own index log is unchanged — with a clean log.
#[test]
fn list_index_follows_homing_tree_changes() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    inst.save_message(USER, "INBOX", &mail(1)).unwrap();
    inst.create_mailboxes(USER, &["Keep", "Old", "Gone", "Reuse"])
        .unwrap();
    for (n, b) in ["Keep", "Old", "Reuse"].iter().enumerate() {
        inst.save_message(USER, b, &mail(10 + n as u32)).unwrap();
    }
    let all_status = |inst: &DovecotInstance| {
        let mut rows = status_rows(inst, "messages uidnext uidvalidity guid", "*");
        rows.sort_by(|a, b| a["mailbox"].cmp(&b["mailbox"]));
        rows
    };
    // Dovecot's list index now knows every mailbox and caches its status.
    let before = all_status(&inst);
    assert_eq!(before.len(), 5);
    let list_log = inst.mail_dir(USER).join("dovecot.list.index.log");
    assert!(list_log.exists(), "Dovecot keeps a list index");
    let old_guid = status(&inst, "Old")["guid"].clone();
    // A running IMAP session that has listed the tree already.
    let mut imap = Imap::start(&inst);
    assert_eq!(
        imap.list(),
        vec!["Gone", "INBOX", "Keep", "Old", "Reuse"],
        "before"
    );

    let st = store(&inst);
    let new_guid = [0x4e; 16];
    let reuse_guid = [0x52; 16];
    st.create_mailbox("New", Some(new_guid), Some(111)).unwrap();
    st.rename_mailbox("Old", "Renamed", 1_800_000_000).unwrap();
    st.delete_mailbox("Gone", None, 1_800_000_001).unwrap();
    st.delete_mailbox("Reuse", None, 1_800_000_002).unwrap();
    st.create_mailbox("Reuse", Some(reuse_guid), Some(222))
        .unwrap();
    let mut tx = st.begin("Keep").unwrap();
    tx.save(NewMessage::default(), &mut &mail(20)[..]).unwrap();
    tx.commit().unwrap();

    // The running session lists the new tree at once, before any other
    // Dovecot process touched the list index (the refresh flag).
    assert_eq!(
        imap.list(),
        vec!["INBOX", "Keep", "New", "Renamed", "Reuse"]
    );
    drop(imap);

    // STATUS by name first (no listing in between).
    let s = status(&inst, "Renamed");
    assert_eq!(
        (s["guid"].as_str(), s["messages"].as_str()),
        (old_guid.as_str(), "1")
    );
    let s = status(&inst, "Reuse");
    assert_eq!(
        (
            s["guid"].as_str(),
            s["uidvalidity"].as_str(),
            s["messages"].as_str()
        ),
        (hex(&reuse_guid).as_str(), "222", "0")
    );
    let s = status(&inst, "New");
    assert_eq!(
        (s["guid"].as_str(), s["uidvalidity"].as_str()),
        (hex(&new_guid).as_str(), "111")
    );
    assert_eq!(status(&inst, "Keep")["messages"], "2");
    for gone in ["Old", "Gone"] {
        let o = inst
            .doveadm(["mailbox", "status", "-u", USER, "messages", gone])
            .unwrap();
        assert!(
            !o.success(),
            "{gone} still has a status: {}",
            o.stdout_str()
        );
    }
    let mut names = inst.mailbox_names(USER).unwrap();
    names.sort();
    assert_eq!(names, vec!["INBOX", "Keep", "New", "Renamed", "Reuse"]);
    let after = all_status(&inst);
    let row = |name: &str| after.iter().find(|r| r["mailbox"] == name).cloned();
    assert_eq!(row("Reuse").unwrap()["guid"], hex(&reuse_guid));
    assert_eq!(row("Renamed").unwrap()["guid"], old_guid);
    assert_eq!(row("Keep").unwrap()["messages"], "2");
    assert!(row("Old").is_none() && row("Gone").is_none());
    inst.assert_log_clean();
}

/// A preauthenticated IMAP session (`doveadm exec imap`) over pipes.
struct Imap {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    tag: u32,
}

impl Imap {
    fn start(inst: &DovecotInstance) -> Imap {
        let mut c = inst.doveadm_command();
        c.args(["exec", "imap", "-u", USER])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().expect("start imap");
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut imap = Imap { child, out, tag: 0 };
        let greeting = imap.line();
        assert!(greeting.starts_with("* PREAUTH"), "{greeting}");
        imap
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut l = String::new();
        self.out.read_line(&mut l).expect("read imap");
        assert!(!l.is_empty(), "imap closed the connection");
        l.trim_end().to_string()
    }

    /// Runs one command; returns its untagged lines.
    fn command(&mut self, cmd: &str) -> Vec<String> {
        use std::io::Write as _;
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        let stdin = self.child.stdin.as_mut().expect("stdin");
        write!(stdin, "{tag} {cmd}\r\n").expect("write imap");
        stdin.flush().expect("flush imap");
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            if let Some(rest) = l.strip_prefix(&format!("{tag} ")) {
                assert!(rest.starts_with("OK"), "{cmd}: {l}");
                return lines;
            }
            lines.push(l);
        }
    }

    /// Mailbox names from `LIST "" *`, sorted.
    fn list(&mut self) -> Vec<String> {
        let mut v: Vec<String> = self
            .command("LIST \"\" *")
            .iter()
            .filter_map(|l| {
                l.rsplit_once("\"/\" ")
                    .map(|(_, n)| n.trim_matches('"').to_string())
            })
            .collect();
        v.sort();
        v
    }
}

impl Drop for Imap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GUIDs recorded in Dovecot's mailbox list index nodes.
fn list_index_guids(root: &Path) -> Vec<[u8; 16]> {
    let view = index_format::view::MailboxView::open(root.join("dovecot.list.index"))
        .expect("open the list index");
    view.messages()
        .filter_map(|m| m.list_record())
        .map(|r| r.mailbox_guid)
        .collect()
}

/// Replication adopts the peer's GUID for a mailbox both sides created
/// independently: afterwards Dovecot reports the new GUID (INBOX from its
/// uidlist, other mailboxes also through the list index), and every mail,
/// UID, flag, UIDVALIDITY and the uidlist's owner and mode are unchanged.
#[test]
fn mailbox_guid_change() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    save_mails(&inst, "INBOX", 1..=3);
    inst.doveadm_user(USER, &["mailbox", "create", "Work"])
        .unwrap();
    save_mails(&inst, "Work", 4..=5);
    add_flags(&inst, "INBOX", "\\Flagged $Label1", "2");
    add_flags(&inst, "Work", "\\Seen", "1");
    // Status of every mailbox, which also fills the list index nodes.
    inst.doveadm_user(USER, &["mailbox", "status", "guid", "*"])
        .unwrap();

    let root = inst.mail_dir(USER);
    let fields = "uid flags guid";
    let before: Vec<_> = ["INBOX", "Work"]
        .iter()
        .map(|m| (status(&inst, m), fetch(&inst, m, fields)))
        .collect();
    let old_work = before[1].0["guid"].clone();
    assert!(
        list_index_guids(&root).iter().any(|g| hex(g) == old_work),
        "the list index caches Work's GUID"
    );
    let uidlists = [
        root.join("dovecot-uidlist"),
        root.join(".Work/dovecot-uidlist"),
    ];
    std::fs::set_permissions(
        &uidlists[1],
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let meta_before: Vec<_> = uidlists
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).unwrap();
            (m.uid(), m.gid(), m.mode() & 0o7777)
        })
        .collect();

    let st = store(&inst);
    let new_inbox = [0xf1; 16];
    let new_work = [0xf2; 16];
    // Another mailbox's GUID is refused.
    let inbox_guid = st.list_mailboxes().unwrap()[0].guid.unwrap();
    assert!(st.set_mailbox_guid("Work", inbox_guid).is_err());
    st.set_mailbox_guid("INBOX", new_inbox).unwrap();
    st.set_mailbox_guid("Work", new_work).unwrap();
    // The list index node, before any Dovecot process opened the mailbox
    // (doing so would refresh the node itself), and what a GUID-only status
    // request answers from it.
    assert!(list_index_guids(&root).contains(&new_work));
    assert!(!list_index_guids(&root).iter().any(|g| hex(g) == old_work));
    for (name, new) in [("Work", new_work), ("INBOX", new_inbox)] {
        assert_eq!(
            status_rows(&inst, "guid", name)[0]["guid"],
            hex(&new),
            "{name}"
        );
    }

    for ((name, new), (old_status, old_rows)) in [("INBOX", new_inbox), ("Work", new_work)]
        .iter()
        .zip(&before)
    {
        let s = status(&inst, name);
        assert_eq!(s["guid"], hex(new), "{name}");
        for k in ["messages", "uidnext", "uidvalidity", "highestmodseq"] {
            assert_eq!(s[k], old_status[k], "{name} {k}");
        }
        assert_eq!(&fetch(&inst, name, fields), old_rows, "{name}");
        assert_eq!(st.find_mailbox(new).unwrap().as_deref(), Some(*name));
    }
    let text = std::fs::read_to_string(&uidlists[0]).unwrap();
    let header = text.lines().next().unwrap();
    assert!(
        header.contains(&format!(" G{}", hex(&new_inbox))),
        "{header}"
    );
    assert_eq!(text.lines().count(), 4, "every record kept: {text}");
    for (p, m) in uidlists.iter().zip(&meta_before) {
        let md = std::fs::metadata(p).unwrap();
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            *m,
            "{}",
            p.display()
        );
        assert!(!p.with_extension("lock").exists());
    }
    // Idempotent: the same GUID again changes nothing.
    let text_work = std::fs::read(&uidlists[1]).unwrap();
    st.set_mailbox_guid("Work", new_work).unwrap();
    assert_eq!(std::fs::read(&uidlists[1]).unwrap(), text_work);

    // Dovecot keeps working with the mailboxes: a delivery and a flag change.
    inst.save_message(USER, "Work", &mail(6)).unwrap();
    add_flags(&inst, "INBOX", "\\Answered", "1");
    assert_eq!(status(&inst, "Work")["guid"], hex(&new_work));
    assert_eq!(status(&inst, "Work")["messages"], "3");
    assert_eq!(status(&inst, "INBOX")["guid"], hex(&new_inbox));
    let (vuid, _) = inst.vmail_ids();
    assert_owned_by(&root, vuid);
    inst.assert_log_clean();
}

/// homing's reader sees INBOX as Dovecot does (uids, GUIDs, flags).
fn assert_reader_agrees(inst: &DovecotInstance) {
    let st = store(inst);
    let mb = st.open_mailbox("INBOX").unwrap();
    let ours: Vec<_> = mb.messages().map(|m| m.unwrap()).collect();
    assert_same_messages(&ours, &fetch(inst, "INBOX", "uid guid flags"));
}

/// Writes `data` at `path` in the user's Maildir `root`, owned as the Maildir is.
fn put_as_owner(root: &Path, path: &Path, data: &[u8]) {
    let owner = std::fs::metadata(root).unwrap();
    std::fs::write(path, data).unwrap();
    std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid())).unwrap();
}

/// A mail file (`mail(40)`, flagged \Seen) and its uidlist line for `uid`
/// in the Maildir `root`, with no index record: as if a writer died
/// between the uidlist and the log.
fn add_a_line_the_index_lacks(root: &Path, uid: u32) {
    let body = mail(40);
    let lines = body.iter().filter(|&&b| b == b'\n').count();
    let behind = format!(
        "1700000001.M1P1.behind,S={},W={}",
        body.len(),
        body.len() + lines
    );
    put_as_owner(root, &root.join("cur").join(format!("{behind}:2,S")), &body);
    let uidlist = root.join("dovecot-uidlist");
    let mut text = std::fs::read_to_string(&uidlist).unwrap();
    text.push_str(&format!("{uid} :{behind}\n"));
    put_as_owner(root, &uidlist, text.as_bytes());
}

/// A commit finds what other writers left: a file delivered into `new/`
/// without a uidlist line gets the next UID after the commit's saves, and a
/// uidlist line the index lacks (a writer that died before its log write)
/// is added to the index before them. The commit lists the directories
/// once and keeps only those files and the ones it renames or removes.
#[test]
fn commit_takes_in_deliveries_and_catches_the_index_up() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    save_mails(&inst, "INBOX", 0..3);
    let root = inst.mail_dir(USER);
    add_a_line_the_index_lacks(&root, 4);
    // A delivery straight into new/.
    put_as_owner(
        &root,
        &root.join("new").join("1700000002.M2P2.deliv"),
        &mail(50),
    );

    let st = store(&inst);
    let mut tx = st.begin("INBOX").unwrap();
    tx.save(NewMessage::default(), &mut &mail(60)[..]).unwrap();
    tx.update_flags(
        1,
        FlagChange {
            add: flags::FLAGGED,
            ..Default::default()
        },
    )
    .unwrap();
    tx.expunge(2, None).unwrap();
    tx.commit().unwrap();

    let rows = fetch(&inst, "INBOX", "uid flags hdr.subject");
    let got: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r["uid"].clone(), r["hdr.subject"].clone()))
        .collect();
    let want: Vec<(String, String)> = [(1, 0), (3, 2), (4, 40), (5, 60), (6, 50)]
        .iter()
        .map(|(u, n)| (u.to_string(), format!("message {n}")))
        .collect();
    assert_eq!(got, want);
    assert!(rows[0]["flags"].contains("\\Flagged"), "{rows:?}");
    assert!(rows[2]["flags"].contains("\\Seen"), "{rows:?}");
    assert_reader_agrees(&inst);
    inst.assert_log_clean();
}

/// A commit that only raises the mailbox's status (a sync's last action on
/// a mailbox) reads the uidlist's two ends, as a save-only commit does: it
/// neither lists the directories nor takes in a delivery the uidlist does
/// not name yet (the next commit that lists, or Dovecot, does). Dovecot
/// sees the raised UIDNEXT and modseq, then takes the delivery in itself.
#[test]
fn a_status_raise_reads_neither_records_nor_the_listing() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    save_mails(&inst, "INBOX", 0..3);
    let before = status(&inst, "INBOX");
    let root = inst.mail_dir(USER);
    let delivery = "1700000002.M2P2.deliv";
    put_as_owner(&root, &root.join("new").join(delivery), &mail(50));

    let st = store(&inst);
    let hm: u64 = before["highestmodseq"].parse().unwrap();
    let mut tx = st.begin("INBOX").unwrap();
    tx.raise_uid_next(10).unwrap();
    tx.raise_highest_modseq(hm + 5).unwrap();
    tx.commit().unwrap();
    let uidlist = std::fs::read_to_string(root.join("dovecot-uidlist")).unwrap();
    assert!(!uidlist.contains(delivery), "not listed: {uidlist}");

    // Dovecot's status takes the delivery in, at the raised UIDNEXT.
    let after = status(&inst, "INBOX");
    assert_eq!(after["uidnext"], "11", "{after:?}");
    assert!(
        after["highestmodseq"].parse::<u64>().unwrap() >= hm + 5,
        "{after:?}"
    );
    let rows = fetch(&inst, "INBOX", "uid hdr.subject");
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["uid"].as_str(), r["hdr.subject"].as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("1", "message 0"),
            ("2", "message 1"),
            ("3", "message 2"),
            ("10", "message 50")
        ]
    );
    assert_reader_agrees(&inst);
    inst.assert_log_clean();
}

/// The quick status (a stateful sync's first look at a mailbox) trusts
/// Dovecot's record of its last directory scan: after Dovecot renamed a
/// file in `cur/` for a flag change (the uidlist is older than `cur/` then),
/// the status is read from the uidlist and the index, without a listing,
/// once Dovecot has scanned `cur/` a while after that change; a later
/// rename by another program makes it list again.
#[test]
fn quick_status_trusts_dovecots_last_scan() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    save_mails(&inst, "INBOX", 0..4);
    add_flags(&inst, "INBOX", "\\Seen", "2");
    let st = store(&inst);
    // Scanned in the same second as the rename: not trusted.
    let _ = status(&inst, "INBOX");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    // Dovecot scans again (the rename is now more than a second old).
    let _ = status(&inst, "INBOX");
    let listed = st.open_mailbox("INBOX").unwrap().status();
    let quick = st.quick_status("INBOX").unwrap();
    assert_eq!(quick, Some(listed.clone()));
    // Another program renames a file: the recorded scan no longer matches.
    common::rename_a_mail_file(&inst.mail_dir(USER));
    assert_eq!(st.quick_status("INBOX").unwrap(), None);
    inst.assert_log_clean();
}

/// After Dovecot expunges, its uidlist keeps the expunged records until it
/// is rewritten, so the uidlist's count is not the mailbox's. The index
/// synced with that very uidlist (its `maildir` header records the
/// uidlist's stamp and size) counts right, and the quick status takes the
/// index's counts then instead of listing the mailbox.
#[test]
fn quick_status_counts_what_dovecots_index_counts_after_an_expunge() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    // Dovecot rewrites its uidlist when at most 75 % of its records are
    // left: 8 of 10 are.
    save_mails(&inst, "INBOX", 0..10);
    inst.doveadm_user(USER, &["expunge", "mailbox", "INBOX", "uid", "2:3"])
        .unwrap();
    let dir = inst.mail_dir(USER);
    let uidlist = std::fs::read_to_string(dir.join("dovecot-uidlist")).unwrap();
    assert_eq!(
        uidlist.lines().count(),
        1 + 10,
        "Dovecot kept the expunged records:\n{uidlist}"
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    // Dovecot scans again, more than a second after the last change.
    let _ = status(&inst, "INBOX");
    let st = store(&inst);
    let listed = st.open_mailbox("INBOX").unwrap().status();
    assert_eq!(listed.messages, 8);
    assert_eq!(st.quick_status("INBOX").unwrap(), Some(listed));
    // A file removed behind the index's back: the directory changed since
    // the recorded scan, so the index's count is not trusted.
    let victim = walk(&dir.join("cur"))
        .into_iter()
        .chain(walk(&dir.join("new")))
        .next()
        .unwrap();
    std::fs::remove_file(victim).unwrap();
    assert_eq!(st.quick_status("INBOX").unwrap(), None);
    inst.assert_log_clean();
}

/// `initial modseq` of a log file, from `doveadm dump`.
fn dumped_initial_modseq(path: &Path) -> u64 {
    let o = std::process::Command::new("doveadm")
        .args(["dump", "-t", "log"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("initial modseq = "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no initial modseq in:\n{text}"))
}

/// After Dovecot rotated a mailbox's log, keeping the older file, the log
/// still holds every change above that file's initial modseq: a stateful
/// sync since then can run from it (before, any rotated log counted as no
/// log at all). Dropped, the reach moves up to the current file's start.
#[test]
fn a_rotated_log_reaches_back_to_its_older_file() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    save_mails(&inst, "INBOX", 0..3);
    let dir = inst.mail_dir(USER);
    let st = store(&inst);
    assert_eq!(
        st.open_mailbox("INBOX").unwrap().logged_since(),
        0,
        "never rotated"
    );

    common::rotate_inbox_log(&inst, USER, 2, false);
    add_flags(&inst, "INBOX", "\\Seen", "1");
    let older = dumped_initial_modseq(&dir.join("dovecot.index.log.2"));
    assert!(older > 0);
    let mb = st.open_mailbox("INBOX").unwrap();
    assert_eq!(mb.logged_since(), older);
    match mb.changes_since(older).unwrap() {
        Changes::Since(c) => assert!(!c.is_empty(), "the flag change is logged"),
        Changes::TooOld => panic!("complete from the older file's start"),
    }
    assert!(matches!(
        mb.changes_since(older - 1).unwrap(),
        Changes::TooOld
    ));

    // More rotations: the reach is the oldest file left's start.
    common::rotate_inbox_log(&inst, USER, 3, true);
    let oldest = ["dovecot.index.log.2", "dovecot.index.log"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .unwrap();
    let reach = dumped_initial_modseq(&oldest);
    assert_eq!(st.open_mailbox("INBOX").unwrap().logged_since(), reach);
    assert!(reach > older);
    inst.assert_log_clean();
}

/// A commit that only saves reads neither the uidlist's records nor the
/// directories (as Dovecot's save commit), unless the uidlist has lines
/// the index lacks: those are caught up first, in UID order, with a full
/// listing (which then also takes in a delivery). A delivery alone is left
/// to the next listing, here Dovecot's own sync: nothing is lost either way.
#[test]
fn a_save_only_commit_catches_up_only_when_the_index_is_behind() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    save_mails(&inst, "INBOX", 0..3);
    let root = inst.mail_dir(USER);
    let put = |path: &Path, data: &[u8]| put_as_owner(&root, path, data);
    let subjects = |inst: &DovecotInstance| -> Vec<(String, String)> {
        fetch(inst, "INBOX", "uid hdr.subject")
            .iter()
            .map(|r| (r["uid"].clone(), r["hdr.subject"].clone()))
            .collect()
    };
    let want = |pairs: &[(u32, u32)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(u, n)| (u.to_string(), format!("message {n}")))
            .collect()
    };
    let save = |n: u32| {
        let st = store(&inst);
        let mut tx = st.begin("INBOX").unwrap();
        tx.save(NewMessage::default(), &mut &mail(n)[..]).unwrap();
        tx.commit().unwrap();
    };

    // The index is behind the uidlist (line 4), and a delivery waits.
    add_a_line_the_index_lacks(&root, 4);
    let uidlist = root.join("dovecot-uidlist");
    put(&root.join("new").join("1700000002.M2P2.deliv"), &mail(50));
    save(60);
    assert_eq!(
        subjects(&inst),
        want(&[(1, 0), (2, 1), (3, 2), (4, 40), (5, 60), (6, 50)])
    );

    // Caught up: a delivery alone is not listed by a save.
    put(&root.join("new").join("1700000003.M3P3.deliv"), &mail(70));
    save(80);
    let text = std::fs::read_to_string(&uidlist).unwrap();
    assert!(
        !text.contains("M3P3.deliv"),
        "not taken in by the save:\n{text}"
    );
    // Dovecot's next sync takes it in, after the save.
    assert_eq!(
        subjects(&inst),
        want(&[
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 40),
            (5, 60),
            (6, 50),
            (7, 80),
            (8, 70)
        ])
    );
    assert_reader_agrees(&inst);
    inst.assert_log_clean();
}

/// Opened from Dovecot's index, without a listing, when its last scan saw
/// the directories as they are and it synced this very uidlist: the mails,
/// flags, keywords and modseqs are those of a listed open, the expunged
/// record the uidlist keeps is left out, and every body opens from its
/// built name (in `cur/` or `new/`; elsewhere it would say `NoSuchUid` and
/// the caller lists).
/// A file renamed by another program makes it decline.
#[test]
fn opened_from_the_index_as_listed() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    save_mails(&inst, "INBOX", 0..10);
    add_flags(&inst, "INBOX", "\\Seen $Work", "1:3");
    add_flags(&inst, "INBOX", "\\Flagged", "5");
    inst.doveadm_user(USER, &["expunge", "mailbox", "INBOX", "uid", "4"])
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    // Dovecot scans again, more than a second after the last change.
    let _ = status(&inst, "INBOX");
    let st = store(&inst);
    let listed = st.open_maildir("INBOX").unwrap();
    let indexed = st
        .open_maildir_indexed("INBOX")
        .unwrap()
        .expect("the index is current");
    let all = |mb: &dyn homing::storage::Mailbox| -> Vec<MessageInfo> {
        mb.messages().map(|m| m.unwrap()).collect()
    };
    let (want, got) = (all(&listed), all(&indexed));
    assert_eq!(want.len(), 9);
    assert_eq!(got, want);
    use homing::storage::Mailbox as _;
    assert_eq!(indexed.status(), listed.status());
    let files = indexed.into_body_files();
    let mut opened = 0;
    for m in &want {
        match files.open_body(m.uid) {
            Ok(mut r) => {
                let mut body = Vec::new();
                std::io::Read::read_to_end(&mut r, &mut body).unwrap();
                assert!(!body.is_empty());
                opened += 1;
            }
            Err(homing::storage::StorageError::NoSuchUid(_)) => {}
            Err(e) => panic!("uid {}: {e}", m.uid),
        }
    }
    assert_eq!(
        opened,
        want.len(),
        "every body is found where its name says"
    );
    common::rename_a_mail_file(&inst.mail_dir(USER));
    assert!(st.open_maildir_indexed("INBOX").unwrap().is_none());
    inst.assert_log_clean();
}

/// Child of `a_killed_lock_holder_does_not_stall_dovecot`: takes the
/// uidlist lock of the Maildir named by the environment and waits.
#[test]
fn lock_holder_child() {
    let Ok(root) = std::env::var("HOMING_LOCK_ROOT") else {
        return;
    };
    let uidlist = Path::new(&root).join("dovecot-uidlist");
    // As a commit takes it: owned by the mail user when run as root.
    let owner = homing::storage::lock::Owner::of_path_if_root(Path::new(&root)).unwrap();
    let _lock = homing::storage::lock::Dotlock::acquire(
        &uidlist,
        homing::storage::lock::DotlockSettings::UIDLIST,
        owner,
    )
    .unwrap();
    println!("locked");
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(600));
}

/// A homing process killed while it holds a mailbox's uidlist lock leaves a
/// lock file naming its (dead) pid: Dovecot's next save breaks it at once
/// and saves, instead of waiting two minutes for an empty lock to go stale.
#[test]
fn a_killed_lock_holder_does_not_stall_dovecot() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    save_mails(&inst, "INBOX", 0..2);
    let root = inst.mail_dir(USER);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock_holder_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HOMING_LOCK_ROOT", &root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("locked") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0);
    }
    assert!(root.join("dovecot-uidlist.lock").exists());
    child.kill().unwrap(); // SIGKILL: the lock stays
    child.wait().unwrap();
    let started = std::time::Instant::now();
    inst.save_message(USER, "INBOX", &mail(7)).unwrap();
    let subjects: Vec<String> = fetch(&inst, "INBOX", "hdr.subject")
        .iter()
        .map(|r| r["hdr.subject"].clone())
        .collect();
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(30),
        "Dovecot waited {took:?}"
    );
    assert_eq!(subjects, ["message 0", "message 1", "message 7"]);
    assert!(!root.join("dovecot-uidlist.lock").exists());
}

/// A mailbox opened keeping some of its mails (a stateful sync's partial
/// snapshot) shows exactly those mails as the whole mailbox shows them,
/// with the whole mailbox's status: read from Dovecot's index (directories
/// as its last scan saw them), from a listing (a change Dovecot has not
/// scanned yet), and with a delivery that has no uidlist line yet (the
/// whole open gives it its UID, and the kept mails are picked from that).
#[test]
fn opened_keeping_some_mails_as_the_whole_mailbox() {
    use homing::storage::Mailbox as _;
    let inst = dovecot_or_skip!(InstanceOptions::new());
    save_mails(&inst, "INBOX", 0..12);
    add_flags(&inst, "INBOX", "\\Seen $Work", "1:3");
    inst.doveadm_user(USER, &["expunge", "mailbox", "INBOX", "uid", "4"])
        .unwrap();
    let st = store(&inst);
    let keep = |uid: u32| uid % 3 == 0 || uid > 10;
    let check = |label: &str, want_indexed: Option<bool>| {
        let whole = st.open_maildir("INBOX").unwrap();
        let kept = st.open_maildir_kept("INBOX", &keep).unwrap();
        if let Some(w) = want_indexed {
            assert_eq!(
                st.open_maildir_indexed("INBOX").unwrap().is_some(),
                w,
                "{label}"
            );
        }
        let want: Vec<MessageInfo> = whole
            .messages()
            .map(|m| m.unwrap())
            .filter(|m| keep(m.uid))
            .collect();
        let got: Vec<MessageInfo> = kept.messages().map(|m| m.unwrap()).collect();
        assert!(!want.is_empty(), "{label}");
        assert_eq!(got, want, "{label}");
        assert_eq!(kept.status(), whole.status(), "{label}");
        let files = kept.into_body_files();
        for m in &want {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut files.open_body(m.uid).unwrap(), &mut body).unwrap();
            assert!(!body.is_empty(), "{label}: uid {}", m.uid);
        }
    };
    // Dovecot's own flag change, not scanned yet: listed.
    add_flags(&inst, "INBOX", "\\Flagged", "6");
    check("listed", None);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let _ = status(&inst, "INBOX");
    check("from the index", Some(true));
    let root = inst.mail_dir(USER);
    put_as_owner(
        &root,
        &root.join("new").join("1700000009.M9P9.deliv"),
        &mail(99),
    );
    let kept = st.open_maildir_kept("INBOX", &keep).unwrap();
    let uids: Vec<u32> = kept.messages().map(|m| m.unwrap().uid).collect();
    assert_eq!(uids, [3, 6, 9, 11, 12, 13], "the delivery got UID 13");
    assert_eq!(kept.status().messages, 12);
    check("after the delivery", None);
    inst.assert_log_clean();
}
