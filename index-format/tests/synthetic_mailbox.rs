//! The synthetic mailbox generator used by the open/replay benchmark produces
//! files the readers accept and replay to the state the generator expects.

mod common;

use common::synth::{write_mailbox, INDEXID, UID_VALIDITY};
use index_format::view::MailboxView;

#[test]
fn synthetic_mailbox_replays_to_the_generated_state() {
    let tmp = tempfile::tempdir().unwrap();
    let want = write_mailbox(tmp.path(), 2000, 600, 42);
    let v = MailboxView::open(tmp.path()).unwrap();
    assert!(v.problems().is_empty(), "{:?}", v.problems());
    assert_eq!(v.next_uid(), want.next_uid);
    assert_eq!(v.messages_count(), want.messages_count);
    assert_eq!(v.highest_modseq(), want.highest_modseq);
    assert_eq!(v.head().offset, want.log_size);
    assert_eq!(v.uid_validity(), UID_VALIDITY);
    assert_eq!(v.header().indexid, INDEXID);
    let h = v.header();
    let seen = v.messages().filter(|m| m.flags() & 0x08 != 0).count() as u32;
    assert_eq!(h.seen_messages_count, seen);
    let mut prev = 0;
    for m in v.messages() {
        assert!(m.uid() > prev);
        prev = m.uid();
        assert!(m.modseq() <= want.highest_modseq);
    }
}

/// When Dovecot is installed, `doveadm dump` of a generated mailbox must show
/// the same state as homing's replay.
#[test]
fn doveadm_agrees_with_the_replay_of_a_synthetic_mailbox() {
    let Ok(out) = std::process::Command::new("doveadm").arg("help").output() else {
        eprintln!("doveadm not installed; skipped");
        return;
    };
    let _ = out;
    let tmp = tempfile::tempdir().unwrap();
    write_mailbox(tmp.path(), 1500, 400, 9);
    let out = std::process::Command::new("doveadm")
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .env("TZ", "UTC")
        .current_dir(tmp.path())
        .args(["dump", "dovecot.index"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("-- RECORDS: "),
        "doveadm dump failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = tmp.path().join("dovecot.index.dump.txt");
    std::fs::write(&dump, text).unwrap();
    let n = common::index_dump::check_index_dump(&dump);
    assert!(n > 1500 * 5, "only {n} values compared");
}

/// Writes a small synthetic mailbox to `$HOMING_SYNTH_DIR` for checking it by
/// hand with `doveadm dump` (run with `--ignored`).
#[test]
#[ignore]
fn write_synthetic_mailbox_for_doveadm() {
    let dir = std::env::var_os("HOMING_SYNTH_DIR").expect("set HOMING_SYNTH_DIR");
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let want = write_mailbox(&dir, 1000, 300, 7);
    eprintln!("{want:?}");
}
