//! Decoder fuzz target. Input: one byte choosing a split point, then a
//! stream. Checks: no panic; the same result whole and split; a stream
//! that decodes fully re-encodes to bytes that decode to the same events.
#![no_main]

use dsync_protocol::decode::push_owned;
use dsync_protocol::{encode_events, DecodeError, Decoder, DecoderConfig, OwnedEvent};
use libfuzzer_sys::fuzz_target;

fn config() -> DecoderConfig {
    DecoderConfig {
        max_line_len: 4096,
        max_fields: 64,
        max_list_elements: 256,
        max_body_size: 1 << 16,
        ..DecoderConfig::default()
    }
}

fn run(chunks: &[&[u8]]) -> (Vec<OwnedEvent>, Option<DecodeError>) {
    let mut d = Decoder::with_config(config());
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

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let whole = run(&[input]);
    let k = split as usize * input.len() / 255;
    let parts = run(&[&input[..k], &input[k..]]);
    assert_eq!(whole, parts, "split at {k} changed the result");
    if let (events, None) = &whole {
        let bytes = encode_events(events).expect("decoded events must re-encode");
        let again = run(&[&bytes]);
        assert_eq!(&again.0, events, "re-encoded stream decodes differently");
        assert!(again.1.is_none(), "re-encoded stream fails: {:?}", again.1);
    }
});
