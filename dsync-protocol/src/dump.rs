//! Decodes a captured dsync stream (one direction) into a JSON value for
//! `homing dump`. The shape is documented in `docs/dump-stream-json.md`.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::decode::{Decoder, DecoderConfig, Event};
use crate::error::DecodeError;
use crate::item::*;
use crate::table::Tables;
use crate::types::*;

/// How many bytes of each data block are shown.
const BODY_HEAD: usize = 64;

/// Bytes as a JSON string when they are UTF-8, else `{"hex": "…"}`.
pub fn bytes_value(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "hex": hex_lower(b) }),
    }
}

fn opt_bytes(b: &Option<Vec<u8>>) -> Value {
    b.as_deref().map(bytes_value).unwrap_or(Value::Null)
}

fn list(l: &[Vec<u8>]) -> Value {
    Value::Array(l.iter().map(|e| bytes_value(e)).collect())
}

fn opt_list(l: &Option<Vec<Vec<u8>>>) -> Value {
    l.as_deref().map(list).unwrap_or(Value::Null)
}

fn flags(f: MailFlags) -> Value {
    json!({ "bits": f.0, "names": f.names() })
}

fn deletes(l: &[DeleteRecord]) -> Value {
    Value::Array(
        l.iter()
            .map(|r| json!({ "guid": r.guid.to_hex(), "timestamp": r.timestamp }))
            .collect(),
    )
}

fn tables_value(t: &Tables) -> Value {
    let mut m = Map::new();
    for d in &t.defs {
        m.insert((d.letter as char).to_string(), list(&d.keys));
    }
    Value::Object(m)
}

/// JSON of one item: `type`, `letter`, then its fields by Dovecot's names.
pub fn item_value(item: &Item) -> Value {
    let (ty, fields) = match item {
        Item::EndOfList => ("end_of_list", json!({})),
        Item::Done => ("done", json!({})),
        Item::Handshake(h) => (
            "handshake",
            json!({
                "hostname": bytes_value(&h.hostname),
                "sync_ns_prefix": opt_list(&h.sync_ns_prefixes),
                "sync_box": opt_bytes(&h.sync_box),
                "sync_box_guid": h.sync_box_guid.map(|g| g.to_hex()),
                "sync_type": h.sync_type.map(|t| (t.letter() as char).to_string()),
                "debug": h.debug,
                "sync_visible_namespaces": h.sync_visible_namespaces,
                "exclude_mailboxes": opt_list(&h.exclude_mailboxes),
                "send_mail_requests": h.send_mail_requests,
                "backup_send": h.backup_send,
                "backup_recv": h.backup_recv,
                "lock_timeout": h.lock_timeout,
                "no_mail_sync": h.no_mail_sync,
                "no_backup_overwrite": h.no_backup_overwrite,
                "purge_remote": h.purge_remote,
                "no_notify": h.no_notify,
                "sync_since_timestamp": h.sync_since_timestamp,
                "sync_max_size": h.sync_max_size,
                "sync_flags": opt_bytes(&h.sync_flags),
                "sync_until_timestamp": h.sync_until_timestamp,
                "virtual_all_box": opt_bytes(&h.virtual_all_box),
                "empty_hdr_workaround": h.empty_hdr_workaround,
                "import_commit_msgs_interval": h.import_commit_msgs_interval,
                "hashed_headers": opt_list(&h.hashed_headers),
                "alt_char": h.alt_char.map(|c| bytes_value(&[c])),
            }),
        ),
        Item::MailboxState(s) => (
            "mailbox_state",
            json!({
                "mailbox_guid": s.mailbox_guid.to_hex(),
                "last_uidvalidity": s.last_uidvalidity,
                "last_common_uid": s.last_common_uid,
                "last_common_modseq": s.last_common_modseq,
                "last_common_pvt_modseq": s.last_common_pvt_modseq,
                "last_messages_count": s.last_messages_count,
                "changes_during_sync": s.changes_during_sync,
            }),
        ),
        Item::MailboxTreeNode(n) => (
            "mailbox_tree_node",
            json!({
                "name": list(&n.name),
                "existence": (n.existence.letter() as char).to_string(),
                "mailbox_guid": n.mailbox_guid.map(|g| g.to_hex()),
                "uid_validity": n.uid_validity,
                "uid_next": n.uid_next,
                "last_renamed_or_created": n.last_renamed_or_created,
                "subscribed": n.subscribed,
                "last_subscription_change": n.last_subscription_change,
            }),
        ),
        Item::MailboxDelete(d) => (
            "mailbox_delete",
            json!({
                "hierarchy_sep": bytes_value(&[d.hierarchy_sep]),
                "escape_char": d.escape_char.map(|c| bytes_value(&[c])),
                "mailboxes": deletes(&d.mailboxes),
                "dirs": deletes(&d.dirs),
                "unsubscribes": deletes(&d.unsubscribes),
            }),
        ),
        Item::Mailbox(b) => (
            "mailbox",
            json!({
                "mailbox_guid": b.mailbox_guid.to_hex(),
                "uid_validity": b.uid_validity,
                "uid_next": b.uid_next,
                "messages_count": b.messages_count,
                "first_recent_uid": b.first_recent_uid,
                "highest_modseq": b.highest_modseq,
                "highest_pvt_modseq": b.highest_pvt_modseq,
                "mailbox_lost": b.mailbox_lost,
                "mailbox_ignore": b.mailbox_ignore,
                "cache_fields": b.cache_fields.iter().map(|c| {
                    let mut d = match c.decision.kind {
                        CacheDecisionKind::No => "n",
                        CacheDecisionKind::Temp => "t",
                        CacheDecisionKind::Yes => "y",
                    }.to_string();
                    if c.decision.forced { d.push('F'); }
                    json!({ "name": bytes_value(&c.name), "decision": d, "last_used": c.last_used })
                }).collect::<Vec<_>>(),
                "have_guids": b.have_guids,
                "have_save_guids": b.have_save_guids,
                "have_only_guid128": b.have_only_guid128,
            }),
        ),
        Item::Attribute(a) => (
            "mailbox_attribute",
            json!({
                "type": match a.attr_type { AttributeType::Private => "p", AttributeType::Shared => "s" },
                "key": bytes_value(&a.key),
                "value": match &a.value { AttributeValue::Inline(v) => bytes_value(v), _ => Value::Null },
                "stream": a.value == AttributeValue::Stream,
                "deleted": a.deleted,
                "last_change": a.last_change,
                "modseq": a.modseq,
            }),
        ),
        Item::MailChange(c) => (
            "mail_change",
            json!({
                "type": (c.change_type.letter() as char).to_string(),
                "uid": c.uid,
                "guid": opt_bytes(&c.guid),
                "hdr_hash": opt_bytes(&c.hdr_hash),
                "modseq": c.modseq,
                "pvt_modseq": c.pvt_modseq,
                "add_flags": flags(c.add_flags),
                "remove_flags": flags(c.remove_flags),
                "final_flags": flags(c.final_flags),
                "keywords_reset": c.keywords_reset,
                "keyword_changes": c.keyword_changes.iter().map(|k| {
                    json!({ "op": (k.op.letter() as char).to_string(), "keyword": bytes_value(&k.keyword) })
                }).collect::<Vec<_>>(),
                "received_timestamp": c.received_timestamp,
                "virtual_size": c.virtual_size,
            }),
        ),
        Item::MailRequest(r) => (
            "mail_request",
            json!({ "guid": opt_bytes(&r.guid), "uid": r.uid }),
        ),
        Item::Mail(m) => (
            "mail",
            json!({
                "guid": opt_bytes(&m.guid),
                "uid": m.uid,
                "pop3_uidl": opt_bytes(&m.pop3_uidl),
                "pop3_order": m.pop3_order,
                "received_date": m.received_date,
                "saved_date": m.saved_date,
                "stream": m.stream,
            }),
        ),
        Item::Finish(f) => (
            "finish",
            json!({
                "error": opt_bytes(&f.error),
                "mail_error": f.mail_error,
                "require_full_resync": f.require_full_resync,
            }),
        ),
    };
    let mut m = Map::new();
    m.insert("type".into(), Value::String(ty.into()));
    m.insert(
        "letter".into(),
        Value::String((item.letter() as char).to_string()),
    );
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    Value::Object(m)
}

struct BodyAcc {
    len: u64,
    sha: Sha256,
    head: Vec<u8>,
}

/// Decodes one direction of a captured session. Bytes before the first
/// line that starts with `VERSION\tdsync\t` (the doveadm-server preamble of
/// a TCP capture, or `\n+\n` on its reply channel) are skipped and counted.
pub fn dump_stream(bytes: &[u8]) -> Result<Value, DecodeError> {
    let start = find_start(bytes);
    let mut d = Decoder::with_config(DecoderConfig::default());
    d.feed(&bytes[start..]);
    let mut version = Value::Null;
    let mut tables = Value::Null;
    let mut items: Vec<Value> = Vec::new();
    let mut body: Option<BodyAcc> = None;
    loop {
        let offset = start as u64 + d.offset();
        let Some(ev) = d.next_event()? else { break };
        match ev {
            Event::Version(v) => version = json!({ "major": v.major, "minor": v.minor }),
            Event::Tables(t) => tables = tables_value(&t),
            Event::Item(it) => {
                let mut v = item_value(&it);
                if let Value::Object(m) = &mut v {
                    m.insert("offset".into(), json!(offset));
                }
                items.push(v);
                if it.has_body() {
                    body = Some(BodyAcc {
                        len: 0,
                        sha: Sha256::new(),
                        head: Vec::new(),
                    });
                }
            }
            Event::BodyChunk(c) => {
                if let Some(b) = &mut body {
                    b.len += c.len() as u64;
                    b.sha.update(c);
                    let room = BODY_HEAD.saturating_sub(b.head.len());
                    b.head.extend_from_slice(&c[..room.min(c.len())]);
                }
            }
            Event::BodyEnd => {
                if let (Some(b), Some(Value::Object(m))) = (body.take(), items.last_mut()) {
                    m.insert(
                        "body".into(),
                        json!({
                            "length": b.len,
                            "sha256": hex_lower(&b.sha.finalize()),
                            "head": String::from_utf8_lossy(&b.head),
                        }),
                    );
                }
            }
        }
    }
    d.finish()?;
    Ok(json!({
        "skipped_preamble_bytes": start,
        "length": bytes.len(),
        "version": version,
        "tables": tables,
        "item_count": items.len(),
        "sender_finished": d.sender_finished(),
        "items": items,
    }))
}

fn find_start(bytes: &[u8]) -> usize {
    let needle = b"VERSION\tdsync\t";
    if bytes.starts_with(needle) {
        return 0;
    }
    bytes
        .windows(needle.len() + 1)
        .position(|w| w[0] == b'\n' && &w[1..] == needle)
        .map(|p| p + 1)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_first_sync() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/captures/01-first-sync.c2s"
        ))
        .unwrap();
        let v = dump_stream(&bytes).unwrap();
        assert_eq!(v["version"]["minor"], 5);
        assert_eq!(v["tables"]["C"][0], "type");
        let items = v["items"].as_array().unwrap();
        assert_eq!(items[0]["type"], "handshake");
        assert_eq!(items[0]["sync_type"], "c");
        assert_eq!(items[0]["hashed_headers"], json!(["Date", "Message-ID"]));
        let reports = items
            .iter()
            .find(|i| i["name"] == json!(["Work", "Reports"]))
            .unwrap();
        assert_eq!(reports["existence"], "y");
        let mail = items.iter().find(|i| i["type"] == "mail").unwrap();
        let body = &mail["body"];
        assert_eq!(body["length"], 195);
        assert!(body["head"].as_str().unwrap().starts_with("From: Alice"));
        assert_eq!(v["sender_finished"], true);
    }
}
