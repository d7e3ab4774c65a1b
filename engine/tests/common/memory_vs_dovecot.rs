//! Comparing a `MemoryReplica` with a real Dovecot user: both sides as
//! sorted rows, and the seed mail both sides start from. Shared by
//! sync-engine's `dovecot_interop` and homing's `session_dovecot` (which
//! includes this file by path).
#![allow(dead_code)] // each including test uses a different part

use dsync_protocol::MailFlags;
use sync_engine::memory::MemoryReplica;
use test_support::{small_message, DovecotInstance, MailRow};

/// The Dovecot user the tests replicate.
pub const USER: &str = "bob";

/// The user's mails, as Dovecot shows them.
pub fn dovecot_view(inst: &DovecotInstance) -> Vec<MailRow> {
    inst.snapshot(USER).expect("snapshot").mail_rows()
}

/// The replica's mails, in the same form as [`dovecot_view`].
pub fn homing_view(r: &MemoryReplica) -> Vec<MailRow> {
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

/// The user's mailboxes as (name, mailbox GUID), sorted.
pub fn dovecot_boxes(inst: &DovecotInstance) -> Vec<(String, String)> {
    let mut v: Vec<_> = inst
        .snapshot(USER)
        .expect("snapshot")
        .mailboxes
        .iter()
        .map(|m| (m.name.clone(), m.guid.clone()))
        .collect();
    v.sort();
    v
}

/// The replica's mailboxes, in the same form as [`dovecot_boxes`].
pub fn homing_boxes(r: &MemoryReplica) -> Vec<(String, String)> {
    r.view()
        .mailboxes
        .iter()
        .map(|(n, m)| (n.clone(), m.guid.to_hex()))
        .collect()
}

/// Saves each `(mailbox, id)` as [`small_message`]`(id)` for `user`
/// through Dovecot.
pub fn save_all(inst: &DovecotInstance, user: &str, mails: &[(&str, &str)]) {
    for (mailbox, id) in mails {
        inst.save_message(user, mailbox, &small_message(id))
            .expect("save");
    }
}

/// `doveadm flags add WORDS mailbox MAILBOX uid UID` for `user`.
pub fn add_flags(inst: &DovecotInstance, user: &str, words: &str, mailbox: &str, uid: &str) {
    inst.doveadm_user(
        user,
        &["flags", "add", words, "mailbox", mailbox, "uid", uid],
    )
    .expect("flags");
}

/// The starting point: d1 and d2 in INBOX (d2 flagged, keyword `$Work`),
/// d3 in Work.
pub fn seed(inst: &DovecotInstance) {
    save_all(
        inst,
        USER,
        &[("INBOX", "d1"), ("INBOX", "d2"), ("Work", "d3")],
    );
    add_flags(inst, USER, "\\Flagged $Work", "INBOX", "2");
}

/// Dovecot logged no error.
pub fn assert_no_log_errors(inst: &DovecotInstance) {
    let log = inst.log();
    assert!(!log.contains("Error"), "Dovecot log has errors:\n{log}");
}
