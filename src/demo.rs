//! `homing demo`: two sample replicas with changes on both sides, synced
//! with the real session driver through the wire codec, then checked.

use std::collections::BTreeSet;
use std::io::Write;

use dsync_protocol::{Guid128, MailFlags, SyncType};
use sync_engine::memory::{MemoryReplica, ReplicaView};
use sync_engine::SyncSettings;

use crate::session::{run_local_pair, SessionOptions, SessionResult, SessionStats};

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("setting up the sample replicas failed: {0}")]
    Setup(String),
    #[error("sync {round} failed with exit code {code}: {messages:?}")]
    Sync {
        round: u32,
        code: i32,
        messages: Vec<String>,
    },
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
}

fn g(n: u8) -> Guid128 {
    let mut b = [0x5au8; 16];
    b[15] = n;
    Guid128(b)
}

fn mail(subject: &str, extra: usize) -> Vec<u8> {
    let mut m = format!(
        "From: demo@example.org\r\nSubject: {subject}\r\nMessage-ID: <{subject}@demo>\r\n\r\nHello from {subject}.\r\n"
    )
    .into_bytes();
    // A large attachment-like body exercises streaming and spooling.
    for i in 0..extra {
        m.extend_from_slice(
            format!("line {i:08} of a long attachment ......................\r\n").as_bytes(),
        );
    }
    m
}

fn setup(e: sync_engine::StorageError) -> DemoError {
    DemoError::Setup(e.to_string())
}

/// Every mail GUID of a replica, per mailbox GUID.
fn guids(v: &ReplicaView) -> BTreeSet<(Guid128, String)> {
    v.mailboxes
        .values()
        .flat_map(|m| m.mails.values().map(move |(g, _, _)| (m.guid, g.clone())))
        .collect()
}

fn describe(v: &ReplicaView, out: &mut dyn Write) -> std::io::Result<()> {
    for (name, mb) in &v.mailboxes {
        writeln!(
            out,
            "    {name}  (uidvalidity {}, next uid {})",
            mb.uid_validity, mb.uid_next
        )?;
        for (uid, (guid, flags, kws)) in &mb.mails {
            let mut f = MailFlags(*flags).names();
            f.retain(|x| x != "\\Recent");
            f.extend(kws.iter().cloned());
            writeln!(out, "      uid {uid:<3} {guid:<22} {}", f.join(" "))?;
        }
    }
    Ok(())
}

fn changes(s: &SessionStats) -> String {
    let l = &s.local;
    format!(
        "{} mails saved, {} copied, {} uids reassigned, {} flag changes, {} expunged, {} mailboxes created, {} renamed",
        l.mails_saved, l.mails_copied, l.uids_reassigned, l.flag_changes, l.mails_expunged, l.mailboxes_created, l.renames
    )
}

async fn sync(
    a: MemoryReplica,
    b: MemoryReplica,
    round: u32,
    out: &mut dyn Write,
) -> Result<(MemoryReplica, MemoryReplica), DemoError> {
    let settings = SyncSettings {
        sync_type: SyncType::Full,
        ..SyncSettings::default()
    };
    let (ra, rb): (SessionResult<MemoryReplica>, SessionResult<MemoryReplica>) =
        run_local_pair(a, b, "demo-host", settings, &SessionOptions::default()).await;
    for (r, who) in [(&ra.outcome, "A"), (&rb.outcome, "B")] {
        if r.status.code() != 0 {
            return Err(DemoError::Sync {
                round,
                code: r.status.code(),
                messages: r.messages.clone(),
            });
        }
        for m in &r.messages {
            writeln!(out, "  [{who}] {m}")?;
        }
    }
    writeln!(
        out,
        "  A -> B: {} items, {} bodies ({} bytes); B -> A: {} items, {} bodies ({} bytes)",
        ra.stats.items_sent,
        ra.stats.bodies_sent,
        ra.stats.body_bytes_sent,
        rb.stats.items_sent,
        rb.stats.bodies_sent,
        rb.stats.body_bytes_sent
    )?;
    writeln!(out, "  changed on A: {}", changes(&ra.stats))?;
    writeln!(out, "  changed on B: {}", changes(&rb.stats))?;
    Ok((ra.store, rb.store))
}

/// Runs the demo, printing a narrative to `out`.
pub async fn run(out: &mut dyn Write) -> Result<(), DemoError> {
    writeln!(
        out,
        "homing demo: two replicas of one mailbox account, A and B."
    )?;
    writeln!(
        out,
        "Each sync runs two dsync brains, A as master and B as slave, talking"
    )?;
    writeln!(
        out,
        "the dsync wire protocol to each other through an in-process pipe.\n"
    )?;

    let mut a = MemoryReplica::new();
    a.now = 1_700_000_000;
    a.create_mailbox("INBOX", g(1), 1_700_000_000)
        .map_err(setup)?;
    a.create_mailbox("Work", g(2), 1_700_000_001)
        .map_err(setup)?;
    a.create_mailbox("Lists", g(3), 1_700_000_002)
        .map_err(setup)?;
    for (mb, id, extra) in [
        ("INBOX", "welcome", 0),
        ("INBOX", "invoice", 8000),
        ("INBOX", "meeting", 0),
        ("Work", "report", 0),
        ("Lists", "digest", 0),
    ] {
        a.deliver(mb, &format!("guid-{id}"), &mail(id, extra), 0)
            .map_err(setup)?;
    }
    a.subscribe("Work", true);
    let b = MemoryReplica::new();

    writeln!(out, "1. A has mail, B is empty. First sync:")?;
    let (mut a, mut b) = sync(a, b, 1, out).await?;
    if a.view() != b.view() {
        return Err(DemoError::Verify(
            "after the first sync the replicas differ".into(),
        ));
    }
    writeln!(out, "  B is now a copy of A.\n")?;

    writeln!(out, "2. Both sides change while apart:")?;
    a.now += 100;
    b.now += 100;
    a.deliver("INBOX", "guid-from-a", &mail("from-a", 0), 0)
        .map_err(setup)?;
    b.deliver("INBOX", "guid-from-b", &mail("from-b", 0), 0)
        .map_err(setup)?;
    writeln!(
        out,
        "  - A and B each receive a different new mail; both get UID 4 (a UID conflict)"
    )?;
    b.rename("Lists", "Archive/Lists").map_err(setup)?;
    writeln!(out, "  - B renames Lists to Archive/Lists")?;
    a.add_flags("INBOX", 2, MailFlags::SEEN, &[]);
    b.add_flags("INBOX", 2, MailFlags::FLAGGED, &["$Important"]);
    writeln!(
        out,
        "  - the invoice (uid 2) is marked \\Seen on A and \\Flagged $Important on B"
    )?;
    a.expunge("INBOX", 3);
    writeln!(out, "  - A deletes the meeting mail (uid 3)")?;
    let before: BTreeSet<_> = guids(&a.view()).union(&guids(&b.view())).cloned().collect();

    writeln!(out, "\n3. Second sync:")?;
    let (a, b) = sync(a, b, 2, out).await?;
    let (va, vb) = (a.view(), b.view());
    writeln!(out, "\n4. Result (identical on both sides):")?;
    describe(&va, out)?;

    if va != vb {
        return Err(DemoError::Verify(
            "the replicas differ after the second sync".into(),
        ));
    }
    let after = guids(&va);
    let lost: Vec<_> = before
        .iter()
        .filter(|(_, id)| id != "guid-meeting")
        .filter(|(_, id)| !after.iter().any(|(_, x)| x == id))
        .collect();
    if !lost.is_empty() {
        return Err(DemoError::Verify(format!("mail lost: {lost:?}")));
    }
    if after.iter().any(|(_, x)| x == "guid-meeting") {
        return Err(DemoError::Verify("the deleted mail came back".into()));
    }
    let inbox = va
        .mailboxes
        .get("INBOX")
        .ok_or_else(|| DemoError::Verify("INBOX is missing".into()))?;
    let inbox_guids: Vec<&str> = inbox.mails.values().map(|(g, _, _)| g.as_str()).collect();
    for id in ["guid-from-a", "guid-from-b"] {
        if !inbox_guids.contains(&id) {
            return Err(DemoError::Verify(format!("{id} is not in INBOX")));
        }
    }
    let invoice = inbox
        .mails
        .values()
        .find(|(g, _, _)| g == "guid-invoice")
        .ok_or_else(|| DemoError::Verify("the invoice is missing".into()))?;
    let merged = invoice.1 & (MailFlags::SEEN | MailFlags::FLAGGED)
        == MailFlags::SEEN | MailFlags::FLAGGED
        && invoice.2.iter().any(|k| k == "$Important");
    if !merged {
        return Err(DemoError::Verify(format!(
            "flags of the invoice not merged: {invoice:?}"
        )));
    }
    if !va.mailboxes.contains_key("Archive/Lists") || va.mailboxes.contains_key("Lists") {
        return Err(DemoError::Verify("the rename did not reach A".into()));
    }
    writeln!(
        out,
        "\n  - both new mails kept: the conflicting UID 4 was given up and both got new UIDs"
    )?;
    writeln!(out, "  - the invoice carries both sides' flags; the rename and the delete reached the other side")?;
    writeln!(
        out,
        "\nVerified: replicas identical, no mail lost ({} mails in {} mailboxes).",
        after.len(),
        va.mailboxes.len()
    )?;
    Ok(())
}
