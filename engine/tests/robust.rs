//! Arbitrary item sequences from a peer never make a brain panic or loop:
//! it either goes on or fails with an error.

use dsync_protocol::*;
use proptest::prelude::*;
use sync_engine::memory::MemoryReplica;
use sync_engine::{Brain, Input, Output, SyncSettings};

fn guid() -> impl Strategy<Value = Guid128> {
    prop_oneof![
        Just(Guid128([1; 16])),
        Just(Guid128([2; 16])),
        Just(Guid128([0; 16])),
        any::<[u8; 16]>().prop_map(Guid128),
    ]
}

fn num32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(3),
        Just(u32::MAX),
        any::<u32>()
    ]
}

fn num64() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(1), Just(5), Just(u64::MAX), any::<u64>()]
}

fn mail_guid() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        Just(None),
        Just(Some(b"base-0".to_vec())),
        Just(Some(b"base-1".to_vec())),
        Just(Some(Vec::new())),
        Just(Some(b"01010101010101010101010101010101".to_vec())),
        "[a-z0-9]{1,8}".prop_map(|s| Some(s.into_bytes())),
    ]
}

fn name() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(
        prop_oneof![
            Just(b"INBOX".to_vec()),
            Just(b"Work".to_vec()),
            Just(b"a".to_vec())
        ],
        1..3,
    )
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        (any::<bool>(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(|(bs, br, nbo, t)| {
            Item::Handshake(Box::new(Handshake {
                hostname: b"peer".to_vec(),
                sync_type: Some([SyncType::Full, SyncType::Changed, SyncType::State][t as usize]),
                backup_send: bs,
                backup_recv: br,
                no_backup_overwrite: nbo,
                send_mail_requests: true,
                ..Handshake::default()
            }))
        }),
        (guid(), num32(), num32(), num64()).prop_map(|(g, v, u, m)| Item::MailboxState(
            MailboxState {
                mailbox_guid: g,
                last_uidvalidity: v,
                last_common_uid: u,
                last_common_modseq: m,
                last_common_pvt_modseq: 0,
                last_messages_count: u,
                changes_during_sync: false,
            }
        )),
        (
            name(),
            0..3u8,
            prop::option::of(guid()),
            num32(),
            num32(),
            any::<i64>(),
            any::<bool>()
        )
            .prop_map(
                |(n, e, g, v, u, ts, sub)| Item::MailboxTreeNode(MailboxTreeNode {
                    name: n,
                    existence: [
                        Existence::NonExistent,
                        Existence::Exists,
                        Existence::Deleted
                    ][e as usize],
                    mailbox_guid: g,
                    uid_validity: v,
                    uid_next: u,
                    last_renamed_or_created: ts,
                    subscribed: sub,
                    last_subscription_change: ts,
                })
            ),
        (guid(), any::<i64>()).prop_map(|(g, ts)| Item::MailboxDelete(MailboxDelete {
            hierarchy_sep: b'/',
            escape_char: None,
            mailboxes: vec![DeleteRecord {
                guid: g,
                timestamp: ts
            }],
            dirs: vec![DeleteRecord {
                guid: g,
                timestamp: ts
            }],
            unsubscribes: vec![],
        })),
        (guid(), num32(), num32(), num32(), num64(), any::<bool>()).prop_map(
            |(g, v, u, c, m, lost)| Item::Mailbox(Mailbox {
                mailbox_guid: g,
                uid_validity: v,
                uid_next: u,
                messages_count: c,
                first_recent_uid: u,
                highest_modseq: m,
                mailbox_lost: lost,
                have_guids: true,
                have_save_guids: true,
                ..Mailbox::default()
            })
        ),
        (
            0..3u8,
            num32(),
            mail_guid(),
            num64(),
            any::<u8>(),
            any::<u8>()
        )
            .prop_map(|(t, uid, g, m, a, f)| {
                Item::MailChange(MailChange {
                    change_type: [
                        ChangeType::Save,
                        ChangeType::Expunge,
                        ChangeType::FlagChange,
                    ][t as usize],
                    uid,
                    guid: g,
                    hdr_hash: None,
                    modseq: m,
                    pvt_modseq: 0,
                    add_flags: MailFlags(a),
                    remove_flags: MailFlags(!a),
                    final_flags: MailFlags(f),
                    keywords_reset: false,
                    keyword_changes: vec![KeywordChange {
                        op: KeywordOp::AddFinal,
                        keyword: b"kw".to_vec(),
                    }],
                    received_timestamp: 0,
                    virtual_size: 0,
                })
            }),
        (mail_guid(), num32()).prop_map(|(g, uid)| Item::MailRequest(MailRequest { guid: g, uid })),
        (mail_guid(), num32(), any::<bool>()).prop_map(|(g, uid, stream)| Item::Mail(Mail {
            guid: g,
            uid,
            stream,
            ..Mail::default()
        })),
        Just(Item::Attribute(Attribute {
            attr_type: AttributeType::Private,
            key: b"comment".to_vec(),
            value: AttributeValue::Inline(b"x".to_vec()),
            deleted: false,
            last_change: 0,
            modseq: 0,
        })),
        Just(Item::Finish(Finish::default())),
        Just(Item::EndOfList),
        Just(Item::EndOfList),
        Just(Item::Done),
    ]
}

fn replica() -> MemoryReplica {
    let mut r = MemoryReplica::new();
    r.create_mailbox("INBOX", Guid128([1; 16]), 1000)
        .expect("create");
    r.create_mailbox("Work", Guid128([2; 16]), 2000)
        .expect("create");
    r.deliver("INBOX", "base-0", b"a", 0).expect("deliver");
    r.deliver("INBOX", "base-1", b"b", 0).expect("deliver");
    r
}

fn drive(brain: &mut Brain, r: &mut MemoryReplica) -> bool {
    let mut budget = 100_000;
    while let Some(out) = brain.poll() {
        budget -= 1;
        if budget == 0 {
            return false;
        }
        let res = match out {
            Output::Send { .. } => Ok(()),
            Output::Query(q) => brain.feed(Input::Answer(r.answer(&q))),
            Output::Action(a) => match r.apply(&a) {
                Ok(()) => Ok(()),
                Err(error) => brain.feed(Input::ActionFailed { action: a, error }),
            },
        };
        if res.is_err() {
            return false;
        }
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_items_never_panic(
        master in any::<bool>(),
        prefix in prop::collection::vec(item(), 4),
        rest in prop::collection::vec(item(), 0..60),
        mbox in item(),
    ) {
        // A plausible opening (H, tree, D) so that later phases are reached.
        let mut items: Vec<Item> = Vec::new();
        items.extend(prefix.iter().filter(|i| matches!(i, Item::Handshake(_))).take(1).cloned());
        if items.is_empty() {
            items.push(Item::Handshake(Box::new(Handshake { hostname: b"peer".to_vec(), sync_type: Some(SyncType::Full), ..Handshake::default() })));
        }
        items.extend(prefix.iter().filter(|i| matches!(i, Item::MailboxTreeNode(_))).cloned());
        items.push(Item::EndOfList);
        items.push(Item::MailboxDelete(MailboxDelete {
            hierarchy_sep: b'/',
            escape_char: None,
            mailboxes: vec![],
            dirs: vec![],
            unsubscribes: vec![],
        }));
        if let Item::Mailbox(_) = mbox {
            items.push(mbox);
        }
        items.extend(rest);
        let mut r = replica();
        r.set_incoming_body(b"body".to_vec());
        let mut brain = if master {
            Brain::master(b"m", SyncSettings::default(), 1_700_000_000)
        } else {
            Brain::slave(b"s", 1_700_000_000)
        };
        let mut alive = drive(&mut brain, &mut r);
        for it in items {
            if !alive {
                break;
            }
            alive = brain.feed(Input::Peer(it)).is_ok() && drive(&mut brain, &mut r);
        }
    }
}
