//! `homing dump` as a user runs it: every kind of fixture file and captured
//! stream parses, the JSON carries the values Dovecot wrote, and bad input
//! ends with a message and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn dump(path: &Path, json: bool) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_homing"));
    cmd.arg("dump").arg(path);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run homing");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dump_json(path: &Path) -> Value {
    let (code, out, err) = dump(path, true);
    assert_eq!(code, 0, "{}: {err}", path.display());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Finds the first value stored under `key` anywhere in `v`.
fn find<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m.get(key).or_else(|| m.values().find_map(|x| find(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find(x, key)),
        _ => None,
    }
}

#[test]
fn every_index_fixture_dumps_as_text_and_json() {
    let mut seen = 0;
    let mut stack = vec![fixtures().join("index")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read fixtures").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            // Every file doveadm could dump has its dump beside it.
            if !p.with_file_name(format!("{name}.dump.txt")).exists() {
                continue;
            }
            let (code, text, err) = dump(&p, false);
            assert_eq!(code, 0, "{}: {err}", p.display());
            assert!(text.lines().count() > 1, "{}: empty dump", p.display());
            dump_json(&p);
            seen += 1;
        }
    }
    assert!(seen >= 20, "only {seen} dumpable fixtures found");
}

#[test]
fn maildir_inbox_index_reports_the_scenario_state() {
    let idx = fixtures().join("index/maildir/Maildir/dovecot.index");
    let v = dump_json(&idx);
    // The fixture's INBOX ends with next_uid 5 (uid 4 expunged after the index was written).
    let next_uid = find(&v, "next_uid")
        .and_then(Value::as_u64)
        .expect("next_uid");
    assert!(next_uid >= 4, "next_uid {next_uid}");
    let uidlist = dump_json(&fixtures().join("index/maildir/Maildir/dovecot-uidlist"));
    let uv_list = find(&uidlist, "uid_validity").and_then(Value::as_u64);
    let uv_index = find(&v, "uid_validity").and_then(Value::as_u64);
    assert!(uv_list.is_some());
    assert_eq!(
        uv_list, uv_index,
        "uidlist and index disagree on UIDVALIDITY"
    );
}

#[test]
fn every_capture_stream_dumps() {
    let dir = fixtures().join("captures");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("captures").flatten() {
        let p = entry.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.ends_with(".c2s") || name.ends_with(".s2c")) {
            continue;
        }
        let v = dump_json(&p);
        assert!(v.is_object(), "{name}");
        seen += 1;
    }
    assert!(seen >= 30, "only {seen} capture streams");
}

#[test]
fn tcp_replies_are_demultiplexed() {
    let c = fixtures().join("captures");
    let nouser = dump_json(&c.join("16-tcp-nouser.s2c"));
    assert_eq!(nouser["status"], "-NOUSER");
    assert!(nouser["log"][0]["text"]
        .as_str()
        .unwrap()
        .contains("User doesn't exist"));
    let badpass = dump_json(&c.join("14-tcp-badpass.s2c"));
    assert_eq!(badpass["authenticated"], false);
    let tcp = dump_json(&c.join("12-tcp.s2c"));
    assert_eq!(tcp["status"], "+");
    // The data channel holds the same dsync stream the demultiplexed capture has.
    let ch0 = dump_json(&c.join("12-tcp.s2c.ch0"));
    assert_eq!(tcp["dsync"]["items"], ch0["items"]);
    let preauth = dump_json(&c.join("17-unix-preauth.s2c"));
    assert_eq!(
        preauth["fields"],
        serde_json::json!(["Old", "Old/Archive", "Work", "INBOX"])
    );
}

#[test]
fn bad_input_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("dovecot.index", &b"\x07\x03garbage"[..]),
        ("dovecot.index.log", &b"\x01\x03\x28\x00"[..]),
        ("dovecot-uidlist", &b"3 Vx Nq\n1 :\n"[..]),
        ("stream.c2s", &b"VERSION\tdsync\t3\t5\nH\tbroken\x01z\n"[..]),
        ("unknown.bin", &b"\x00\x01\x02"[..]),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let (code, _out, err) = dump(&p, false);
        assert_ne!(code, 0, "{name} was accepted");
        assert!(err.starts_with("homing: "), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
}

/// Per message, the chain offsets and field names `doveadm dump` printed for a
/// cache file: `RECORD: seq=N, uid=U` then `- cache offset=O ...` blocks.
fn doveadm_cache_chains(text: &str) -> Vec<(u64, Vec<u64>, Vec<String>)> {
    let mut out: Vec<(u64, Vec<u64>, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("RECORD: seq=") {
            let uid = rest
                .split(", uid=")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|u| u.trim().parse().ok())
                .expect("uid");
            out.push((uid, Vec::new(), Vec::new()));
        } else if let Some(rest) = line.strip_prefix(" - cache offset=") {
            let off = rest.split(' ').next().unwrap().parse().unwrap();
            if let Some(last) = out.last_mut() {
                last.1.push(off);
            }
        } else if let Some(rest) = line.strip_prefix("    - ") {
            if let Some(last) = out.last_mut() {
                let name = rest.split(':').next().unwrap().trim().to_string();
                last.2.push(name);
            }
        }
    }
    out.retain(|(_, offs, _)| !offs.is_empty());
    out
}

#[test]
fn cache_dump_maps_chains_to_uids_as_doveadm_does() {
    let mut checked = 0;
    for fmt in ["maildir/Maildir", "sdbox/sdbox/mailboxes/INBOX/dbox-Mails"] {
        let cache = fixtures()
            .join("index")
            .join(fmt)
            .join("dovecot.index.cache");
        let text =
            std::fs::read_to_string(cache.with_file_name("dovecot.index.cache.dump.txt")).unwrap();
        let expected = doveadm_cache_chains(&text);
        assert!(
            !expected.is_empty(),
            "{fmt}: no records in the doveadm dump"
        );
        let v = dump_json(&cache);
        assert_eq!(v["index_matches"], true, "{fmt}");
        let ours: Vec<(u64, u64, Vec<String>)> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let names = m["fields"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f["name"].as_str().unwrap_or("?").to_string())
                    .collect();
                (
                    m["uid"].as_u64().unwrap(),
                    m["offset"].as_u64().unwrap(),
                    names,
                )
            })
            .collect();
        assert_eq!(
            ours.len(),
            expected.len(),
            "{fmt}: messages with cache data"
        );
        for ((uid, off, names), (euid, eoffs, enames)) in ours.iter().zip(&expected) {
            assert_eq!(uid, euid, "{fmt}");
            assert_eq!(*off, eoffs[0], "{fmt} uid {uid}: newest record");
            assert_eq!(names, enames, "{fmt} uid {uid}: fields in chain order");
            checked += 1;
        }
    }
    assert!(checked >= 4);
}
