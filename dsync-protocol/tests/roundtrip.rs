//! Property: random items (and bodies) encode → decode to the same items.

use dsync_protocol::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..12),
        vec(
            prop_oneof![
                Just(b'\t'),
                Just(b'\n'),
                Just(b'\r'),
                Just(1u8),
                Just(2u8),
                Just(b'.'),
                Just(b'a')
            ],
            0..8
        ),
    ]
}

fn guid() -> impl Strategy<Value = Guid128> {
    any::<[u8; 16]>().prop_map(Guid128)
}

fn pos_time() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), 1..=i64::MAX]
}

fn handshake() -> impl Strategy<Value = Handshake> {
    (
        (
            bytes(),
            option::of(vec(
                vec(
                    any::<u8>().prop_filter("LF separates", |b| *b != b'\n'),
                    0..6,
                ),
                1..4,
            )),
            option::of(bytes()),
            option::of(guid()),
            option::of(prop_oneof![
                Just(SyncType::Full),
                Just(SyncType::Changed),
                Just(SyncType::State)
            ]),
            any::<[bool; 10]>(),
        ),
        (
            option::of(
                vec(bytes(), 0..4).prop_filter("one empty mask is ambiguous", |v| {
                    !(v.len() == 1 && v[0].is_empty())
                }),
            ),
            any::<u32>(),
            pos_time(),
            any::<u64>(),
            option::of(bytes()),
            pos_time(),
            option::of(bytes()),
            any::<u32>(),
            option::of(vec(bytes(), 0..4)),
            option::of(any::<u8>()),
        ),
    )
        .prop_map(|((hostname, ns, sync_box, box_guid, sync_type, f), rest)| {
            let (exclude, lock, since, max, sflags, until, vall, interval, hh, alt) = rest;
            Handshake {
                hostname,
                sync_ns_prefixes: ns,
                sync_box,
                sync_box_guid: box_guid,
                sync_type,
                debug: f[0],
                sync_visible_namespaces: f[1],
                exclude_mailboxes: exclude,
                send_mail_requests: f[2],
                backup_send: f[3],
                backup_recv: f[4],
                lock_timeout: lock,
                no_mail_sync: f[5],
                no_backup_overwrite: f[6],
                purge_remote: f[7],
                no_notify: f[8],
                sync_since_timestamp: since,
                sync_max_size: max,
                sync_flags: sflags,
                sync_until_timestamp: until,
                virtual_all_box: vall,
                empty_hdr_workaround: f[9],
                import_commit_msgs_interval: interval,
                hashed_headers: hh,
                alt_char: alt,
            }
        })
}

fn delete_records() -> impl Strategy<Value = Vec<DeleteRecord>> {
    vec(
        (guid(), any::<i64>()).prop_map(|(guid, timestamp)| DeleteRecord { guid, timestamp }),
        0..3,
    )
}

fn cache_field() -> impl Strategy<Value = CacheField> {
    (
        bytes(),
        prop_oneof![
            Just(CacheDecisionKind::No),
            Just(CacheDecisionKind::Temp),
            Just(CacheDecisionKind::Yes)
        ],
        any::<bool>(),
        any::<i64>(),
    )
        .prop_map(|(name, kind, forced, last_used)| CacheField {
            name,
            decision: CacheDecision { kind, forced },
            last_used,
        })
}

fn keyword_op() -> impl Strategy<Value = KeywordOp> {
    prop_oneof![
        Just(KeywordOp::Add),
        Just(KeywordOp::Remove),
        Just(KeywordOp::Final),
        Just(KeywordOp::AddFinal)
    ]
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        Just(Item::EndOfList),
        (
            guid(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(|(g, v, u, m, p, c, d)| Item::MailboxState(MailboxState {
                mailbox_guid: g,
                last_uidvalidity: v,
                last_common_uid: u,
                last_common_modseq: m,
                last_common_pvt_modseq: p,
                last_messages_count: c,
                changes_during_sync: d,
            })),
        (
            vec(bytes(), 1..4)
                .prop_filter("non-empty name", |n| !(n.len() == 1 && n[0].is_empty())),
            prop_oneof![
                Just(Existence::NonExistent),
                Just(Existence::Exists),
                Just(Existence::Deleted)
            ],
            option::of(guid()),
            any::<(u32, u32, i64, bool, i64)>()
        )
            .prop_map(
                |(name, existence, g, (v, n, r, s, c))| Item::MailboxTreeNode(MailboxTreeNode {
                    name,
                    existence,
                    mailbox_guid: g,
                    uid_validity: v,
                    uid_next: n,
                    last_renamed_or_created: r,
                    subscribed: s,
                    last_subscription_change: c,
                })
            ),
        (
            any::<u8>(),
            option::of(any::<u8>()),
            delete_records(),
            delete_records(),
            delete_records()
        )
            .prop_map(|(sep, esc, m, d, u)| Item::MailboxDelete(MailboxDelete {
                hierarchy_sep: sep,
                escape_char: esc,
                mailboxes: m,
                dirs: d,
                unsubscribes: u,
            })),
        (
            guid(),
            any::<(u32, u32, u32, u32, u64, u64)>(),
            any::<[bool; 5]>(),
            vec(cache_field(), 0..3)
        )
            .prop_map(|(g, (v, n, c, r, h, p), f, cache)| Item::Mailbox(Mailbox {
                mailbox_guid: g,
                uid_validity: v,
                uid_next: n,
                messages_count: c,
                first_recent_uid: r,
                highest_modseq: h,
                highest_pvt_modseq: p,
                mailbox_lost: f[0],
                mailbox_ignore: f[1],
                cache_fields: cache,
                have_guids: f[2],
                have_save_guids: f[3],
                have_only_guid128: f[4],
            })),
        (
            any::<bool>(),
            bytes(),
            prop_oneof![
                Just(AttributeValue::None),
                Just(AttributeValue::Stream),
                bytes().prop_map(AttributeValue::Inline)
            ],
            any::<(bool, i64, u64)>()
        )
            .prop_map(
                |(p, key, value, (deleted, last_change, modseq))| Item::Attribute(Attribute {
                    attr_type: if p {
                        AttributeType::Private
                    } else {
                        AttributeType::Shared
                    },
                    key,
                    value,
                    deleted,
                    last_change,
                    modseq,
                })
            ),
        (
            prop_oneof![
                Just(ChangeType::Save),
                Just(ChangeType::Expunge),
                Just(ChangeType::FlagChange)
            ],
            any::<u32>(),
            option::of(bytes()),
            option::of(bytes()),
            any::<(u64, u64, u8, u8, u8, bool, u64, u64)>(),
            vec(
                (keyword_op(), bytes()).prop_map(|(op, keyword)| KeywordChange { op, keyword }),
                0..4
            )
        )
            .prop_map(
                |(t, uid, g, hh, (m, p, a, r, f, kr, rt, vs), kw)| Item::MailChange(MailChange {
                    change_type: t,
                    uid,
                    guid: g,
                    hdr_hash: hh,
                    modseq: m,
                    pvt_modseq: p,
                    add_flags: MailFlags(a),
                    remove_flags: MailFlags(r),
                    final_flags: MailFlags(f),
                    keywords_reset: kr,
                    keyword_changes: kw,
                    received_timestamp: rt,
                    virtual_size: vs,
                })
            ),
        (option::of(bytes()), any::<u32>())
            .prop_map(|(guid, uid)| Item::MailRequest(MailRequest { guid, uid })),
        (
            option::of(bytes()),
            any::<u32>(),
            option::of(bytes()),
            any::<u32>(),
            pos_time(),
            any::<i64>(),
            any::<bool>()
        )
            .prop_map(
                |(guid, uid, pop3_uidl, pop3_order, received_date, saved_date, stream)| Item::Mail(
                    Mail {
                        guid,
                        uid,
                        pop3_uidl,
                        pop3_order,
                        received_date,
                        saved_date,
                        stream,
                    }
                )
            ),
        (option::of(bytes()), any::<i32>(), any::<bool>()).prop_map(|(error, mail_error, r)| {
            Item::Finish(Finish {
                error,
                mail_error,
                require_full_resync: r,
            })
        }),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            Just(b'.'),
            Just(b'\n'),
            Just(b'\r'),
            Just(b'x'),
            any::<u8>()
        ],
        0..64,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn items_round_trip(h in handshake(), items in vec((item(), body(), 1usize..8), 0..12), done in any::<bool>()) {
        let mut enc = Encoder::new();
        let mut wire = Vec::new();
        enc.encode_preamble(&mut wire);
        let mut want = vec![
            OwnedEvent::Version(ProtocolVersion::CURRENT),
            OwnedEvent::Tables(Tables::standard()),
            OwnedEvent::Item(Item::Handshake(Box::new(h.clone()))),
        ];
        enc.encode_item(&Item::Handshake(Box::new(h)), &mut wire).unwrap();
        for (it, data, chunk) in &items {
            enc.encode_item(it, &mut wire).unwrap();
            want.push(OwnedEvent::Item(it.clone()));
            if it.has_body() {
                for c in data.chunks(*chunk) {
                    enc.encode_body_chunk(c, &mut wire).unwrap();
                }
                enc.end_body(&mut wire).unwrap();
                want.push(OwnedEvent::Body(data.clone()));
            }
        }
        if done {
            enc.encode_item(&Item::Done, &mut wire).unwrap();
            want.push(OwnedEvent::Item(Item::Done));
        }
        let cfg = DecoderConfig { validate_order: false, ..Default::default() };
        let got = decode_all(&wire, cfg).unwrap();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn bodies_round_trip(data in body(), chunk in 1usize..16) {
        let mut e = dot::DotEncoder::new();
        let mut wire = Vec::new();
        for c in data.chunks(chunk) {
            e.encode(c, &mut wire);
        }
        e.finish(&mut wire);
        prop_assert_eq!(wire.clone(), dot::encode_block(&data));
        wire.extend_from_slice(b"next");
        let (back, used) = dot::decode_block(&wire).unwrap();
        prop_assert_eq!(back, data);
        prop_assert_eq!(&wire[used..], b"next");
    }

    #[test]
    fn state_strings_round_trip(recs in vec((guid(), any::<(u32, u32, u64, u64, u32)>()), 0..6)) {
        use dsync_protocol::state::{StateRecord, SyncState};
        let st = SyncState {
            mailboxes: recs.into_iter().map(|(g, (v, u, m, p, c))| StateRecord {
                mailbox_guid: g,
                last_uidvalidity: v,
                last_common_uid: u,
                last_common_modseq: m,
                last_common_pvt_modseq: p,
                last_messages_count: c,
            }).collect(),
            ..SyncState::default()
        };
        prop_assert_eq!(SyncState::parse(&st.encode()).unwrap(), st);
    }
}
