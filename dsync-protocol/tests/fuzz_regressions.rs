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
            let bytes = encode_events(events).unwrap();
            let again = run(&[&bytes]);
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
