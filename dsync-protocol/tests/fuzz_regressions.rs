//! Inputs the fuzzer found, replayed with the fuzz target's checks: the
//! same result whole and split, and decoded streams re-encode to bytes that
//! decode the same.

use dsync_protocol::decode::push_owned;
use dsync_protocol::*;

fn run(chunks: &[&[u8]]) -> (Vec<OwnedEvent>, Option<DecodeError>) {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c);
        loop {
            match d.next_event() {
                Ok(Some(ev)) => push_owned(&mut out, ev),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    let err = d.finish().err();
    (out, err)
}

#[test]
fn replay_fuzz_findings() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        let (&split, input) = data.split_first().unwrap();
        let whole = run(&[input]);
        let k = split as usize * input.len() / 255;
        assert_eq!(run(&[&input[..k], &input[k..]]), whole);
        if let (events, None) = &whole {
            let bytes = match encode_events(events) {
                Ok(b) => b,
                Err(EncodeError::InvalidValue { reason, .. }) if reason.contains("only field") => {
                    continue
                }
                Err(e) => panic!("{e}"),
            };
            let again = run(&[&bytes]);
            if let Some(i) = (0..events.len()).find(|&i| again.0.get(i) != events.get(i)) {
                panic!(
                    "event {i} differs after re-encoding:\n{:?}\n{:?}",
                    events.get(i),
                    again.0.get(i)
                );
            }
            assert_eq!(&again.0, events);
            assert!(again.1.is_none());
        }
        n += 1;
    }
    assert!(n >= 1);
}

/// First finding: a D table whose escape_char key is garbled. The decoded
/// item must still re-encode with that table (the value is left out).
#[test]
fn value_for_a_key_missing_from_the_table_is_left_out() {
    let mut t = Tables::standard();
    let d = t.defs.iter_mut().find(|d| d.letter == b'D').unwrap();
    d.keys[1] = b"escape_ch]r".to_vec();
    let mut enc = Encoder::with_tables(t);
    let mut out = Vec::new();
    let del = MailboxDelete {
        hierarchy_sep: b'/',
        escape_char: Some(b'%'),
        mailboxes: vec![],
        dirs: vec![],
        unsubscribes: vec![],
    };
    enc.encode_item(&Item::MailboxDelete(del), &mut out)
        .unwrap();
    assert_eq!(out, b"D/\n");
}

/// Third finding: an item whose only field is an empty string cannot be
/// written (it would read back as absent); the encoder says so.
#[test]
fn lone_empty_field_is_refused() {
    let mut out = Vec::new();
    let mut e = Encoder::new();
    let h = Handshake::default();
    assert!(matches!(
        e.encode_item(&Item::Handshake(Box::new(h)), &mut out),
        Err(EncodeError::InvalidValue {
            key: "hostname",
            ..
        })
    ));
    let f = Finish {
        error: Some(Vec::new()),
        ..Default::default()
    };
    assert!(matches!(
        e.encode_item(&Item::Finish(f), &mut out),
        Err(EncodeError::InvalidValue { key: "error", .. })
    ));
    // With another field present the empty value is fine.
    let f = Finish {
        error: Some(Vec::new()),
        require_full_resync: true,
        ..Default::default()
    };
    e.encode_item(&Item::Finish(f), &mut out).unwrap();
    assert_eq!(out, b"F\t\x02\t\n");
}
