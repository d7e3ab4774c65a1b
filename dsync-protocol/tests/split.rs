//! Decoding is independent of how the input is split into reads.

use std::path::PathBuf;

use dsync_protocol::*;

fn read(name: &str) -> Vec<u8> {
    let b = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/captures")
            .join(name),
    )
    .unwrap();
    let start = if b.starts_with(b"VERSION") {
        0
    } else {
        b.windows(15)
            .position(|w| w.starts_with(b"\nVERSION\tdsync\t"))
            .unwrap()
            + 1
    };
    b[start..].to_vec()
}

/// Feeds `chunks` one after the other, draining events after each.
fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<OwnedEvent> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c);
        while let Some(ev) = d.next_event().unwrap() {
            push_owned(&mut out, ev);
        }
    }
    d.finish().unwrap();
    out
}

use dsync_protocol::decode::push_owned;

const FILES: [&str; 5] = [
    "01-first-sync.c2s",
    "01-first-sync.s2c",
    "07-full-sync.s2c",
    "11-mailbox-delete-rename.c2s",
    "12-tcp.s2c.ch0",
];

#[test]
fn every_split_point_gives_the_same_events() {
    for f in FILES {
        let bytes = read(f);
        let whole = decode_all(&bytes, DecoderConfig::default()).unwrap();
        for k in 0..=bytes.len() {
            let got = decode_chunks([&bytes[..k], &bytes[k..]]);
            assert_eq!(got, whole, "{f} split at {k}");
        }
    }
}

#[test]
fn byte_at_a_time_gives_the_same_events() {
    for f in FILES.iter().chain(
        [
            "05-uid-conflict.c2s",
            "15-hdr-hash.s2c",
            "18-handshake-options.c2s",
        ]
        .iter(),
    ) {
        let bytes = read(f);
        let whole = decode_all(&bytes, DecoderConfig::default()).unwrap();
        let got = decode_chunks(bytes.chunks(1));
        assert_eq!(got, whole, "{f}");
    }
}

#[test]
fn body_chunks_are_handed_out_without_buffering_the_message() {
    // A 1 MiB body fed in 4 KiB reads: the decoder never holds more than
    // one read plus a few bytes.
    let mut enc = Encoder::new();
    let mut wire = Vec::new();
    enc.encode_preamble(&mut wire);
    let h = Handshake {
        hostname: b"h".to_vec(),
        sync_type: Some(SyncType::Full),
        send_mail_requests: true,
        ..Default::default()
    };
    enc.encode_item(&Item::Handshake(Box::new(h)), &mut wire)
        .unwrap();
    for it in [
        Item::EndOfList,
        Item::MailboxDelete(MailboxDelete {
            hierarchy_sep: b'/',
            escape_char: None,
            mailboxes: vec![],
            dirs: vec![],
            unsubscribes: vec![],
        }),
    ] {
        enc.encode_item(&it, &mut wire).unwrap();
    }
    enc.encode_item(&Item::Mailbox(Mailbox::default()), &mut wire)
        .unwrap();
    for _ in 0..3 {
        enc.encode_item(&Item::EndOfList, &mut wire).unwrap();
    }
    let mail = Mail {
        guid: Some(b"g".to_vec()),
        stream: true,
        pop3_uidl: Some(vec![]),
        ..Default::default()
    };
    enc.encode_item(&Item::Mail(mail), &mut wire).unwrap();
    let body: Vec<u8> = (0..1 << 20)
        .map(|i| {
            if i % 71 == 70 {
                b'\n'
            } else if i % 71 == 0 {
                b'.'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect();
    enc.encode_body_chunk(&body, &mut wire).unwrap();
    enc.end_body(&mut wire).unwrap();
    enc.encode_item(&Item::EndOfList, &mut wire).unwrap();

    let mut d = Decoder::new();
    let mut got = Vec::new();
    let mut max_buffered = 0;
    let mut chunks = 0;
    for c in wire.chunks(4096) {
        d.feed(c);
        max_buffered = max_buffered.max(d.buffered());
        while let Some(ev) = d.next_event().unwrap() {
            if let Event::BodyChunk(b) = ev {
                got.extend_from_slice(b);
                chunks += 1;
            }
        }
    }
    d.finish().unwrap();
    assert_eq!(got, body);
    assert!(chunks > 200, "{chunks} chunks");
    assert!(max_buffered <= 4096 + 4, "buffered {max_buffered}");
}
