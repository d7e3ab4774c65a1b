//! Replay of index + log into one mailbox view, against the final state of the
//! fixture scenario (fixtures/index/README.md) as `doveadm dump` shows it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::fixtures;
use index_format::index::flags::{ANSWERED, BACKEND, DELETED, DRAFT, FLAGGED, SEEN};
use index_format::log::{LogFile, RecordBody, RecordType};
use index_format::view::MailboxView;

fn inbox(format: &str) -> PathBuf {
    let f = fixtures().join("index");
    match format {
        "maildir" => f.join("maildir/Maildir"),
        "sdbox" => f.join("sdbox/sdbox/mailboxes/INBOX/dbox-Mails"),
        "mdbox" => f.join("mdbox/mdbox/mailboxes/INBOX/dbox-Mails"),
        _ => unreachable!(),
    }
}

/// The INBOX of every format ends as: uids 1,2,3 (4 expunged), next_uid 5,
/// keywords `$Important` and `project-x`, modseqs 15/10/14, HIGHESTMODSEQ 16.
#[test]
fn inbox_final_state_in_every_format() {
    for format in ["maildir", "sdbox", "mdbox"] {
        let v = MailboxView::open(inbox(format)).unwrap();
        assert!(v.problems().is_empty(), "{format}: {:?}", v.problems());
        assert_eq!(v.next_uid(), 5, "{format}");
        assert_eq!(v.messages_count(), 3, "{format}");
        assert_eq!(v.keywords(), ["$Important", "project-x"], "{format}");
        assert_eq!(v.highest_modseq(), 16, "{format}");
        let uids: Vec<u32> = v.messages().map(|m| m.uid()).collect();
        assert_eq!(uids, [1, 2, 3], "{format}");
        let m1 = v.lookup_uid(1).unwrap();
        let m2 = v.lookup_uid(2).unwrap();
        let m3 = v.lookup_uid(3).unwrap();
        assert!(v.lookup_uid(4).is_none(), "{format}: uid 4 was expunged");
        assert_eq!(m1.imap_flags(), SEEN | ANSWERED | DRAFT, "{format}");
        assert_eq!(m2.imap_flags(), SEEN, "{format}");
        assert_eq!(m3.imap_flags(), SEEN | FLAGGED, "{format}");
        assert_eq!(m1.keywords().collect::<Vec<_>>(), ["project-x"], "{format}");
        assert_eq!(
            m2.keywords().collect::<Vec<_>>(),
            ["$Important"],
            "{format}"
        );
        assert_eq!(m3.keywords().count(), 0, "{format}");
        assert_eq!(
            (m1.modseq(), m2.modseq(), m3.modseq()),
            (15, 10, 14),
            "{format}"
        );
        let h = v.header();
        assert_eq!(
            (h.seen_messages_count, h.deleted_messages_count),
            (3, 0),
            "{format}"
        );
        assert_eq!(h.first_recent_uid, 5, "{format}");
        // dbox moved uids 1-3 to ALT storage (backend flag); maildir has no such bit.
        let alt = m1.flags() & BACKEND != 0;
        assert_eq!(alt, format == "sdbox", "{format}: alt flag");
        assert_eq!(m1.flags() & DELETED, 0);
        assert_eq!(v.keyword_index("PROJECT-X"), Some(1), "{format}");
        assert_eq!(v.mailbox_guid().is_some(), format != "maildir", "{format}");
    }
}

#[test]
fn maildir_index_is_replayed_across_the_rotated_log() {
    let v = MailboxView::open(inbox("maildir")).unwrap();
    let file = v.file_header().unwrap();
    // The snapshot still holds uid 4; the log after it expunges it.
    assert_eq!(file.messages_count, 4);
    assert_eq!((file.log_file_seq, file.log_file_head_offset), (3, 40));
    let start = v.replay_start().unwrap();
    assert_eq!((start.file_seq, start.offset), (3, 40));
    assert_eq!((v.head().file_seq, v.head().offset), (3, 464));
    assert_eq!(v.tail_offset(), 464);
    let logs = v.log_files();
    assert_eq!(logs.len(), 2);
    assert_eq!((logs[0].0.file_seq, logs[0].1), (2, 1660));
    assert_eq!(
        (logs[1].0.prev_file_seq, logs[1].0.prev_file_offset),
        (2, 1660)
    );
}

#[test]
fn log_only_mailboxes_are_rebuilt_from_the_reset_log() {
    for (format, dir) in [
        ("maildir", "maildir/Maildir/.Work.Reports"),
        ("sdbox", "sdbox/sdbox/mailboxes/Work/Reports/dbox-Mails"),
        ("mdbox", "mdbox/mdbox/mailboxes/Work/Reports/dbox-Mails"),
    ] {
        let v = MailboxView::open(fixtures().join("index").join(dir)).unwrap();
        assert!(v.file_header().is_none(), "{format}");
        assert_eq!(v.next_uid(), 2, "{format}");
        assert_eq!(
            v.messages().map(|m| m.uid()).collect::<Vec<_>>(),
            [1],
            "{format}"
        );
        // `mailbox update --min-highest-modseq 100` raised only the global value.
        assert_eq!(v.highest_modseq(), 100, "{format}");
        assert_eq!(v.lookup_uid(1).unwrap().modseq(), 2, "{format}");
        assert_eq!(
            v.tail_offset(),
            if format == "maildir" { 616 } else { 0 },
            "{format}"
        );
    }
    // The empty mailbox: only a log header.
    let v = MailboxView::open(fixtures().join("index/maildir/Maildir/.Work")).unwrap();
    assert_eq!(v.messages_count(), 0);
    assert_eq!(v.next_uid(), 1);
}

#[test]
fn mdbox_mailbox_and_map_index_link_up() {
    let v = MailboxView::open(inbox("mdbox")).unwrap();
    let map = MailboxView::open(fixtures().join("index/mdbox/mdbox/storage")).unwrap();
    assert!(map.problems().is_empty());
    let hdr = index_format::ext::DboxHeader::decode(&v.extension("mdbox-hdr").unwrap().header);
    assert_eq!(hdr.first, map.uid_validity(), "map_uid_validity");
    let map_uids: Vec<u32> = map.messages().map(|m| m.uid()).collect();
    assert_eq!(map_uids, [1, 2, 3, 5]);
    for m in v.messages() {
        let mrec = m.mdbox().unwrap();
        assert_eq!(mrec.map_uid, m.uid());
        assert!(m.guid().is_some());
        let mm = map.lookup_uid(mrec.map_uid).unwrap();
        let r = mm.map_record().unwrap();
        assert_eq!(r.file_id, 2, "INBOX mails were moved to the ALT file m.2");
        assert_eq!(mm.refcount(), Some(1));
    }
    let mm5 = map.lookup_uid(5).unwrap().map_record().unwrap();
    assert_eq!((mm5.file_id, mm5.offset, mm5.size), (4, 16, 262));
    let mh = index_format::ext::MapHeader::decode(&map.extension("map").unwrap().header);
    assert_eq!(mh.highest_file_id, 4);
}

#[test]
fn list_index_names_and_records() {
    let v = MailboxView::open(fixtures().join("index/maildir/Maildir/dovecot.list.index")).unwrap();
    let lh = index_format::ext::ListHeader::decode(&v.extension("list").unwrap().header);
    let names: Vec<(u32, &str)> = lh
        .names
        .iter()
        .map(|(i, n)| (*i, std::str::from_utf8(n).unwrap()))
        .collect();
    assert_eq!(
        names,
        [(1, "Work"), (2, "Reports"), (3, "INBOX"), (4, "Tmp")]
    );
    let recs: Vec<(u32, u32)> = v
        .messages()
        .map(|m| {
            let l = m.list_record().unwrap();
            (l.name_id, l.parent_uid)
        })
        .collect();
    assert_eq!(recs, [(1, 0), (2, 1), (3, 0)]);
}

#[test]
fn changes_since_returns_the_later_records_with_their_modseqs() {
    let v = MailboxView::open(inbox("maildir")).unwrap();
    let ch = v.changes_since(11).unwrap();
    assert!(ch.is_complete());
    let bumps: Vec<(u32, u32, RecordType, u64)> = ch
        .map(|c| c.unwrap())
        .filter(|c| {
            matches!(
                c.record.record_type(),
                Some(RecordType::FlagUpdate | RecordType::KeywordUpdate | RecordType::ExpungeGuid)
            )
        })
        .map(|c| {
            (
                c.file_seq,
                c.record.offset,
                c.record.record_type().unwrap(),
                c.record.modseq,
            )
        })
        .collect();
    assert_eq!(
        bumps,
        [
            (3, 40, RecordType::FlagUpdate, 12),
            (3, 164, RecordType::FlagUpdate, 13),
            (3, 184, RecordType::ExpungeGuid, 13),
            (3, 212, RecordType::KeywordUpdate, 14),
            (3, 244, RecordType::FlagUpdate, 15),
            (3, 352, RecordType::ExpungeGuid, 16),
        ]
    );
    // Everything since the start of history is available (the oldest log is a reset log).
    let all = v.changes_since(0).unwrap();
    assert!(all.is_complete());
    let first = all
        .map(|c| c.unwrap())
        .find(|c| c.record.modseq > 1)
        .unwrap();
    assert_eq!((first.file_seq, first.record.offset), (2, 236));
    // ext-rec records come with the intro that gives their meaning.
    let cache_rec = v
        .changes_since(0)
        .unwrap()
        .map(|c| c.unwrap())
        .find(|c| c.record.record_type() == Some(RecordType::ExtRecUpdate))
        .unwrap();
    let intro = cache_rec.intro.unwrap();
    assert_eq!(intro.record_size, 4);
    assert_eq!(v.extensions()[intro.ext_id as usize].name, "cache");
}

fn copy_dir(from: &Path, to: &Path, names: &[&str]) {
    for n in names {
        std::fs::copy(from.join(n), to.join(n)).unwrap();
    }
}

/// A flag-update record (`+flags` on uid) in log framing.
fn flag_record(uid: u32, add: u8, external: bool) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&index_format::pack_offset(20));
    let t = 0x4u32 | if external { 0x1000_0000 } else { 0 };
    r.extend_from_slice(&t.to_le_bytes());
    r.extend_from_slice(&uid.to_le_bytes());
    r.extend_from_slice(&uid.to_le_bytes());
    r.extend_from_slice(&[add, 0, 0, 0]);
    r
}

#[test]
fn a_log_being_appended_is_read_up_to_the_last_complete_transaction() {
    let tmp = tempfile::tempdir().unwrap();
    let src = inbox("sdbox");
    copy_dir(&src, tmp.path(), &["dovecot.index", "dovecot.index.log"]);
    let before = MailboxView::open(tmp.path()).unwrap();
    let end = before.head().offset;
    let log_path = tmp.path().join("dovecot.index.log");

    // Half of a two-record transaction: a boundary announcing 52 bytes, one record.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .unwrap();
    let mut tx = Vec::new();
    tx.extend_from_slice(&index_format::pack_offset(12));
    tx.extend_from_slice(&0x1008_0000u32.to_le_bytes());
    tx.extend_from_slice(&52u32.to_le_bytes());
    tx.extend_from_slice(&flag_record(2, FLAGGED, true));
    f.write_all(&tx).unwrap();
    f.flush().unwrap();
    let mid = MailboxView::open(tmp.path()).unwrap();
    assert_eq!(mid.head().offset, end, "partial transaction not applied");
    assert_eq!(mid.lookup_uid(2).unwrap().imap_flags(), SEEN);
    let bytes = std::fs::read(&log_path).unwrap();
    let lf = LogFile::parse(&bytes).unwrap();
    assert_eq!(lf.sync_offset(), end);
    assert_eq!(lf.trailing_bytes(), 32);

    // Its second record arrives: now the transaction is complete.
    f.write_all(&flag_record(3, DRAFT, true)).unwrap();
    f.flush().unwrap();
    let after = MailboxView::open(tmp.path()).unwrap();
    assert_eq!(after.head().offset, end + 52);
    assert_eq!(after.lookup_uid(2).unwrap().imap_flags(), SEEN | FLAGGED);
    assert_eq!(
        after.lookup_uid(3).unwrap().imap_flags(),
        SEEN | FLAGGED | DRAFT
    );
    assert_eq!(after.highest_modseq(), 18);
    assert_eq!(after.lookup_uid(2).unwrap().modseq(), 17);
    assert_eq!(after.lookup_uid(3).unwrap().modseq(), 18);
    // The new non-tail records do not move the tail; they are external, so it may skip them
    // only if it already reached their start.
    assert!(after.tail_offset() <= after.head().offset);

    // A record whose packed size is still zero (written header-last) is not yet there.
    f.write_all(&[0u8; 20]).unwrap();
    let again = MailboxView::open(tmp.path()).unwrap();
    assert_eq!(again.head().offset, end + 52);
}

#[test]
fn log_records_decode_into_typed_bodies() {
    let bytes = std::fs::read(inbox("maildir").join("dovecot.index.log.2")).unwrap();
    let lf = LogFile::parse(&bytes).unwrap();
    assert_eq!(lf.sync_offset(), 1660);
    assert_eq!(lf.highest_modseq(), 11);
    let mut appends = Vec::new();
    for r in lf.records() {
        let r = r.unwrap();
        if let RecordBody::Append(a) = r.body().unwrap() {
            appends.extend(a.map(|e| (e.uid, e.flags)));
        }
    }
    assert_eq!(appends, [(1, SEEN), (2, 0), (3, FLAGGED), (4, 0)]);
    let txs: Vec<_> = lf.transactions().map(|t| t.unwrap()).collect();
    assert!(txs
        .iter()
        .all(|t| t.records[0].record_type() != Some(RecordType::Boundary)
            || t.end - t.offset
                == match t.records[0].body().unwrap() {
                    RecordBody::Boundary { size } => size,
                    _ => unreachable!(),
                }));
    assert_eq!(txs.last().unwrap().end, 1660);
}
