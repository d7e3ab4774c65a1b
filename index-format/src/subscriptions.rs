//! `subscriptions`: the list of subscribed mailbox names.
//!
//! Version 2 (`V\t2` header, then an empty line): one name per line, the
//! hierarchy levels separated by TAB and each level tab-escaped. Files
//! without the header are version 1: raw names using the namespace's own
//! hierarchy separator.

use std::borrow::Cow;
use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, FileKind, FormatRule, Result};
use crate::mmap::MappedFile;

const KIND: FileKind = FileKind::Subscriptions;
/// Escape byte of Dovecot's tab-escaping.
pub const ESCAPE: u8 = 0x01;

/// Reverses Dovecot's tab-escaping: `0x01` followed by `1` (0x01), `t` (TAB),
/// `r` (CR), `n` (LF) or `0` (NUL). Any other escaped byte stands for itself.
pub fn tab_unescape(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.contains(&ESCAPE) {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.iter();
    while let Some(&b) = it.next() {
        if b != ESCAPE {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b'1') => out.push(0x01),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b'0') => out.push(0),
            Some(&other) => out.push(other),
            None => {}
        }
    }
    Cow::Owned(out)
}

/// Dovecot's tab-escaping, the inverse of [`tab_unescape`].
pub fn tab_escape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for &b in s {
        match b {
            0x01 => out.extend_from_slice(b"\x011"),
            b'\t' => out.extend_from_slice(b"\x01t"),
            b'\r' => out.extend_from_slice(b"\x01r"),
            b'\n' => out.extend_from_slice(b"\x01n"),
            0 => out.extend_from_slice(b"\x010"),
            _ => out.push(b),
        }
    }
    out
}

/// One subscribed name as stored (one line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribedName<'a> {
    /// The line without its LF.
    pub raw: &'a [u8],
    version: u8,
}

impl<'a> SubscribedName<'a> {
    /// Hierarchy levels, unescaped (version 2); a version 1 name is one level.
    pub fn levels(&self) -> Vec<Cow<'a, [u8]>> {
        if self.version >= 2 {
            self.raw.split(|&b| b == b'\t').map(tab_unescape).collect()
        } else {
            vec![Cow::Borrowed(self.raw)]
        }
    }

    /// The name with levels joined by `separator` (lossy UTF-8).
    pub fn name(&self, separator: char) -> String {
        let levels: Vec<String> = self
            .levels()
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        levels.join(&separator.to_string())
    }
}

/// A parsed `subscriptions` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriptions<'a> {
    /// 1 (no header) or 2.
    pub version: u8,
    pub names: Vec<SubscribedName<'a>>,
}

impl<'a> Subscriptions<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let mut lines = data.split(|&b| b == b'\n').peekable();
        // split() yields one empty piece after a final LF.
        let mut version = 1;
        if let Some(first) = lines.peek() {
            if let Some(v) = first.strip_prefix(b"V\t") {
                let v = std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse::<u8>().ok())
                    .ok_or_else(|| {
                        Error::format(
                            KIND,
                            0,
                            FormatRule::BadLine {
                                line: 1,
                                detail: "bad version header".into(),
                            },
                        )
                    })?;
                if v != 2 {
                    return Err(Error::format(
                        KIND,
                        0,
                        FormatRule::BadVersion {
                            what: "subscriptions version",
                            found: v.to_string(),
                        },
                    ));
                }
                version = v;
                lines.next();
            }
        }
        let names = lines
            .filter(|l| !l.is_empty())
            .map(|raw| SubscribedName { raw, version })
            .collect();
        Ok(Subscriptions { version, names })
    }
}

/// Writes a version 2 file for the given names (levels per name).
pub fn build_v2<'n>(names: impl IntoIterator<Item = &'n [&'n str]>) -> Vec<u8> {
    let mut out = b"V\t2\n\n".to_vec();
    for levels in names {
        for (i, level) in levels.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            out.extend_from_slice(&tab_escape(level.as_bytes()));
        }
        out.push(b'\n');
    }
    out
}

/// Parses the `subscriptions` file at `path` for `homing dump`.
pub fn dump(path: &Path) -> Result<Value> {
    let map = MappedFile::open(path)?;
    let subs = Subscriptions::parse(&map).map_err(|e| e.with_path(path))?;
    Ok(json!({
        "version": subs.version,
        "names": subs.names.iter().map(|n| json!({
            "levels": n.levels().iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect::<Vec<_>>(),
            "name": n.name('/'),
        })).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        let raw = b"a\tb\x01c\rd\ne\0f";
        assert_eq!(&*tab_unescape(&tab_escape(raw)), raw);
        assert_eq!(&*tab_unescape(b"plain"), b"plain");
    }

    #[test]
    fn v2_levels_and_v1_names() {
        let data = build_v2([&["INBOX"][..], &["Work", "Re\tports"][..]]);
        let s = Subscriptions::parse(&data).unwrap();
        assert_eq!(s.version, 2);
        assert_eq!(s.names.len(), 2);
        assert_eq!(s.names[1].name('/'), "Work/Re\tports");
        let v1 = Subscriptions::parse(b"INBOX\nWork.Reports\n").unwrap();
        assert_eq!(v1.version, 1);
        assert_eq!(v1.names[1].name('/'), "Work.Reports");
        assert!(Subscriptions::parse(b"V\t3\n\n").is_err());
    }
}
