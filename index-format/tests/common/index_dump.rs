//! Parsing `doveadm dump` output of an index and comparing it with homing's dump.
#![allow(dead_code)]

use std::path::Path;

use super::{kv, utc};
use serde_json::Value;

#[derive(Debug, Default)]
struct DExt {
    fields: Vec<(String, String)>,
    header_hex: Option<String>,
    header_fields: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct DRecExt {
    name: String,
    value: String,
    hex: String,
    decoded: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct DRec {
    seq: u32,
    uid: u32,
    flags: u8,
    exts: Vec<DRecExt>,
}

#[derive(Debug, Default)]
struct DIndex {
    index_name: String,
    header: Vec<(String, String)>,
    exts: Vec<DExt>,
    keywords: Vec<String>,
    records_count: Option<usize>,
    records: Vec<DRec>,
}

fn parse_dump(text: &str) -> DIndex {
    #[derive(PartialEq)]
    enum S {
        Header,
        Ext,
        Keywords,
        Cache,
        Records,
    }
    let mut d = DIndex::default();
    let mut s = S::Header;
    for line in text.lines() {
        if let Some(p) = line.strip_prefix("-- INDEX: ") {
            d.index_name = p.trim().trim_start_matches("./").to_string();
            continue;
        }
        if line.starts_with("-- Extension ") {
            d.exts.push(DExt::default());
            s = S::Ext;
            continue;
        }
        if line.starts_with("-- Keywords --") {
            s = S::Keywords;
            continue;
        }
        if line.starts_with("-- CACHE:") {
            s = S::Cache;
            continue;
        }
        if let Some(n) = line.strip_prefix("-- RECORDS: ") {
            d.records_count = Some(n.trim().parse().unwrap());
            s = S::Records;
            continue;
        }
        match s {
            S::Header => {
                if let Some((k, v)) = kv(line) {
                    d.header.push((k, v));
                }
            }
            S::Ext => {
                let e = d.exts.last_mut().unwrap();
                if let Some(rest) = line.strip_prefix(" - ") {
                    if let Some((k, v)) = kv(rest) {
                        e.header_fields.push((k, v));
                    } else if let Some((k, v)) = rest.split_once(" : ") {
                        e.header_fields.push((k.trim().to_string(), v.to_string()));
                    }
                } else if line.starts_with("header ") {
                    e.header_hex = kv(line).map(|x| x.1);
                } else if line == "header" {
                } else if let Some((k, v)) = kv(line) {
                    e.fields.push((k, v));
                }
            }
            S::Keywords => {
                if let Some((_, name)) = line.split_once(" = ") {
                    d.keywords.push(name.to_string());
                }
            }
            S::Cache => {}
            S::Records => {
                if let Some(r) = line.strip_prefix("RECORD: ") {
                    let mut rec = DRec::default();
                    for part in r.split(", ") {
                        if let Some(v) = part.strip_prefix("seq=") {
                            rec.seq = v.parse().unwrap();
                        } else if let Some(v) = part.strip_prefix("uid=") {
                            rec.uid = v.parse().unwrap();
                        } else if let Some(v) = part.strip_prefix("flags=0x") {
                            rec.flags = u8::from_str_radix(&v[..2], 16).unwrap();
                        }
                    }
                    d.records.push(rec);
                } else if let Some(r) = line.strip_prefix(" - ext ") {
                    // " - ext N name      :      value (hex)"
                    let (_, rest) = r.split_once(' ').unwrap();
                    let colon = rest.find(':').unwrap();
                    let name = rest[..colon].trim().to_string();
                    let after = &rest[colon + 1..];
                    let (value, hexpart) = after.rsplit_once(" (").unwrap();
                    d.records.last_mut().unwrap().exts.push(DRecExt {
                        name,
                        value: value.trim().to_string(),
                        hex: hexpart.trim_end_matches(')').to_string(),
                        decoded: Vec::new(),
                    });
                } else if line.starts_with("                   : ") {
                    let (k, v) = line.trim_start()[2..].split_once(" = ").unwrap();
                    let ext = d.records.last_mut().unwrap().exts.last_mut().unwrap();
                    ext.decoded
                        .push((k.trim().to_string(), v.trim().to_string()));
                }
            }
        }
    }
    d
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The numeric part of a doveadm value like `1795887399 (2026-11-28 17:36:39)`.
fn num(s: &str) -> u64 {
    s.split_whitespace().next().unwrap().parse().unwrap()
}

/// Compares the doveadm dump at `dump_path` (next to the index it describes)
/// with homing's dump; returns the number of values compared.
pub fn check_index_dump(dump_path: &Path) -> usize {
    let text = std::fs::read_to_string(dump_path).unwrap();
    let d = parse_dump(&text);
    let dir = dump_path.parent().unwrap();
    let index_path = dir.join(&d.index_name);
    let ctx = dump_path.display().to_string();
    let j = index_format::index::dump(&index_path).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let mut checked = 0;
    assert_eq!(
        j["problems"],
        serde_json::json!([]),
        "{ctx}: replay problems"
    );

    // Header.
    let h = &j["header"];
    for (k, v) in &d.header {
        let field = match k.as_str() {
            "version" => {
                let got = format!("{}.{}", u(&h["major_version"]), u(&h["minor_version"]));
                assert_eq!(&got, v, "{ctx}: version");
                checked += 1;
                continue;
            }
            "base header size" => "base_header_size",
            "header size" => "header_size",
            "record size" => "record_size",
            "compat flags" => "compat_flags",
            "index id" => "indexid",
            "flags" => "flags",
            "uid validity" => "uid_validity",
            "next uid" => "next_uid",
            "messages count" => "messages_count",
            "seen messages count" => "seen_messages_count",
            "deleted messages count" => "deleted_messages_count",
            "first recent uid" => "first_recent_uid",
            "first unseen uid lowwater" => "first_unseen_uid_lowwater",
            "first deleted uid lowwater" => "first_deleted_uid_lowwater",
            "log file seq" => "log_file_seq",
            "log file tail offset" => "log_file_tail_offset",
            "log file head offset" => "log_file_head_offset",
            "log2 rotate time" => "log2_rotate_time",
            "last temp file scan" => "last_temp_file_scan",
            "day stamp" => "day_stamp",
            k if k.starts_with("day first uid[") => {
                let i: usize = k["day first uid[".len()..k.len() - 1].parse().unwrap();
                assert_eq!(u(&h["day_first_uid"][i]), num(v), "{ctx}: {k}");
                checked += 1;
                continue;
            }
            other => panic!("{ctx}: unknown header line {other}"),
        };
        assert_eq!(u(&h[field]), num(v), "{ctx}: header {k}");
        if let Some(date) = v.split_once(" (").map(|x| x.1.trim_end_matches(')')) {
            assert_eq!(utc(num(v) as u32), date, "{ctx}: {k} date");
        }
        checked += 1;
    }

    // Extensions, in map order.
    let exts = j["extensions"].as_array().unwrap();
    assert_eq!(exts.len(), d.exts.len(), "{ctx}: extension count");
    for (e, de) in exts.iter().zip(&d.exts) {
        for (k, v) in &de.fields {
            match k.as_str() {
                "name" => assert_eq!(e["name"].as_str().unwrap(), v, "{ctx}"),
                "hdr_size" | "reset_id" | "record_offset" | "record_size" | "record_align" => {
                    assert_eq!(u(&e[k.as_str()]), num(v), "{ctx}: ext {} {k}", e["name"])
                }
                other => panic!("{ctx}: unknown ext line {other}"),
            }
            checked += 1;
        }
        if let Some(hx) = &de.header_hex {
            assert_eq!(
                e["header"].as_str().unwrap(),
                hx,
                "{ctx}: ext {} header",
                e["name"]
            );
            checked += 1;
        }
        let dec = &e["decoded"];
        for (k, v) in &de.header_fields {
            let name = e["name"].as_str().unwrap();
            let got: String = match (name, k.as_str()) {
                ("hdr-vsize", "highest uid") => dec["highest_uid"].to_string(),
                ("hdr-vsize", "message count") => dec["message_count"].to_string(),
                ("hdr-vsize", "vsize") => dec["vsize"].to_string(),
                ("maildir", k) if k.ends_with("_time") || k.ends_with("_mtime") => {
                    utc(u(&dec[k]) as u32)
                }
                ("maildir", "cur_mtime_nsecs") => dec["cur_mtime_nsecs"].to_string(),
                ("maildir", k) => dec[k].to_string(),
                ("modseq", k) => dec[k].to_string(),
                ("mdbox-hdr" | "dbox-hdr", "flags") => format!("0x{:x}", u(&dec["flags"])),
                ("mdbox-hdr" | "dbox-hdr", k) => match &dec[k] {
                    Value::String(s) => s.clone(),
                    x => x.to_string(),
                },
                ("hdr-pop3-uidl", k) => dec[k].to_string(),
                ("list", "refresh_flag") => dec["refresh_flag"].to_string(),
                ("list", id) => {
                    let id: u64 = id.parse().unwrap();
                    dec["names"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|n| u(&n["id"]) == id)
                        .map(|n| n["name"].as_str().unwrap().to_string())
                        .unwrap_or_default()
                }
                (n, k) => panic!("{ctx}: unexpected header field {n}.{k}"),
            };
            assert_eq!(&got, v, "{ctx}: ext {name} header {k}");
            checked += 1;
        }
    }

    // Keywords.
    let kws: Vec<&str> = j["keywords"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(kws, d.keywords, "{ctx}: keywords");
    checked += kws.len();

    // Records.
    let recs = j["records"].as_array().unwrap();
    if let Some(n) = d.records_count {
        assert_eq!(recs.len(), n, "{ctx}: records count");
        assert_eq!(d.records.len(), n, "{ctx}: parsed record count");
    }
    for (r, dr) in recs.iter().zip(&d.records) {
        assert_eq!(u(&r["seq"]), u64::from(dr.seq), "{ctx}");
        assert_eq!(u(&r["uid"]), u64::from(dr.uid), "{ctx}: seq {}", dr.seq);
        assert_eq!(
            u(&r["flags"]),
            u64::from(dr.flags),
            "{ctx}: uid {} flags",
            dr.uid
        );
        let ours = r["ext"].as_object().unwrap();
        assert_eq!(ours.len(), dr.exts.len(), "{ctx}: uid {} ext count", dr.uid);
        for de in &dr.exts {
            let e = &ours
                .get(&de.name)
                .unwrap_or_else(|| panic!("{ctx}: uid {} lacks ext {}", dr.uid, de.name));
            // doveadm prints as many bytes as the extension was *registered* with
            // in its own process (keywords: 2), even when the map's record is
            // larger (more than 16 keywords): compare that prefix.
            let ours_hex = e["hex"].as_str().unwrap();
            if de.name == "keywords" {
                assert!(
                    ours_hex.starts_with(&de.hex),
                    "{ctx}: uid {} keywords {ours_hex} vs {}",
                    dr.uid,
                    de.hex
                );
            } else {
                assert_eq!(ours_hex, de.hex, "{ctx}: uid {} ext {}", dr.uid, de.name);
            }
            if !de.value.is_empty() {
                assert_eq!(
                    e["value"].to_string(),
                    de.value,
                    "{ctx}: uid {} ext {} value",
                    dr.uid,
                    de.name
                );
            }
            for (k, v) in &de.decoded {
                let got = match (de.name.as_str(), k.as_str()) {
                    ("list", "guid") => e["value"]["guid"].as_str().unwrap().to_string(),
                    (_, k) => e["value"][k].to_string(),
                };
                let want = v.split(" (").next().unwrap();
                assert_eq!(got, want, "{ctx}: uid {} ext {} {k}", dr.uid, de.name);
                checked += 1;
            }
            checked += 2;
        }
        checked += 3;
    }
    checked
}
