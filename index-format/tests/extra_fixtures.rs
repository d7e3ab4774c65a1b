//! The extra fixtures (fixtures/extra/gen.sh): a rotated log pair, an index
//! older than its log, more than 32 keywords, a large cache-bearing mailbox.

mod common;

use std::path::PathBuf;

use common::fixtures;
use index_format::index::flags::{ANSWERED, DELETED, FLAGGED, SEEN};
use index_format::view::MailboxView;

fn sdbox(name: &str) -> PathBuf {
    fixtures()
        .join("extra/sdbox/mailboxes")
        .join(name)
        .join("dbox-Mails")
}

#[test]
fn rotated_log_pair_and_an_older_index_give_the_same_mailbox() {
    let cur = MailboxView::open(sdbox("Rotated")).unwrap();
    let old = MailboxView::open(fixtures().join("extra/older-index/Rotated")).unwrap();
    assert!(cur.problems().is_empty() && old.problems().is_empty());
    // The current index was written at the rotation: it starts in the new log.
    let s = cur.replay_start().unwrap();
    assert_eq!((s.file_seq, s.offset), (3, 40));
    // The older one points into .log.2 and is carried over the rotation.
    let f = old.file_header().unwrap();
    assert_eq!(f.log_file_seq, 2);
    let s = old.replay_start().unwrap();
    assert_eq!((s.file_seq, s.offset), (2, f.log_file_head_offset));
    assert_eq!(f.messages_count, 20);

    for v in [&cur, &old] {
        assert_eq!(v.head().file_seq, 3);
        assert_eq!(v.next_uid(), 22);
        let uids: Vec<u32> = v.messages().map(|m| m.uid()).collect();
        let want: Vec<u32> = (1..=21).filter(|&u| u != 12).collect();
        assert_eq!(uids, want, "uid 12 was expunged, 21 appended");
        assert_eq!(v.lookup_uid(2).unwrap().imap_flags() & SEEN, 0);
        assert_eq!(v.lookup_uid(3).unwrap().imap_flags(), SEEN);
        assert_eq!(v.lookup_uid(7).unwrap().imap_flags(), FLAGGED);
        assert_eq!(v.lookup_uid(21).unwrap().imap_flags(), SEEN);
        assert_eq!(
            v.lookup_uid(11).unwrap().keywords().collect::<Vec<_>>(),
            ["Work"]
        );
    }
    // Record for record, the same state.
    // log2_rotate_time is written into dovecot.index at the rotation, not logged.
    let (mut hc, ho) = (cur.header(), old.header());
    assert_ne!(hc.log2_rotate_time, ho.log2_rotate_time);
    hc.log2_rotate_time = ho.log2_rotate_time;
    assert_eq!(hc, ho);
    assert_eq!(cur.highest_modseq(), old.highest_modseq());
    for (a, b) in cur.messages().zip(old.messages()) {
        assert_eq!(
            (a.uid(), a.flags(), a.modseq()),
            (b.uid(), b.flags(), b.modseq())
        );
        assert_eq!(
            a.keywords().collect::<Vec<_>>(),
            b.keywords().collect::<Vec<_>>()
        );
    }
    // History from the older index's position is fully available.
    let ch = old.changes_since(f.log_file_seq.into()).unwrap();
    assert!(ch.is_complete());
}

#[test]
fn forty_keywords_grow_the_keyword_record_during_replay() {
    let v = MailboxView::open(sdbox("Keywords")).unwrap();
    assert!(v.problems().is_empty());
    let file = v.file_header().unwrap();
    assert_eq!(file.record_size % 4, 0);
    let names: Vec<String> = (1..=40).map(|i| format!("k{i:02}")).collect();
    assert_eq!(v.keywords(), names.as_slice());
    let kw = v.extension("keywords").unwrap();
    assert_eq!(kw.record_size, 6, "40 keywords: ceil(40/8)=5, +1");
    let k = |uid: u32| -> Vec<String> {
        v.lookup_uid(uid)
            .unwrap()
            .keywords()
            .map(str::to_string)
            .collect()
    };
    let fmt = |r: &[u32]| -> Vec<String> { r.iter().map(|i| format!("k{i:02}")).collect() };
    assert_eq!(k(1), fmt(&(2..=20).collect::<Vec<_>>()));
    assert_eq!(
        k(2),
        fmt(&(21..=40).filter(|&i| i != 22).collect::<Vec<_>>())
    );
    assert_eq!(k(3), fmt(&[5, 33, 40]));
    assert_eq!(v.lookup_uid(3).unwrap().imap_flags(), ANSWERED);
    assert!(k(4).is_empty() && k(5).is_empty());
}

#[test]
fn large_mailbox_with_cache_offsets() {
    let v = MailboxView::open(sdbox("Large")).unwrap();
    assert!(v.problems().is_empty());
    assert_eq!(v.messages_count(), 1900);
    assert!(v.lookup_uid(99).is_some() && v.lookup_uid(100).is_none());
    assert!(v.lookup_uid(199).is_none() && v.lookup_uid(200).is_some());
    let cache_len = std::fs::metadata(sdbox("Large").join("dovecot.index.cache"))
        .unwrap()
        .len();
    for m in v.messages() {
        let off = m.cache_offset().expect("every message has cache data");
        assert!(u64::from(off) < cache_len);
        assert_eq!(m.flags() & DELETED, 0);
        let seen = m.uid() <= 1000 || (m.uid() % 3 == 0 && m.uid() < 1990);
        assert_eq!(m.flags() & SEEN != 0, seen, "uid {}", m.uid());
        assert_eq!(m.flags() & FLAGGED != 0, (1500..=1600).contains(&m.uid()));
    }
    assert_eq!(
        v.header().seen_messages_count as usize,
        v.messages().filter(|m| m.flags() & SEEN != 0).count()
    );
    let later: Vec<u32> = v
        .messages()
        .filter(|m| m.keywords().any(|k| k == "$Later"))
        .map(|m| m.uid())
        .collect();
    assert_eq!(later, (1500..=1600).collect::<Vec<_>>());
}
