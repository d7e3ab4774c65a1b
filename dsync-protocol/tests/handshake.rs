//! Typed decoding of the captured `H` items and item fields (spec §3.3, §4).

use std::path::PathBuf;

use dsync_protocol::*;

fn events(name: &str) -> Vec<OwnedEvent> {
    let b = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/captures")
            .join(name),
    )
    .unwrap();
    let start = b
        .windows(14)
        .position(|w| w == b"VERSION\tdsync\t")
        .unwrap();
    decode_all(&b[start..], DecoderConfig::default()).unwrap()
}

fn handshake(name: &str) -> Handshake {
    match &events(name)[2] {
        OwnedEvent::Item(Item::Handshake(h)) => (**h).clone(),
        other => panic!("{other:?}"),
    }
}

fn items(name: &str) -> Vec<Item> {
    events(name)
        .into_iter()
        .filter_map(|e| match e {
            OwnedEvent::Item(i) => Some(i),
            _ => None,
        })
        .collect()
}

#[test]
fn plain_sync_master_and_slave() {
    let m = handshake("01-first-sync.c2s");
    assert_eq!(m.hostname, b"vm");
    assert_eq!(m.sync_type, Some(SyncType::Changed));
    assert!(m.send_mail_requests && !m.backup_recv && !m.backup_send && !m.debug);
    assert_eq!(m.import_commit_msgs_interval, 100);
    assert_eq!(
        m.hashed_headers,
        Some(vec![b"Date".to_vec(), b"Message-ID".to_vec()])
    );
    assert_eq!(m.alt_char, Some(b'_'));
    let s = handshake("01-first-sync.s2c");
    assert_eq!(
        s,
        Handshake {
            hostname: b"vm".to_vec(),
            hashed_headers: Some(vec![]),
            ..Default::default()
        }
    );
}

#[test]
fn sync_types_and_backup_flags() {
    assert_eq!(
        handshake("02-incremental-state.c2s").sync_type,
        Some(SyncType::State)
    );
    assert_eq!(
        handshake("07-full-sync.c2s").sync_type,
        Some(SyncType::Full)
    );
    let one_way = handshake("06-oneway-backup.c2s");
    assert!(one_way.backup_recv && one_way.no_backup_overwrite && !one_way.backup_send);
    let reverse = handshake("08-backup-reverse.c2s");
    assert!(reverse.backup_send && !reverse.backup_recv && !reverse.no_backup_overwrite);
    assert!(handshake("13-tcp-debug.c2s").debug);
    assert!(!handshake("12-tcp.c2s").debug);
}

#[test]
fn handshake_options() {
    let h = handshake("18-handshake-options.c2s");
    assert_eq!(h.sync_ns_prefixes, Some(vec![Vec::new()]));
    assert_eq!(h.sync_box, Some(b"INBOX".to_vec()));
    assert_eq!(h.sync_box_guid, None);
    assert!(h.sync_visible_namespaces && h.purge_remote);
    assert_eq!(
        h.exclude_mailboxes,
        Some(vec![b"Trash*".to_vec(), b"\\Junk".to_vec()])
    );
    assert_eq!(h.lock_timeout, 30);
    assert_eq!(h.sync_since_timestamp, 1577836800);
    // Dovecot 2.3.19.1 writes the -t value into sync_until_timestamp.
    assert_eq!(h.sync_until_timestamp, 1577836800);
    assert_eq!(h.sync_max_size, 10 * 1024 * 1024);
    assert_eq!(h.sync_flags, Some(b"\\Seen".to_vec()));
}

#[test]
fn item_fields_of_first_sync() {
    let c = items("01-first-sync.c2s");
    let node = c
        .iter()
        .find_map(|i| match i {
            Item::MailboxTreeNode(n) if n.name.len() == 2 => Some(n.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(node.name, vec![b"Work".to_vec(), b"Reports".to_vec()]);
    assert_eq!(node.joined_name(b'/'), b"Work/Reports");
    assert_eq!(
        MailboxTreeNode::split_name(b"Work/Reports", b'/'),
        node.name
    );
    assert_eq!(
        node.mailbox_guid.unwrap().to_hex(),
        "e8cbf6087c140b6b997e000083ecc375"
    );
    let work = c
        .iter()
        .find_map(|i| match i {
            Item::MailboxTreeNode(n) if n.name == [b"Work".to_vec()] => Some(n.clone()),
            _ => None,
        })
        .unwrap();
    assert!(work.subscribed);
    assert_eq!(work.last_subscription_change, 1795888252);
    let b = c
        .iter()
        .find_map(|i| match i {
            Item::Mailbox(b) => Some(b.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (
            b.uid_validity,
            b.uid_next,
            b.messages_count,
            b.highest_modseq
        ),
        (1795888251, 4, 3, 8)
    );
    assert_eq!(b.cache_fields.len(), 3);
    assert_eq!(b.cache_fields[0].name, b"flags");
    assert_eq!(
        b.cache_fields[0].decision,
        CacheDecision {
            kind: CacheDecisionKind::Temp,
            forced: false
        }
    );
    assert_eq!(b.cache_fields[0].last_used, 1795888251);
    assert!(b.have_guids && b.have_save_guids && !b.have_only_guid128);
    let a = c
        .iter()
        .find_map(|i| match i {
            Item::Attribute(a) => Some(a.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(a.attr_type, AttributeType::Private);
    assert_eq!(a.key, b"comment");
    assert_eq!(a.value, AttributeValue::Inline(b"hello attribute".to_vec()));
    assert_eq!(a.modseq, 8);
    let ch: Vec<MailChange> = c
        .iter()
        .filter_map(|i| match i {
            Item::MailChange(m) => Some(m.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ch[1].uid, 2);
    assert_eq!(ch[1].add_flags, MailFlags(0x0a));
    assert_eq!(ch[1].final_flags, MailFlags(0x2a));
    assert_eq!(
        ch[1].keyword_changes,
        vec![KeywordChange {
            op: KeywordOp::AddFinal,
            keyword: b"$Important".to_vec()
        }]
    );
    assert_eq!(ch[1].virtual_size, u64::MAX);
}

#[test]
fn expunge_and_flag_changes() {
    let c = items("02-incremental-state.c2s");
    let e = c
        .iter()
        .find_map(|i| match i {
            Item::MailChange(m) if m.change_type == ChangeType::Expunge => Some(m.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(e.uid, 3);
    // The expunge carries the GUID128 of the Maildir GUID (spec §10.2).
    assert_eq!(
        e.guid.as_deref(),
        Some(
            hash::message_guid_128(b"1795888252.M36558P32387.vm,S=151,W=158")
                .to_hex()
                .as_bytes()
        )
    );
    let s = items("03-two-way-changes.s2c");
    assert!(s.iter().any(|i| matches!(i, Item::MailChange(m)
        if m.change_type == ChangeType::FlagChange && m.keyword_changes == [KeywordChange { op: KeywordOp::Final, keyword: b"$Important".to_vec() }])));
}

#[test]
fn deletes_and_renames() {
    let c = items("11-mailbox-delete-rename.c2s");
    let d = c
        .iter()
        .find_map(|i| match i {
            Item::MailboxDelete(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(d.hierarchy_sep, b'/');
    assert_eq!(d.escape_char, Some(b'%'));
    assert_eq!(d.mailboxes.len(), 2);
    assert_eq!(d.dirs[0].guid, hash::mailbox_name_hash(b"Work/Reports"));
    assert_eq!(d.dirs[1].guid, hash::mailbox_name_hash(b"Tmp/Sub"));
    assert_eq!(
        d.unsubscribes[0].guid,
        hash::mailbox_name_hash(b"Work/Reports")
    );
    assert!(c.iter().any(|i| matches!(i, Item::MailboxTreeNode(n)
        if n.name == [b"Old".to_vec()] && n.existence == Existence::NonExistent)));
}

#[test]
fn lost_mailbox_and_finish() {
    let s = items("09-stale-state.s2c");
    let lost: Vec<&Mailbox> = s
        .iter()
        .filter_map(|i| match i {
            Item::Mailbox(b) => Some(b),
            _ => None,
        })
        .collect();
    assert!(!lost.is_empty());
    for b in lost {
        assert!(b.mailbox_lost && !b.mailbox_ignore && b.cache_fields.is_empty());
        assert_eq!((b.uid_validity, b.uid_next, b.highest_modseq), (0, 0, 0));
    }
    assert!(s.contains(&Item::Finish(Finish {
        error: None,
        mail_error: 0,
        require_full_resync: true
    })));
    assert_eq!(s.last(), Some(&Item::Done));
}

#[test]
fn mbox_side_has_no_save_guids_and_sends_header_hashes() {
    let s = items("15-hdr-hash-seed.s2c");
    assert!(s
        .iter()
        .any(|i| matches!(i, Item::Mailbox(b) if b.have_guids && !b.have_save_guids)));
}
