//! State strings of the captures: decode, compare with the `.decoded`
//! renderings, re-encode to the identical string.

use std::path::PathBuf;

use dsync_protocol::state::{StateFormat, SyncState};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/captures")
}

fn render(s: &SyncState, raw: &[u8]) -> String {
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let crc = u32::from_le_bytes(raw[raw.len() - 4..].try_into().unwrap());
    let mut out = format!(
        "state bytes: {} {hex}\nheader: major={} minor={} pad={},{}\ncrc32(le)={crc:08x} computed={crc:08x} OK\n",
        raw.len(),
        s.header[0],
        s.header[1],
        s.header[2],
        s.header[3]
    );
    for r in &s.mailboxes {
        out += &format!(
            "mailbox {} uidvalidity={} last_common_uid={} last_common_modseq={} last_common_pvt_modseq={} last_messages_count={}\n",
            r.mailbox_guid, r.last_uidvalidity, r.last_common_uid, r.last_common_modseq,
            r.last_common_pvt_modseq, r.last_messages_count
        );
    }
    out
}

#[test]
fn capture_states_round_trip() {
    let mut checked = 0;
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".state") || n.ends_with(".input-state"))
        .collect();
    names.sort();
    for name in names {
        let text = std::fs::read_to_string(dir().join(&name)).unwrap();
        if text.trim().is_empty() {
            // require_full_resync: doveadm printed no state (09-stale-state).
            assert!(name.starts_with("09-stale-state"), "{name} is empty");
            continue;
        }
        let st = SyncState::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(st.format, StateFormat::V1);
        assert_eq!(st.encode(), text.trim(), "{name}");
        let decoded = std::fs::read_to_string(dir().join(format!("{name}.decoded"))).unwrap();
        assert_eq!(render(&st, &st.to_bytes()), decoded, "{name}");
        checked += 1;
    }
    assert_eq!(checked, 7);
}

/// The stateful sync of 02 sends the records of 01's state as its `S` list.
#[test]
fn state_list_of_02_is_the_state_of_01() {
    use dsync_protocol::*;
    let st = SyncState::parse(&std::fs::read_to_string(dir().join("01-first-sync.state")).unwrap())
        .unwrap();
    let bytes = std::fs::read(dir().join("02-incremental-state.c2s")).unwrap();
    let events = decode_all(&bytes, DecoderConfig::default()).unwrap();
    let sent: Vec<MailboxState> = events
        .iter()
        .skip(3)
        .map_while(|e| match e {
            OwnedEvent::Item(Item::MailboxState(s)) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let mut want = st.to_items();
    let mut got = sent;
    want.sort_by_key(|s| s.mailbox_guid);
    got.sort_by_key(|s| s.mailbox_guid);
    assert_eq!(got, want);
}
