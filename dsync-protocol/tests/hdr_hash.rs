//! Header hashes against `15-hdr-hash.vectors` (hashes Dovecot sent), and
//! against the `hdr_hash` fields of the captured `C` items.

use std::path::PathBuf;

use dsync_protocol::hash::{hdr_hash_hex, hdr_hash_input, HdrHashVersion};
use dsync_protocol::*;

fn cap(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/captures")
        .join(name)
}

const HEADERS: [&[u8]; 2] = [b"Date", b"Message-ID"];

#[test]
fn vectors_match_dovecot() {
    let text = std::fs::read_to_string(cap("15-hdr-hash.vectors")).unwrap();
    let mut n = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let cols: Vec<&str> = line.split(' ').collect();
        let (sent, file) = (cols[1], cols[4]);
        let msg = std::fs::read(cap(&format!("15-hdr-hash.{file}"))).unwrap();
        assert_eq!(
            hdr_hash_hex(&msg, &HEADERS, HdrHashVersion::V3),
            sent,
            "{file}"
        );
        n += 1;
    }
    assert_eq!(n, 7);
}

#[test]
fn selected_bytes_follow_the_rules() {
    let msg = std::fs::read(cap("15-hdr-hash.v2.eml")).unwrap();
    assert_eq!(
        hdr_hash_input(&msg, &HEADERS),
        b"Date:\tMon,  1 Jan 2024\n  11:01:00 +0000\nMessage-ID: <v2??x?y@example.com>\n\n"
    );
    let crlf = std::fs::read(cap("15-hdr-hash.v4.eml")).unwrap();
    assert_eq!(
        hdr_hash_input(&crlf, &HEADERS),
        b"Date: Mon, 1 Jan 2024 11:03:00 +0000\nMessage-ID: <v4@example.com>\n\n"
    );
    let dup = std::fs::read(cap("15-hdr-hash.v6.eml")).unwrap();
    assert_eq!(
        hdr_hash_input(&dup, &HEADERS),
        b"DATE: Mon, 1 Jan 2024 11:05:00 +0000\nmessage-id: <v6@example.com>\nDate: duplicate\n\n"
    );
}

#[test]
fn version_1_is_plain_md5() {
    // MD5 of "\n": no hashed header present.
    assert_eq!(
        hdr_hash_hex(b"Subject: x\n\n", &HEADERS, HdrHashVersion::V1),
        "68b329da9893e34099c7d8ad5cb9c940"
    );
    let msg = b"Date: a  b\nMessage-ID: <x>\n\nbody";
    let v1 = hdr_hash_hex(msg, &HEADERS, HdrHashVersion::V1);
    let v3 = hdr_hash_hex(msg, &HEADERS, HdrHashVersion::V3);
    assert_ne!(v1, v3);
}

/// The header hashes in the captured mbox-side `C` items equal the hashes of
/// the mails the vectors list (the server sends them for its stored copies).
#[test]
fn capture_change_items_carry_the_vector_hashes() {
    let text = std::fs::read_to_string(cap("15-hdr-hash.vectors")).unwrap();
    let sent: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect();
    let mut found = 0;
    for f in ["15-hdr-hash.c2s", "15-hdr-hash.s2c", "15-hdr-hash-seed.s2c"] {
        let bytes = std::fs::read(cap(f)).unwrap();
        for ev in decode_all(&bytes, DecoderConfig::default()).unwrap() {
            if let OwnedEvent::Item(Item::MailChange(c)) = ev {
                if let Some(h) = c.hdr_hash.filter(|h| !h.is_empty()) {
                    let h = String::from_utf8(h).unwrap();
                    assert!(sent.contains(&h), "{f}: {h} not in vectors");
                    found += 1;
                }
            }
        }
    }
    assert!(found >= 7, "only {found} hdr_hash fields");
}
