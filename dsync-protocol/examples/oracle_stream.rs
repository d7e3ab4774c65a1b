//! Writes a master (client) stream for replay against a real
//! `doveadm dsync-server`: the stream of `01-first-sync.c2s`, decoded and
//! re-encoded, with the INBOX mails replaced by tricky bodies (leading dot,
//! lone-dot lines, CR without LF, a terminator-like sequence, binary bytes).
//!
//! Usage: cargo run -p dsync-protocol --example oracle_stream -- IN.c2s OUT.c2s BODIES_DIR

use dsync_protocol::*;

fn bodies() -> Vec<Vec<u8>> {
    vec![
        b".starts-with-dot: x\nSubject: one\n\n.\n..\n.\r\nend".to_vec(),
        b"Subject: two\r\n\r\nline\r\n.\r\nnot the end\r\n\r\n.\r".to_vec(),
        b"Subject: three\n\nbinary \x00\x01\x02\x7f\xff\tTAB\rCR.\n.x\n\r\n.\r\n".to_vec(),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let input = std::fs::read(&args[1]).expect("read input");
    let events = decode_all(&input, DecoderConfig::default()).expect("decode");
    let bodies = bodies();
    let mut guid_map: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut out_events = Vec::new();
    let mut body_idx = None;
    for ev in events {
        match ev {
            OwnedEvent::Item(Item::MailChange(mut c))
                if guid_map.len() < 3 && c.change_type == ChangeType::Save =>
            {
                let new = format!("oracle{}.M1P1.test", guid_map.len() + 1).into_bytes();
                guid_map.push((c.guid.clone().unwrap_or_default(), new.clone()));
                c.guid = Some(new);
                out_events.push(OwnedEvent::Item(Item::MailChange(c)));
            }
            OwnedEvent::Item(Item::MailRequest(r)) => {
                out_events.push(OwnedEvent::Item(Item::MailRequest(r)))
            }
            OwnedEvent::Item(Item::Mail(mut m)) => {
                body_idx = guid_map
                    .iter()
                    .position(|(old, _)| Some(old) == m.guid.as_ref());
                if let Some(i) = body_idx {
                    m.guid = Some(guid_map[i].1.clone());
                }
                out_events.push(OwnedEvent::Item(Item::Mail(m)));
            }
            OwnedEvent::Body(b) => match body_idx.take() {
                Some(i) => out_events.push(OwnedEvent::Body(bodies[i].clone())),
                None => out_events.push(OwnedEvent::Body(b)),
            },
            other => out_events.push(other),
        }
    }
    let bytes = encode_events(&out_events).expect("encode");
    std::fs::write(&args[2], bytes).expect("write");
    std::fs::create_dir_all(&args[3]).unwrap();
    for (i, b) in bodies.iter().enumerate() {
        std::fs::write(format!("{}/{}.eml", args[3], i + 1), b).unwrap();
    }
}
