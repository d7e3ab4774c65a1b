//! The command line: doveadm's parsing rules and exit codes, and the demo.

mod common;

use std::process::Command;

use clap::Parser;
use homing::cli::{Cli, Command as Cmd};

fn homing() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_homing"));
    c.env_remove("HOMING_LOG");
    c
}

fn sync_args(argv: &[&str]) -> (bool, homing::cli::SyncArgs) {
    let cli = Cli::try_parse_from(argv).expect("parses");
    match cli.command {
        Cmd::Sync { oneway, args } => (oneway, args),
        other => panic!("not sync: {other:?}"),
    }
}

#[test]
fn options_come_before_the_destination() {
    let (oneway, a) = sync_args(&[
        "homing",
        "sync",
        "-1",
        "-f",
        "-u",
        "alice",
        "-s",
        "",
        "maildir:/x",
        "-f",
    ]);
    assert!(oneway);
    assert!(a.full);
    assert_eq!(a.user.as_deref(), Some("alice"));
    assert_eq!(a.state.as_deref(), Some(""));
    // Everything from the first positional word on is the destination.
    assert_eq!(a.destination, ["maildir:/x", "-f"]);
    let (_, a) = sync_args(&[
        "homing",
        "sync",
        "-u",
        "bob",
        "doveadm",
        "-c",
        "/c",
        "dsync-server",
        "-u",
        "bob",
    ]);
    assert_eq!(
        a.destination,
        ["doveadm", "-c", "/c", "dsync-server", "-u", "bob"]
    );
    let (_, a) = sync_args(&[
        "homing", "sync", "-x", "Trash", "-x", "Spam", "-m", "", "-O", "-\\Seen", "tcp:h:1",
    ]);
    assert_eq!(a.exclude, ["Trash", "Spam"]);
    assert_eq!(a.mailbox.as_deref(), Some(""));
    assert_eq!(a.sync_flag, ["-\\Seen"]);
}

#[test]
fn global_options_go_before_the_subcommand() {
    let cli = Cli::try_parse_from([
        "homing",
        "-D",
        "-o",
        "mail_location=memory:",
        "sync",
        "-u",
        "a",
        "tcp:h",
    ])
    .unwrap();
    assert!(cli.debug);
    assert_eq!(cli.overrides, ["mail_location=memory:"]);
}

fn code(args: &[&str]) -> (i32, String, String) {
    let out = homing().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_exit_64() {
    let (c, _, err) = code(&["sync", "-D", "tcp:h"]);
    assert_eq!(c, 64);
    assert!(err.contains("sync: invalid option -- 'D'"), "{err}");
    assert_eq!(code(&["sync", "-Z", "tcp:h"]).0, 64);
    let (c, _, err) = code(&["sync", "-u", "alice"]);
    assert_eq!(c, 64);
    assert!(err.contains("Usage: doveadm sync [-1fPRU]"), "{err}");
    let (c, _, err) = code(&["backup", "-u", "alice"]);
    assert_eq!(c, 64);
    assert!(err.contains("backup [-fPRU]"), "{err}");
    let out = homing()
        .env_remove("USER")
        .args(["sync", "tcp:h"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("USER environment is missing"));
    assert_eq!(
        code(&[
            "-o",
            "mail_location=memory:",
            "sync",
            "-u",
            "a",
            "-n",
            "nope/",
            "memory:"
        ])
        .0,
        64
    );
}

#[test]
fn bad_option_values_exit_75_and_bad_ints_are_ignored() {
    let base = ["-o", "mail_location=memory:", "sync", "-u", "a"];
    let run = |extra: &[&str]| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend_from_slice(extra);
        code(&v)
    };
    let (c, _, err) = run(&["-g", "xyz", "memory:b"]);
    assert_eq!(c, 75);
    assert!(err.contains("Invalid -g parameter: xyz"), "{err}");
    let (c, _, err) = run(&["-O", "\\Bogus", "memory:b"]);
    assert_eq!(c, 75);
    assert!(
        err.contains("Invalid system flag given for -O parameter: '\\Bogus'"),
        "{err}"
    );
    assert_eq!(run(&["-t", "garbage", "memory:b"]).0, 75);
    let (c, _, err) = run(&["-t", "2024-02-01", "-e", "2024-01-01", "memory:b"]);
    assert_eq!(c, 75);
    assert!(err.contains("start date is later than end date"), "{err}");
    assert_eq!(run(&["-I", "12Q", "memory:b"]).0, 75);
    assert_eq!(run(&["-N", "memory:b"]).0, 75);
    // Non-numeric -T/-l are silently ignored; memory: to memory: succeeds.
    let (c, out, err) = run(&["-T", "abc", "-l", "abc", "-s", "", "memory:b"]);
    assert_eq!(c, 0, "{err}");
    // Two empty replicas: the state has no mailboxes.
    assert_eq!(out, "AQAAAHm4+Jk=\n");
    let (c, _, err) = run(&["-s", "garbage!!", "memory:b"]);
    assert_eq!(c, 0);
    assert!(
        err.contains("Saved sync state is invalid, falling back to full sync"),
        "{err}"
    );
    assert_eq!(
        code(&[
            "-o",
            "plugin/mail_replica=",
            "-o",
            "mail_location=memory:",
            "sync",
            "-u",
            "a",
            "-d"
        ])
        .0,
        68
    );
    assert_eq!(run(&["tcp:127.0.0.1:1"]).0, 75);
}

/// The first line names the directory the demo used.
fn demo_dir(out: &str) -> std::path::PathBuf {
    let first = out.lines().next().unwrap_or("");
    let dir = first
        .split(", in ")
        .nth(1)
        .and_then(|d| d.strip_suffix('.'))
        .unwrap_or_else(|| panic!("no directory in {first:?}"));
    std::path::PathBuf::from(dir)
}

#[test]
fn demo_runs_in_a_temporary_directory_and_removes_it() {
    let (c, out, err) = code(&["demo"]);
    assert_eq!(c, 0, "{out}\n{err}");
    assert!(
        out.contains("Verified: replicas identical (mailboxes, GUIDs, UIDs, flags, keywords), no mail lost (6 mails in 3 mailboxes)."),
        "{out}"
    );
    let dir = demo_dir(&out);
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

/// (mailbox, GUID, UIDVALIDITY, subscribed) and (mailbox, uid, GUID, flags,
/// sorted keywords, Subject) of a Maildir, read through homing's storage.
type Replica = (
    Vec<(String, [u8; 16], u32, bool)>,
    Vec<(String, u32, String, u8, Vec<String>, String)>,
);

fn read_replica(path: &std::path::Path) -> Replica {
    use homing::storage::maildir::{MaildirOptions, MaildirStore};
    use homing::storage::{flags, MailStore};
    let st = MaildirStore::open(path, MaildirOptions::default()).unwrap();
    let (mut boxes, mut mails) = (Vec::new(), Vec::new());
    for e in st.list_mailboxes().unwrap() {
        let Some(guid) = e.guid else { continue };
        boxes.push((e.name.clone(), guid, e.uid_validity, e.subscribed));
        let mb = st.open_mailbox(&e.name).unwrap();
        for m in mb.messages() {
            let m = m.unwrap();
            let body = common::body_text(mb.as_ref(), m.uid);
            let subject = body
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or("")
                .trim()
                .to_string();
            let mut k = m.keywords.clone();
            k.sort();
            mails.push((
                e.name.clone(),
                m.uid,
                m.guid,
                m.flags & flags::IMAP_MASK,
                k,
                subject,
            ));
        }
    }
    boxes.sort();
    mails.sort();
    (boxes, mails)
}

#[test]
fn demo_keeps_its_replicas_in_dir_and_they_match() {
    use homing::storage::flags;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("demo");
    let (c, out, err) = code(&["demo", "--dir", dir.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}\n{err}");
    assert_eq!(demo_dir(&out), dir);
    let (a, b) = (read_replica(&dir.join("A")), read_replica(&dir.join("B")));
    assert_eq!(a, b, "the kept replicas differ");
    let names: Vec<&str> = a.0.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(names, ["Archive/Lists", "INBOX", "Work"]);
    let inbox: Vec<(u32, &str, u8)> =
        a.1.iter()
            .filter(|m| m.0 == "INBOX")
            .map(|m| (m.1, m.5.as_str(), m.3))
            .collect();
    // Both new mails had uid 4; both sides had used it, so both got new
    // UIDs (5 and 6, in GUID order); the meeting mail (uid 3) is gone; B
    // changed the invoice's \Seen last, so it is unread, and \Flagged.
    let new_uids: Vec<u32> = inbox
        .iter()
        .filter(|m| m.1.starts_with("from-"))
        .map(|m| m.0)
        .collect();
    assert_eq!(new_uids.len(), 2, "{inbox:?}");
    assert_eq!(
        inbox
            .iter()
            .map(|m| (m.0, m.1))
            .filter(|m| !m.1.starts_with("from-"))
            .collect::<Vec<_>>(),
        [(1, "welcome"), (2, "invoice")]
    );
    let mut sorted = new_uids.clone();
    sorted.sort();
    assert_eq!(sorted, [5, 6]);
    assert_eq!(inbox[1].2, flags::FLAGGED, "{inbox:?}");
    // The narrative states what the replicas show.
    for m in inbox.iter().filter(|m| m.1.starts_with("from-")) {
        assert!(
            out.contains(&format!("\"{}\"", m.1))
                && out.contains(&format!("uid 4 -> uid {} on both sides", m.0)),
            "{out}"
        );
    }
    assert!(out.contains("the invoice is unread on both sides"), "{out}");
    assert!(out.contains("final flags \\Flagged."), "{out}");

    // A second run must not touch mail that is already there.
    let (c, out2, err) = code(&["demo", "--dir", dir.to_str().unwrap()]);
    assert_eq!(c, 1, "{out2}\n{err}");
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(read_replica(&dir.join("A")), a);
}

/// Dovecot reads both kept replicas and sees the same mailboxes and mails.
#[test]
fn demo_replicas_read_the_same_with_dovecot() {
    use test_support::{dovecot_or_skip, InstanceOptions, SnapshotOptions};
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&["demo"]));
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("demo");
    let (c, out, err) = code(&["demo", "--dir", dir.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}\n{err}");
    // Dovecot opens mail as the mail user only.
    fn chown_all(p: &std::path::Path, uid: u32, gid: u32) {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                chown_all(&e.unwrap().path(), uid, gid);
            }
        }
    }
    let (uid, gid) = inst.vmail_ids();
    chown_all(d.path(), uid, gid);
    let snap = |side: &str| {
        inst.snapshot_with(
            "demo",
            &SnapshotOptions {
                location: Some(format!("maildir:{}", dir.join(side).display())),
                ..SnapshotOptions::default()
            },
        )
        .expect("doveadm reads the replica")
    };
    let (a, b) = (snap("A"), snap("B"));
    assert_eq!(a, b, "Dovecot sees different replicas:\nA:\n{a}\nB:\n{b}");
    assert_eq!(a.mailboxes.len(), 3, "{a}");
    assert_eq!(a.mails.len(), 6, "{a}");
    let homing = read_replica(&dir.join("A"));
    let mut dovecot: Vec<(u32, String)> = a
        .mails
        .iter()
        .filter(|m| m.mailbox == "INBOX")
        .map(|m| (m.uid, m.guid.clone()))
        .collect();
    dovecot.sort();
    let mut ours: Vec<(u32, String)> = homing
        .1
        .iter()
        .filter(|m| m.0 == "INBOX")
        .map(|m| (m.1, m.2.clone()))
        .collect();
    ours.sort();
    assert_eq!(dovecot, ours);
    inst.assert_log_clean();
}

#[test]
fn dsync_server_speaks_first_and_fails_on_eof() {
    let out = homing()
        .args([
            "-o",
            "mail_location=memory:",
            "dsync-server",
            "-u",
            "nobody",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.stdout.starts_with(b"VERSION\tdsync\t3\t5\n"));
    assert_eq!(out.status.code(), Some(75));
}
