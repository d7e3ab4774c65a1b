//! Builders of synthetic Dovecot files for tests and benchmarks, written
//! from the format description (spec sections 5 and 6), not from fixtures.

#![allow(dead_code)]

/// `(name, type, size)`: type 0 fixed, 1 variable, 2 string, 3 bitmask, 4 header.
pub const FIELDS: &[(&str, u8, u32)] = &[
    ("flags", 3, 4),
    ("date.received", 0, 4),
    ("size.virtual", 0, 8),
    ("imap.bodystructure", 2, u32::MAX),
    ("hdr.Subject", 4, u32::MAX),
    ("mime.parts", 1, u32::MAX),
    ("guid", 2, u32::MAX),
];

pub fn pack_offset(offset: u32) -> [u8; 4] {
    let n = offset >> 2;
    [
        0x80 | (n >> 21 & 0x7f) as u8,
        0x80 | (n >> 14 & 0x7f) as u8,
        0x80 | (n >> 7 & 0x7f) as u8,
        0x80 | (n & 0x7f) as u8,
    ]
}

fn pad4(v: &mut Vec<u8>) {
    while v.len() % 4 != 0 {
        v.push(0);
    }
}

/// A field header registering `fields`; `next` is the packed next_offset.
pub fn field_header(fields: &[(&str, u8, u32)], next: [u8; 4]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&next);
    h.extend_from_slice(&[0; 4]); // size, patched below
    h.extend_from_slice(&(fields.len() as u32).to_le_bytes());
    for _ in fields {
        h.extend_from_slice(&1_700_000_000u32.to_le_bytes());
    }
    for f in fields {
        h.extend_from_slice(&f.2.to_le_bytes());
    }
    for f in fields {
        h.push(f.1);
    }
    h.extend(std::iter::repeat_n(2u8, fields.len()));
    for f in fields {
        h.extend_from_slice(f.0.as_bytes());
        h.push(0);
    }
    let size = h.len() as u32;
    h[4..8].copy_from_slice(&size.to_le_bytes());
    pad4(&mut h);
    h
}

/// One field occurrence inside a record.
pub fn field(out: &mut Vec<u8>, index: u32, variable: bool, data: &[u8]) {
    out.extend_from_slice(&index.to_le_bytes());
    if variable {
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(data);
    pad4(out);
}

pub fn record(prev: u32, fields: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&prev.to_le_bytes());
    r.extend_from_slice(&((8 + fields.len()) as u32).to_le_bytes());
    r.extend_from_slice(fields);
    r
}

pub fn header_value(line: u32, text: &str) -> Vec<u8> {
    let mut v = line.to_le_bytes().to_vec();
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(text.as_bytes());
    v
}

/// A single text/plain part as Dovecot serializes it.
pub fn mime_text_part(hdr: u64, body: u64, lines: u32) -> Vec<u8> {
    let mut v = 0x08u32.to_le_bytes().to_vec();
    for x in [hdr, hdr, body, body + lines as u64] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&lines.to_le_bytes());
    v
}

/// A cache file with `messages` messages; every message has a first record
/// (flags, date.received, size.virtual, hdr.Subject, mime.parts) and every
/// other message a second, newer record chained to it (flags again,
/// bodystructure, guid). Returns the bytes and each message's newest offset.
pub fn cache_file(messages: u32) -> (Vec<u8>, Vec<u32>) {
    let mut f = Vec::new();
    f.extend_from_slice(&[1, 8, 1, 0]);
    f.extend_from_slice(&1_700_000_000u32.to_le_bytes()); // indexid
    f.extend_from_slice(&1_700_000_001u32.to_le_bytes()); // file_seq
    f.extend_from_slice(&[0; 16]);
    f.extend_from_slice(&pack_offset(32));
    f.extend_from_slice(&field_header(FIELDS, [0; 4]));
    let mut heads = Vec::with_capacity(messages as usize);
    let mut firsts = Vec::with_capacity(messages as usize);
    for m in 0..messages {
        let mut body = Vec::new();
        field(&mut body, 0, false, &0x20u32.to_le_bytes());
        field(&mut body, 1, false, &(1_600_000_000 + m).to_le_bytes());
        field(&mut body, 2, false, &(1000 + m as u64).to_le_bytes());
        field(
            &mut body,
            4,
            true,
            &header_value(3, &format!("Subject: message {m}\n")),
        );
        field(&mut body, 5, true, &mime_text_part(100, 20 + m as u64, 2));
        let off = f.len() as u32;
        f.extend_from_slice(&record(0, &body));
        firsts.push(off);
        heads.push(off);
    }
    for m in (0..messages).step_by(2) {
        let mut body = Vec::new();
        field(&mut body, 0, false, &0x01u32.to_le_bytes());
        field(
            &mut body,
            3,
            true,
            b"\"text\" \"plain\" NIL NIL NIL \"7bit\" 20 2",
        );
        field(&mut body, 6, true, format!("{m:032x}").as_bytes());
        let off = f.len() as u32;
        f.extend_from_slice(&record(firsts[m as usize], &body));
        heads[m as usize] = off;
    }
    (f, heads)
}

/// A version 3 uidlist with `n` records, every third with extensions.
pub fn uidlist_v3(n: u32) -> String {
    let mut s = format!(
        "3 V1700000000 N{} G0123456789abcdef0123456789abcdef\n",
        n + 1
    );
    for uid in 1..=n {
        if uid % 3 == 0 {
            s.push_str(&format!(
                "{uid} W{} G{uid:032x} :1700000000.M{uid}P1.host,S={}\n",
                2000 + uid,
                1900 + uid
            ));
        } else {
            s.push_str(&format!(
                "{uid} :1700000000.M{uid}P1.host,S={},W={}\n",
                1900 + uid,
                2000 + uid
            ));
        }
    }
    s
}
