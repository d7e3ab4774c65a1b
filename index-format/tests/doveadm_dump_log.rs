//! Every transaction log fixture: the values `doveadm dump` printed (header,
//! every record's offset, type, size, modseq and decoded payload) must equal
//! homing's dump of the same file.

mod common;

use std::path::Path;

use common::{dump_files, dump_type, fixtures, utc};
use serde_json::Value;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[derive(Debug, Default)]
struct DRecord {
    offset: u64,
    ty: String,
    external: bool,
    sync: bool,
    size: u64,
    modseq: Option<u64>,
    body: Vec<String>,
}

fn parse(text: &str) -> (Vec<(String, String)>, Vec<DRecord>) {
    let mut hdr = Vec::new();
    let mut recs: Vec<DRecord> = Vec::new();
    for line in text.lines() {
        if let Some(r) = line.strip_prefix("record: ") {
            let mut d = DRecord::default();
            for part in r.split(", ") {
                if let Some(v) = part.strip_prefix("offset=") {
                    d.offset = v.parse().unwrap();
                } else if let Some(v) = part.strip_prefix("type=") {
                    d.external = v.contains(" (ext)");
                    d.sync = v.contains(" (sync)");
                    d.ty = v.split(' ').next().unwrap().to_string();
                } else if let Some(v) = part.strip_prefix("size=") {
                    d.size = v.parse().unwrap();
                } else if let Some(v) = part.strip_prefix("modseq=") {
                    d.modseq = Some(v.parse().unwrap());
                }
            }
            recs.push(d);
        } else if let Some(b) = line.strip_prefix(" - ") {
            recs.last_mut().unwrap().body.push(b.to_string());
        } else if recs.is_empty() {
            if let Some((k, v)) = line.split_once(" = ") {
                hdr.push((k.to_string(), v.to_string()));
            }
        }
    }
    (hdr, recs)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Checks one doveadm body line against our decoded record; returns values compared.
fn check_body(ctx: &str, ty: &str, data: &Value, lines: &[String]) -> usize {
    let mut n = 0;
    match ty {
        "boundary" => {
            assert_eq!(lines, [format!("size={}", u(&data["size"]))], "{ctx}");
            n += 1;
        }
        "ext-intro" => {
            let i = &data["intros"][0];
            let mut want = vec![
                format!("ext_id = {}", u(&i["ext_id"])),
                format!("reset_id = {}", u(&i["reset_id"])),
                format!("hdr_size = {}", u(&i["hdr_size"])),
                format!("record_size = {}", u(&i["record_size"])),
                format!("record_align = {}", u(&i["record_align"])),
                format!("flags = {}", u(&i["flags"])),
                format!("name_size = {}", u(&i["name_size"])),
            ];
            if u(&i["name_size"]) > 0 {
                want.push(format!("name = '{}'", s(&i["name"])));
            }
            assert_eq!(lines, want.as_slice(), "{ctx}");
            n += want.len();
        }
        "ext-reset" => {
            let want = [
                format!("new_reset_id = {}", u(&data["new_reset_id"])),
                format!(
                    "preserve_data = {}",
                    u8::from(data["preserve_data"].as_bool().unwrap())
                ),
            ];
            assert_eq!(lines, want, "{ctx}");
            n += 2;
        }
        "ext-hdr" | "ext-hdr32" => {
            let ups = data["updates"].as_array().unwrap();
            // doveadm prints only the first entry.
            let x = &ups[0];
            let mut want = format!(
                "offset = {}, size = {}: {}",
                u(&x["offset"]),
                u(&x["size"]),
                s(&x["data"])
            );
            if u(&x["size"]) == 4 {
                let b = hex_bytes(&s(&x["data"]));
                want += &format!(" (dec={})", u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
            assert_eq!(lines, [want], "{ctx}");
            n += 3;
        }
        "ext-rec" => {
            let ups = data["updates"]
                .as_array()
                .unwrap_or_else(|| panic!("{ctx}: {data}"));
            let want: Vec<String> = ups
                .iter()
                .map(|x| {
                    let d = s(&x["data"]);
                    let mut l = format!("uid={}: {}", u(&x["uid"]), d);
                    if d.len() == 8 {
                        let b = hex_bytes(&d);
                        l += &format!(" (dec={})", u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                    }
                    l
                })
                .collect();
            assert_eq!(lines, want.as_slice(), "{ctx}");
            n += want.len() * 2;
        }
        "append" => {
            let mut l = String::from("uids=");
            for r in data["records"].as_array().unwrap() {
                l += &u(&r["uid"]).to_string();
                if u(&r["flags"]) != 0 {
                    l += &format!(" (flags={:x})", u(&r["flags"]));
                }
                l += ",";
            }
            assert_eq!(lines, [l], "{ctx}");
            n += data["records"].as_array().unwrap().len();
        }
        "flag-update" => {
            let want: Vec<String> = data["updates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    format!(
                        "uids={}-{} (flags +{:x}-{:x}, modseq_inc_flag={})",
                        u(&x["uid1"]),
                        u(&x["uid2"]),
                        u(&x["add_flags"]),
                        u(&x["remove_flags"]),
                        u(&x["modseq_inc_flag"])
                    )
                })
                .collect();
            assert_eq!(lines, want.as_slice(), "{ctx}");
            n += want.len() * 5;
        }
        "header-update" => {
            // Each doveadm line is a decoded field or the raw remainder of an update.
            let ups = data["updates"].as_array().unwrap();
            for l in lines {
                if let Some(rest) = l.strip_prefix("offset = ") {
                    let (o, rest) = rest.split_once(", size = ").unwrap();
                    let (sz, hx) = rest.split_once(": ").unwrap();
                    let (o, sz): (u64, u64) = (o.parse().unwrap(), sz.parse().unwrap());
                    let hx = hx.split(' ').next().unwrap();
                    let ok = ups.iter().any(|x| {
                        let (uo, us) = (u(&x["offset"]), u(&x["size"]));
                        uo <= o
                            && o + sz == uo + us
                            && s(&x["data"])[(2 * (o - uo)) as usize..] == *hx
                    });
                    assert!(ok, "{ctx}: header update {l} not in {ups:?}");
                } else {
                    let (k, v) = l.split_once(" = ").unwrap();
                    let ok = ups.iter().any(|x| {
                        x["fields"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|f| s(&f["field"]) == k && s(&f["value"]) == v)
                    });
                    assert!(ok, "{ctx}: header field {l} not in {ups:?}");
                }
                n += 1;
            }
        }
        "keyword-update" => {
            let mut l = format!(
                "modify={}, name={}, uids=",
                u(&data["modify"]),
                s(&data["name"])
            );
            for r in data["uids"].as_array().unwrap() {
                l += &format!("{}-{},", u(&r[0]), u(&r[1]));
            }
            assert_eq!(lines, [l], "{ctx}");
            n += 3;
        }
        "keyword-reset" | "expunge" => {
            let mut l = String::from("uids=");
            for r in data["uids"].as_array().unwrap() {
                l += &format!("{}-{},", u(&r[0]), u(&r[1]));
                if ty == "keyword-reset" {
                    l += " ";
                }
            }
            assert_eq!(lines, [l], "{ctx}");
            n += 1;
        }
        "expunge-guid" => {
            let want: Vec<String> = data["expunges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| format!("uid={} (guid {})", u(&x["uid"]), s(&x["guid"])))
                .collect();
            assert_eq!(lines, want.as_slice(), "{ctx}");
            n += want.len() * 2;
        }
        "modseq-update" => {
            let want: Vec<String> = data["updates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| format!("uid={} modseq={}", u(&x["uid"]), u(&x["modseq"])))
                .collect();
            assert_eq!(lines, want.as_slice(), "{ctx}");
            n += want.len() * 2;
        }
        "ext-atomic-inc" => {
            let want: Vec<String> = data["updates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    let d = x["diff"].as_i64().unwrap();
                    if d > 0 {
                        format!("uid={}: +{d}", u(&x["uid"]))
                    } else {
                        format!("uid={}: {d}", u(&x["uid"]))
                    }
                })
                .collect();
            assert_eq!(lines, want.as_slice(), "{ctx}");
            n += want.len() * 2;
        }
        "attribute-update" => {
            let want: Vec<String> = data["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    let mut l = format!(
                        "{}: {}/{} : timestamp={}",
                        s(&c["op"]),
                        s(&c["scope"]),
                        s(&c["key"]),
                        &utc(u(&c["timestamp"]) as u32)
                    );
                    if let Some(v) = c["value_len"].as_u64() {
                        l += &format!(" value_len={v}");
                    }
                    l
                })
                .collect();
            assert_eq!(lines, want.as_slice(), "{ctx}");
            n += want.len() * 4;
        }
        "index-deleted" | "index-undeleted" => assert!(lines.is_empty(), "{ctx}"),
        other => panic!("{ctx}: unexpected record type {other}"),
    }
    n
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn check_log_dump(dump_path: &Path) -> usize {
    let text = std::fs::read_to_string(dump_path).unwrap();
    let log_path = Path::new(
        dump_path
            .to_str()
            .unwrap()
            .strip_suffix(".dump.txt")
            .unwrap(),
    );
    let ctx0 = log_path.display().to_string();
    let j = index_format::log::dump(log_path).unwrap_or_else(|e| panic!("{ctx0}: {e}"));
    let (hdr, recs) = parse(&text);
    let h = &j["header"];
    let mut n = 0;
    for (k, v) in &hdr {
        let got = match k.as_str() {
            "version" => format!("{}.{}", u(&h["major_version"]), u(&h["minor_version"])),
            "hdr size" => u(&h["hdr_size"]).to_string(),
            "index id" => u(&h["indexid"]).to_string(),
            "file seq" => u(&h["file_seq"]).to_string(),
            "prev file" => format!("{}/{}", u(&h["prev_file_seq"]), u(&h["prev_file_offset"])),
            "create stamp" => u(&h["create_stamp"]).to_string(),
            "initial modseq" => u(&h["initial_modseq"]).to_string(),
            "compat flags" => format!("{:x}", u(&h["compat_flags"])),
            other => panic!("{ctx0}: unknown header line {other}"),
        };
        assert_eq!(&got, v, "{ctx0}: header {k}");
        n += 1;
    }
    let ours = j["records"].as_array().unwrap();
    assert_eq!(ours.len(), recs.len(), "{ctx0}: record count");
    assert_eq!(
        u(&j["trailing_bytes"]),
        0,
        "{ctx0}: fixture logs are complete"
    );
    let mut prev_modseq = u(&h["initial_modseq"]);
    for (r, d) in ours.iter().zip(&recs) {
        let ctx = format!("{ctx0} @{}", d.offset);
        assert_eq!(u(&r["offset"]), d.offset, "{ctx}");
        assert_eq!(s(&r["type"]), d.ty, "{ctx}");
        assert_eq!(r["external"].as_bool().unwrap(), d.external, "{ctx}");
        assert_eq!(r["sync"].as_bool().unwrap(), d.sync, "{ctx}");
        assert_eq!(u(&r["size"]), d.size, "{ctx}");
        // doveadm prints the modseq only when the record changed it.
        let m = u(&r["modseq"]);
        match d.modseq {
            Some(want) => assert_eq!(m, want, "{ctx}: modseq"),
            None => assert_eq!(m, prev_modseq, "{ctx}: modseq unchanged"),
        }
        prev_modseq = m;
        n += 6 + check_body(&ctx, &d.ty, &r["data"], &d.body);
    }
    n
}

#[test]
fn every_log_dump_matches() {
    let mut files = 0;
    let mut values = 0;
    for root in ["index", "extra"] {
        for p in dump_files(&fixtures().join(root)) {
            let text = std::fs::read_to_string(&p).unwrap();
            if dump_type(&text) != Some("log") {
                continue;
            }
            values += check_log_dump(&p);
            files += 1;
        }
    }
    assert!(files >= 14, "only {files} log dumps found");
    eprintln!("{files} log dumps, {values} values compared");
}
