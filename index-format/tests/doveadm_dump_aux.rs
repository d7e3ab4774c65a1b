//! Compares the readers of cache, dbox and mailbox-log files with what
//! `doveadm dump` printed for the same fixture files (`<file>.dump.txt`),
//! value by value; and checks the files doveadm cannot dump (uidlist,
//! keywords, subscriptions, attributes, uidvalidity, Maildir names) against
//! the fixture scenario (`fixtures/index/README.md`) and their content.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use index_format::cache::{Cache, CacheValue, FieldType};
use index_format::dbox::DboxFile;
use index_format::mailbox_log::{mailbox_name_hash, MailboxLog};
use index_format::maildir::{self, Keywords, Uidlist};
use index_format::subscriptions::Subscriptions;
use index_format::{attributes, dump, FileKind, MappedFile};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/index")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn all_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    walk(&fixtures(), &mut v);
    v.sort();
    v
}

fn dump_txt(p: &Path) -> String {
    let mut s = p.as_os_str().to_owned();
    s.push(".dump.txt");
    fs::read_to_string(PathBuf::from(s)).unwrap()
}

fn with_dump(pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    all_files()
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            pred(n) && {
                let mut d = p.as_os_str().to_owned();
                d.push(".dump.txt");
                Path::new(&d).exists()
            }
        })
        .collect()
}

/// `YYYY-MM-DD HH:MM:SS` in UTC (the fixtures were dumped with TZ=UTC).
fn utc(t: u64) -> String {
    common::utc(u32::try_from(t).expect("a 32-bit UNIX time"))
}

fn kv(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once(" = ")?;
    Some((k.trim_end_matches(['.', ' ']).trim(), v.trim()))
}

fn num_before_paren(v: &str) -> u64 {
    v.split_whitespace().next().unwrap().parse().unwrap()
}

fn render_mime(p: &Value) -> String {
    let mut s = format!(
        "(pos={} hdr.p={} hdr.v={} body.p={} body.v={} flags={:x}",
        p["physical_pos"],
        p["header_physical_size"],
        p["header_virtual_size"],
        p["body_physical_size"],
        p["body_virtual_size"],
        p["flags"].as_u64().unwrap()
    );
    let children = p["children"].as_array().unwrap();
    if !children.is_empty() {
        s.push(' ');
        for c in children {
            s.push_str(&render_mime(c));
        }
    }
    s.push(')');
    s
}

/// Header values, field table rows and per-message record chains of a dump.
type CacheDump = (
    BTreeMap<String, String>,
    Vec<Vec<String>>,
    Vec<Vec<DumpedRecord>>,
);

/// One `cache offset=` block of the dump: the record and its field lines.
struct DumpedRecord {
    offset: u32,
    size: u32,
    prev: u32,
    fields: Vec<(String, String)>,
}

/// Per message (RECORD), the chain of cache records doveadm walked.
fn parse_cache_dump(text: &str) -> CacheDump {
    let cache_part = text
        .split("-- CACHE:")
        .nth(1)
        .expect("dump has a CACHE section");
    let (hdr_part, rest) = cache_part.split_once("-- Cache fields --").unwrap();
    let mut header = BTreeMap::new();
    for l in hdr_part.lines().skip(1) {
        if let Some((k, v)) = kv(l) {
            header.insert(k.to_string(), v.to_string());
        }
    }
    let (fields_part, records_part) = rest.split_once("-- RECORDS:").unwrap();
    let mut fields = Vec::new();
    for l in fields_part.lines().skip(2) {
        if l.trim().is_empty() {
            continue;
        }
        let (idx, rest) = l.split_once(':').unwrap();
        let mut cols: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
        // Last used is "YYYY-MM-DD HH:MM": two columns, joined back.
        let time = cols.split_off(cols.len() - 2).join(" ");
        cols.insert(0, idx.trim().to_string());
        cols.push(time);
        fields.push(cols);
    }
    let mut messages: Vec<Vec<DumpedRecord>> = Vec::new();
    for l in records_part.lines().skip(1) {
        if l.starts_with("RECORD:") {
            messages.push(Vec::new());
        } else if let Some(r) = l.strip_prefix(" - cache offset=") {
            let (off, r) = r.split_once(" size=").unwrap();
            let (size, prev) = r.split_once(", prev_offset = ").unwrap();
            messages.last_mut().unwrap().push(DumpedRecord {
                offset: off.parse().unwrap(),
                size: size.parse().unwrap(),
                prev: prev.parse().unwrap(),
                fields: Vec::new(),
            });
        } else if let Some(f) = l.strip_prefix("    - ") {
            let (name, value) = f.split_once(": ").unwrap_or((f.trim_end_matches(':'), ""));
            let rec = messages.last_mut().unwrap().last_mut().unwrap();
            rec.fields.push((name.to_string(), value.to_string()));
        } else if l.starts_with(" - ") || l.is_empty() || l.trim_start().starts_with(": ") {
            // extension lines of the index part, record separators
        } else {
            // Continuation of a multi-line value (folded header).
            let rec = messages.last_mut().unwrap().last_mut().unwrap();
            let last = rec.fields.last_mut().unwrap();
            last.1.push('\n');
            last.1.push_str(l);
        }
    }
    (header, fields, messages)
}

/// The text doveadm prints for one field, rebuilt from homing's JSON value.
fn doveadm_field_text(f: &Value) -> String {
    let ty = f["type"].as_str().unwrap();
    match ty {
        "fixed-size" | "bitmask" | "variable-size" => {
            let mut s = String::new();
            if ty == "fixed-size" {
                if let Some(v) = f.get("value") {
                    s.push_str(&format!("{v} "));
                }
            }
            s.push_str(&format!("({})", f["hex"].as_str().unwrap()));
            if f["name"] == "mime.parts" {
                s.push(' ');
                s.push_str(&render_mime(&f["mime_parts"]));
            }
            s
        }
        "string" => f["text"].as_str().unwrap().to_string(),
        "header" => {
            let lines: Vec<String> = f["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.to_string())
                .collect();
            let mut text = f["text"].as_str().unwrap().to_string();
            if lines.len() == 1 && text.ends_with('\n') {
                text.pop();
            }
            let mut s = lines.join(", ");
            if !text.is_empty() {
                s.push_str(": ");
                s.push_str(&text);
            }
            s
        }
        other => panic!("unknown type {other}"),
    }
}

#[test]
fn cache_matches_doveadm_dump() {
    let files = with_dump(|n| n.ends_with(".index.cache"));
    assert!(
        files.len() >= 5,
        "expected the cache fixtures, found {files:?}"
    );
    let mut compared_fields = 0;
    for path in files {
        let text = dump_txt(&path);
        let (hdr, fields, messages) = parse_cache_dump(&text);
        let (kind, v) = dump::dump(&path, None).unwrap();
        assert_eq!(kind, FileKind::Cache);
        let h = &v["header"];
        let ctx = path.display().to_string();
        assert_eq!(
            hdr["major version"],
            h["major_version"].to_string(),
            "{ctx}"
        );
        assert_eq!(
            hdr["minor version"],
            h["minor_version"].to_string(),
            "{ctx}"
        );
        assert_eq!(
            num_before_paren(&hdr["indexid"]),
            h["indexid"].as_u64().unwrap(),
            "{ctx}"
        );
        assert!(
            hdr["indexid"].contains(&utc(h["indexid"].as_u64().unwrap())),
            "{ctx}"
        );
        assert_eq!(
            num_before_paren(&hdr["file_seq"]),
            h["file_seq"].as_u64().unwrap(),
            "{ctx}"
        );
        assert!(
            hdr["file_seq"].ends_with(&format!("({} purges)", h["purges"])),
            "{ctx}: {}",
            hdr["file_seq"]
        );
        for (dk, jk) in [
            ("continued_record_count", "continued_record_count"),
            ("record_count", "record_count"),
            ("used_file_size (old)", "used_file_size"),
            ("deleted_record_count", "deleted_record_count"),
        ] {
            assert_eq!(hdr[dk], h[jk].to_string(), "{ctx}: {dk}");
        }
        assert_eq!(
            num_before_paren(&hdr["field_header_offset"]),
            h["field_header_offset"].as_u64().unwrap(),
            "{ctx}"
        );
        assert!(
            hdr["field_header_offset"].contains(&format!(
                "(0x{:08x} nontranslated)",
                h["field_header_offset_raw"].as_u64().unwrap()
            )),
            "{ctx}"
        );

        let jfields = v["fields"].as_array().unwrap();
        assert_eq!(fields.len(), jfields.len(), "{ctx}: field count");
        for (d, j) in fields.iter().zip(jfields) {
            assert_eq!(d[0], j["index"].to_string(), "{ctx}");
            assert_eq!(d[1], j["name"].as_str().unwrap(), "{ctx}");
            let ty: FieldType = serde_json::from_value(j["type"].clone())
                .unwrap_or_else(|_| panic!("type {}", j["type"]));
            assert_eq!(d[2], ty.short_name(), "{ctx}: {}", d[1]);
            let size = if j["size"].is_null() {
                "-".to_string()
            } else {
                j["size"].to_string()
            };
            assert_eq!(d[3], size, "{ctx}: {}", d[1]);
            assert_eq!(d[4], j["decision"].as_str().unwrap(), "{ctx}: {}", d[1]);
            assert_eq!(
                d[5],
                utc(j["last_used"].as_u64().unwrap())[..16],
                "{ctx}: {}",
                d[1]
            );
        }

        // Every record doveadm walked, with every field value it printed.
        let records: BTreeMap<u64, &Value> = v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["offset"].as_u64().unwrap(), r))
            .collect();
        let map = MappedFile::open(&path).unwrap();
        let cache = Cache::parse(&map).unwrap();
        assert!(!messages.is_empty(), "{ctx}: no records in the dump");
        for chain in &messages {
            let head = chain[0].offset;
            let walked: Vec<u32> = cache
                .records_in_chain(head)
                .map(|r| r.unwrap().offset)
                .collect();
            assert_eq!(
                walked,
                chain.iter().map(|r| r.offset).collect::<Vec<_>>(),
                "{ctx}: chain from {head}"
            );
            assert!(
                v["chain_heads"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|h| h == head),
                "{ctx}: {head} is a chain head"
            );
            for d in chain {
                let r = records
                    .get(&(d.offset as u64))
                    .unwrap_or_else(|| panic!("{ctx}: no record at {}", d.offset));
                assert_eq!(r["size"], d.size, "{ctx}");
                assert_eq!(r["prev_offset"], d.prev, "{ctx}");
                let jf = r["fields"].as_array().unwrap();
                assert_eq!(
                    jf.len(),
                    d.fields.len(),
                    "{ctx}: fields of record {}",
                    d.offset
                );
                for ((name, value), f) in d.fields.iter().zip(jf) {
                    assert_eq!(name, f["name"].as_str().unwrap(), "{ctx}");
                    if f["type"] == "fixed-size" {
                        // "<number> (<hex>)"; 2.3.19.1 leaves out the space for 8-byte values.
                        let (num, hexpart) = value.split_once('(').unwrap();
                        assert_eq!(
                            num.trim(),
                            f["value"].to_string(),
                            "{ctx}: record {} field {name}",
                            d.offset
                        );
                        assert_eq!(
                            hexpart.trim_end_matches(')'),
                            f["hex"].as_str().unwrap(),
                            "{ctx}: {name}"
                        );
                    } else {
                        assert_eq!(
                            value,
                            &doveadm_field_text(f),
                            "{ctx}: record {} field {name}",
                            d.offset
                        );
                    }
                    compared_fields += 1;
                }
            }
            // The standard fields in one walk agree with the per-field lookups.
            let std = cache.standard_fields(head).unwrap();
            assert_eq!(
                std.date_received.map(CacheValue::U32),
                cache.lookup(head, "date.received").unwrap(),
                "{ctx}"
            );
            assert_eq!(
                std.virtual_size.map(CacheValue::U64),
                cache.lookup(head, "size.virtual").unwrap(),
                "{ctx}"
            );
            assert_eq!(
                std.flags.map(CacheValue::Bitmask),
                cache.lookup(head, "flags").unwrap(),
                "{ctx}"
            );
            assert!(
                std.date_received.is_some() && std.mime_parts.is_some(),
                "{ctx}"
            );
            let subject = cache.header_field(head, "SUBJECT").unwrap().unwrap();
            assert!(subject.text.starts_with(b"Subject: "), "{ctx}");
            // Field lookups by name through the chain agree with the dump.
            for d in chain {
                for (name, value) in &d.fields {
                    let got = cache.lookup(head, name).unwrap().unwrap();
                    match got {
                        CacheValue::U32(n) => {
                            assert!(value.starts_with(&format!("{n} ")), "{ctx}: {name}")
                        }
                        CacheValue::U64(n) => assert!(
                            value.starts_with(&format!("{n}("))
                                || value.starts_with(&format!("{n} ")),
                            "{ctx}: {name}"
                        ),
                        CacheValue::String(s) => assert_eq!(value.as_bytes(), s, "{ctx}: {name}"),
                        CacheValue::Header(h) => {
                            if h.is_absent() {
                                assert_eq!(value, "", "{ctx}: {name}");
                            } else {
                                assert!(
                                    value.starts_with(&h.line_numbers[0].to_string()),
                                    "{ctx}: {name}"
                                );
                            }
                        }
                        CacheValue::Bitmask(b) => assert_eq!(
                            value,
                            &format!("({})", hex(&b.to_le_bytes())),
                            "{ctx}: {name}"
                        ),
                        CacheValue::Bytes(b) => {
                            assert!(value.starts_with(&format!("({})", hex(b))), "{ctx}: {name}")
                        }
                        CacheValue::SentDate { .. } => {}
                    }
                }
            }
        }
    }
    assert!(
        compared_fields > 100,
        "compared {compared_fields} field values"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn dbox_matches_doveadm_dump() {
    let files = with_dump(|n| n.starts_with("u.") || n.starts_with("m."));
    assert!(files.len() >= 6, "{files:?}");
    for path in files {
        let ctx = path.display().to_string();
        let text = dump_txt(&path);
        let (kind, v) = dump::dump(&path, None).unwrap();
        assert_eq!(kind, FileKind::DboxMail);
        let msgs = v["messages"].as_array().unwrap();
        let mut current: Option<&Value> = None;
        let mut seen = 0;
        for l in text.lines().skip(1) {
            if l.is_empty() {
                continue;
            }
            if let Some(off) = l.strip_prefix("offset ").and_then(|o| o.strip_suffix(':')) {
                let off: u64 = off.parse().unwrap();
                current = msgs.iter().find(|m| m["offset"] == off);
                assert!(current.is_some(), "{ctx}: no message at {off}");
                seen += 1;
                continue;
            }
            let (k, val) = kv(l).unwrap_or_else(|| panic!("{ctx}: line {l:?}"));
            match k {
                "file.msg_header_size" => assert_eq!(val, v["msg_header_size"].to_string()),
                "file.create_stamp" => {
                    let t = v["create_stamp"].as_u64().unwrap();
                    assert_eq!(num_before_paren(val), t);
                    assert!(val.contains(&utc(t)));
                }
                _ => {
                    let m = current.unwrap();
                    let field = match k {
                        "msg.size" => "body_size",
                        "msg.received" => "received",
                        "msg.virtual-size" => "virtual_size",
                        "msg.physical-size" => "physical_size",
                        "msg.guid" => "guid",
                        "msg.orig-mailbox" => "orig_mailbox",
                        "msg.pop3-uidl" => "pop3_uidl",
                        "msg.pop3-order" => "pop3_order",
                        "msg.save-time" => "save_time",
                        "msg.ext-ref" => "ext_ref",
                        other => panic!("{ctx}: doveadm printed {other}, not compared"),
                    };
                    match &m[field] {
                        Value::String(s) => assert_eq!(val, s, "{ctx}: {k}"),
                        Value::Number(n) => {
                            assert_eq!(num_before_paren(val), n.as_u64().unwrap(), "{ctx}: {k}");
                            if k == "msg.received" {
                                assert!(val.contains(&utc(n.as_u64().unwrap())));
                            }
                        }
                        other => panic!("{ctx}: {k} is {other}"),
                    }
                }
            }
        }
        assert_eq!(seen, msgs.len(), "{ctx}: message count");

        // Bodies are located, not copied: the virtual size Dovecot stored is
        // the body's size with every bare LF counted as CRLF.
        let map = MappedFile::open(&path).unwrap();
        let file = DboxFile::parse(&map).unwrap();
        for m in file.messages() {
            let m = m.unwrap();
            let body = m.body(&file).unwrap();
            assert_eq!(body.len() as u64, m.body_size);
            assert!(
                body.starts_with(b"From: ")
                    || body.starts_with(b"Subject: ")
                    || body.starts_with(b"Message-ID"),
                "{ctx}"
            );
            let lfs = body.iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(m.metadata.virtual_size(), Some(m.body_size + lfs), "{ctx}");
            assert_eq!(m.total_size(), m.end_offset - m.offset);
        }
    }
}

#[test]
fn mdbox_map_sizes_match_files() {
    // README/spec 7.3: m.4 is 278 bytes = 16 (file header) + 262 (the one mail).
    let path = fixtures().join("mdbox/mdbox/storage/m.4");
    let map = MappedFile::open(&path).unwrap();
    let file = DboxFile::parse(&map).unwrap();
    let msgs: Vec<_> = file.messages().map(Result::unwrap).collect();
    assert_eq!(file.header().size, 16);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].total_size(), 262);
    assert_eq!(msgs[0].end_offset, map.len() as u64);
    assert_eq!(msgs[0].metadata.orig_mailbox(), Some("Work/Reports"));
    // message_at reaches the same message from a map-style offset.
    assert_eq!(file.message_at(16).unwrap(), msgs[0]);
}

#[test]
fn mailbox_log_matches_doveadm_dump() {
    let files = with_dump(|n| n.starts_with("dovecot.mailbox.log"));
    assert_eq!(files.len(), 3, "{files:?}");
    for path in files {
        let ctx = path.display().to_string();
        let (kind, v) = dump::dump(&path, None).unwrap();
        assert_eq!(kind, FileKind::MailboxLog);
        let recs = v["records"].as_array().unwrap();
        let text = dump_txt(&path);
        let lines: Vec<&str> = text
            .lines()
            .skip(1)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>();
        assert_eq!(lines.len(), recs.len(), "{ctx}");
        for (l, r) in lines.iter().zip(recs) {
            let (off, rest) = l.strip_prefix('#').unwrap().split_once(": ").unwrap();
            let mut parts = rest.splitn(3, ' ');
            let (ty, guid, time) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            assert_eq!(off, r["offset"].to_string(), "{ctx}");
            assert_eq!(ty, r["type"], "{ctx}");
            assert_eq!(guid, r["guid"], "{ctx}");
            assert_eq!(
                time,
                format!("({})", utc(r["timestamp"].as_u64().unwrap())),
                "{ctx}"
            );
        }
        // Subscription records carry the name hash of a subscribed mailbox
        // (scenario: INBOX, Work, Work/Reports).
        let map = MappedFile::open(&path).unwrap();
        let hashes: Vec<[u8; 16]> = ["INBOX", "Work", "Work/Reports"]
            .iter()
            .map(|n| mailbox_name_hash(n.as_bytes()))
            .collect();
        let subs: Vec<_> = MailboxLog::new(&map)
            .records()
            .map(Result::unwrap)
            .filter(|r| r.kind == index_format::mailbox_log::MailboxLogType::Subscribe)
            .collect();
        assert_eq!(subs.len(), 3, "{ctx}");
        for s in subs {
            assert!(
                hashes.contains(&s.mailbox_guid),
                "{ctx}: {} is not a subscribed name's hash",
                hex(&s.mailbox_guid)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Files without a doveadm dump: checked against the scenario.

fn index_dump_value(path: &Path, key: &str) -> u64 {
    let text = fs::read_to_string(path).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{key} in {}", path.display()));
    num_before_paren(kv(line).unwrap().1)
}

#[test]
fn maildir_uidlists_match_scenario() {
    let root = fixtures().join("maildir/Maildir");
    let data = fs::read(root.join("dovecot-uidlist")).unwrap();
    let u = Uidlist::parse(&data).unwrap();
    assert_eq!(u.version, 3);
    // uidvalidity agrees with the index (dump of dovecot.index).
    assert_eq!(
        u.uid_validity as u64,
        index_dump_value(&root.join("dovecot.index.dump.txt"), "uid validity")
    );
    assert_eq!(u.next_uid(), 5);
    assert_eq!(u.header_next_uid, 5);
    assert_eq!(
        u.mailbox_guid.map(|g| hex(&g)).as_deref(),
        Some("19f21e0927110b6bce42000083ecc375")
    );
    // Visited instead of kept: the same records, header and last UID.
    let mut visited = Vec::new();
    let (header, last) = Uidlist::parse_visit(&data, |r| visited.push(r)).unwrap();
    assert_eq!(visited, u.records);
    assert_eq!(last, 4);
    assert!(header.records.is_empty());
    assert_eq!(
        (
            header.uid_validity,
            header.header_next_uid,
            header.mailbox_guid
        ),
        (u.uid_validity, u.header_next_uid, u.mailbox_guid)
    );
    assert_eq!(
        u.records.iter().map(|r| r.uid).collect::<Vec<_>>(),
        vec![1, 2, 3, 4],
        "expunged uid 4 still listed"
    );
    // uids 1-3 name the files in cur/ (name up to ':').
    let mut cur: Vec<String> = fs::read_dir(root.join("cur"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".keep")
        .collect();
    cur.sort();
    for r in &u.records[..3] {
        let file = cur
            .iter()
            .find(|n| n.split(':').next() == Some(r.filename))
            .unwrap_or_else(|| panic!("uid {} file", r.uid));
        let meta = fs::metadata(root.join("cur").join(file)).unwrap();
        assert_eq!(r.physical_size(), Some(meta.len()));
        assert_eq!(r.guid(), r.filename);
    }
    assert!(
        !cur.iter().any(|n| n.starts_with(u.records[3].filename)),
        "uid 4's file is gone"
    );
    // The spec's GUID hash example is uid 4's name.
    assert_eq!(
        hex(&maildir::guid_128_from_string(u.records[3].guid())),
        "d6b3c9e3ed26df8aeb484918ae02c55b"
    );

    // Work/Reports: header N1 but a uid-1 line appended without rewriting it.
    let data = fs::read(root.join(".Work.Reports/dovecot-uidlist")).unwrap();
    let u = Uidlist::parse(&data).unwrap();
    assert_eq!((u.header_next_uid, u.next_uid()), (1, 2));
    assert_eq!(u.records.len(), 1);
    let newfile = fs::read_dir(root.join(".Work.Reports/new"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    assert_eq!(u.by_uid(1).unwrap().filename, newfile.to_str().unwrap());
    // Work: empty.
    let data = fs::read(root.join(".Work/dovecot-uidlist")).unwrap();
    let u = Uidlist::parse(&data).unwrap();
    assert!(u.records.is_empty());
    assert_eq!(u.next_uid(), 1);

    let (kind, v) = dump::dump(&root.join("dovecot-uidlist"), None).unwrap();
    assert_eq!(kind, FileKind::Uidlist);
    assert_eq!(v["records"].as_array().unwrap().len(), 4);
    assert_eq!(v["next_uid"], 5);
}

#[test]
fn maildir_names_keywords_and_flags_match_scenario() {
    let root = fixtures().join("maildir/Maildir");
    let kw_data = fs::read(root.join("dovecot-keywords")).unwrap();
    let kw = Keywords::parse(&kw_data).unwrap();
    assert_eq!(kw.entries, vec![(0, "$Important"), (1, "project-x")]);
    assert!(kw.skipped_lines.is_empty());
    let ul_data = fs::read(root.join("dovecot-uidlist")).unwrap();
    let ul = Uidlist::parse(&ul_data).unwrap();
    // Final state (README): uid 1 \Seen \Answered \Draft project-x,
    // uid 2 \Seen $Important, uid 3 \Seen \Flagged.
    let expected: [(u32, u8, Vec<&str>); 3] = [
        (
            1,
            maildir::FLAG_SEEN | maildir::FLAG_ANSWERED | maildir::FLAG_DRAFT,
            vec!["project-x"],
        ),
        (2, maildir::FLAG_SEEN, vec!["$Important"]),
        (3, maildir::FLAG_SEEN | maildir::FLAG_FLAGGED, vec![]),
    ];
    // The index dump's RECORD flags agree with the file names.
    let index_dump = fs::read_to_string(root.join("dovecot.index.dump.txt")).unwrap();
    for (uid, flags, kws) in expected {
        let rec = ul.by_uid(uid).unwrap();
        let name = fs::read_dir(root.join("cur"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|n| n.split(':').next() == Some(rec.filename))
            .unwrap();
        let f = maildir::parse_filename(&name).unwrap();
        let fl = f.flags.clone().unwrap();
        assert_eq!(fl.system, flags, "{name}");
        assert_eq!(
            kw.names_of(&fl),
            kws.iter().map(|k| Some(*k)).collect::<Vec<_>>(),
            "{name}"
        );
        let rec_line = index_dump
            .lines()
            .find(|l| l.starts_with(&format!("RECORD: seq={uid}, uid={uid}, ")))
            .unwrap();
        assert!(
            rec_line.contains(&format!("flags=0x{flags:02x}")),
            "{rec_line}"
        );
        // Rebuilding the name from its parts gives the same name back.
        assert_eq!(
            maildir::build_filename(f.base, f.physical_size, f.virtual_size, &fl),
            name
        );
        assert_eq!(f.with_flags(&fl), name);
        // S= is the file size, W= counts each LF as CRLF.
        let body = fs::read(root.join("cur").join(&name)).unwrap();
        assert_eq!(f.physical_size, Some(body.len() as u64));
        let lfs = body.iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(f.virtual_size, Some(body.len() as u64 + lfs));
        let (kind, v) = dump::dump(&root.join("cur").join(&name), None).unwrap();
        assert_eq!(kind, FileKind::MaildirFilename);
        assert_eq!(v["file_size"], body.len());
        assert_eq!(v["flags"]["system"], flags);
    }
    let (kind, v) = dump::dump(&root.join("dovecot-keywords"), None).unwrap();
    assert_eq!(kind, FileKind::Keywords);
    assert_eq!(v["keywords"][1]["letter"], "b");
    assert_eq!(v["keywords"][1]["name"], "project-x");
}

#[test]
fn uidvalidity_files_match_scenario() {
    for (dir, uidlists) in [
        ("maildir/Maildir", true),
        ("sdbox/sdbox", false),
        ("mdbox/mdbox", false),
    ] {
        let root = fixtures().join(dir);
        let data = fs::read(root.join("dovecot-uidvalidity")).unwrap();
        let value = maildir::parse_uidvalidity(&data).unwrap();
        // The marker file carries the same value.
        let marker = fs::read_dir(&root)
            .unwrap()
            .filter_map(|e| {
                maildir::parse_uidvalidity_marker(e.unwrap().file_name().to_str().unwrap())
            })
            .collect::<Vec<_>>();
        assert_eq!(marker, vec![value], "{dir}");
        let (kind, v) = dump::dump(&root.join("dovecot-uidvalidity"), None).unwrap();
        assert_eq!(kind, FileKind::Uidvalidity);
        assert_eq!(v["uid_validity"], value);
        if uidlists {
            // It is the last value allocated: no mailbox has a larger one.
            for mb in ["", ".Work", ".Work.Reports"] {
                let d = fs::read(root.join(mb).join("dovecot-uidlist")).unwrap();
                assert!(Uidlist::parse(&d).unwrap().uid_validity <= value);
            }
        }
    }
}

#[test]
fn subscriptions_match_scenario() {
    for dir in ["maildir/Maildir", "sdbox/sdbox", "mdbox/mdbox"] {
        let path = fixtures().join(dir).join("subscriptions");
        let data = fs::read(&path).unwrap();
        let s = Subscriptions::parse(&data).unwrap();
        assert_eq!(s.version, 2);
        let names: Vec<String> = s.names.iter().map(|n| n.name('/')).collect();
        assert_eq!(names, ["INBOX", "Work", "Work/Reports"], "{dir}");
        assert_eq!(s.names[2].levels().len(), 2);
        // Writing the same names gives the same bytes.
        let levels: Vec<Vec<&str>> = vec![vec!["INBOX"], vec!["Work"], vec!["Work", "Reports"]];
        assert_eq!(
            index_format::subscriptions::build_v2(levels.iter().map(|l| &l[..])),
            data
        );
        let (kind, v) = dump::dump(&path, None).unwrap();
        assert_eq!(kind, FileKind::Subscriptions);
        assert_eq!(v["names"][2]["name"], "Work/Reports");
    }
}

#[test]
fn attributes_match_scenario() {
    // SETMETADATA INBOX /private/comment "fixture comment"; keyed by INBOX's mailbox GUID.
    let inbox_guid = |dir: &str| -> String {
        match dir {
            "maildir" => {
                let d = fs::read(fixtures().join("maildir/Maildir/dovecot-uidlist")).unwrap();
                hex(&Uidlist::parse(&d).unwrap().mailbox_guid.unwrap())
            }
            _ => {
                let p = fixtures().join(format!(
                    "{dir}/{dir}/mailboxes/INBOX/dbox-Mails/dovecot.index.dump.txt"
                ));
                let text = fs::read_to_string(p).unwrap();
                let l = text.lines().find(|l| l.contains("mailbox_guid")).unwrap();
                kv(l).unwrap().1.to_string()
            }
        }
    };
    for dir in ["maildir", "sdbox", "mdbox"] {
        let path = fixtures().join(dir).join("dovecot-attributes");
        let data = fs::read(&path).unwrap();
        let a = attributes::Attributes::parse(&data);
        assert_eq!(a.entries.len(), 1);
        assert!(!a.dangling_key);
        let key = String::from_utf8(a.entries[0].key.to_vec()).unwrap();
        let k = attributes::parse_key(&key).unwrap();
        assert_eq!(k.scope, attributes::AttributeScope::Private);
        assert_eq!(k.mailbox_guid.unwrap(), inbox_guid(dir), "{dir}");
        assert_eq!(k.name, "comment");
        assert_eq!(a.get(key.as_bytes()), Some(&b"fixture comment"[..]));
        let (kind, v) = dump::dump(&path, None).unwrap();
        assert_eq!(kind, FileKind::Attributes);
        assert_eq!(v["entries"][0]["value"], "fixture comment");
    }
}
