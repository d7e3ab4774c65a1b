//! Hostile and broken input: every rule violation gives its typed error.

use dsync_protocol::*;

fn preamble() -> Vec<u8> {
    let mut v = Vec::new();
    Encoder::new().encode_preamble(&mut v);
    v
}

fn master_h() -> Handshake {
    Handshake {
        hostname: b"vm".to_vec(),
        sync_type: Some(SyncType::Changed),
        send_mail_requests: true,
        import_commit_msgs_interval: 100,
        hashed_headers: Some(vec![b"Date".to_vec(), b"Message-ID".to_vec()]),
        alt_char: Some(b'_'),
        ..Default::default()
    }
}

/// VERSION, tables, a master H, then `rest`.
fn stream(rest: &[u8]) -> Vec<u8> {
    let mut v = preamble();
    Encoder::new()
        .encode_item(&Item::Handshake(Box::new(master_h())), &mut v)
        .unwrap();
    v.extend_from_slice(rest);
    v
}

fn decode(bytes: &[u8]) -> Result<Vec<OwnedEvent>, DecodeError> {
    decode_all(bytes, DecoderConfig::default())
}

fn decode_cfg(bytes: &[u8], cfg: DecoderConfig) -> Result<Vec<OwnedEvent>, DecodeError> {
    decode_all(bytes, cfg)
}

const TREE_START: &[u8] = b".\nD/\t%\n";

#[test]
fn a_valid_minimal_session_decodes() {
    let ev = decode(&stream(b".\nD/\t%\n.\n")).unwrap();
    assert_eq!(ev.len(), 6);
}

#[test]
fn overlong_line_is_rejected_before_its_end_arrives() {
    let cfg = DecoderConfig {
        max_line_len: 100,
        ..Default::default()
    };
    let mut d = Decoder::with_config(cfg);
    d.feed(b"VERSION\tdsync\t3\t5\n");
    assert!(matches!(d.next_event(), Ok(Some(Event::Version(_)))));
    d.feed(&[b'H'; 101]);
    assert_eq!(
        d.next_event(),
        Err(DecodeError::LineTooLong {
            offset: 18,
            max: 100
        })
    );
    // The decoder stays failed.
    assert!(matches!(d.next_event(), Err(DecodeError::Poisoned(_))));
}

#[test]
fn too_many_fields() {
    let cfg = DecoderConfig {
        max_fields: 8,
        ..Default::default()
    };
    let mut line = b"N".to_vec();
    line.extend(std::iter::repeat_n(&b"a\t"[..], 9).flatten());
    line.push(b'\n');
    let mut s = preamble();
    // Tables are limited too: the standard H table has 25 keys.
    assert!(matches!(
        decode_cfg(&s, cfg.clone()),
        Err(DecodeError::TooManyKeys { .. })
    ));
    s = stream(&line);
    let cfg = DecoderConfig {
        max_fields: 30,
        ..Default::default()
    };
    let mut long = b"N".to_vec();
    long.extend(std::iter::repeat_n(&b"a\t"[..], 31).flatten());
    long.push(b'\n');
    assert!(decode_cfg(&s, cfg.clone()).is_err());
    assert!(matches!(
        decode_cfg(&stream(&long), cfg),
        Err(DecodeError::TooManyFields { .. })
    ));
}

#[test]
fn unknown_item_letter() {
    assert!(matches!(
        decode(&stream(b"Zfoo\n")),
        Err(DecodeError::UnknownItem { letter: 'Z', .. })
    ));
    // `c` exists only inside B.
    assert!(matches!(
        decode(&stream(b"cflags\tt\n")),
        Err(DecodeError::OutOfOrder { got: 'c', .. })
    ));
}

#[test]
fn bad_escape() {
    assert!(matches!(
        decode(&stream(b"NIN\x01qBOX\ty\n")),
        Err(DecodeError::BadEscape {
            next: Some(b'q'),
            ..
        })
    ));
    assert!(matches!(
        decode(&stream(b"NINBOX\ty\x01\n")),
        Err(DecodeError::BadEscape { next: None, .. })
    ));
    // Dovecot's lenient reading is available.
    let cfg = DecoderConfig {
        strict_escapes: false,
        ..Default::default()
    };
    let ev = decode_cfg(&stream(b"NIN\x01qBOX\ty\n"), cfg).unwrap();
    match &ev[3] {
        OwnedEvent::Item(Item::MailboxTreeNode(n)) => assert_eq!(n.name, vec![b"INqBOX".to_vec()]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_required_key_in_a_table() {
    let mut s = b"VERSION\tdsync\t3\t5\n".to_vec();
    let mut t = Tables::standard();
    t.defs[1].keys.retain(|k| k != b"last_common_uid");
    t.encode_into(&mut s);
    // The S definition is the line after VERSION and the H definition.
    let s_offset = s
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .nth(1)
        .unwrap()
        .0 as u64
        + 1;
    assert_eq!(
        decode(&s),
        Err(DecodeError::TableMissingRequiredKey {
            offset: s_offset,
            item: "mailbox_state",
            key: "last_common_uid"
        })
    );
}

#[test]
fn missing_table_depends_on_the_minor_version() {
    let mut t = Tables::standard();
    t.defs.retain(|d| d.letter != b'F');
    let mut s = b"VERSION\tdsync\t3\t5\n".to_vec();
    t.encode_into(&mut s);
    assert!(matches!(
        decode(&s),
        Err(DecodeError::MissingTable { item: "finish", .. })
    ));
    // A minor-2 peer needs no F table.
    let mut s = b"VERSION\tdsync\t3\t2\n".to_vec();
    t.encode_into(&mut s);
    assert!(decode(&s).is_ok());
    // Unknown definitions are ignored, and a keyless R table is fine.
    let mut t2 = Tables::standard();
    t2.defs.push(TableDef {
        letter: b'Q',
        keys: vec![b"x".to_vec()],
    });
    let mut s = b"VERSION\tdsync\t3\t5\n".to_vec();
    t2.encode_into(&mut s);
    assert!(decode(&s).is_ok());
}

#[test]
fn missing_required_field_on_a_data_line() {
    let at = stream(b"").len() as u64;
    assert_eq!(
        decode(&stream(b"NINBOX\n")),
        Err(DecodeError::MissingRequiredField {
            offset: at,
            item: "mailbox_tree_node",
            key: "existence"
        })
    );
    // Absent marker for a required field counts as missing.
    assert!(matches!(
        decode(&stream(b"NINBOX\t\x02\n")),
        Err(DecodeError::MissingRequiredField {
            key: "existence",
            ..
        })
    ));
}

#[test]
fn invalid_field_values() {
    let cases: [(&[u8], &str); 8] = [
        (b"NINBOX\tq\n", "existence"),
        (b"NINBOX\ty\tnothex\n", "mailbox_guid"),
        (b"NINBOX\ty\t\x02\t12x\n", "uid_validity"),
        (b"N\ty\n", "name"),
        (b".\nD//\n", "hierarchy_sep"),
        (b".\nD/\t%\tabc 1\n", "mailboxes"),
        (b".\nD/\t%\t0000000000000000000000000000000a\n", "mailboxes"),
        (b".\nD/\t%%\n", "escape_char"),
    ];
    for (rest, key) in cases {
        match decode(&stream(rest)) {
            Err(DecodeError::InvalidField { key: k, .. }) => assert_eq!(k, key, "{rest:?}"),
            other => panic!("{rest:?}: {other:?}"),
        }
    }
    // C fields: hex flags over 8 bits, bad type, bad keyword op.
    let mailbox = b"B00000000000000000000000000000001\t1\t1\t0\t1\t1\t0\t\x02\t\x02\t\n.\n";
    for (c, key) in [
        (&b"Cs\t1\t\x02\t\x02\t1\t\x02\t1ff\n"[..], "add_flags"),
        (b"Cq\t1\n", "type"),
        (b"Cs\tx\n", "uid"),
        (
            b"Cs\t1\t\x02\t\x02\t\x02\t\x02\t\x02\t\x02\t\x02\t\x02\t?kw\n",
            "keyword_changes",
        ),
    ] {
        let mut rest = TREE_START.to_vec();
        rest.extend_from_slice(mailbox);
        rest.extend_from_slice(c);
        match decode(&stream(&rest)) {
            Err(DecodeError::InvalidField { key: k, .. }) => assert_eq!(k, key, "{c:?}"),
            other => panic!("{c:?}: {other:?}"),
        }
    }
    // Handshake numbers must be > 0.
    let mut h = preamble();
    h.extend_from_slice(b"Hvm\t\x02\t\x02\t\x02\tc\t\x02\t\x02\t\x02\t\t\x02\t\x02\t0\n");
    assert!(matches!(
        decode(&h),
        Err(DecodeError::InvalidField {
            key: "lock_timeout",
            ..
        })
    ));
    let mut h = preamble();
    h.extend_from_slice(b"Hvm\t\x02\t\x02\t\x02\tx\n");
    assert!(matches!(
        decode(&h),
        Err(DecodeError::InvalidField {
            key: "sync_type",
            ..
        })
    ));
}

#[test]
fn unterminated_body_at_eof() {
    let mut rest = TREE_START.to_vec();
    rest.extend_from_slice(
        b"B00000000000000000000000000000001\t1\t1\t0\t1\t1\t0\t\x02\t\x02\t\n.\n.\n.\n",
    );
    rest.extend_from_slice(b"Mg\t\x02\t\t\x02\t1\t1\t\nFrom: x\n\nbody\n");
    let s = stream(&rest);
    let mut d = Decoder::new();
    d.feed(&s);
    while d.next_event().unwrap().is_some() {}
    assert!(matches!(
        d.finish(),
        Err(DecodeError::UnterminatedBody { .. })
    ));
    // Stopping inside a line is reported too.
    let mut d = Decoder::new();
    d.feed(&stream(b"NINB"));
    while d.next_event().unwrap().is_some() {}
    assert!(matches!(
        d.finish(),
        Err(DecodeError::UnterminatedLine { .. })
    ));
}

#[test]
fn body_size_limit() {
    let mut rest = TREE_START.to_vec();
    rest.extend_from_slice(
        b"B00000000000000000000000000000001\t1\t1\t0\t1\t1\t0\t\x02\t\x02\t\n.\n.\n.\n",
    );
    rest.extend_from_slice(b"Mg\t\x02\t\t\x02\t1\t1\t\n");
    rest.extend_from_slice(&dot::encode_block(&[b'x'; 100]));
    let cfg = DecoderConfig {
        max_body_size: 99,
        ..Default::default()
    };
    assert!(matches!(
        decode_cfg(&stream(&rest), cfg),
        Err(DecodeError::BodyTooLarge { max: 99, .. })
    ));
    let cfg = DecoderConfig {
        max_body_size: 100,
        ..Default::default()
    };
    assert!(decode_cfg(&stream(&rest), cfg).is_ok());
}

#[test]
fn wrong_or_unsupported_version() {
    assert_eq!(
        decode(b"VERSION\tdsync\t4\t0\n"),
        Err(DecodeError::UnsupportedVersion { major: 4 })
    );
    assert!(matches!(
        decode(b"VERSION\timap\t3\t5\n"),
        Err(DecodeError::BadVersionLine { .. })
    ));
    assert!(matches!(
        decode(b"HELLO\n"),
        Err(DecodeError::BadVersionLine { .. })
    ));
    assert!(matches!(
        decode(b"VERSION\tdsync\t3\t5\t1\n"),
        Err(DecodeError::BadVersionLine { .. })
    ));
    let f = ProtocolVersion { major: 3, minor: 3 }.features();
    assert_eq!(f.hdr_hash_version, 1);
    assert!(f.finish && f.attributes && f.save_guids_flag);
    assert_eq!(ProtocolVersion::CURRENT.features().hdr_hash_version, 3);
}

#[test]
fn items_out_of_order() {
    // N before H.
    let mut s = preamble();
    s.extend_from_slice(b"NINBOX\ty\n");
    assert!(matches!(
        decode(&s),
        Err(DecodeError::OutOfOrder { got: 'N', .. })
    ));
    // B before the tree is finished.
    assert!(matches!(
        decode(&stream(
            b"B00000000000000000000000000000001\t1\t1\t0\t1\t1\t0\n"
        )),
        Err(DecodeError::OutOfOrder { got: 'B', .. })
    ));
    // F from a master (its H carries the sync type).
    assert!(matches!(
        decode(&stream(b".\nD/\t%\nF\n")),
        Err(DecodeError::OutOfOrder { got: 'F', .. })
    ));
    // Second H.
    assert!(matches!(
        decode(&stream(b"Hvm\n")),
        Err(DecodeError::OutOfOrder { got: 'H', .. })
    ));
    // M directly after B in a two-way exchange (A and C lists are missing).
    let mut rest = TREE_START.to_vec();
    rest.extend_from_slice(
        b"B00000000000000000000000000000001\t1\t1\t0\t1\t1\t0\t\x02\t\x02\t\nMg\n",
    );
    match decode(&stream(&rest)) {
        Err(DecodeError::OutOfOrder {
            got: 'M', expected, ..
        }) => assert_eq!(expected, ". X B A"),
        other => panic!("{other:?}"),
    }
    // Nothing may follow X.
    assert!(matches!(
        decode(&stream(b"X\nNINBOX\ty\n")),
        Err(DecodeError::DataAfterDone { .. })
    ));
}

#[test]
fn change_uids_must_ascend() {
    let mut rest = TREE_START.to_vec();
    rest.extend_from_slice(
        b"B00000000000000000000000000000001\t1\t1\t0\t1\t1\t0\t\x02\t\x02\t\n.\n",
    );
    rest.extend_from_slice(b"Cs\t5\t\nCs\t5\t\n");
    assert!(matches!(
        decode(&stream(&rest)),
        Err(DecodeError::ChangesNotAscending {
            prev: 5,
            uid: 5,
            ..
        })
    ));
}

#[test]
fn list_item_limit() {
    let cfg = DecoderConfig {
        max_list_items: 2,
        ..Default::default()
    };
    assert!(decode_cfg(&stream(b"NA\ty\nNB\ty\n.\n"), cfg.clone()).is_ok());
    assert!(matches!(
        decode_cfg(&stream(b"NA\ty\nNB\ty\nNC\ty\n"), cfg),
        Err(DecodeError::ListTooLong { max: 2, .. })
    ));
}

#[test]
fn list_element_limit() {
    let cfg = DecoderConfig {
        max_list_elements: 3,
        ..Default::default()
    };
    assert!(decode_cfg(&stream(b"Na\x01tb\x01tc\ty\n"), cfg.clone()).is_ok());
    assert!(matches!(
        decode_cfg(&stream(b"Na\x01tb\x01tc\x01td\ty\n"), cfg),
        Err(DecodeError::TooManyElements { key: "name", .. })
    ));
}

#[test]
fn slave_session_shape_is_checked_once_known() {
    // As the slave of a one-way sync (backup destination): only R lists.
    let mut d = Decoder::new();
    let slave_h = Handshake {
        hostname: b"vm".to_vec(),
        hashed_headers: Some(vec![]),
        ..Default::default()
    };
    let mut s = preamble();
    Encoder::new()
        .encode_item(&Item::Handshake(Box::new(slave_h)), &mut s)
        .unwrap();
    s.extend_from_slice(
        b".\nD/\t%\nB00000000000000000000000000000001\t1\t1\t0\t1\t1\t0\t\x02\t\x02\t\n",
    );
    s.extend_from_slice(b"Rg\t1\n.\nS00000000000000000000000000000001\t1\t1\t1\t0\t1\nF\nX\n");
    d.set_session(
        Role::Slave,
        &Handshake {
            backup_recv: true,
            send_mail_requests: true,
            ..master_h()
        },
    );
    d.feed(&s);
    while d.next_event().unwrap().is_some() {}
    d.finish().unwrap();
    assert!(d.sender_finished());
    // The same stream is wrong for a two-way slave: it would need A and C lists.
    let mut d = Decoder::new();
    d.set_session(Role::Slave, &master_h());
    d.feed(&s);
    let err = loop {
        match d.next_event() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("accepted"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, DecodeError::OutOfOrder { got: 'R', .. }));
}

#[test]
fn encoder_refuses_items_inside_a_body() {
    let mut e = Encoder::new();
    let mut out = Vec::new();
    e.encode_item(
        &Item::Mail(Mail {
            stream: true,
            ..Default::default()
        }),
        &mut out,
    )
    .unwrap();
    assert!(e.body_open());
    assert_eq!(
        e.encode_item(&Item::EndOfList, &mut out),
        Err(EncodeError::BodyOpen { what: "an item" })
    );
    e.end_body(&mut out).unwrap();
    assert_eq!(e.end_body(&mut out), Err(EncodeError::NoBodyOpen));
    assert_eq!(out, b"M\x02\t\x02\t\x02\t\x02\t\x02\t\x02\t\n\r\n.\r\n");
    let bad = MailboxTreeNode {
        name: vec![],
        existence: Existence::Exists,
        mailbox_guid: None,
        uid_validity: 0,
        uid_next: 0,
        last_renamed_or_created: 0,
        subscribed: false,
        last_subscription_change: 0,
    };
    assert!(matches!(
        e.encode_item(&Item::MailboxTreeNode(bad), &mut out),
        Err(EncodeError::InvalidValue { .. })
    ));
}

#[test]
fn a_minor_0_sender_has_no_attribute_lists() {
    let mut t = Tables::standard();
    t.defs.retain(|d| d.letter != b'A' && d.letter != b'F');
    let mut s = b"VERSION\tdsync\t3\t0\n".to_vec();
    t.encode_into(&mut s);
    Encoder::with_tables(t)
        .encode_item(&Item::Handshake(Box::new(master_h())), &mut s)
        .unwrap();
    s.extend_from_slice(TREE_START);
    s.extend_from_slice(b"B00000000000000000000000000000001\t1\t1\t0\t1\t1\t0\t\x02\t\x02\t\n");
    s.extend_from_slice(
        b"Cs\t1\tg\n.\n.\nMg\n.\nS00000000000000000000000000000001\t1\t1\t1\t0\t1\n.\n",
    );
    decode(&s).unwrap();
}
