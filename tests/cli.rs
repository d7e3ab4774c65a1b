//! The command line: doveadm's parsing rules and exit codes, and the demo.

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

#[test]
fn demo_runs_and_verifies() {
    let (c, out, err) = code(&["demo"]);
    assert_eq!(c, 0, "{out}\n{err}");
    assert!(
        out.contains("Verified: replicas identical, no mail lost"),
        "{out}"
    );
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
