//! Helpers shared by tests (`mod common;`); each test binary uses some.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Output;

use homing::storage::maildir::{MaildirOptions, MaildirStore};
use homing::storage::{MailStore, NewMessage};

/// A Maildir at `dir` whose INBOX (with the given GUID and UIDVALIDITY)
/// holds `mails` as (uid, mail GUID), each with `body(guid)`, received and
/// saved at 1_700_000_000 + uid.
pub fn inbox_store(
    dir: &Path,
    mailbox_guid: [u8; 16],
    uid_validity: u32,
    mails: &[(u32, impl AsRef<str>)],
    body: impl Fn(&str) -> String,
) -> MaildirStore {
    let st = MaildirStore::open(dir, MaildirOptions::default()).unwrap();
    st.create_mailbox("INBOX", Some(mailbox_guid), Some(uid_validity))
        .unwrap();
    let mut t = st.begin("INBOX").unwrap();
    for (uid, guid) in mails {
        let guid = guid.as_ref();
        t.save(
            NewMessage {
                uid: Some(*uid),
                guid: Some(guid.to_string()),
                received: Some(1_700_000_000 + i64::from(*uid)),
                saved: Some(1_700_000_000 + i64::from(*uid)),
                ..Default::default()
            },
            &mut body(guid).as_bytes(),
        )
        .unwrap();
    }
    t.commit().unwrap();
    st
}

/// uid -> (guid, body) of the INBOX.
pub fn inbox_contents(st: &MaildirStore) -> BTreeMap<u32, (String, String)> {
    let mb = st.open_mailbox("INBOX").unwrap();
    let mut out = BTreeMap::new();
    for m in mb.messages() {
        let m = m.unwrap();
        let body = body_text(mb.as_ref(), m.uid);
        out.insert(m.uid, (m.guid, body));
    }
    out
}

/// The whole text of a stored mail.
pub fn body_text(mb: &dyn homing::storage::Mailbox, uid: u32) -> String {
    let mut body = String::new();
    mb.open_body(uid)
        .unwrap()
        .read_to_string(&mut body)
        .unwrap();
    body
}

/// A finished command's exit code, stdout and stderr, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Renames one mail file of the Maildir mailbox at `dir` (appends `F` to
/// its name), as another program changing a flag would.
pub fn rename_a_mail_file(dir: &Path) {
    let f = ["cur", "new"]
        .iter()
        .flat_map(|s| std::fs::read_dir(dir.join(s)).unwrap())
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let mut renamed = f.clone().into_os_string();
    renamed.push("F");
    std::fs::rename(&f, &renamed).unwrap();
}

/// Rotates `user`'s INBOX transaction log `times` times: each flag change
/// runs with rotation at any size. With `drop_old`, the rotated file (`.2`)
/// is removed at once, so the log no longer reaches back before the last
/// rotation.
pub fn rotate_inbox_log(
    inst: &test_support::DovecotInstance,
    user: &str,
    times: usize,
    drop_old: bool,
) {
    for i in 0..times {
        let op = if i % 2 == 0 { "add" } else { "remove" };
        let mut c = inst.doveadm_command();
        for o in [
            "mail_index_log_rotate_max_size=1",
            "mail_index_log_rotate_min_size=1",
            "mail_index_log_rotate_min_time=0",
        ] {
            c.args(["-o", o]);
        }
        if drop_old {
            c.args(["-o", "mail_index_log2_max_age=0"]);
        }
        c.args([
            "flags", op, "-u", user, "\\Draft", "mailbox", "INBOX", "uid", "1",
        ]);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}
