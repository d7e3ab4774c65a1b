//! Decoders of the standard index extensions (spec 3.5, 3.6, 7.3, 8.1).
//!
//! Each decoder takes the extension's header or per-record bytes and returns a
//! typed value; short input decodes as if zero-filled where Dovecot would do
//! the same (its headers are zero-extended), never panicking.

use serde_json::{json, Value};

use crate::le::{guid_at, hex, u32_at, u64_at};

pub const KEYWORDS: &str = "keywords";
pub const MODSEQ: &str = "modseq";
pub const CACHE: &str = "cache";
pub const VSIZE: &str = "vsize";
pub const HDR_VSIZE: &str = "hdr-vsize";
pub const HDR_POP3_UIDL: &str = "hdr-pop3-uidl";
pub const MAILDIR: &str = "maildir";
pub const DBOX_HDR: &str = "dbox-hdr";
pub const MDBOX_HDR: &str = "mdbox-hdr";
pub const MDBOX: &str = "mdbox";
pub const GUID: &str = "guid";
pub const MAP: &str = "map";
pub const REF: &str = "ref";
pub const LIST: &str = "list";
pub const MSGS: &str = "msgs";
pub const HMODSEQ: &str = "hmodseq";
pub const INDEX_SYNC: &str = "index sync";
pub const LAST_RENAME_STAMP: &str = "last-rename-stamp";
pub const BOX_NAME: &str = "box-name";
pub const MBOX: &str = "mbox";
pub const FTS: &str = "fts";
pub const SUBS: &str = "subs";

/// Zero-extends `b` to `n` bytes when shorter (Dovecot reads short headers as zero-padded).
fn padded<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = b.len().min(N);
    a[..n].copy_from_slice(&b[..n]);
    a
}

fn guid_hex(g: &[u8; 16]) -> String {
    hex(g)
}

/// Parses the `keywords` extension header (spec 3.5) into names in index order.
/// Errors give the offset inside the header and what is wrong.
pub fn parse_keywords_header(h: &[u8]) -> Result<Vec<&str>, (usize, String)> {
    if h.is_empty() {
        return Ok(Vec::new());
    }
    let count = u32_at(h, 0).ok_or((0, "shorter than 4 bytes".to_string()))? as usize;
    let names_start = count
        .checked_mul(8)
        .and_then(|x| x.checked_add(4))
        .filter(|&x| x <= h.len())
        .ok_or((0, format!("keywords_count {count} does not fit the header")))?;
    let mut names = Vec::with_capacity(count);
    for i in 0..count {
        let name_off = u32_at(h, 4 + 8 * i + 4).unwrap_or(0) as usize;
        let start = names_start
            .checked_add(name_off)
            .filter(|&s| s < h.len())
            .ok_or((
                4 + 8 * i,
                format!("keyword {i} name offset {name_off} out of range"),
            ))?;
        let len = h[start..]
            .iter()
            .position(|&c| c == 0)
            .ok_or((start, format!("keyword {i} name not NUL-terminated")))?;
        if len == 0 {
            return Err((start, format!("keyword {i} name is empty")));
        }
        let name = std::str::from_utf8(&h[start..start + len])
            .map_err(|_| (start, format!("keyword {i} name is not UTF-8")))?;
        names.push(name);
    }
    Ok(names)
}

/// Builds a `keywords` header holding `names` (spec 3.5 layout) and returns the
/// bytes and the length before zero fill.
pub fn build_keywords_header(names: &[String]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(names.len() as u32).to_le_bytes());
    let mut off = 0u32;
    for n in names {
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&off.to_le_bytes());
        off = off.saturating_add(n.len() as u32 + 1);
    }
    for n in names {
        b.extend_from_slice(n.as_bytes());
        b.push(0);
    }
    b
}

/// `modseq` header: `{highest_modseq, log_seq, log_offset}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ModseqHeader {
    pub highest_modseq: u64,
    pub log_seq: u32,
    pub log_offset: u32,
}

impl ModseqHeader {
    pub fn decode(h: &[u8]) -> Self {
        let b: [u8; 16] = padded(h);
        ModseqHeader {
            highest_modseq: u64_at(&b, 0).unwrap_or(0),
            log_seq: u32_at(&b, 8).unwrap_or(0),
            log_offset: u32_at(&b, 12).unwrap_or(0),
        }
    }
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.highest_modseq.to_le_bytes());
        b[8..12].copy_from_slice(&self.log_seq.to_le_bytes());
        b[12..16].copy_from_slice(&self.log_offset.to_le_bytes());
        b
    }
}

/// `hdr-vsize` header and list-index `vsize` record: `{vsize, highest_uid, message_count}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct VsizeHeader {
    pub vsize: u64,
    pub highest_uid: u32,
    pub message_count: u32,
}

impl VsizeHeader {
    pub fn decode(h: &[u8]) -> Self {
        let b: [u8; 16] = padded(h);
        VsizeHeader {
            vsize: u64_at(&b, 0).unwrap_or(0),
            highest_uid: u32_at(&b, 8).unwrap_or(0),
            message_count: u32_at(&b, 12).unwrap_or(0),
        }
    }
}

/// Maildir `maildir` header (spec 6.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MaildirHeader {
    pub new_check_time: u32,
    pub new_mtime: u32,
    pub new_mtime_nsecs: u32,
    pub cur_check_time: u32,
    pub cur_mtime: u32,
    pub cur_mtime_nsecs: u32,
    pub uidlist_mtime: u32,
    pub uidlist_mtime_nsecs: u32,
    pub uidlist_size: u32,
}

impl MaildirHeader {
    pub fn decode(h: &[u8]) -> Self {
        let b: [u8; 36] = padded(h);
        let u = |i: usize| u32_at(&b, i * 4).unwrap_or(0);
        MaildirHeader {
            new_check_time: u(0),
            new_mtime: u(1),
            new_mtime_nsecs: u(2),
            cur_check_time: u(3),
            cur_mtime: u(4),
            cur_mtime_nsecs: u(5),
            uidlist_mtime: u(6),
            uidlist_mtime_nsecs: u(7),
            uidlist_size: u(8),
        }
    }
}

/// sdbox `dbox-hdr` / mdbox `mdbox-hdr` header: a u32, the mailbox GUID and flags.
/// For sdbox the u32 is `rebuild_count`, for mdbox `map_uid_validity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DboxHeader {
    pub first: u32,
    pub mailbox_guid: [u8; 16],
    pub flags: u8,
}

impl DboxHeader {
    pub fn decode(h: &[u8]) -> Self {
        let b: [u8; 24] = padded(h);
        DboxHeader {
            first: u32_at(&b, 0).unwrap_or(0),
            mailbox_guid: guid_at(&b, 4).unwrap_or_default(),
            flags: b[20],
        }
    }
}

/// mdbox mailbox `mdbox` record: `{map_uid, save_date}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MdboxRecord {
    pub map_uid: u32,
    pub save_date: u32,
}

impl MdboxRecord {
    pub fn decode(r: &[u8]) -> Self {
        let b: [u8; 8] = padded(r);
        MdboxRecord {
            map_uid: u32_at(&b, 0).unwrap_or(0),
            save_date: u32_at(&b, 4).unwrap_or(0),
        }
    }
}

/// mdbox map index `map` header: `{highest_file_id, rebuild_count}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MapHeader {
    pub highest_file_id: u32,
    pub rebuild_count: u32,
}

impl MapHeader {
    pub fn decode(h: &[u8]) -> Self {
        let b: [u8; 8] = padded(h);
        MapHeader {
            highest_file_id: u32_at(&b, 0).unwrap_or(0),
            rebuild_count: u32_at(&b, 4).unwrap_or(0),
        }
    }
}

/// mdbox map index `map` record: where a map uid's message lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MapRecord {
    pub file_id: u32,
    pub offset: u32,
    pub size: u32,
}

impl MapRecord {
    pub fn decode(r: &[u8]) -> Self {
        let b: [u8; 12] = padded(r);
        MapRecord {
            file_id: u32_at(&b, 0).unwrap_or(0),
            offset: u32_at(&b, 4).unwrap_or(0),
            size: u32_at(&b, 8).unwrap_or(0),
        }
    }
}

/// List index `list` record: one mailbox-name node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListRecord {
    pub name_id: u32,
    pub parent_uid: u32,
    pub mailbox_guid: [u8; 16],
    pub uid_validity: u32,
}

impl ListRecord {
    pub fn decode(r: &[u8]) -> Self {
        let b: [u8; 28] = padded(r);
        ListRecord {
            name_id: u32_at(&b, 0).unwrap_or(0),
            parent_uid: u32_at(&b, 4).unwrap_or(0),
            mailbox_guid: guid_at(&b, 8).unwrap_or_default(),
            uid_validity: u32_at(&b, 24).unwrap_or(0),
        }
    }
}

/// List index `msgs` record: cached STATUS counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ListMsgsRecord {
    pub messages: u32,
    pub unseen: u32,
    pub recent: u32,
    pub uidnext: u32,
}

impl ListMsgsRecord {
    pub fn decode(r: &[u8]) -> Self {
        let b: [u8; 16] = padded(r);
        let u = |i: usize| u32_at(&b, i * 4).unwrap_or(0);
        ListMsgsRecord {
            messages: u(0),
            unseen: u(1),
            recent: u(2),
            uidnext: u(3),
        }
    }
}

/// The list index `list` header: refresh flag and the `(name_id, name)` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListHeader<'a> {
    pub refresh_flag: u8,
    pub names: Vec<(u32, &'a [u8])>,
    /// True when the table ended without its terminator or a name lacked its NUL.
    pub corrupted: bool,
}

impl<'a> ListHeader<'a> {
    pub fn decode(h: &'a [u8]) -> Self {
        let mut out = ListHeader {
            refresh_flag: h.first().copied().unwrap_or(0),
            ..Default::default()
        };
        let mut i = 1usize;
        while i < h.len() {
            let Some(id) = u32_at(h, i) else {
                out.corrupted = true;
                break;
            };
            i += 4;
            if id == 0 {
                break;
            }
            let Some(len) = h[i.min(h.len())..].iter().position(|&c| c == 0) else {
                out.corrupted = true;
                break;
            };
            out.names.push((id, &h[i..i + len]));
            i += len + 1;
        }
        out
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Decodes an extension header into JSON for the dump, by extension name.
/// Unknown extensions give `None` (the dump always carries the raw hex).
pub fn header_json(name: &str, h: &[u8]) -> Option<Value> {
    Some(match name {
        MODSEQ => serde_json::to_value(ModseqHeader::decode(h)).ok()?,
        HDR_VSIZE => serde_json::to_value(VsizeHeader::decode(h)).ok()?,
        MAILDIR => serde_json::to_value(MaildirHeader::decode(h)).ok()?,
        DBOX_HDR => {
            let d = DboxHeader::decode(h);
            json!({"rebuild_count": d.first, "mailbox_guid": guid_hex(&d.mailbox_guid), "flags": d.flags})
        }
        MDBOX_HDR => {
            let d = DboxHeader::decode(h);
            json!({"map_uid_validity": d.first, "mailbox_guid": guid_hex(&d.mailbox_guid), "flags": d.flags})
        }
        MAP => serde_json::to_value(MapHeader::decode(h)).ok()?,
        HDR_POP3_UIDL => json!({"max_uid_with_pop3_uidl": u32_at(&padded::<4>(h), 0)}),
        LAST_RENAME_STAMP => json!({"stamp": u32_at(&padded::<4>(h), 0)}),
        SUBS => json!({"counter": u32_at(&padded::<4>(h), 0)}),
        FTS => {
            let b: [u8; 12] = padded(h);
            json!({"last_indexed_uid": u32_at(&b, 0), "settings_checksum": u32_at(&b, 4)})
        }
        MBOX => {
            let b: [u8; 32] = padded(h);
            json!({"sync_size": u64_at(&b, 0), "sync_mtime": u32_at(&b, 8), "dirty_flag": b[12],
                   "mailbox_guid": guid_hex(&guid_at(&b, 16).unwrap_or_default())})
        }
        LIST => {
            let l = ListHeader::decode(h);
            let names: Vec<Value> = l
                .names
                .iter()
                .map(|(id, n)| json!({"id": id, "name": lossy(n)}))
                .collect();
            json!({"refresh_flag": l.refresh_flag, "names": names, "corrupted": l.corrupted})
        }
        BOX_NAME => {
            let names: Vec<String> = h
                .split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(lossy)
                .collect();
            json!({"names": names})
        }
        _ => return None,
    })
}

/// Decodes an extension's per-record data into JSON, by extension name and
/// record size. Unknown extensions give `None`.
pub fn record_json(name: &str, r: &[u8]) -> Option<Value> {
    Some(match (name, r.len()) {
        (MODSEQ | HMODSEQ, 8) => json!(u64_at(r, 0)),
        (CACHE, 4) => json!(u32_at(r, 0)),
        (VSIZE, 4) => json!(u32_at(r, 0)),
        (VSIZE, 16) => serde_json::to_value(VsizeHeader::decode(r)).ok()?,
        (REF, 2) => json!(crate::le::u16_at(r, 0)),
        (MDBOX, 8) => serde_json::to_value(MdboxRecord::decode(r)).ok()?,
        (MAP, 12) => serde_json::to_value(MapRecord::decode(r)).ok()?,
        (GUID, 16) => json!(hex(r)),
        (LIST, 28) => {
            let l = ListRecord::decode(r);
            json!({"name_id": l.name_id, "parent_uid": l.parent_uid,
                   "guid": guid_hex(&l.mailbox_guid), "uid_validity": l.uid_validity})
        }
        (MSGS, 16) => serde_json::to_value(ListMsgsRecord::decode(r)).ok()?,
        (INDEX_SYNC, 8) => json!({"size": u32_at(r, 0), "mtime": u32_at(r, 4)}),
        (MAILDIR, 8) => json!({"new_mtime": u32_at(r, 0), "cur_mtime": u32_at(r, 4)}),
        (MBOX, 8) => json!(u64_at(r, 0)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_header_round_trips() {
        let names = vec!["$Important".to_string(), "project-x".to_string()];
        let mut h = build_keywords_header(&names);
        h.resize(152, 0);
        assert_eq!(
            parse_keywords_header(&h).unwrap(),
            vec!["$Important", "project-x"]
        );
    }

    #[test]
    fn keywords_header_rejects_bad_counts() {
        let h = [0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0];
        assert!(parse_keywords_header(&h).is_err());
    }
}
