//! Encode/decode throughput of realistic streams: a list of `C` (mail
//! change) items, and `M` (mail) items with ~10 KB bodies.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dsync_protocol::*;

const CHANGES: u32 = 10_000;
const MAILS: u32 = 500;

fn master_h() -> Item {
    Item::Handshake(Box::new(Handshake {
        hostname: b"mail.example.org".to_vec(),
        sync_type: Some(SyncType::Changed),
        send_mail_requests: true,
        import_commit_msgs_interval: 100,
        hashed_headers: Some(vec![b"Date".to_vec(), b"Message-ID".to_vec()]),
        alt_char: Some(b'_'),
        ..Default::default()
    }))
}

fn mailbox() -> Item {
    Item::Mailbox(Mailbox {
        mailbox_guid: Guid128([0x1b; 16]),
        uid_validity: 1795888251,
        uid_next: CHANGES + 1,
        messages_count: CHANGES,
        first_recent_uid: 1,
        highest_modseq: 123456,
        cache_fields: vec![CacheField {
            name: b"flags".to_vec(),
            decision: CacheDecision {
                kind: CacheDecisionKind::Temp,
                forced: false,
            },
            last_used: 1795888251,
        }],
        have_guids: true,
        have_save_guids: true,
        ..Default::default()
    })
}

fn change(uid: u32) -> Item {
    Item::MailChange(MailChange {
        change_type: ChangeType::Save,
        uid,
        guid: Some(
            format!(
                "1795888251.M{}P32351.mail.example.org,S=10240,W=10400",
                900000 + uid
            )
            .into_bytes(),
        ),
        hdr_hash: None,
        modseq: u64::from(uid) + 10,
        pvt_modseq: 0,
        add_flags: MailFlags(0x08),
        remove_flags: MailFlags(0),
        final_flags: MailFlags(0x28),
        keywords_reset: false,
        keyword_changes: if uid % 3 == 0 {
            vec![KeywordChange {
                op: KeywordOp::AddFinal,
                keyword: b"$Important".to_vec(),
            }]
        } else {
            vec![]
        },
        received_timestamp: 0,
        virtual_size: u64::MAX,
    })
}

fn mail(uid: u32) -> Item {
    Item::Mail(Mail {
        guid: Some(
            format!(
                "1795888251.M{}P32351.mail.example.org,S=10240,W=10400",
                900000 + uid
            )
            .into_bytes(),
        ),
        pop3_uidl: Some(Vec::new()),
        received_date: 1795888251,
        saved_date: 1795888252,
        stream: true,
        ..Default::default()
    })
}

/// A ~10 KB message with LF line endings and a few dot-started lines.
fn body(uid: u32) -> Vec<u8> {
    let mut b = format!(
        "From: Alice <alice@example.com>\nTo: Bob <bob@example.com>\nSubject: message {uid}\nDate: Mon, 1 Jan 2024 10:01:00 +0000\nMessage-ID: <m{uid}@example.com>\n\n"
    )
    .into_bytes();
    let mut line = 0;
    while b.len() < 10 * 1024 {
        if line % 40 == 0 {
            b.extend_from_slice(b".a line that starts with a dot\n");
        } else {
            b.extend_from_slice(
                b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n",
            );
        }
        line += 1;
    }
    b
}

fn preamble(enc: &mut Encoder, out: &mut Vec<u8>) {
    enc.encode_preamble(out);
    for it in [
        master_h(),
        Item::EndOfList,
        Item::MailboxDelete(MailboxDelete {
            hierarchy_sep: b'/',
            escape_char: Some(b'%'),
            mailboxes: vec![],
            dirs: vec![],
            unsubscribes: vec![],
        }),
        mailbox(),
        Item::EndOfList, // attributes
    ] {
        enc.encode_item(&it, out).unwrap();
    }
}

fn change_items() -> Vec<Item> {
    (1..=CHANGES).map(change).collect()
}

fn encode_changes(items: &[Item]) -> Vec<u8> {
    let mut enc = Encoder::new();
    let mut out = Vec::with_capacity(2 << 20);
    preamble(&mut enc, &mut out);
    for it in items {
        enc.encode_item(it, &mut out).unwrap();
    }
    enc.encode_item(&Item::EndOfList, &mut out).unwrap();
    out
}

fn encode_mails(items: &[(Item, Vec<u8>)]) -> Vec<u8> {
    let mut enc = Encoder::new();
    let mut out = Vec::with_capacity(8 << 20);
    preamble(&mut enc, &mut out);
    enc.encode_item(&Item::EndOfList, &mut out).unwrap(); // changes
    enc.encode_item(&Item::EndOfList, &mut out).unwrap(); // requests
    for (it, b) in items {
        enc.encode_item(it, &mut out).unwrap();
        // Bodies arrive from storage in reads; 4 KiB is a typical size.
        for c in b.chunks(4096) {
            enc.encode_body_chunk(c, &mut out).unwrap();
        }
        enc.end_body(&mut out).unwrap();
    }
    enc.encode_item(&Item::EndOfList, &mut out).unwrap();
    out
}

/// Decodes in 64 KiB reads; returns (items, body bytes) seen.
fn decode(stream: &[u8]) -> (u64, u64) {
    let mut d = Decoder::new();
    let (mut items, mut body) = (0u64, 0u64);
    for c in stream.chunks(64 * 1024) {
        d.feed(c);
        while let Some(ev) = d.next_event().unwrap() {
            match ev {
                Event::Item(_) => items += 1,
                Event::BodyChunk(b) => body += b.len() as u64,
                _ => {}
            }
        }
    }
    d.finish().unwrap();
    (items, body)
}

fn bench(c: &mut Criterion) {
    let changes = change_items();
    let change_stream = encode_changes(&changes);
    let mails: Vec<(Item, Vec<u8>)> = (1..=MAILS).map(|u| (mail(u), body(u))).collect();
    let mail_stream = encode_mails(&mails);
    eprintln!(
        "C stream: {} items, {} bytes; M stream: {} mails, {} bytes",
        CHANGES,
        change_stream.len(),
        MAILS,
        mail_stream.len()
    );
    assert_eq!(decode(&change_stream).0, u64::from(CHANGES) + 6);

    for (unit, per_item) in [("items", true), ("bytes", false)] {
        let mut g = c.benchmark_group(format!("codec_{unit}"));
        g.sample_size(20)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1));
        g.throughput(if per_item {
            Throughput::Elements(u64::from(CHANGES))
        } else {
            Throughput::Bytes(change_stream.len() as u64)
        });
        g.bench_function(BenchmarkId::new("encode", "C"), |b| {
            b.iter(|| black_box(encode_changes(black_box(&changes))))
        });
        g.bench_function(BenchmarkId::new("decode", "C"), |b| {
            b.iter(|| black_box(decode(black_box(&change_stream))))
        });
        g.throughput(if per_item {
            Throughput::Elements(u64::from(MAILS))
        } else {
            Throughput::Bytes(mail_stream.len() as u64)
        });
        g.bench_function(BenchmarkId::new("encode", "M_10KB"), |b| {
            b.iter(|| black_box(encode_mails(black_box(&mails))))
        });
        g.bench_function(BenchmarkId::new("decode", "M_10KB"), |b| {
            b.iter(|| black_box(decode(black_box(&mail_stream))))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
