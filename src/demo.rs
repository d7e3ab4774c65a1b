//! `homing demo`: two sample Maildir replicas with changes on both sides,
//! synced with the real session driver, the dsync wire codec and the
//! Maildir store, then checked and explained.
//!
//! The replicas live in a temporary directory, or in `--dir DIR` (kept, as
//! `DIR/A` and `DIR/B`, so that Dovecot can be pointed at them).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use dsync_protocol::SyncType;
use sync_engine::SyncSettings;

use crate::session::maildir_store::MaildirReplica;
use crate::session::{run_local_pair, LocalChanges, SessionOptions, SessionStats};
use crate::storage::maildir::{MaildirOptions, MaildirStore};
use crate::storage::{flags, FlagChange, MailStore, NewMessage, StorageError};

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{path}: {reason}")]
    Dir { path: PathBuf, reason: String },
    #[error("sample replica storage: {0}")]
    Setup(#[from] StorageError),
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

/// Lines of the invoice's attachment.
const INVOICE_LINES: usize = 8000;

/// A demo mail; `extra` lines make a large attachment-like body, which
/// exercises body streaming and spooling.
fn mail(subject: &str, extra: usize) -> Vec<u8> {
    let mut m = format!(
        "From: demo@example.org\r\nSubject: {subject}\r\nMessage-ID: <{subject}@demo>\r\n\r\nHello from {subject}.\r\n"
    )
    .into_bytes();
    for i in 0..extra {
        m.extend_from_slice(
            format!("line {i:08} of a long attachment ......................\r\n").as_bytes(),
        );
    }
    m
}

fn open(path: &Path) -> Result<MaildirStore, DemoError> {
    std::fs::create_dir_all(path).map_err(|e| DemoError::Dir {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(MaildirStore::open(path, MaildirOptions::default())?)
}

fn save(st: &MaildirStore, mailbox: &str, subject: &str, extra: usize) -> Result<u32, DemoError> {
    let mut t = st.begin(mailbox)?;
    t.save(NewMessage::default(), &mut &mail(subject, extra)[..])?;
    let r = t.commit()?;
    r.saved_uids
        .first()
        .copied()
        .ok_or_else(|| DemoError::Verify(format!("saving {subject} gave no UID")))
}

fn change_flags(st: &MaildirStore, uid: u32, change: FlagChange) -> Result<(), DemoError> {
    let mut t = st.begin("INBOX")?;
    t.update_flags(uid, change)?;
    t.commit()?;
    Ok(())
}

/// One mail as both replicas must agree on it (plus what explains it).
#[derive(Clone, Debug)]
struct MailView {
    uid: u32,
    guid: String,
    flags: u8,
    keywords: Vec<String>,
    modseq: u64,
    subject: String,
}

#[derive(Clone, Debug)]
struct BoxView {
    name: String,
    guid: [u8; 16],
    uid_validity: u32,
    uid_next: u32,
    subscribed: bool,
    mails: Vec<MailView>,
}

/// What must be identical on both sides: mailboxes (name, GUID,
/// UIDVALIDITY, UIDNEXT, subscription) and mails (UID, GUID, flags,
/// keywords).
type Shape = Vec<(
    String,
    [u8; 16],
    u32,
    u32,
    bool,
    Vec<(u32, String, u8, Vec<String>)>,
)>;

fn shape(v: &[BoxView]) -> Shape {
    v.iter()
        .map(|b| {
            let mails = b
                .mails
                .iter()
                .map(|m| (m.uid, m.guid.clone(), m.flags, m.keywords.clone()))
                .collect();
            (
                b.name.clone(),
                b.guid,
                b.uid_validity,
                b.uid_next,
                b.subscribed,
                mails,
            )
        })
        .collect()
}

/// The Subject of a mail, from the first 8 KiB of its header.
fn subject(body: &mut dyn Read) -> String {
    let mut head = Vec::new();
    if body.take(8192).read_to_end(&mut head).is_err() {
        return "?".into();
    }
    String::from_utf8_lossy(&head)
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn view(path: &Path) -> Result<Vec<BoxView>, DemoError> {
    let st = open(path)?;
    let mut out = Vec::new();
    for e in st.list_mailboxes()? {
        let Some(guid) = e.guid else { continue };
        let mb = st.open_mailbox(&e.name)?;
        let mut mails = Vec::new();
        for m in mb.messages() {
            let m = m?;
            let mut keywords = m.keywords;
            keywords.sort();
            mails.push(MailView {
                uid: m.uid,
                subject: subject(&mut mb.open_body(m.uid)?),
                guid: m.guid,
                flags: m.flags & flags::IMAP_MASK,
                keywords,
                modseq: m.modseq,
            });
        }
        out.push(BoxView {
            uid_next: mb.status().uid_next,
            name: e.name,
            guid,
            uid_validity: e.uid_validity,
            subscribed: e.subscribed,
            mails,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn find<'a>(v: &'a [BoxView], mailbox: &str) -> Result<&'a BoxView, DemoError> {
    v.iter()
        .find(|b| b.name == mailbox)
        .ok_or_else(|| DemoError::Verify(format!("mailbox {mailbox} is missing")))
}

fn by_subject<'a>(b: &'a BoxView, subject: &str) -> Option<&'a MailView> {
    b.mails.iter().find(|m| m.subject == subject)
}

fn flag_words(f: u8, keywords: &[String]) -> String {
    let mut w: Vec<&str> = [
        (flags::ANSWERED, "\\Answered"),
        (flags::FLAGGED, "\\Flagged"),
        (flags::DELETED, "\\Deleted"),
        (flags::SEEN, "\\Seen"),
        (flags::DRAFT, "\\Draft"),
    ]
    .iter()
    .filter(|(bit, _)| f & bit != 0)
    .map(|(_, n)| *n)
    .collect();
    w.extend(keywords.iter().map(String::as_str));
    if w.is_empty() {
        "no flags".into()
    } else {
        w.join(" ")
    }
}

fn describe(v: &[BoxView], out: &mut dyn Write) -> std::io::Result<()> {
    for b in v {
        writeln!(
            out,
            "    {}{}  (uidvalidity {}, next uid {})",
            b.name,
            if b.subscribed { ", subscribed" } else { "" },
            b.uid_validity,
            b.uid_next
        )?;
        for m in &b.mails {
            writeln!(
                out,
                "      uid {:<3} {:<9} {}",
                m.uid,
                m.subject,
                flag_words(m.flags, &m.keywords)
            )?;
        }
    }
    Ok(())
}

fn bodies(n: u64) -> String {
    match n {
        1 => "1 mail body".into(),
        n => format!("{n} mail bodies"),
    }
}

fn changes(l: &LocalChanges) -> String {
    let parts: Vec<String> = [
        (l.mails_saved, "saved"),
        (l.mails_copied, "copied"),
        (l.uids_reassigned, "renumbered"),
        (l.flag_changes, "flag updates"),
        (l.mails_expunged, "expunged"),
        (l.mailboxes_created, "mailboxes created"),
        (l.renames, "renamed"),
        (l.subscription_changes, "subscription changes"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

/// One full two-way sync, A master and B slave, through an in-process pipe.
/// With `report`, prints what each side's store was asked to do (these are
/// requests: a modseq raise counts as a flag update, creating a directory
/// that exists as a creation).
async fn sync(
    a: &Path,
    b: &Path,
    round: u32,
    report: bool,
    out: &mut dyn Write,
) -> Result<(SessionStats, SessionStats), DemoError> {
    let settings = SyncSettings {
        sync_type: SyncType::Full,
        ..SyncSettings::default()
    };
    let (ra, rb) = run_local_pair(
        MaildirReplica::new(open(a)?),
        MaildirReplica::new(open(b)?),
        "demo-host",
        settings,
        &SessionOptions::default(),
    )
    .await;
    for (r, who) in [(&ra.outcome, "A"), (&rb.outcome, "B")] {
        for m in &r.messages {
            writeln!(out, "  [{who}] {m}")?;
        }
    }
    for (code, error) in [(ra.exit_code(), &ra.error), (rb.exit_code(), &rb.error)] {
        if code != 0 || error.is_some() {
            let mut messages = ra.outcome.messages.clone();
            messages.extend(rb.outcome.messages.iter().cloned());
            messages.extend(error.iter().map(|e| e.to_string()));
            return Err(DemoError::Sync {
                round,
                code,
                messages,
            });
        }
    }
    writeln!(
        out,
        "  A -> B: {} items, {} ({} bytes); B -> A: {} items, {} ({} bytes)",
        ra.stats.items_sent,
        bodies(ra.stats.bodies_sent),
        ra.stats.body_bytes_sent,
        rb.stats.items_sent,
        bodies(rb.stats.bodies_sent),
        rb.stats.body_bytes_sent
    )?;
    if report {
        writeln!(out, "  store requests on A: {}", changes(&ra.stats.local))?;
        writeln!(out, "  store requests on B: {}", changes(&rb.stats.local))?;
    }
    Ok((ra.stats, rb.stats))
}

fn same(va: &[BoxView], vb: &[BoxView], when: &str) -> Result<(), DemoError> {
    let (sa, sb) = (shape(va), shape(vb));
    if sa != sb {
        return Err(DemoError::Verify(format!(
            "the replicas differ {when}:\n  A: {sa:?}\n  B: {sb:?}"
        )));
    }
    Ok(())
}

/// Where the replicas go: a directory of the caller's (kept) or a
/// temporary one (removed when the demo ends).
enum Place {
    Kept(PathBuf),
    Temp(tempfile::TempDir),
}

impl Place {
    fn path(&self) -> &Path {
        match self {
            Place::Kept(p) => p,
            Place::Temp(t) => t.path(),
        }
    }
}

fn place(dir: Option<&Path>) -> Result<Place, DemoError> {
    let Some(dir) = dir else {
        return tempfile::Builder::new()
            .prefix("homing-demo-")
            .tempdir()
            .map(Place::Temp)
            .map_err(|e| DemoError::Dir {
                path: std::env::temp_dir(),
                reason: format!("cannot create a temporary directory: {e}"),
            });
    };
    for side in ["A", "B"] {
        let p = dir.join(side);
        // Never write into mail that is already there.
        let used = match std::fs::read_dir(&p) {
            Ok(mut d) => d.next().is_some(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(DemoError::Dir {
                    path: p,
                    reason: e.to_string(),
                })
            }
        };
        if used {
            return Err(DemoError::Dir {
                path: p,
                reason: "already exists and is not empty; the demo only creates new replicas"
                    .into(),
            });
        }
    }
    Ok(Place::Kept(dir.to_path_buf()))
}

/// Runs the demo in `dir` (kept) or in a temporary directory, printing
/// what happens to `out`.
pub async fn run(dir: Option<&Path>, out: &mut dyn Write) -> Result<(), DemoError> {
    let place = place(dir)?;
    let (pa, pb) = (place.path().join("A"), place.path().join("B"));
    writeln!(
        out,
        "homing demo: two Maildir replicas of one mail account, A and B, in {}.",
        place.path().display()
    )?;
    writeln!(
        out,
        "Each sync runs two dsync brains, A as master and B as slave, talking Dovecot's"
    )?;
    writeln!(
        out,
        "dsync protocol through an in-process pipe; each side reads and writes its Maildir"
    )?;
    writeln!(
        out,
        "the way Dovecot does (dovecot-uidlist, dovecot.index.log, new/ and cur/).\n"
    )?;

    // 1. A has mail, B is empty.
    let a = open(&pa)?;
    open(&pb)?;
    for name in ["INBOX", "Work", "Lists"] {
        a.create_mailbox(name, None, None)?;
    }
    a.set_subscribed("Work", true, now())?;
    for (mb, subject, extra) in [
        ("INBOX", "welcome", 0),
        ("INBOX", "invoice", INVOICE_LINES),
        ("INBOX", "meeting", 0),
        ("Work", "report", 0),
        ("Lists", "digest", 0),
    ] {
        save(&a, mb, subject, extra)?;
    }
    drop(a);
    writeln!(
        out,
        "1. A has 5 mails in INBOX, Work and Lists (the invoice with a {} KB attachment); B is empty.",
        mail("invoice", INVOICE_LINES).len() / 1000
    )?;
    writeln!(out, "   First sync:")?;
    sync(&pa, &pb, 1, true, out).await?;
    let (va, vb) = (view(&pa)?, view(&pb)?);
    same(&va, &vb, "after the first sync")?;
    writeln!(
        out,
        "  B is now a copy of A: same mailboxes, mailbox GUIDs, mail GUIDs, UIDs and flags.\n"
    )?;

    // 2. Both sides change while apart.
    writeln!(out, "2. Both sides change while apart:")?;
    let (a, b) = (open(&pa)?, open(&pb)?);
    let ua = save(&a, "INBOX", "from-a", 0)?;
    let ub = save(&b, "INBOX", "from-b", 0)?;
    writeln!(
        out,
        "  - A receives a mail \"from-a\" (uid {ua} on A); B receives \"from-b\" (uid {ub} on B)"
    )?;
    let invoice = by_subject(find(&va, "INBOX")?, "invoice")
        .ok_or_else(|| DemoError::Verify("the invoice is missing".into()))?
        .uid;
    let seen = |add: u8, remove: u8| FlagChange {
        add,
        remove,
        ..FlagChange::default()
    };
    change_flags(&a, invoice, seen(flags::SEEN, 0))?;
    change_flags(&b, invoice, seen(flags::SEEN, 0))?;
    change_flags(&b, invoice, seen(flags::FLAGGED, flags::SEEN))?;
    writeln!(
        out,
        "  - the invoice (uid {invoice}): A reads it (\\Seen); B reads it, marks it unread again and flags it (\\Flagged)"
    )?;
    b.rename_mailbox("Lists", "Archive/Lists", now())?;
    writeln!(out, "  - B renames Lists to Archive/Lists")?;
    let meeting = by_subject(find(&va, "INBOX")?, "meeting")
        .ok_or_else(|| DemoError::Verify("the meeting mail is missing".into()))?
        .uid;
    let mut t = a.begin("INBOX")?;
    t.expunge(meeting, None)?;
    t.commit()?;
    writeln!(out, "  - A deletes the meeting mail (uid {meeting})")?;
    drop((a, b));
    let (va0, vb0) = (view(&pa)?, view(&pb)?);

    // 3. The sync that reconciles everything.
    writeln!(out, "\n3. Second sync:")?;
    sync(&pa, &pb, 2, true, out).await?;
    let (va, vb) = (view(&pa)?, view(&pb)?);
    same(&va, &vb, "after the second sync")?;
    explain(&va0, &vb0, &va, out)?;

    writeln!(out, "\n5. Result, identical on both sides:")?;
    describe(&va, out)?;

    // 6. Nothing may be left to do.
    writeln!(out, "\n6. Third sync, to show that nothing is left to do:")?;
    let (sa, sb) = sync(&pa, &pb, 3, false, out).await?;
    if sa.bodies_sent + sb.bodies_sent != 0 {
        return Err(DemoError::Verify(
            "the third sync sent mail bodies again".into(),
        ));
    }
    let (va3, vb3) = (view(&pa)?, view(&pb)?);
    same(&va3, &vb3, "after the third sync")?;
    if shape(&va3) != shape(&va) {
        return Err(DemoError::Verify(
            "the third sync changed the replicas".into(),
        ));
    }
    writeln!(
        out,
        "  No mail was sent and the replicas did not change: same mailboxes, GUIDs, UIDs, flags and keywords."
    )?;

    let mails: usize = va.iter().map(|b| b.mails.len()).sum();
    writeln!(
        out,
        "\nVerified: replicas identical (mailboxes, GUIDs, UIDs, flags, keywords), no mail lost ({mails} mails in {} mailboxes).",
        va.len()
    )?;
    match &place {
        Place::Kept(dir) => {
            writeln!(
                out,
                "\nThe replicas are kept in {}. To read them with Dovecot (as the user who ran",
                dir.display()
            )?;
            writeln!(
                out,
                "the demo: Dovecot refuses mail owned by root; its Maildir++ separator shows Archive/Lists as Archive.Lists):"
            )?;
            for side in ["A", "B"] {
                writeln!(
                    out,
                    "  doveadm -f table -o mail_location=maildir:{} fetch 'mailbox uid guid flags hdr.subject' all",
                    dir.join(side).display()
                )?;
            }
        }
        Place::Temp(_) => writeln!(
            out,
            "(The replicas were in a temporary directory; `homing demo --dir DIR` keeps them.)"
        )?,
    }
    Ok(())
}

/// Says in plain words what the second sync did, and checks each claim
/// against the replicas: before (`va0`, `vb0`) and after (`v`).
fn explain(
    va0: &[BoxView],
    vb0: &[BoxView],
    v: &[BoxView],
    out: &mut dyn Write,
) -> Result<(), DemoError> {
    writeln!(out, "\n4. What happened:")?;
    let (ia0, ib0, inbox) = (find(va0, "INBOX")?, find(vb0, "INBOX")?, find(v, "INBOX")?);

    // The UID conflict.
    let first_free = ia0.uid_next.max(ib0.uid_next);
    let (fa, fb) = (
        by_subject(ia0, "from-a").ok_or_else(|| DemoError::Verify("from-a missing".into()))?,
        by_subject(ib0, "from-b").ok_or_else(|| DemoError::Verify("from-b missing".into()))?,
    );
    writeln!(
        out,
        "  - UID conflict: uid {} was \"from-a\" on A and uid {} was \"from-b\" on B. A mail keeps its UID",
        fa.uid, fb.uid
    )?;
    writeln!(
        out,
        "    only if the other side never used that UID, so both were renumbered from uid {first_free},"
    )?;
    writeln!(
        out,
        "    the first UID neither side had used, in the order of their GUIDs:"
    )?;
    let mut renumbered: Vec<(&str, &MailView, &MailView)> = Vec::new();
    for (side, before) in [("A", fa), ("B", fb)] {
        let after = inbox
            .mails
            .iter()
            .find(|m| m.guid == before.guid)
            .ok_or_else(|| DemoError::Verify(format!("{} was lost", before.subject)))?;
        renumbered.push((side, before, after));
    }
    renumbered.sort_by_key(|(_, _, after)| after.uid);
    if !renumbered.is_sorted_by(|x, y| x.1.guid.as_bytes() < y.1.guid.as_bytes()) {
        return Err(DemoError::Verify(
            "the renumbered mails are not in GUID order".into(),
        ));
    }
    for (i, (side, before, after)) in renumbered.iter().enumerate() {
        if after.uid < first_free || after.uid == before.uid {
            return Err(DemoError::Verify(format!(
                "{} kept a conflicting UID {}",
                before.subject, after.uid
            )));
        }
        if after.uid != first_free + i as u32 {
            return Err(DemoError::Verify(format!(
                "{} got uid {}, not the next free one",
                before.subject, after.uid
            )));
        }
        writeln!(
            out,
            "      \"{}\" (from {side}, GUID {}): uid {} -> uid {} on both sides",
            before.subject, before.guid, before.uid, after.uid
        )?;
    }

    // The flag conflict on the invoice.
    let (inv_a, inv_b, inv) = (
        by_subject(ia0, "invoice"),
        by_subject(ib0, "invoice"),
        by_subject(inbox, "invoice"),
    );
    let (Some(inv_a), Some(inv_b), Some(inv)) = (inv_a, inv_b, inv) else {
        return Err(DemoError::Verify("the invoice is missing".into()));
    };
    // Opposite changes of one flag: the copy with the higher modseq wins,
    // the master (A) on a tie.
    let (winner, why) = match inv_a.modseq.cmp(&inv_b.modseq) {
        std::cmp::Ordering::Less => (
            ("B", inv_b),
            format!(
                "B's copy has the higher modseq ({} > {})",
                inv_b.modseq, inv_a.modseq
            ),
        ),
        std::cmp::Ordering::Greater => (
            ("A", inv_a),
            format!(
                "A's copy has the higher modseq ({} > {})",
                inv_a.modseq, inv_b.modseq
            ),
        ),
        std::cmp::Ordering::Equal => (
            ("A", inv_a),
            format!(
                "both copies have modseq {}, and the master (A) wins a tie",
                inv_a.modseq
            ),
        ),
    };
    if inv.flags & flags::SEEN != winner.1.flags & flags::SEEN {
        return Err(DemoError::Verify(format!(
            "\\Seen of the invoice did not follow the winner {}: {}",
            winner.0,
            flag_words(inv.flags, &inv.keywords)
        )));
    }
    if inv.flags & flags::FLAGGED == 0 {
        return Err(DemoError::Verify(
            "\\Flagged of the invoice, set only on B, did not reach A".into(),
        ));
    }
    writeln!(
        out,
        "  - Flag conflict on the invoice: A added \\Seen, B removed it. {why},"
    )?;
    writeln!(
        out,
        "    so {}'s choice wins: the invoice is {} on both sides. \\Flagged was changed on B only",
        winner.0,
        if inv.flags & flags::SEEN != 0 {
            "read"
        } else {
            "unread"
        }
    )?;
    writeln!(
        out,
        "    and is simply copied: final flags {}.",
        flag_words(inv.flags, &inv.keywords)
    )?;

    // The rename.
    let lists = find(va0, "Lists")?;
    let archived = find(v, "Archive/Lists")?;
    if archived.guid != lists.guid || v.iter().any(|b| b.name == "Lists") {
        return Err(DemoError::Verify("the rename did not reach A".into()));
    }
    writeln!(
        out,
        "  - Rename: Lists is Archive/Lists on A too; the mailbox GUID is the same, so its mails were not copied again."
    )?;

    // The expunge.
    if by_subject(inbox, "meeting").is_some() {
        return Err(DemoError::Verify(
            "the deleted meeting mail came back".into(),
        ));
    }
    writeln!(
        out,
        "  - Expunge: the meeting mail deleted on A is gone from B too."
    )?;

    // Nothing else lost.
    let before: BTreeSet<(String, String)> = [va0, vb0]
        .iter()
        .flat_map(|v| v.iter())
        .flat_map(|b| b.mails.iter().map(|m| (m.guid.clone(), m.subject.clone())))
        .filter(|(_, s)| s != "meeting")
        .collect();
    let after: BTreeMap<&str, &str> = v
        .iter()
        .flat_map(|b| {
            b.mails
                .iter()
                .map(|m| (m.guid.as_str(), m.subject.as_str()))
        })
        .collect();
    let lost: Vec<&String> = before
        .iter()
        .filter(|(g, _)| !after.contains_key(g.as_str()))
        .map(|(_, s)| s)
        .collect();
    if !lost.is_empty() {
        return Err(DemoError::Verify(format!("mail lost: {lost:?}")));
    }
    if after.len() != before.len() {
        return Err(DemoError::Verify(format!(
            "{} mails expected, {} found",
            before.len(),
            after.len()
        )));
    }
    for b in v {
        for m in &b.mails {
            let was = [va0, vb0]
                .iter()
                .flat_map(|v| v.iter())
                .flat_map(|b| b.mails.iter())
                .any(|x| x.guid == m.guid && x.uid == m.uid);
            if !was && m.guid != fa.guid && m.guid != fb.guid {
                return Err(DemoError::Verify(format!(
                    "{} changed its UID to {}",
                    m.subject, m.uid
                )));
            }
        }
    }
    writeln!(
        out,
        "  - Both new mails are on both sides; every other mail kept its UID."
    )?;
    Ok(())
}

fn now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}
