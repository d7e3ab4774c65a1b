//! Hand-written inputs for the cache, Maildir, dbox, mailbox log and
//! attribute readers: edge cases the fixtures do not cover.

mod common;

use common::gen;
use index_format::cache::{self, Cache, CacheValue};
use index_format::dbox::DboxFile;
use index_format::mailbox_log::{MailboxLog, MailboxLogType};
use index_format::maildir::{self, Keywords, MaildirFlags, Uidlist};
use index_format::{attributes, Error, FormatRule};

// ---------------------------------------------------------------------------
// uidlist

#[test]
fn uidlist_v1() {
    let data = b"1 1234 10\n1 1035478339.27041_118.foo.org\n5 1035478339.27041_119.foo.org:2,S\n";
    let u = Uidlist::parse(data).unwrap();
    assert_eq!(u.version, 1);
    assert_eq!(u.uid_validity, 1234);
    assert_eq!(u.header_next_uid, 10);
    assert_eq!(u.next_uid(), 10);
    assert_eq!(u.records.len(), 2);
    assert_eq!(u.records[0].filename, "1035478339.27041_118.foo.org");
    assert_eq!(u.records[1].uid, 5);
    assert_eq!(u.records[1].extensions().count(), 0);
    assert!(u.mailbox_guid.is_none());
    assert!(u.by_uid(5).is_some() && u.by_uid(4).is_none());
    // Extra spaces between uid and name are not part of the name.
    let u = Uidlist::parse(b"1 1 3\n2   name\n").unwrap();
    assert_eq!(u.records[0].filename, "name");
    assert_eq!(u.next_uid(), 3);
}

#[test]
fn uidlist_v1_bad_headers() {
    for bad in [
        &b"1 1234\n"[..],
        b"1 0 10\n",
        b"1 12 0\n",
        b"1 x 10\n",
        b"1 1 2 3\n",
    ] {
        assert!(
            Uidlist::parse(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn uidlist_v3_extensions() {
    let data = b"3 V7 N3 G0123456789abcdef0123456789abcdef P1 Xunknown\n\
1 W123 S100 Gmsg-guid-1 :name1,S=100\n\
2 :name 2 with spaces\n";
    let u = Uidlist::parse(data).unwrap();
    assert_eq!(u.uid_validity, 7);
    assert_eq!(u.header_extension('P'), Some("1"));
    assert_eq!(u.header_extension('X'), Some("unknown"));
    let r = &u.records[0];
    assert_eq!(r.extension('W'), Some("123"));
    assert_eq!(r.guid(), "msg-guid-1");
    assert_eq!(r.virtual_size(), Some(123));
    assert_eq!(r.physical_size(), Some(100));
    assert_eq!(r.filename, "name1,S=100");
    assert_eq!(u.records[1].filename, "name 2 with spaces");
    assert_eq!(u.records[1].guid(), "name 2 with spaces");
    assert_eq!(u.next_uid(), 3);
}

#[test]
fn uidlist_v3_errors_and_partial_tail() {
    let line_err = |d: &[u8]| match Uidlist::parse(d) {
        Err(Error::Format {
            rule: FormatRule::BadLine { line, .. },
            ..
        }) => line,
        other => panic!("{other:?}"),
    };
    assert_eq!(line_err(b"3 V1 N5\n2 :a\n2 :b\n"), 3, "uids must increase");
    assert_eq!(line_err(b"3 V1 N5\n1 W1 a\n"), 2, "missing ':'");
    assert_eq!(line_err(b"3 V1 N5\n0 :a\n"), 2, "uid 0");
    assert_eq!(line_err(b"3 V1 N5\n1 :a/b\n"), 2, "slash in name");
    assert_eq!(line_err(b"3 V1 N5\n1 :\n"), 2, "empty name");
    assert_eq!(line_err(b"3 V0 N5\n"), 1, "uidvalidity 0");
    assert_eq!(line_err(b"3 V1 Gnothex\n"), 1);
    assert!(matches!(
        Uidlist::parse(b"2 1 1\n"),
        Err(Error::Format {
            rule: FormatRule::BadVersion { .. },
            ..
        })
    ));
    assert!(Uidlist::parse(b"").is_err());
    // A line still being appended is left out.
    let u = Uidlist::parse(b"3 V1 N2\n1 :a\n2 :b-being-writ").unwrap();
    assert!(u.partial_tail);
    assert_eq!(u.records.len(), 1);
    assert_eq!(u.next_uid(), 2);
}

#[test]
fn uidlist_generated() {
    let text = gen::uidlist_v3(1000);
    let u = Uidlist::parse(text.as_bytes()).unwrap();
    assert_eq!(u.records.len(), 1000);
    assert_eq!(u.next_uid(), 1001);
    let r = u.by_uid(999).unwrap();
    assert_eq!(r.virtual_size(), Some(2999));
    assert_eq!(r.physical_size(), Some(2899));
    assert_eq!(r.guid(), format!("{:032x}", 999));
}

// ---------------------------------------------------------------------------
// file names and keywords

#[test]
fn filename_edge_cases() {
    let f = maildir::parse_filename("1.M2P3.host").unwrap();
    assert_eq!(
        (f.base, f.info, f.flags.is_none()),
        ("1.M2P3.host", None, true)
    );
    assert_eq!(f.uidlist_name, "1.M2P3.host");

    let f = maildir::parse_filename("b,S=10,W=12,X=y:2,TSRFDPzac,extra:stuff").unwrap();
    assert_eq!(f.base, "b");
    assert_eq!((f.physical_size, f.virtual_size), (Some(10), Some(12)));
    assert_eq!(f.extra_fields, vec!["X=y"]);
    let fl = f.flags.clone().unwrap();
    assert_eq!(fl.system, 0x1f);
    assert_eq!(fl.keyword_indexes().collect::<Vec<_>>(), vec![0, 2, 25]);
    assert_eq!(fl.unknown, "P");
    assert_eq!(f.info_extra, Some("extra:stuff"));
    assert_eq!(fl.letters(), "DFPRSTacz");
    assert_eq!(f.with_flags(&fl), "b,S=10,W=12,X=y:2,DFPRSTacz,extra:stuff");

    // Non-numeric sizes are kept as unknown fields, not sizes.
    let f = maildir::parse_filename("b,S=1x,W=:2,").unwrap();
    assert_eq!((f.physical_size, f.virtual_size), (None, None));
    assert_eq!(f.extra_fields, vec!["S=1x", "W="]);
    assert_eq!(f.flags, Some(MaildirFlags::default()));

    // Experimental info ("1,...") is kept but has no flags.
    let f = maildir::parse_filename("b:1,abc").unwrap();
    assert_eq!((f.info, f.flags.is_none()), (Some("1,abc"), true));

    for bad in ["", ",S=1", ":2,S", "a/b"] {
        assert!(maildir::parse_filename(bad).is_err(), "{bad:?}");
    }

    let flags = MaildirFlags {
        system: maildir::FLAG_SEEN | maildir::FLAG_ANSWERED,
        keywords: 0b101,
        unknown: String::new(),
    };
    assert_eq!(
        maildir::build_filename("x", Some(5), Some(6), &flags),
        "x,S=5,W=6:2,RSac"
    );
    assert_eq!(
        maildir::build_filename("x", None, None, &MaildirFlags::default()),
        "x:2,"
    );
}

#[test]
fn guid_forms() {
    let hexguid = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        maildir::guid_128_from_string(hexguid),
        maildir::parse_guid_hex(hexguid).unwrap()
    );
    assert_ne!(
        maildir::guid_128_from_string("a"),
        maildir::guid_128_from_string("b")
    );
}

#[test]
fn keywords_file() {
    let k = Keywords::parse(
        b"0 $Important\n1 project-x\nbroken\n26 toolarge\n3 Later\n1 Replaced\nx y\n",
    )
    .unwrap();
    assert_eq!(
        k.entries,
        vec![(0, "$Important"), (3, "Later"), (1, "Replaced")]
    );
    assert_eq!(k.skipped_lines, vec![3, 4, 7]);
    assert_eq!(k.index_of("later"), Some(3));
    assert_eq!(k.name(2), None);
}

#[test]
fn uidvalidity_content() {
    assert_eq!(maildir::parse_uidvalidity(b"6b0b112a").unwrap(), 0x6b0b112a);
    assert_eq!(
        maildir::parse_uidvalidity(b"6b0b112a\n").unwrap(),
        0x6b0b112a
    );
    for bad in [&b""[..], b"xyz", b"123456789", b"\xff"] {
        assert!(maildir::parse_uidvalidity(bad).is_err());
    }
    assert_eq!(
        maildir::parse_uidvalidity_marker("dovecot-uidvalidity.6b0b112a"),
        Some(0x6b0b112a)
    );
    assert_eq!(
        maildir::parse_uidvalidity_marker("dovecot-uidvalidity.tmp"),
        None
    );
}

// ---------------------------------------------------------------------------
// cache

#[test]
fn cache_lookups_on_generated_file() {
    let (data, heads) = gen::cache_file(10);
    let c = Cache::parse(&data).unwrap();
    assert_eq!(c.fields().len(), gen::FIELDS.len());
    assert_eq!(
        c.field_index("HDR.subject"),
        Some(4),
        "names are case-insensitive"
    );
    assert!(c.matches_index(1_700_000_000, 1_700_000_001));
    assert!(!c.matches_index(1_700_000_000, 1_700_000_000));
    for (m, &head) in heads.iter().enumerate() {
        let m = m as u32;
        assert_eq!(
            c.lookup(head, "date.received").unwrap(),
            Some(CacheValue::U32(1_600_000_000 + m))
        );
        assert_eq!(
            c.lookup(head, "size.virtual").unwrap(),
            Some(CacheValue::U64(1000 + m as u64))
        );
        // Bitmask fields are OR-ed over the whole chain.
        let want = if m % 2 == 0 { 0x21 } else { 0x20 };
        assert_eq!(
            c.lookup(head, "flags").unwrap(),
            Some(CacheValue::Bitmask(want))
        );
        match c.lookup(head, "hdr.Subject").unwrap() {
            Some(CacheValue::Header(h)) => {
                assert_eq!(h.line_numbers, vec![3]);
                assert_eq!(h.text, format!("Subject: message {m}\n").as_bytes());
            }
            other => panic!("{other:?}"),
        }
        let guid = c.lookup(head, "guid").unwrap();
        if m % 2 == 0 {
            assert_eq!(
                guid,
                Some(CacheValue::String(format!("{m:032x}").as_bytes()))
            );
            assert_eq!(c.records_in_chain(head).count(), 2);
        } else {
            assert_eq!(guid, None);
        }
        let parts =
            cache::decode_mime_parts(c.lookup_raw(head, "mime.parts").unwrap().unwrap()).unwrap();
        assert_eq!(
            (parts.body_physical_size, parts.body_lines),
            (20 + m as u64, Some(2))
        );
        assert_eq!(c.lookup(head, "no.such.field").unwrap(), None);
    }
    // (field, value) pairs over a two-record chain, newest record first.
    let pairs: Vec<_> = c.chain_values(heads[0]).collect::<Result<_, _>>().unwrap();
    let names: Vec<&str> = pairs.iter().map(|(f, _)| f.name).collect();
    assert_eq!(
        names,
        [
            "flags",
            "imap.bodystructure",
            "guid",
            "flags",
            "date.received",
            "size.virtual",
            "hdr.Subject",
            "mime.parts"
        ]
    );
    assert_eq!(pairs[0].1, CacheValue::Bitmask(1));
    assert_eq!(pairs[4].1, CacheValue::U32(1_600_000_000));
    // A linear scan finds every record and the JSON rendering lists them.
    assert_eq!(c.scan().count(), 15);
    let v = cache::to_json(&c);
    assert_eq!(v["records"].as_array().unwrap().len(), 15);
    assert_eq!(v["chain_heads"].as_array().unwrap().len(), 10);
    assert_eq!(v["scan_end"]["reason"], serde_json::Value::Null);
}

#[test]
fn cache_rejects_loops_and_bad_fields() {
    let (mut data, heads) = gen::cache_file(2);
    let c = Cache::parse(&data).unwrap();
    let newest = heads[0];
    // Point the older record's prev_offset forward at the newest: a loop.
    let older = c.records_in_chain(newest).nth(1).unwrap().unwrap().offset as usize;
    data[older..older + 4].copy_from_slice(&newest.to_le_bytes());
    let c = Cache::parse(&data).unwrap();
    let items: Vec<_> = c.records_in_chain(newest).collect();
    assert_eq!(items.len(), 3);
    assert!(items[2].is_err());
    // Bitmask lookups walk the whole chain and meet the loop.
    assert!(c.lookup(newest, "flags").is_err());

    // An unregistered field number inside a record.
    let (mut data, heads) = gen::cache_file(1);
    let off = heads[0] as usize + 8;
    data[off..off + 4].copy_from_slice(&99u32.to_le_bytes());
    let c = Cache::parse(&data).unwrap();
    assert!(c.lookup(heads[0], "flags").is_err());
    // Unaligned or header offsets are refused.
    assert!(c.record(3).is_err());
    assert!(c.record(0).is_err());
    assert!(c.record(u32::MAX - 3).is_err());
}

#[test]
fn cache_being_appended() {
    let (data, heads) = gen::cache_file(4);
    // Cut the last record in half: earlier records stay readable.
    let last = *heads.iter().max().unwrap() as usize;
    let cut = &data[..last + 12];
    let c = Cache::parse(cut).unwrap();
    assert!(c.record(last as u32).is_err());
    assert_eq!(
        c.lookup(heads[1], "date.received").unwrap(),
        Some(CacheValue::U32(1_600_000_001))
    );
    let mut scan = c.scan();
    assert_eq!(scan.by_ref().count(), 5);
    assert_eq!(scan.end().unwrap().offset, last as u64);
    assert!(scan.end().unwrap().reason.is_some());

    // A newer field header whose next_offset is already set but whose bytes
    // are past the map: the older header stands.
    let mut data = data.clone();
    let next = data.len() as u32 + 64;
    data[32..36].copy_from_slice(&gen::pack_offset(next));
    let c = Cache::parse(&data).unwrap();
    assert_eq!(c.fields().len(), gen::FIELDS.len());
    assert_eq!(c.field_header_offsets().len(), 1);
}

#[test]
fn cache_newer_field_header_extends_registry() {
    let (mut data, _) = gen::cache_file(1);
    let next = data.len() as u32;
    let mut more = gen::FIELDS.to_vec();
    more.push(("hdr.To", 4, u32::MAX));
    data.extend_from_slice(&gen::field_header(&more, [0; 4]));
    data[32..36].copy_from_slice(&gen::pack_offset(next));
    let c = Cache::parse(&data).unwrap();
    assert_eq!(c.fields().len(), gen::FIELDS.len() + 1);
    assert_eq!(c.field_index("hdr.to"), Some(gen::FIELDS.len() as u32));
    // Only the last header is authoritative: a damaged type byte in the
    // older one does not matter, one in the newer header does.
    let mut d = data.clone();
    d[32 + 12 + 8 * gen::FIELDS.len()] = 9;
    assert_eq!(
        Cache::parse(&d).unwrap().fields().len(),
        gen::FIELDS.len() + 1
    );
    let mut d = data.clone();
    d[next as usize + 12 + 8 * more.len()] = 9;
    assert!(Cache::parse(&d).is_err());
    // A next_offset pointing backwards is refused.
    let mut d = data.clone();
    d[next as usize..next as usize + 4].copy_from_slice(&gen::pack_offset(32));
    assert!(Cache::parse(&d).is_err());
}

#[test]
fn cache_header_checks() {
    let (data, _) = gen::cache_file(1);
    let mut d = data.clone();
    d[0] = 2;
    assert!(matches!(
        Cache::parse(&d),
        Err(Error::Format {
            rule: FormatRule::BadVersion { .. },
            ..
        })
    ));
    let mut d = data.clone();
    d[1] = 4;
    assert!(Cache::parse(&d).is_err());
    let mut d = data.clone();
    d[8..12].copy_from_slice(&[0; 4]);
    assert!(Cache::parse(&d).is_err());
    assert!(Cache::parse(&data[..31]).is_err());
    // No field header yet: valid, no fields.
    let mut d = data[..32].to_vec();
    d[28..32].copy_from_slice(&[0; 4]);
    assert!(Cache::parse(&d).unwrap().fields().is_empty());
}

#[test]
fn mime_parts_checks() {
    let ok = gen::mime_text_part(10, 20, 2);
    assert!(cache::decode_mime_parts(&ok).is_ok());
    assert!(cache::decode_mime_parts(&ok[..ok.len() - 1]).is_err());
    let mut extra = ok.clone();
    extra.push(0);
    assert!(cache::decode_mime_parts(&extra).is_err());
    // message/rfc822 claiming two children.
    let mut rfc = 0x04u32.to_le_bytes().to_vec();
    for x in [1u64, 1, 100, 100] {
        rfc.extend_from_slice(&x.to_le_bytes());
    }
    rfc.extend_from_slice(&0u32.to_le_bytes());
    rfc.extend_from_slice(&2u32.to_le_bytes());
    assert!(cache::decode_mime_parts(&rfc).is_err());
    // Deep nesting is cut off, not recursed without bound.
    let mut deep = Vec::new();
    for i in 0..1000u64 {
        deep.extend_from_slice(&0x01u32.to_le_bytes());
        if i > 0 {
            deep.extend_from_slice(&0u64.to_le_bytes());
        }
        for _ in 0..4 {
            deep.extend_from_slice(&0u64.to_le_bytes());
        }
        deep.extend_from_slice(&1u32.to_le_bytes());
    }
    assert!(cache::decode_mime_parts(&deep).is_err());
}

// ---------------------------------------------------------------------------
// dbox

fn dbox_message(body: &[u8], meta: &[&str]) -> Vec<u8> {
    let mut m = format!("\x01\x02N          {:016X}\n", body.len()).into_bytes();
    assert_eq!(m.len(), 30);
    m.extend_from_slice(body);
    m.extend_from_slice(b"\n\x01\x03\n");
    for l in meta {
        m.extend_from_slice(l.as_bytes());
        m.push(b'\n');
    }
    m.push(b'\n');
    m
}

#[test]
fn dbox_multi_message_file() {
    let mut f = b"2 M1e C6b0b1127 Zfuture\n".to_vec();
    let first = f.len() as u64;
    f.extend_from_slice(&dbox_message(
        b"Subject: a\n\nbody\n",
        &[
            "Gguid-a",
            "R65928d25",
            "Va7",
            "Z10",
            "Puidl",
            "O42",
            "BINBOX",
            "Qunknown",
        ],
    ));
    let second = f.len() as u64;
    f.extend_from_slice(&dbox_message(b"x", &["G0123"]));
    let file = DboxFile::parse(&f).unwrap();
    assert_eq!(file.header().msg_header_size, 30);
    assert_eq!(file.header().create_stamp, Some(0x6b0b1127));
    assert!(file.header().fields.contains(&('Z', "future")));
    let msgs: Vec<_> = file.messages().collect::<Result<_, _>>().unwrap();
    assert_eq!(msgs.len(), 2);
    let m = &msgs[0];
    assert_eq!(
        (m.offset, m.body_offset, m.body_size),
        (first, first + 30, 17)
    );
    assert_eq!(m.body(&file).unwrap(), b"Subject: a\n\nbody\n");
    let md = &m.metadata;
    assert_eq!(md.guid(), Some("guid-a"));
    assert_eq!(md.received_time(), Some(0x65928d25));
    assert_eq!(md.virtual_size(), Some(0xa7));
    assert_eq!(md.physical_size(), Some(0x10));
    assert_eq!(md.pop3_uidl(), Some("uidl"));
    assert_eq!(md.pop3_order(), Some(42));
    assert_eq!(md.orig_mailbox(), Some("INBOX"));
    assert_eq!(md.get('Q'), Some("unknown"));
    assert_eq!(m.end_offset, second);
    assert_eq!(
        file.message_at(second).unwrap().metadata.guid(),
        Some("0123")
    );

    // A message still being appended: the first stays readable.
    let cut = &f[..f.len() - 3];
    let file = DboxFile::parse(cut).unwrap();
    let r: Vec<_> = file.messages().collect();
    assert_eq!(r.len(), 2);
    assert!(r[0].is_ok() && r[1].is_err());
}

#[test]
fn dbox_header_errors() {
    for bad in [
        &b"3 M1e\n"[..],
        b"2 C1\n",
        b"2 M10\n",
        b"2 Mzz\n",
        b"2 M1e",
        b"",
    ] {
        assert!(
            DboxFile::parse(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut f = b"2 M1e C1\n".to_vec();
    let mut m = dbox_message(b"abc", &["Gx"]);
    m[0] = 0; // bad magic
    f.extend_from_slice(&m);
    let file = DboxFile::parse(&f).unwrap();
    assert!(file.messages().next().unwrap().is_err());
    assert!(file.message_at(2).is_err(), "inside the file header");
    assert!(file.message_at(u64::MAX - 5).is_err());
}

// ---------------------------------------------------------------------------
// mailbox log, attributes

#[test]
fn mailbox_log_records() {
    let mut d = Vec::new();
    for (t, ts) in [(1u8, 10u32), (3, 20), (6, 30)] {
        d.extend_from_slice(&[t, 0, 0, 0]);
        d.extend_from_slice(&[t; 16]);
        d.extend_from_slice(&ts.to_be_bytes());
    }
    d.extend_from_slice(&[4, 0, 0]); // record being appended
    let log = MailboxLog::new(&d);
    let r: Vec<_> = log.records().collect::<Result<_, _>>().unwrap();
    assert_eq!(
        r.iter().map(|r| r.kind).collect::<Vec<_>>(),
        [
            MailboxLogType::DeleteMailbox,
            MailboxLogType::Rename,
            MailboxLogType::CreateDir
        ]
    );
    assert_eq!(r[1].timestamp, 20);
    assert_eq!(r[2].offset, 48);
    assert_eq!(log.partial_tail(), 3);
    d[24] = 9;
    let r: Vec<_> = MailboxLog::new(&d).records().collect();
    assert_eq!(r.len(), 2);
    assert!(r[1].is_err());
}

#[test]
fn attribute_file() {
    let a = attributes::Attributes::parse(b"priv/0123456789abcdef0123456789abcdef/comment\nhello\x01nworld\nshared/vendor/x\nv\npriv/k\nv1\npriv/k\nv2\ndangling");
    assert_eq!(a.entries.len(), 4);
    assert!(a.dangling_key);
    assert_eq!(&*a.entries[0].value, b"hello\nworld");
    assert_eq!(a.get(b"priv/k"), Some(&b"v2"[..]));
    let k = attributes::parse_key("priv/0123456789abcdef0123456789abcdef/comment").unwrap();
    assert_eq!(
        (k.mailbox_guid, k.name),
        (Some("0123456789abcdef0123456789abcdef"), "comment")
    );
    let k = attributes::parse_key("shared/vendor/x").unwrap();
    assert_eq!(
        (k.scope, k.mailbox_guid, k.name),
        (attributes::AttributeScope::Shared, None, "vendor/x")
    );
    assert!(attributes::parse_key("other").is_none());
    assert!(attributes::Attributes::parse(b"").entries.is_empty());
}
