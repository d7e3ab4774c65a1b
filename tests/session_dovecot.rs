//! The session driver and the command line against real Dovecot 2.3:
//! homing as master against `doveadm dsync-server` (command and `tcp:`),
//! and real `doveadm sync` against `homing dsync-server`. Skipped when
//! Dovecot is unavailable.

use std::process::Command;

use dsync_protocol::MailFlags;
use homing::session::{run_master_over, SessionOptions};
use homing::transport::{self, Destination, OpenOptions};
use sync_engine::memory::MemoryReplica;
use sync_engine::SyncSettings;
use test_support::{dovecot_or_skip, small_message, DovecotInstance, InstanceOptions, MailRow};

mod common;

#[path = "../engine/tests/common/memory_vs_dovecot.rs"]
mod memory_vs_dovecot;
use memory_vs_dovecot::*;

async fn sync_over_command(inst: &DovecotInstance, store: MemoryReplica) -> MemoryReplica {
    let dest = Destination::Command(inst.dsync_server_argv(USER));
    let stream = transport::open(&dest, &OpenOptions::default())
        .await
        .expect("spawn dsync-server");
    let full = SyncSettings {
        sync_type: dsync_protocol::SyncType::Full,
        ..SyncSettings::default()
    };
    let r = run_master_over(
        stream,
        store,
        "homing-test",
        full,
        &SessionOptions::default(),
    )
    .await;
    assert_eq!(
        r.exit_code(),
        0,
        "{:?} {:?} {:?}\n{}",
        r.outcome,
        r.error,
        r.transport_error,
        inst.log()
    );
    r.store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_as_master_against_dsync_server_command() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&[USER]));
    seed(&inst);
    let mut a = MemoryReplica::new();
    a.now = 1_800_000_000;
    let mut a = sync_over_command(&inst, a).await;
    assert_eq!(homing_view(&a), dovecot_view(&inst));
    assert_eq!(
        a.mailbox("INBOX").unwrap().mails[&1].body,
        small_message("d1")
    );

    // Changes on both sides, including a UID conflict.
    a.now += 10;
    a.deliver("INBOX", "homing-h1", &small_message("h1"), 0)
        .unwrap();
    a.add_flags("INBOX", 1, MailFlags::SEEN, &[]);
    save_all(&inst, USER, &[("INBOX", "d4")]);
    add_flags(&inst, USER, "\\Answered", "Work", "1");
    let a = sync_over_command(&inst, a).await;
    let dv = dovecot_view(&inst);
    assert_eq!(homing_view(&a), dv);
    let inbox: Vec<&str> = dv
        .iter()
        .filter(|x| x.0 == "INBOX")
        .map(|x| x.2.as_str())
        .collect();
    assert!(inbox.contains(&"homing-h1"), "{dv:?}");
    assert_eq!(inbox.len(), 4, "no mail lost in the UID conflict: {dv:?}");
    assert_no_log_errors(&inst);
}

fn homing() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_homing"));
    c.env_remove("HOMING_LOG");
    c
}

/// Runs homing with `args` and asserts that it exits 0 (else shows its
/// output and `context`); returns its stdout.
fn homing_ok<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
    context: &str,
) -> String {
    let out = homing().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}\n{context}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn cli_sync_with_dsync_server_command_and_tcp() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&[USER]).doveadm_tcp(true));
    seed(&inst);
    let mut argv = vec![
        "-o".to_string(),
        "mail_location=memory:".into(),
        "sync".into(),
        "-u".into(),
        USER.into(),
        "-s".into(),
        "".into(),
        "--json".into(),
    ];
    argv.extend(inst.dsync_server_argv(USER));
    let stdout = homing_ok(&argv, "");
    let mut lines = stdout.lines();
    let state = lines.next().unwrap();
    let parsed = dsync_protocol::state::SyncState::parse(state).expect("a valid state string");
    assert_eq!(parsed.mailboxes.len(), 2, "INBOX and Work: {state}");
    let json: serde_json::Value =
        serde_json::from_str(&lines.collect::<Vec<_>>().join("\n")).unwrap();
    assert_eq!(json["exit_code"], 0);
    assert_eq!(json["local"]["local"]["mails_saved"], 3);
    assert_eq!(json["local"]["bodies_received"], 3);

    let stdout = homing_ok(
        [
            "-o",
            "mail_location=memory:",
            "-o",
            &format!("doveadm_password={}", inst.doveadm_password()),
            "sync",
            "-u",
            USER,
            "--json",
            &inst.tcp_destination(),
        ],
        "",
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["local"]["local"]["mails_saved"], 3);
    assert_no_log_errors(&inst);
}

#[test]
fn doveadm_sync_against_homing_dsync_server() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&[USER]));
    seed(&inst);
    let before = dovecot_view(&inst);
    // doveadm appends `dsync-server` (the last word is not it); homing
    // ignores the extra word like doveadm does.
    let cmd = format!(
        "{} -o mail_location=memory: dsync-server -u {USER}",
        env!("CARGO_BIN_EXE_homing")
    );
    let out = inst.doveadm(["sync", "-u", USER, "-f", &cmd]).unwrap();
    assert!(out.success(), "doveadm sync failed: {}", out.stderr_str());
    // Two-way sync with an empty peer: Dovecot's side keeps everything.
    assert_eq!(dovecot_view(&inst), before);
    assert_no_log_errors(&inst);
}

/// Mailboxes (name, GUID, UIDVALIDITY) and mails of a user.
fn full_view(inst: &DovecotInstance, user: &str) -> (Vec<(String, String, u32)>, Vec<MailRow>) {
    let snap = inst.snapshot(user).expect("snapshot");
    (snap.mailbox_rows(), snap.mail_rows())
}

/// `homing sync` of alice's Maildir at `root` (with `extra` options)
/// against bob's `doveadm dsync-server`.
fn alice_sync_argv(inst: &DovecotInstance, root: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "-o".into(),
        format!("mail_location=maildir:{}", root.display()),
        "sync".into(),
        "-u".into(),
        "alice".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv.extend(inst.dsync_server_argv(USER));
    argv
}

#[test]
fn cli_sync_maildir_local_side_with_dsync_server() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&[USER, "alice"]));
    seed(&inst);
    // homing works on alice's Maildir and syncs it with bob's account.
    let root = inst.create_mail_dir("alice").unwrap();
    let sync = |extra: &[&str]| {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let stdout = homing_ok(alice_sync_argv(&inst, &root, &args), &inst.log());
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    let j = sync(&[]);
    assert_eq!(j["local"]["local"]["mails_saved"], 3);
    assert_eq!(
        full_view(&inst, "alice"),
        full_view(&inst, USER),
        "Dovecot reads homing's Maildir as a copy"
    );

    // Changes on both sides, then a full sync both ways.
    save_all(&inst, "alice", &[("INBOX", "a-new")]);
    add_flags(&inst, "alice", "\\Seen", "INBOX", "1");
    save_all(&inst, USER, &[("INBOX", "b-new")]);
    add_flags(&inst, USER, "\\Answered", "Work", "1");
    let j = sync(&["-f"]);
    assert_eq!(j["local"]["local"]["uids_reassigned"], 1, "{j}");
    let (ab, av) = full_view(&inst, "alice");
    let (bb, bv) = full_view(&inst, USER);
    assert_eq!(ab, bb);
    assert_eq!(av, bv);
    let inbox: Vec<&str> = av
        .iter()
        .filter(|x| x.0 == "INBOX")
        .map(|x| x.2.as_str())
        .collect();
    assert_eq!(inbox.len(), 4, "{av:?}");
    assert_no_log_errors(&inst);
}

#[test]
fn doveadm_sync_against_homing_dsync_server_on_maildir() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&[USER, "alice"]));
    seed(&inst);
    let root = inst.create_mail_dir("alice").unwrap();
    // Real doveadm (bob's account) is the master; homing serves alice's
    // Maildir as the slave over stdio.
    let cmd = format!(
        "{} -o mail_location=maildir:{} dsync-server -u alice",
        env!("CARGO_BIN_EXE_homing"),
        root.display()
    );
    let out = inst.doveadm(["sync", "-u", USER, &cmd]).unwrap();
    assert!(
        out.success(),
        "doveadm sync failed: {}\n{}",
        out.stderr_str(),
        inst.log()
    );
    assert_eq!(full_view(&inst, "alice"), full_view(&inst, USER));

    save_all(&inst, "alice", &[("INBOX", "a-new")]);
    save_all(&inst, USER, &[("INBOX", "b-new")]);
    add_flags(&inst, "alice", "\\Seen", "INBOX", "2");
    let out = inst.doveadm(["sync", "-u", USER, "-f", &cmd]).unwrap();
    assert!(
        out.success(),
        "second doveadm sync failed: {}",
        out.stderr_str()
    );
    let (ab, av) = full_view(&inst, "alice");
    let (bb, bv) = full_view(&inst, USER);
    assert_eq!(ab, bb);
    assert_eq!(av, bv);
    assert_eq!(av.iter().filter(|x| x.0 == "INBOX").count(), 4, "{av:?}");
    assert_no_log_errors(&inst);
}

#[test]
fn cli_sync_between_two_local_maildirs() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&["alice", "carol"]));
    save_all(&inst, "alice", &[("INBOX", "m1"), ("Work", "m2")]);
    add_flags(&inst, "alice", "\\Flagged", "Work", "1");
    let a = inst.mail_dir("alice");
    let c = inst.create_mail_dir("carol").unwrap();
    // alice's Maildir synced with the one at `dest`.
    let sync_with = |dest: &std::path::Path| {
        [
            "-o".to_string(),
            format!("mail_location=maildir:{}", a.display()),
            "sync".into(),
            "-u".into(),
            "alice".into(),
            format!("maildir:{}", dest.display()),
        ]
    };
    homing_ok(sync_with(&c), "");
    assert_eq!(full_view(&inst, "alice"), full_view(&inst, "carol"));
    save_all(&inst, "carol", &[("INBOX", "m3")]);
    homing_ok(sync_with(&c), "");
    let (_, av) = full_view(&inst, "alice");
    assert_eq!(full_view(&inst, "alice"), full_view(&inst, "carol"));
    assert_eq!(av.len(), 3);
    // The same directory on both sides is refused.
    let out = homing().args(sync_with(&a)).output().unwrap();
    assert_eq!(out.status.code(), Some(75));
    assert_no_log_errors(&inst);
}

/// `doveadm backup -R` with an empty homing slave: Dovecot (backup_recv)
/// fails to delete its INBOX and ends the session early; the homing slave
/// must end cleanly, and doveadm must exit as it does against an empty real
/// Dovecot peer.
#[test]
fn doveadm_backup_reverse_against_empty_homing_dsync_server() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&[USER, "carol"]));
    seed(&inst);
    let cmd = format!(
        "{} -o mail_location=memory: dsync-server -u {USER}",
        env!("CARGO_BIN_EXE_homing")
    );
    let homing_out = inst.doveadm(["backup", "-R", "-u", USER, &cmd]).unwrap();
    // Mailbox, UID and flags (the re-seeded Maildir names differ).
    let shape =
        |v: Vec<MailRow>| -> Vec<_> { v.into_iter().map(|(b, u, _, f)| (b, u, f)).collect() };
    let homing_view = shape(dovecot_view(&inst));
    let homing_err = homing_out.stderr_str();
    assert!(
        !homing_err.contains("unexpected input"),
        "homing slave rejected the early end: {homing_err}"
    );

    // The same against a real, empty Dovecot account.
    inst.reset_user(USER).unwrap();
    seed(&inst);
    let real_cmd = inst.dsync_server_argv("carol").join(" ");
    let real_out = inst
        .doveadm(["backup", "-R", "-u", USER, &real_cmd])
        .unwrap();
    assert_eq!(
        homing_out.code(),
        real_out.code(),
        "exit code as with Dovecot"
    );
    assert_eq!(homing_out.code(), Some(65), "{homing_err}");
    assert_eq!(
        homing_view,
        shape(dovecot_view(&inst)),
        "end state as with Dovecot"
    );
    assert!(!homing_view.is_empty());
}

/// A stateful run of homing, on a Maildir Dovecot also writes, against a
/// real `doveadm dsync-server`, after the local transaction log was
/// rotated past the state's modseq. homing compares the mailbox in full on
/// both sides in the same run (Dovecot's master skips it, exits 2 and
/// needs another run); nothing is renumbered, and Dovecot's importer is
/// not handed a full export while it runs incrementally (it asserts on
/// that, `dsync_mailbox_import_change`).
#[test]
fn stateful_sync_across_log_rotations_against_dsync_server() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&[USER, "alice"]));
    seed(&inst);
    let root = inst.create_mail_dir("alice").unwrap();
    let sync = |state: &str| -> (String, String) {
        let argv = alice_sync_argv(&inst, &root, &["-s", state]);
        let out = homing().args(&argv).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", inst.log());
        (stdout, stderr)
    };
    let inbox_uids = |user: &str| -> Vec<(u32, String)> {
        full_view(&inst, user)
            .1
            .into_iter()
            .filter(|m| m.0 == "INBOX")
            .map(|m| (m.1, m.2))
            .collect()
    };
    // A settled chain: the state stops changing.
    let (mut state, _) = sync("");
    for _ in 0..3 {
        let (next, _) = sync(&state);
        if next == state {
            break;
        }
        state = next;
    }
    assert_eq!(full_view(&inst, "alice"), full_view(&inst, USER));

    // Rotated past the state, the older file dropped.
    let before = inbox_uids("alice");
    add_flags(&inst, "alice", "\\Seen", "INBOX", "2");
    common::rotate_inbox_log(&inst, "alice", 3, true);
    save_all(&inst, "alice", &[("INBOX", "a-2")]);
    save_all(&inst, USER, &[("INBOX", "b-2")]);
    let (next, stderr) = sync(&state);
    assert!(
        stderr.contains("no longer in transaction log"),
        "compared in full, and said so: {stderr}"
    );
    assert!(!next.is_empty(), "a state is printed");
    assert_eq!(full_view(&inst, "alice"), full_view(&inst, USER));
    let after = inbox_uids("alice");
    assert_eq!(after[..before.len()], before[..], "no mail renumbered");
    assert_eq!(after.len(), before.len() + 2, "{after:?}");
    // That state's modseq is the lower side's (as Dovecot's), still below
    // where the local log now starts: one more run compares in full and
    // records a modseq the log reaches; the chain is incremental after it.
    let (next, _) = sync(&next);
    let (_, stderr) = sync(&next);
    assert!(!stderr.contains("transaction log"), "{stderr}");
    assert_no_log_errors(&inst);
}

/// Real `doveadm backup` into homing's `dsync-server`: the destination
/// loses what the source expunged, whether the expunged mails are the last
/// ones or not, and keeps nothing the source does not have.
#[test]
fn doveadm_backup_into_homing_removes_what_the_source_expunged() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&[USER, "alice"]));
    seed(&inst);
    save_all(
        &inst,
        USER,
        &[("INBOX", "d4"), ("INBOX", "d5"), ("INBOX", "d6")],
    );
    let root = inst.create_mail_dir("alice").unwrap();
    let cmd = format!(
        "{} -o mail_location=maildir:{} dsync-server -u alice",
        env!("CARGO_BIN_EXE_homing"),
        root.display()
    );
    let backup = |extra: &[&str]| {
        let mut args = vec!["backup", "-u", USER];
        args.extend_from_slice(extra);
        args.push(&cmd);
        let out = inst.doveadm(args).unwrap();
        assert!(
            out.success(),
            "doveadm backup failed: {}\n{}",
            out.stderr_str(),
            inst.log()
        );
    };
    backup(&[]);
    assert_eq!(full_view(&inst, "alice"), full_view(&inst, USER));
    // Expunged at the source: one in the middle, the last two.
    inst.doveadm_user(USER, &["expunge", "mailbox", "INBOX", "uid", "2,4:5"])
        .unwrap();
    backup(&[]);
    assert_eq!(full_view(&inst, "alice"), full_view(&inst, USER));
    inst.doveadm_user(USER, &["expunge", "mailbox", "INBOX", "uid", "3"])
        .unwrap();
    backup(&["-f"]);
    let (_, mails) = full_view(&inst, "alice");
    assert_eq!(
        mails.iter().filter(|m| m.0 == "INBOX").count(),
        1,
        "{mails:?}"
    );
    assert_eq!(full_view(&inst, "alice"), full_view(&inst, USER));
    assert_no_log_errors(&inst);
}

/// A settled stateful chain with changes to old mails on both sides, in
/// both directions: homing as master against `doveadm dsync-server`, and
/// real `doveadm sync -s` as master against homing's `dsync-server`. Each
/// homing side reads only what changed since the state (a partial
/// snapshot, and the records of the old mails the peer changed, asked for
/// by UID); the result is Dovecot's: flags and expunges of old mails cross
/// over, the new mails of both sides (a UID conflict) both survive.
#[test]
fn stateful_runs_with_changes_to_old_mails_both_ways() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&[USER, "alice"]));
    let mails: Vec<(&str, String)> = (0..20).map(|i| ("INBOX", format!("old-{i}"))).collect();
    let mails: Vec<(&str, &str)> = mails.iter().map(|(m, i)| (*m, i.as_str())).collect();
    save_all(&inst, USER, &mails);
    let root = inst.create_mail_dir("alice").unwrap();
    let homing_sync = |state: &str| -> String {
        let argv = alice_sync_argv(&inst, &root, &["-s", state]);
        let out = homing().args(&argv).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", inst.log());
        assert!(!stderr.contains("compared in full"), "{stderr}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let server = format!(
        "{} -o mail_location=maildir:{} dsync-server -u alice",
        env!("CARGO_BIN_EXE_homing"),
        root.display()
    );
    let doveadm_sync = |state: &str| -> String {
        let out = inst
            .doveadm(["sync", "-u", USER, "-s", state, &server])
            .unwrap();
        assert!(out.success(), "{}\n{}", out.stderr_str(), inst.log());
        out.stdout_str().trim().to_string()
    };
    let inbox = |user: &str| -> Vec<(u32, String, Vec<String>)> {
        full_view(&inst, user)
            .1
            .into_iter()
            .filter(|m| m.0 == "INBOX")
            .map(|m| (m.1, m.2, m.3))
            .collect()
    };
    let expunge = |user: &str, uid: &str| {
        inst.doveadm_user(user, &["expunge", "mailbox", "INBOX", "uid", uid])
            .unwrap();
    };
    for (round, sync) in [
        (0, &homing_sync as &dyn Fn(&str) -> String),
        (1, &doveadm_sync),
    ] {
        // Settled: the state stops changing.
        let mut state = sync("");
        for _ in 0..3 {
            let next = sync(&state);
            if next == state {
                break;
            }
            state = next;
        }
        assert_eq!(full_view(&inst, "alice"), full_view(&inst, USER));
        let before = inbox("alice").len();
        let base = (round * 10 + 2) as u32;
        add_flags(&inst, "alice", "\\Seen", "INBOX", &base.to_string());
        expunge("alice", &(base + 1).to_string());
        add_flags(&inst, USER, "\\Flagged", "INBOX", &(base + 3).to_string());
        expunge(USER, &(base + 4).to_string());
        save_all(&inst, "alice", &[("INBOX", &format!("a-new-{round}"))]);
        save_all(&inst, USER, &[("INBOX", &format!("b-new-{round}"))]);
        sync(&state);
        let (a, b) = (inbox("alice"), inbox(USER));
        assert_eq!(a, b, "round {round}");
        // Two expunged, and both new mails kept (they took the same UID).
        assert_eq!(a.len(), before - 2 + 2, "round {round}: {a:?}");
        let flags_of = |uid: u32| a.iter().find(|m| m.0 == uid).map(|m| m.2.clone());
        let has = |uid: u32, flag: &str| flags_of(uid).is_some_and(|f| f.iter().any(|x| x == flag));
        assert!(has(base, "\\Seen"), "{a:?}");
        assert!(has(base + 3, "\\Flagged"), "{a:?}");
        assert!(flags_of(base + 1).is_none() && flags_of(base + 4).is_none());
    }
    assert_no_log_errors(&inst);
}
