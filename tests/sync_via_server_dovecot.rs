//! `homing sync -S` / `homing backup -S` against a real Dovecot 2.3: the
//! command runs in Dovecot's doveadm server (its pre-authenticated
//! `doveadm-server` unix socket, or its TCP listener with
//! `doveadm_password`), the destination gets the mail, and failures give
//! the exit code `doveadm sync -S` gives for the same case.

mod common;
use common::show;

use std::process::{Command, Output};

use test_support::{
    dovecot_or_skip, generate_mails, DovecotInstance, InstanceOptions, SnapshotOptions,
};

fn homing(inst: &DovecotInstance) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_homing"));
    c.env_remove("HOMING_LOG")
        .env("HOMING_NO_PROGRESS", "1")
        .arg("-c")
        .arg(inst.config_path());
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("run command")
}

fn socket(inst: &DovecotInstance) -> String {
    inst.run_dir().join("doveadm-server").display().to_string()
}

/// alice's mail as stored at `location` (a location on the server side).
fn snapshot_at(inst: &DovecotInstance, user: &str, location: &str) -> test_support::Snapshot {
    inst.snapshot_with(
        user,
        &SnapshotOptions {
            location: Some(location.into()),
            ..SnapshotOptions::default()
        },
    )
    .expect("snapshot")
}

fn options() -> InstanceOptions {
    InstanceOptions::new()
        .users(&["alice", "bob"])
        .doveadm_tcp(true)
}

fn populate(inst: &DovecotInstance) {
    inst.populate(
        "alice",
        &generate_mails(11, "alice", 12, &["INBOX", "Work", "Lists/rust"]),
    )
    .expect("populate alice");
    inst.populate("bob", &generate_mails(12, "bob", 4, &["INBOX"]))
        .expect("populate bob");
}

#[test]
fn sync_and_backup_run_in_dovecots_doveadm_server() {
    let inst = dovecot_or_skip!(options());
    populate(&inst);
    let source = inst.snapshot("alice").unwrap();

    // Unix socket (0600: pre-authenticated), two-way sync with a state.
    let mut c = homing(&inst);
    c.args(["sync", "-S", &socket(&inst), "-u", "alice", "-s", ""])
        .arg("maildir:~/viaS");
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        state.len() > 20 && !state.contains(char::is_whitespace),
        "one state line expected: {}",
        show(&out)
    );
    snapshot_at(&inst, "alice", "maildir:~/viaS")
        .assert_same(&source, "sync -S over the unix socket");

    // The same state given back: an incremental sync with nothing to do.
    let mut c = homing(&inst);
    c.args(["sync", "-S", &socket(&inst), "-u", "alice", "-s", &state])
        .arg("maildir:~/viaS");
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    // TCP listener, authenticated with doveadm_password from the config.
    let addr = inst.tcp_addr().to_string();
    let mut c = homing(&inst);
    c.args(["backup", "-S", &addr, "-u", "alice", "maildir:~/viaT"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(out.stdout.is_empty(), "no -s, no output: {}", show(&out));
    snapshot_at(&inst, "alice", "maildir:~/viaT").assert_same(&source, "backup -S over TCP");

    // -o doveadm_password= wins over the config; a port-less host takes doveadm_port.
    let mut c = homing(&inst);
    c.args([
        "-o",
        &format!("doveadm_password={}", inst.doveadm_password()),
    ])
    .args(["sync", "-S", "127.0.0.1", "-u", "alice", "maildir:~/viaP"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    snapshot_at(&inst, "alice", "maildir:~/viaP")
        .assert_same(&source, "sync -S host (doveadm_port)");
}

#[test]
fn several_users_get_one_command_each() {
    let inst = dovecot_or_skip!(options());
    populate(&inst);
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("users");
    std::fs::write(&list, "alice\n\nbob\n").unwrap();
    let mut c = homing(&inst);
    c.args(["sync", "-S", &socket(&inst), "-s", "", "-F"])
        .arg(&list)
        .arg("maildir:~/viaF");
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    // Each user's state, followed by the user.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let users: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.rsplit_once(' ').map(|(_, u)| u))
        .collect();
    assert_eq!(users, ["alice", "bob"], "{}", show(&out));
    for user in ["alice", "bob"] {
        snapshot_at(&inst, user, "maildir:~/viaF")
            .assert_same(&inst.snapshot(user).unwrap(), &format!("-F: {user}"));
    }
}

#[test]
fn failures_exit_as_doveadm_sync_s_does() {
    let inst = dovecot_or_skip!(options());
    populate(&inst);
    let sock = socket(&inst);
    let addr = inst.tcp_addr().to_string();
    let cases: Vec<(&str, Vec<String>, i32)> = vec![
        (
            "unknown user",
            ["sync", "-S", &sock, "-u", "nosuchuser", "maildir:~/x"]
                .map(String::from)
                .to_vec(),
            67,
        ),
        (
            // The server's sync cannot reach its destination.
            "unreachable destination",
            ["sync", "-S", &sock, "-u", "alice", "tcp:127.0.0.1:1"]
                .map(String::from)
                .to_vec(),
            75,
        ),
        (
            "wrong doveadm_password",
            [
                "-o",
                "doveadm_password=wrong",
                "backup",
                "-S",
                &addr,
                "-u",
                "alice",
                "maildir:~/x",
            ]
            .map(String::from)
            .to_vec(),
            75,
        ),
        (
            "no server at the socket",
            [
                "sync",
                "-S",
                "/nonexistent/doveadm-server",
                "-u",
                "alice",
                "maildir:~/x",
            ]
            .map(String::from)
            .to_vec(),
            75,
        ),
        (
            "bad -g, refused before connecting",
            [
                "sync",
                "-S",
                &sock,
                "-u",
                "alice",
                "-g",
                "xyz",
                "maildir:~/x",
            ]
            .map(String::from)
            .to_vec(),
            75,
        ),
        (
            "no destination",
            ["backup", "-S", &sock, "-u", "alice"]
                .map(String::from)
                .to_vec(),
            64,
        ),
    ];
    for (what, args, expected) in cases {
        let mut d = inst.doveadm_command();
        d.args(&args);
        let dove = run(d);
        let mut h = homing(&inst);
        h.args(&args);
        let ours = run(h);
        assert_eq!(
            dove.status.code(),
            Some(expected),
            "{what}: doveadm\n{}",
            show(&dove)
        );
        assert_eq!(
            ours.status.code(),
            dove.status.code(),
            "{what}: homing\n{}\ndoveadm\n{}",
            show(&ours),
            show(&dove)
        );
    }
    // The server's own log line about the unknown user is shown.
    let mut h = homing(&inst);
    h.args(["sync", "-S", &sock, "-u", "nosuchuser", "maildir:~/x"]);
    let ours = run(h);
    let err = String::from_utf8_lossy(&ours.stderr);
    assert!(err.contains("User doesn't exist"), "{}", show(&ours));
}
