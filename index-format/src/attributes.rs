//! File-dict attribute storage (`mail_attribute_dict = file:...`, usually
//! `dovecot-attributes`): alternating key and value lines, both tab-escaped.
//!
//! Mailbox METADATA keys look like `priv/<mailbox GUID>/<name>` or
//! `shared/<mailbox GUID>/<name>`; server METADATA has no GUID component.

use std::borrow::Cow;
use std::path::Path;

use serde_json::{json, Value};

use crate::error::Result;
use crate::mmap::MappedFile;
use crate::subscriptions::{tab_escape, tab_unescape};

/// Private or shared attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttributeScope {
    Private,
    Shared,
}

/// One key/value pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeEntry<'a> {
    pub key: Cow<'a, [u8]>,
    pub value: Cow<'a, [u8]>,
}

/// A dict key split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeKey<'k> {
    pub scope: AttributeScope,
    /// Mailbox GUID (32 hex) for mailbox attributes.
    pub mailbox_guid: Option<&'k str>,
    /// The rest of the key (e.g. `comment`, `vendor/vendor.dovecot/...`).
    pub name: &'k str,
}

/// Splits `priv/<guid>/<name>` / `shared/<guid>/<name>` keys; `None` for other keys.
pub fn parse_key(key: &str) -> Option<AttributeKey<'_>> {
    let (scope, rest) = if let Some(r) = key.strip_prefix("priv/") {
        (AttributeScope::Private, r)
    } else if let Some(r) = key.strip_prefix("shared/") {
        (AttributeScope::Shared, r)
    } else {
        return None;
    };
    match rest.split_once('/') {
        Some((g, name)) if g.len() == 32 && g.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(AttributeKey {
                scope,
                mailbox_guid: Some(g),
                name,
            })
        }
        _ => Some(AttributeKey {
            scope,
            mailbox_guid: None,
            name: rest,
        }),
    }
}

/// A parsed attribute file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes<'a> {
    /// Pairs in file order.
    pub entries: Vec<AttributeEntry<'a>>,
    /// A last key without a value line (ignored, as Dovecot does).
    pub dangling_key: bool,
}

impl<'a> Attributes<'a> {
    /// Never fails: every byte sequence is a list of lines.
    pub fn parse(data: &'a [u8]) -> Self {
        let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        // A final LF leaves one empty piece that is not a line.
        if data.last() == Some(&b'\n') || data.is_empty() {
            lines.pop();
        }
        let mut attrs = Attributes::default();
        let mut it = lines.into_iter();
        while let Some(k) = it.next() {
            match it.next() {
                Some(v) => attrs.entries.push(AttributeEntry {
                    key: tab_unescape(k),
                    value: tab_unescape(v),
                }),
                None => attrs.dangling_key = true,
            }
        }
        attrs
    }

    /// Value of `key`; a later duplicate replaces an earlier one.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries
            .iter()
            .rev()
            .find(|e| &*e.key == key)
            .map(|e| &*e.value)
    }
}

/// The dict key of a mailbox attribute: `priv/<GUID>/<name>` or
/// `shared/<GUID>/<name>`.
pub fn mailbox_key(scope: AttributeScope, mailbox_guid: &str, name: &str) -> String {
    let s = match scope {
        AttributeScope::Private => "priv",
        AttributeScope::Shared => "shared",
    };
    format!("{s}/{mailbox_guid}/{name}")
}

/// The file content for `entries`: key line, value line, both tab-escaped,
/// each ending in LF (what Dovecot's file dict writes).
pub fn encode<'e>(entries: impl IntoIterator<Item = (&'e [u8], &'e [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in entries {
        out.extend_from_slice(&tab_escape(k));
        out.push(b'\n');
        out.extend_from_slice(&tab_escape(v));
        out.push(b'\n');
    }
    out
}

/// Parses the attribute file at `path` for `homing dump`.
pub fn dump(path: &Path) -> Result<Value> {
    let map = MappedFile::open(path)?;
    let attrs = Attributes::parse(&map);
    let entries: Vec<Value> = attrs
        .entries
        .iter()
        .map(|e| {
            let key = String::from_utf8_lossy(&e.key).into_owned();
            let parsed = parse_key(&key)
                .map(|k| json!({"scope": k.scope, "mailbox_guid": k.mailbox_guid, "name": k.name}));
            json!({ "key": key, "value": String::from_utf8_lossy(&e.value), "parsed": parsed })
        })
        .collect();
    Ok(json!({ "entries": entries, "dangling_key": attrs.dangling_key }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips_escaped_lines() {
        // Dovecot wrote `hello<TAB>world` as `hello\x01tworld`.
        let key = mailbox_key(
            AttributeScope::Private,
            "9ca7680432550b6b7b77000083ecc375",
            "comment",
        );
        let bytes = encode([
            (key.as_bytes(), &b"hello\tworld"[..]),
            (&b"shared/x"[..], &b"a\nb\x01"[..]),
        ]);
        assert_eq!(
            bytes,
            b"priv/9ca7680432550b6b7b77000083ecc375/comment\nhello\x01tworld\nshared/x\na\x01nb\x011\n"
        );
        let a = Attributes::parse(&bytes);
        assert!(!a.dangling_key);
        assert_eq!(a.get(key.as_bytes()), Some(&b"hello\tworld"[..]));
        assert_eq!(a.get(b"shared/x"), Some(&b"a\nb\x01"[..]));
        let k = parse_key(&key).unwrap();
        assert_eq!(k.scope, AttributeScope::Private);
        assert_eq!(k.name, "comment");
    }
}
