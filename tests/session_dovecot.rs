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
use test_support::{dovecot_or_skip, DovecotInstance, InstanceOptions};

const USER: &str = "bob";

fn message(id: &str) -> Vec<u8> {
    format!("From: a@example.org\nSubject: {id}\nMessage-ID: <{id}@test>\n\nbody of {id}\n")
        .into_bytes()
}

type View = Vec<(String, u32, String, Vec<String>)>;

fn dovecot_view(inst: &DovecotInstance) -> View {
    let snap = inst.snapshot(USER).expect("snapshot");
    let mut v: View = snap
        .mails
        .iter()
        .map(|m| {
            let mut f = m.flags.clone();
            f.extend(m.keywords.iter().cloned());
            f.sort();
            (m.mailbox.clone(), m.uid, m.guid.clone(), f)
        })
        .collect();
    v.sort();
    v
}

fn homing_view(r: &MemoryReplica) -> View {
    let mut v = Vec::new();
    for (name, mb) in r.view().mailboxes {
        for (uid, (guid, bits, kws)) in mb.mails {
            let mut f = MailFlags(bits).names();
            f.retain(|x| x != "\\Recent");
            f.extend(kws);
            f.sort();
            v.push((name.clone(), uid, guid, f));
        }
    }
    v.sort();
    v
}

fn seed(inst: &DovecotInstance) {
    inst.save_message(USER, "INBOX", &message("d1"))
        .expect("save");
    inst.save_message(USER, "INBOX", &message("d2"))
        .expect("save");
    inst.save_message(USER, "Work", &message("d3"))
        .expect("save");
    inst.doveadm_user(
        USER,
        &[
            "flags",
            "add",
            "\\Flagged $Work",
            "mailbox",
            "INBOX",
            "uid",
            "2",
        ],
    )
    .expect("flags");
}

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
    assert_eq!(a.mailbox("INBOX").unwrap().mails[&1].body, message("d1"));

    // Changes on both sides, including a UID conflict.
    a.now += 10;
    a.deliver("INBOX", "homing-h1", &message("h1"), 0).unwrap();
    a.add_flags("INBOX", 1, MailFlags::SEEN, &[]);
    inst.save_message(USER, "INBOX", &message("d4"))
        .expect("save");
    inst.doveadm_user(
        USER,
        &["flags", "add", "\\Answered", "mailbox", "Work", "uid", "1"],
    )
    .expect("flags");
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
    let log = inst.log();
    assert!(!log.contains("Error"), "Dovecot log has errors:\n{log}");
}

fn homing() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_homing"));
    c.env_remove("HOMING_LOG");
    c
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
    let out = homing().args(&argv).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let state = lines.next().unwrap();
    let parsed = dsync_protocol::state::SyncState::parse(state).expect("a valid state string");
    assert_eq!(parsed.mailboxes.len(), 2, "INBOX and Work: {state}");
    let json: serde_json::Value =
        serde_json::from_str(&lines.collect::<Vec<_>>().join("\n")).unwrap();
    assert_eq!(json["exit_code"], 0);
    assert_eq!(json["local"]["local"]["mails_saved"], 3);
    assert_eq!(json["local"]["bodies_received"], 3);

    let out = homing()
        .args([
            "-o",
            "mail_location=memory:",
            "-o",
            &format!("doveadm_password={}", inst.doveadm_password()),
            "sync",
            "-u",
            USER,
            "--json",
            &inst.tcp_destination(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["local"]["local"]["mails_saved"], 3);
    let log = inst.log();
    assert!(!log.contains("Error"), "Dovecot log has errors:\n{log}");
}

#[test]
fn doveadm_sync_against_homing_dsync_server() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&[USER]));
    seed(&inst);
    let before = dovecot_view(&inst);
    // doveadm appends `dsync-server` (the last word is not it); homing
    // ignores the extra word like doveadm does.
    let cmd = format!("{} dsync-server -u {USER}", env!("CARGO_BIN_EXE_homing"));
    let out = inst.doveadm(["sync", "-u", USER, "-f", &cmd]).unwrap();
    assert!(out.success(), "doveadm sync failed: {}", out.stderr_str());
    // Two-way sync with an empty peer: Dovecot's side keeps everything.
    assert_eq!(dovecot_view(&inst), before);
    let log = inst.log();
    assert!(!log.contains("Error"), "Dovecot log has errors:\n{log}");
}
