//! Every captured stream decodes fully and re-encodes to the same bytes.

use std::path::PathBuf;

use dsync_protocol::*;

fn captures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/captures")
}

/// The dsync part of a capture file: TCP client streams start with the
/// doveadm preamble, demultiplexed server streams with `\n+\n`.
fn dsync_part(bytes: &[u8]) -> Option<&[u8]> {
    let needle = b"VERSION\tdsync\t";
    if bytes.starts_with(needle) {
        return Some(bytes);
    }
    bytes
        .windows(needle.len() + 1)
        .position(|w| w[0] == b'\n' && &w[1..] == needle)
        .map(|p| &bytes[p + 1..])
}

/// (name, dsync bytes) of every stream in the captures.
fn streams() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(captures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for name in names {
        let tcp_server = name.ends_with(".s2c") && names_has_ch0(&name);
        if !(name.ends_with(".c2s") || name.ends_with(".s2c") || name.ends_with(".s2c.ch0"))
            || tcp_server
        {
            continue;
        }
        let bytes = std::fs::read(captures_dir().join(&name)).unwrap();
        if let Some(part) = dsync_part(&bytes) {
            out.push((name, part.to_vec()));
        }
    }
    out
}

fn names_has_ch0(name: &str) -> bool {
    captures_dir().join(format!("{name}.ch0")).exists()
}

#[test]
fn every_capture_stream_is_found() {
    let s = streams();
    let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
    // 01..13 and 15, 18 have dsync in both directions (12/13 server side via ch0).
    for must in [
        "01-first-sync.c2s",
        "01-first-sync.s2c",
        "12-tcp.c2s",
        "12-tcp.s2c.ch0",
        "13-tcp-debug.s2c.ch0",
        "15-hdr-hash.s2c",
        "18-handshake-options.c2s",
    ] {
        assert!(names.contains(&must), "{must} missing from {names:?}");
    }
    assert!(!names.contains(&"12-tcp.s2c"));
    assert_eq!(s.len(), 34, "streams: {names:?}");
}

#[test]
fn captures_decode_and_reencode_exactly() {
    for (name, bytes) in streams() {
        let events =
            decode_all(&bytes, DecoderConfig::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(matches!(
            events[0],
            OwnedEvent::Version(ProtocolVersion { major: 3, minor: 5 })
        ));
        assert!(matches!(events[1], OwnedEvent::Tables(_)));
        assert!(matches!(events[2], OwnedEvent::Item(Item::Handshake(_))));
        let again = encode_events(&events).unwrap_or_else(|e| panic!("{name}: {e}"));
        if again != bytes {
            let at = again
                .iter()
                .zip(bytes.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(again.len().min(bytes.len()));
            panic!(
                "{name}: re-encoding differs at byte {at}:\n orig {:?}\n ours {:?}",
                String::from_utf8_lossy(&bytes[at.saturating_sub(40)..(at + 80).min(bytes.len())]),
                String::from_utf8_lossy(&again[at.saturating_sub(40)..(at + 80).min(again.len())])
            );
        }
    }
}

/// The slave's stream of every session passes the order check once the
/// master's settings are known (one-way and reverse backups included).
#[test]
fn slave_streams_follow_the_session_shape() {
    let all = streams();
    let mut checked = 0;
    for (name, c2s) in &all {
        let Some(base) = name.strip_suffix(".c2s") else {
            continue;
        };
        let Some((_, s2c)) = all
            .iter()
            .find(|(n, _)| n == &format!("{base}.s2c") || n == &format!("{base}.s2c.ch0"))
        else {
            continue;
        };
        let master = decode_all(c2s, DecoderConfig::default()).unwrap();
        let OwnedEvent::Item(Item::Handshake(h)) = &master[2] else {
            panic!("{name}: no H")
        };
        let mut d = Decoder::new();
        d.set_session(Role::Slave, h);
        d.feed(s2c);
        while d
            .next_event()
            .unwrap_or_else(|e| panic!("{base}: {e}"))
            .is_some()
        {}
        d.finish().unwrap();
        // 15-hdr-hash: the mbox side crashed mid-session (Dovecot bug).
        assert_eq!(d.sender_finished(), base != "15-hdr-hash", "{base}");
        checked += 1;
    }
    assert_eq!(checked, 17);
}
