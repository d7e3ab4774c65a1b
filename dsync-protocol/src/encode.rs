//! The encoder: typed items in, exactly Dovecot's bytes out.

use std::borrow::Cow;

use crate::decode::ProtocolVersion;
use crate::dot::DotEncoder;
use crate::error::EncodeError;
use crate::escape;
use crate::item::{self, FieldsOut, Item};
use crate::table::{ItemKind, KeyMaps, Tables};

/// Encodes one direction of a session. Remembers whether a data block is
/// open so that items cannot be written into the middle of a body.
#[derive(Clone, Debug)]
pub struct Encoder {
    tables: Tables,
    maps: KeyMaps,
    body: Option<DotEncoder>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// An encoder using Dovecot 2.3.19.1's table definitions.
    pub fn new() -> Encoder {
        Self::with_tables(Tables::standard())
    }

    /// An encoder whose items follow the given tables (key order by name;
    /// keys it does not know are sent absent, values for keys the tables lack
    /// are left out).
    pub fn with_tables(tables: Tables) -> Encoder {
        let maps = KeyMaps::from_tables(&tables);
        Encoder {
            tables,
            maps,
            body: None,
        }
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// `VERSION\tdsync\t3\t5\n`.
    pub fn encode_version(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(ProtocolVersion::CURRENT.line().as_bytes());
        out.push(b'\n');
    }

    /// The table block including its `.` line.
    pub fn encode_tables(&self, out: &mut Vec<u8>) {
        self.tables.encode_into(out);
    }

    /// VERSION line and table block: what a side sends first, before its `H`.
    pub fn encode_preamble(&self, out: &mut Vec<u8>) {
        self.encode_version(out);
        self.encode_tables(out);
    }

    /// True while a data block is open.
    pub fn body_open(&self) -> bool {
        self.body.is_some()
    }

    /// Appends one item line. For an item with `stream` set, a data block
    /// is opened: send it with [`Encoder::encode_body_chunk`] and
    /// [`Encoder::end_body`].
    pub fn encode_item(&mut self, item: &Item, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.body.is_some() {
            return Err(EncodeError::BodyOpen { what: "an item" });
        }
        let (kind, fields): (ItemKind, FieldsOut<'_>) = match item {
            Item::EndOfList => {
                out.extend_from_slice(b".\n");
                return Ok(());
            }
            Item::Done => {
                out.extend_from_slice(b"X\n");
                return Ok(());
            }
            Item::Handshake(h) => {
                if matches!(&h.sync_ns_prefixes, Some(v) if v.is_empty()) {
                    return Err(EncodeError::InvalidValue {
                        item: "handshake",
                        key: "sync_ns_prefix",
                        reason: "an empty prefix list cannot be sent; use one empty prefix",
                    });
                }
                if matches!(&h.exclude_mailboxes, Some(v) if v.len() == 1 && v[0].is_empty()) {
                    return Err(EncodeError::InvalidValue {
                        item: "handshake",
                        key: "exclude_mailboxes",
                        reason: "a list of one empty mask is sent like an empty list",
                    });
                }
                (ItemKind::Handshake, item::encode_handshake(h))
            }
            Item::MailboxState(s) => (ItemKind::MailboxState, item::encode_state(s)),
            Item::MailboxTreeNode(n) => {
                if n.name.is_empty() || (n.name.len() == 1 && n.name[0].is_empty()) {
                    return Err(EncodeError::InvalidValue {
                        item: "mailbox_tree_node",
                        key: "name",
                        reason: "the name must not be empty",
                    });
                }
                (ItemKind::MailboxTreeNode, item::encode_tree_node(n))
            }
            Item::MailboxDelete(d) => (ItemKind::MailboxDelete, item::encode_delete(d)),
            Item::Mailbox(m) => {
                let mut cache = Vec::new();
                for c in &m.cache_fields {
                    self.line_into(
                        ItemKind::CacheField,
                        item::encode_cache_field(c),
                        &mut cache,
                    )?;
                    cache.push(b'\n');
                }
                cache.pop();
                (ItemKind::Mailbox, item::encode_mailbox(m, cache))
            }
            Item::Attribute(a) => (ItemKind::Attribute, item::encode_attribute(a)),
            Item::MailChange(c) => (ItemKind::MailChange, item::encode_change(c)),
            Item::MailRequest(r) => (ItemKind::MailRequest, item::encode_request(r)),
            Item::Mail(m) => (ItemKind::Mail, item::encode_mail(m)),
            Item::Finish(f) => (ItemKind::Finish, item::encode_finish(f)),
        };
        out.push(kind.letter());
        self.line_into(kind, fields, out)?;
        out.push(b'\n');
        if item.has_body() {
            self.body = Some(DotEncoder::new());
        }
        Ok(())
    }

    /// Writes the fields of one record in the table's order, trailing
    /// absent fields left out.
    fn line_into(
        &self,
        kind: ItemKind,
        fields: FieldsOut<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        // A value whose key the table lacks cannot be sent; the peer reads
        // such a key as absent (only possible with non-standard tables).
        let layout = &self.maps.encode[kind.index()];
        let value_at = |p: usize| -> Option<&Cow<'_, [u8]>> {
            layout[p]
                .and_then(|i| fields.get(i))
                .and_then(|v| v.as_ref())
        };
        let Some(last) = (0..layout.len()).rev().find(|&p| value_at(p).is_some()) else {
            return Ok(());
        };
        for p in 0..=last {
            if p > 0 {
                out.push(b'\t');
            }
            escape::encode_field_into(value_at(p).map(|v| &**v), out);
        }
        Ok(())
    }

    /// Appends data of the open block (stuffed).
    pub fn encode_body_chunk(
        &mut self,
        chunk: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        match &mut self.body {
            Some(b) => {
                b.encode(chunk, out);
                Ok(())
            }
            None => Err(EncodeError::NoBodyOpen),
        }
    }

    /// Closes the open block with `\r\n.\r\n`.
    pub fn end_body(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self.body.take() {
            Some(b) => {
                b.finish(out);
                Ok(())
            }
            None => Err(EncodeError::NoBodyOpen),
        }
    }
}

/// Re-encodes decoded events: the tables in the events decide the item
/// layout (the standard tables if there are none).
pub fn encode_events(events: &[crate::decode::OwnedEvent]) -> Result<Vec<u8>, EncodeError> {
    use crate::decode::OwnedEvent;
    let mut out = Vec::new();
    let mut enc = Encoder::new();
    for ev in events {
        match ev {
            OwnedEvent::Version(v) => {
                out.extend_from_slice(v.line().as_bytes());
                out.push(b'\n');
            }
            OwnedEvent::Tables(t) => {
                enc = Encoder::with_tables(t.clone());
                enc.encode_tables(&mut out);
            }
            OwnedEvent::Item(i) => enc.encode_item(i, &mut out)?,
            OwnedEvent::Body(b) => {
                enc.encode_body_chunk(b, &mut out)?;
                enc.end_body(&mut out)?;
            }
        }
    }
    Ok(out)
}
