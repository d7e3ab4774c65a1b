//! Maildir: message file names, `dovecot-uidlist` (v1 and v3),
//! `dovecot-keywords` and `dovecot-uidvalidity`.
//!
//! All parsers borrow the input text. The uidlist is appended to by Dovecot
//! without rewriting its header, so a last line without its LF may be a
//! line still being written: it is left out and reported as a partial tail.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, FileKind, FormatRule, Result};
use crate::mmap::MappedFile;

/// IMAP system flags in the index's bit layout (spec 1.4).
pub const FLAG_ANSWERED: u8 = 0x01;
pub const FLAG_FLAGGED: u8 = 0x02;
pub const FLAG_DELETED: u8 = 0x04;
pub const FLAG_SEEN: u8 = 0x08;
pub const FLAG_DRAFT: u8 = 0x10;

/// Keyword letters `a`..`z`: at most 26 keywords per Maildir.
pub const MAX_KEYWORDS: usize = 26;

fn bad_line(kind: FileKind, offset: usize, line: u64, detail: impl Into<String>) -> Error {
    Error::format(
        kind,
        offset as u64,
        FormatRule::BadLine {
            line,
            detail: detail.into(),
        },
    )
}

// ---------------------------------------------------------------------------
// File names

/// The flags part of a file name after `:2,`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct MaildirFlags {
    /// IMAP system flags ([`FLAG_SEEN`], ...).
    pub system: u8,
    /// Bit `n` set = keyword letter `'a' + n`.
    pub keywords: u32,
    /// Letters Dovecot does not interpret, kept so a rename preserves them.
    pub unknown: String,
}

impl MaildirFlags {
    /// Keyword indexes (into `dovecot-keywords`) in ascending order.
    pub fn keyword_indexes(&self) -> impl Iterator<Item = u8> + '_ {
        (0..MAX_KEYWORDS as u8).filter(|i| self.keywords & (1 << i) != 0)
    }

    /// The flag letters in ASCII order, as Dovecot writes them.
    pub fn letters(&self) -> String {
        let mut v: Vec<char> = Vec::new();
        for (bit, c) in [
            (FLAG_DRAFT, 'D'),
            (FLAG_FLAGGED, 'F'),
            (FLAG_ANSWERED, 'R'),
            (FLAG_SEEN, 'S'),
            (FLAG_DELETED, 'T'),
        ] {
            if self.system & bit != 0 {
                v.push(c);
            }
        }
        v.extend(self.keyword_indexes().map(|i| (b'a' + i) as char));
        v.extend(self.unknown.chars());
        v.sort_unstable();
        v.dedup();
        v.into_iter().collect()
    }
}

/// A parsed Maildir message file name:
/// `<base>[,S=<psize>][,W=<vsize>][,...][:2,<flags>[,<more>]]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MaildirFilename<'a> {
    /// The whole name.
    pub name: &'a str,
    /// The unique part, up to the first `,` or `:`.
    pub base: &'a str,
    /// Everything before `:` (base plus `,S=`/`,W=` fields): what the
    /// uidlist stores and what the message GUID is derived from.
    pub uidlist_name: &'a str,
    /// `,S=` physical size.
    pub physical_size: Option<u64>,
    /// `,W=` virtual size (CRLF line endings).
    pub virtual_size: Option<u64>,
    /// Other `,`-separated fields before `:`, verbatim.
    pub extra_fields: Vec<&'a str>,
    /// The text after `:`, if any.
    pub info: Option<&'a str>,
    /// Flags when the info is `2,...`.
    pub flags: Option<MaildirFlags>,
    /// Text after a second `,` inside the info, kept verbatim.
    pub info_extra: Option<&'a str>,
}

/// Parses a message file name (the last path component).
pub fn parse_filename(name: &str) -> Result<MaildirFilename<'_>> {
    let kind = FileKind::MaildirFilename;
    if name.is_empty() {
        return Err(Error::invalid(kind, 0, "file name", "empty"));
    }
    if let Some(p) = name.find('/') {
        return Err(Error::invalid(kind, p as u64, "file name", "contains '/'"));
    }
    let (uidlist_name, info) = match name.find(':') {
        Some(p) => (&name[..p], Some(&name[p + 1..])),
        None => (name, None),
    };
    let base_end = uidlist_name.find(',').unwrap_or(uidlist_name.len());
    let base = &uidlist_name[..base_end];
    if base.is_empty() {
        return Err(Error::invalid(kind, 0, "file name", "empty base name"));
    }
    let mut physical_size = None;
    let mut virtual_size = None;
    let mut extra_fields = Vec::new();
    if base_end < uidlist_name.len() {
        for field in uidlist_name[base_end + 1..].split(',') {
            let num = |v: &str| {
                if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                    v.parse::<u64>().ok()
                } else {
                    None
                }
            };
            match (field.strip_prefix("S="), field.strip_prefix("W=")) {
                (Some(v), _) if physical_size.is_none() && num(v).is_some() => {
                    physical_size = num(v)
                }
                (_, Some(v)) if virtual_size.is_none() && num(v).is_some() => virtual_size = num(v),
                _ => extra_fields.push(field),
            }
        }
    }
    let mut flags = None;
    let mut info_extra = None;
    if let Some(letters) = info.and_then(|i| i.strip_prefix("2,")) {
        let (letters, extra) = match letters.find(',') {
            Some(p) => (&letters[..p], Some(&letters[p + 1..])),
            None => (letters, None),
        };
        info_extra = extra;
        let mut f = MaildirFlags::default();
        for c in letters.chars() {
            match c {
                'D' => f.system |= FLAG_DRAFT,
                'F' => f.system |= FLAG_FLAGGED,
                'R' => f.system |= FLAG_ANSWERED,
                'S' => f.system |= FLAG_SEEN,
                'T' => f.system |= FLAG_DELETED,
                'a'..='z' => f.keywords |= 1 << (c as u32 - 'a' as u32),
                other => {
                    if !f.unknown.contains(other) {
                        f.unknown.push(other)
                    }
                }
            }
        }
        flags = Some(f);
    }
    Ok(MaildirFilename {
        name,
        base,
        uidlist_name,
        physical_size,
        virtual_size,
        extra_fields,
        info,
        flags,
        info_extra,
    })
}

/// Builds a file name the way Dovecot writes one:
/// `<base>[,S=<psize>][,W=<vsize>]:2,<letters in ASCII order>`.
pub fn build_filename(
    base: &str,
    physical_size: Option<u64>,
    virtual_size: Option<u64>,
    flags: &MaildirFlags,
) -> String {
    let mut s = String::from(base);
    if let Some(p) = physical_size {
        s.push_str(&format!(",S={p}"));
    }
    if let Some(v) = virtual_size {
        s.push_str(&format!(",W={v}"));
    }
    s.push_str(":2,");
    s.push_str(&flags.letters());
    s
}

impl MaildirFilename<'_> {
    /// The same message with other flags: keeps everything before `:` and
    /// any text after a second `,` of the info.
    pub fn with_flags(&self, flags: &MaildirFlags) -> String {
        let mut s = format!("{}:2,{}", self.uidlist_name, flags.letters());
        if let Some(extra) = self.info_extra {
            s.push(',');
            s.push_str(extra);
        }
        s
    }

    /// The 128-bit message GUID Dovecot derives from the name when the
    /// uidlist has no `G` extension (spec 1.3).
    pub fn guid_128(&self) -> [u8; 16] {
        guid_128_from_string(self.uidlist_name)
    }
}

/// 128-bit form of a message GUID string: 32 hex digits are decoded as-is,
/// anything else is hashed (last 16 bytes of SHA-1).
pub fn guid_128_from_string(s: &str) -> [u8; 16] {
    if let Some(g) = parse_guid_hex(s) {
        return g;
    }
    let d = sha1(s.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[4..20]);
    out
}

/// Decodes 32 hex digits into 16 bytes.
pub fn parse_guid_hex(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let h = (b[2 * i] as char).to_digit(16)?;
        let l = (b[2 * i + 1] as char).to_digit(16)?;
        *o = (h * 16 + l) as u8;
    }
    Some(out)
}

/// SHA-1 (FIPS 180-4), only for deriving GUIDs from Maildir names.
pub(crate) fn sha1(msg: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let bit_len = (msg.len() as u64).wrapping_mul(8);
    let mut data = msg.to_vec();
    data.push(0x80);
    while data.len() % 64 != 56 {
        data.push(0);
    }
    data.extend_from_slice(&bit_len.to_be_bytes());
    for chunk in data.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in chunk.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6u32),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

// ---------------------------------------------------------------------------
// dovecot-uidlist

/// A parsed `dovecot-uidlist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uidlist<'a> {
    /// 1 (Courier-compatible) or 3.
    pub version: u8,
    pub uid_validity: u32,
    /// `N` from the header; see [`Uidlist::next_uid`] for the effective value.
    pub header_next_uid: u32,
    /// `G` mailbox GUID (v3).
    pub mailbox_guid: Option<[u8; 16]>,
    /// Every header extension in file order (`V`, `N`, `G`, `P`, unknown), verbatim.
    pub header_extensions: Vec<(char, &'a str)>,
    pub records: Vec<UidlistRecord<'a>>,
    /// A last line without LF (possibly being appended) was left out.
    pub partial_tail: bool,
}

/// One `<uid> [<key><value> ...] :<filename>` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidlistRecord<'a> {
    pub uid: u32,
    /// The extension fields, space separated, verbatim (empty for v1).
    extensions: &'a str,
    /// The base file name (everything before `:` of the real name).
    pub filename: &'a str,
}

impl<'a> UidlistRecord<'a> {
    /// Extension fields as `(key, value)`.
    pub fn extensions(&self) -> impl Iterator<Item = (char, &'a str)> + 'a {
        self.extensions
            .split(' ')
            .filter(|t| !t.is_empty())
            .filter_map(|t| {
                let mut cs = t.chars();
                let k = cs.next()?;
                Some((k, cs.as_str()))
            })
    }

    /// Value of extension `key` (`S`, `W`, `G`, `P`, `O`, ...).
    pub fn extension(&self, key: char) -> Option<&'a str> {
        self.extensions().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Message GUID string: the `G` extension, else the file name (spec 6.2).
    pub fn guid(&self) -> &'a str {
        self.extension('G').unwrap_or(self.filename)
    }

    /// Physical size from the `S` extension or the `,S=` field of the name.
    pub fn physical_size(&self) -> Option<u64> {
        self.extension('S')
            .and_then(|v| v.parse().ok())
            .or_else(|| parse_filename(self.filename).ok()?.physical_size)
    }

    /// Virtual size from the `W` extension or the `,W=` field of the name.
    pub fn virtual_size(&self) -> Option<u64> {
        self.extension('W')
            .and_then(|v| v.parse().ok())
            .or_else(|| parse_filename(self.filename).ok()?.virtual_size)
    }
}

fn parse_u32_dec(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Where a uidlist's records are being read: the next line's byte offset
/// and number, and the last record's UID (they must increase).
struct Position {
    offset: usize,
    line_no: u64,
    last_uid: u32,
}

/// A uidlist header's values, owned (from [`Uidlist::read_visit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidlistHead {
    pub version: u8,
    pub uid_validity: u32,
    /// `N` from the header.
    pub header_next_uid: u32,
    pub mailbox_guid: Option<[u8; 16]>,
    /// A last line without LF (possibly being appended) was left out.
    pub partial_tail: bool,
}

impl UidlistHead {
    /// The header values of a parsed uidlist.
    pub fn of(list: &Uidlist<'_>) -> UidlistHead {
        UidlistHead {
            version: list.version,
            uid_validity: list.uid_validity,
            header_next_uid: list.header_next_uid,
            mailbox_guid: list.mailbox_guid,
            partial_tail: list.partial_tail,
        }
    }
}

impl<'a> Uidlist<'a> {
    /// Parses the file content.
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let (mut list, header_len, complete) = Self::parse_header_line(data)?;
        list.parse_records(complete, header_len)?;
        Ok(list)
    }

    /// Parses the file content, handing each record to `visit` in file
    /// order instead of keeping them (`records` stays empty): a reader that
    /// keeps a few records of a large uidlist holds no table of all. The
    /// same checks as [`Uidlist::parse`]; returns the header and the last
    /// record's UID (0: none), for the effective next UID.
    pub fn parse_visit(
        data: &'a [u8],
        visit: impl FnMut(UidlistRecord<'a>),
    ) -> Result<(Self, u32)> {
        let (list, header_len, complete) = Self::parse_header_line(data)?;
        let last = Self::each_record(list.version, complete, header_len, visit)?;
        Ok((list, last))
    }

    /// Parses the header line alone (`records` stays empty): enough for
    /// the mailbox GUID, UIDVALIDITY and the header's next UID, without
    /// reading every record of a large mailbox. `data` may be just the
    /// file's start, as long as it holds the whole first line.
    pub fn parse_header(data: &'a [u8]) -> Result<Self> {
        let end = data.iter().position(|&b| b == b'\n').map_or(0, |p| p + 1);
        Ok(Self::parse_header_line(&data[..end])?.0)
    }

    /// The header, the header line's length and the complete lines.
    fn parse_header_line(data: &'a [u8]) -> Result<(Self, usize, &'a str)> {
        let kind = FileKind::Uidlist;
        let text = std::str::from_utf8(data)
            .map_err(|e| Error::invalid(kind, e.valid_up_to() as u64, "uidlist", "not UTF-8"))?;
        let (complete, partial_tail) = match text.rfind('\n') {
            Some(p) => (&text[..p + 1], p + 1 < text.len()),
            None => ("", !text.is_empty()),
        };
        let mut lines = complete.split_inclusive('\n');
        let Some(header) = lines.next() else {
            return Err(Error::truncated(
                kind,
                0,
                "uidlist header line",
                1,
                data.len() as u64,
            ));
        };
        let header = header.trim_end_matches('\n');
        let mut tokens = header.split(' ');
        let version = match tokens.next() {
            Some("1") => 1,
            Some("3") => 3,
            Some(v) => {
                return Err(Error::format(
                    kind,
                    0,
                    FormatRule::BadVersion {
                        what: "uidlist version",
                        found: v.into(),
                    },
                ))
            }
            None => 0,
        };
        let mut list = Uidlist {
            version,
            uid_validity: 0,
            header_next_uid: 0,
            mailbox_guid: None,
            header_extensions: Vec::new(),
            records: Vec::new(),
            partial_tail,
        };
        if version == 1 {
            let (Some(v), Some(n), None) = (tokens.next(), tokens.next(), tokens.next()) else {
                return Err(bad_line(
                    kind,
                    0,
                    1,
                    "v1 header is `1 <uidvalidity> <next uid>`",
                ));
            };
            list.uid_validity =
                parse_u32_dec(v).ok_or_else(|| bad_line(kind, 0, 1, "bad uidvalidity"))?;
            list.header_next_uid =
                parse_u32_dec(n).ok_or_else(|| bad_line(kind, 0, 1, "bad next uid"))?;
        } else {
            for t in tokens.filter(|t| !t.is_empty()) {
                let mut cs = t.chars();
                let Some(key) = cs.next() else { continue };
                let value = cs.as_str();
                match key {
                    'V' => {
                        list.uid_validity = parse_u32_dec(value)
                            .ok_or_else(|| bad_line(kind, 0, 1, "bad V (uidvalidity)"))?
                    }
                    'N' => {
                        list.header_next_uid = parse_u32_dec(value)
                            .ok_or_else(|| bad_line(kind, 0, 1, "bad N (next uid)"))?
                    }
                    'G' => {
                        list.mailbox_guid = Some(
                            parse_guid_hex(value)
                                .ok_or_else(|| bad_line(kind, 0, 1, "bad G (mailbox GUID)"))?,
                        )
                    }
                    _ => {}
                }
                list.header_extensions.push((key, value));
            }
        }
        if list.uid_validity == 0 || list.header_next_uid == 0 {
            return Err(bad_line(
                kind,
                0,
                1,
                "uidvalidity and next uid must be non-zero",
            ));
        }
        Ok((list, header.len() + 1, complete))
    }

    /// Appends the records of `complete` (the whole lines) after the
    /// header line of `header_len` bytes.
    fn parse_records(&mut self, complete: &'a str, header_len: usize) -> Result<()> {
        // One record per line: room for all at once (growth by doubling
        // would leave up to half of a large uidlist's table unused).
        let body = complete.get(header_len..).unwrap_or("").as_bytes();
        self.records
            .reserve_exact(body.iter().filter(|&&b| b == b'\n').count());
        let records = &mut self.records;
        Self::each_record(self.version, complete, header_len, |r| records.push(r))?;
        Ok(())
    }

    /// Checks and hands over each record of `complete` after the header
    /// line of `header_len` bytes; returns the last record's UID.
    fn each_record(
        version: u8,
        complete: &'a str,
        header_len: usize,
        visit: impl FnMut(UidlistRecord<'a>),
    ) -> Result<u32> {
        let body = complete.get(header_len..).unwrap_or("");
        let mut at = Position {
            offset: header_len,
            line_no: 2,
            last_uid: 0,
        };
        Self::each_line(version, body, &mut at, visit)?;
        Ok(at.last_uid)
    }

    /// Checks and hands over each record of `lines` (whole lines, each
    /// ending in LF), which start at `at` in the file; `at` moves past them.
    fn each_line<'l>(
        version: u8,
        lines: &'l str,
        at: &mut Position,
        mut visit: impl FnMut(UidlistRecord<'l>),
    ) -> Result<()> {
        let kind = FileKind::Uidlist;
        for raw in lines.split_inclusive('\n') {
            let line_no = at.line_no;
            at.line_no += 1;
            let mut offset = at.offset;
            let mut last_uid = at.last_uid;
            let line = raw.trim_end_matches('\n');
            let line_off = offset;
            offset += raw.len();
            at.offset = offset;
            if line.is_empty() {
                continue;
            }
            let rec = parse_uidlist_line(line, version)
                .map_err(|d| bad_line(kind, line_off, line_no, d))?;
            if rec.uid <= last_uid {
                return Err(bad_line(
                    kind,
                    line_off,
                    line_no,
                    format!("uid {} does not follow {last_uid}", rec.uid),
                ));
            }
            last_uid = rec.uid;
            at.last_uid = last_uid;
            visit(rec);
        }
        Ok(())
    }

    /// [`Uidlist::parse_visit`] over a reader, a piece at a time: the file
    /// is never held whole (a large mailbox's uidlist is megabytes), only
    /// its longest line and a read buffer. The same checks, offsets and
    /// line numbers in errors; returns the header's values and the last
    /// record's UID (0: none).
    pub fn read_visit(
        mut input: impl std::io::Read,
        mut visit: impl FnMut(UidlistRecord<'_>),
    ) -> Result<(UidlistHead, u32)> {
        const PIECE: usize = 64 * 1024;
        let not_utf8 = |offset: usize, e: std::str::Utf8Error| {
            let at = (offset + e.valid_up_to()) as u64;
            Error::invalid(FileKind::Uidlist, at, "uidlist", "not UTF-8")
        };
        let mut buf: Vec<u8> = Vec::with_capacity(PIECE);
        let mut head: Option<UidlistHead> = None;
        let mut at = Position {
            offset: 0,
            line_no: 2,
            last_uid: 0,
        };
        // Bytes of `buf` already handed over (whole lines).
        let mut eof = false;
        while !eof {
            let len = buf.len();
            buf.resize(len + PIECE, 0);
            let n = loop {
                match input.read(&mut buf[len..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::io(std::path::PathBuf::new(), e)),
                }
            };
            buf.truncate(len + n);
            eof = n == 0;
            let Some(end) = buf.iter().rposition(|&b| b == b'\n').map(|p| p + 1) else {
                continue;
            };
            let text = std::str::from_utf8(&buf[..end]).map_err(|e| not_utf8(at.offset, e))?;
            let mut start = 0;
            if head.is_none() {
                let first = text.find('\n').map_or(text.len(), |p| p + 1);
                let (list, header_len, _) = Uidlist::parse_header_line(&buf[..first])?;
                head = Some(UidlistHead::of(&list));
                start = header_len;
                at.offset = header_len;
            }
            let version = head.as_ref().map_or(0, |h| h.version);
            Uidlist::each_line(version, &text[start..], &mut at, &mut visit)?;
            buf.drain(..end);
        }
        let mut head = match head {
            Some(h) => h,
            // No whole line at all: the header's own error.
            None => UidlistHead::of(&Uidlist::parse_header_line(&buf)?.0),
        };
        if !buf.is_empty() {
            // A last line without LF (possibly being appended): left out.
            std::str::from_utf8(&buf).map_err(|e| not_utf8(at.offset, e))?;
            head.partial_tail = true;
        }
        Ok((head, at.last_uid))
    }

    /// Effective next UID: max(header `N`, last uid + 1), since Dovecot
    /// appends lines without rewriting the header.
    pub fn next_uid(&self) -> u32 {
        let after_last = self.records.last().map_or(0, |r| r.uid.saturating_add(1));
        self.header_next_uid.max(after_last)
    }

    /// Record of `uid`, by binary search (UIDs strictly increase).
    pub fn by_uid(&self, uid: u32) -> Option<&UidlistRecord<'a>> {
        self.records
            .binary_search_by_key(&uid, |r| r.uid)
            .ok()
            .map(|i| &self.records[i])
    }

    /// Header extension `key` verbatim.
    pub fn header_extension(&self, key: char) -> Option<&'a str> {
        self.header_extensions
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

fn parse_uidlist_line(line: &str, version: u8) -> std::result::Result<UidlistRecord<'_>, String> {
    let (uid_str, rest) = line.split_once(' ').ok_or("expected `<uid> ...`")?;
    let uid = parse_u32_dec(uid_str)
        .filter(|&u| u != 0)
        .ok_or_else(|| format!("bad uid {uid_str:?}"))?;
    let (extensions, filename) = if version == 1 {
        ("", rest.trim_start_matches(' '))
    } else {
        // Extensions are `<key><value>` tokens; the file name follows the first token starting with ':'.
        let mut pos = 0;
        loop {
            let r = &rest[pos..];
            if let Some(name) = r.strip_prefix(':') {
                break (rest[..pos].trim_end_matches(' '), name);
            }
            if r.is_empty() {
                return Err("missing ` :<filename>`".into());
            }
            match r.find(' ') {
                Some(sp) => pos += sp + 1,
                None => return Err("missing ` :<filename>`".into()),
            }
        }
    };
    if filename.is_empty() {
        return Err("empty file name".into());
    }
    if filename.contains('/') {
        return Err("file name contains '/'".into());
    }
    Ok(UidlistRecord {
        uid,
        extensions,
        filename,
    })
}

// ---------------------------------------------------------------------------
// dovecot-keywords

/// A parsed `dovecot-keywords`: keyword letter index → name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Keywords<'a> {
    /// `(index, name)` in file order; index 0..25 ↔ letters `a`..`z`.
    pub entries: Vec<(u8, &'a str)>,
    /// Lines Dovecot would skip (no space, bad or out-of-range index, empty name).
    pub skipped_lines: Vec<u64>,
}

impl<'a> Keywords<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let kind = FileKind::Keywords;
        let text = std::str::from_utf8(data)
            .map_err(|e| Error::invalid(kind, e.valid_up_to() as u64, "keywords", "not UTF-8"))?;
        let mut kw = Keywords::default();
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let entry = line.split_once(' ').and_then(|(idx, name)| {
                let idx = parse_u32_dec(idx)?;
                (idx < MAX_KEYWORDS as u32 && !name.is_empty()).then_some((idx as u8, name))
            });
            match entry {
                // A later line for the same index replaces the earlier one.
                Some((idx, name)) => {
                    kw.entries.retain(|(i, _)| *i != idx);
                    kw.entries.push((idx, name));
                }
                None => kw.skipped_lines.push(i as u64 + 1),
            }
        }
        Ok(kw)
    }

    /// Keyword name of a letter index.
    pub fn name(&self, index: u8) -> Option<&'a str> {
        self.entries
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, n)| *n)
    }

    /// Letter index of a keyword (names compare case-insensitively).
    pub fn index_of(&self, name: &str) -> Option<u8> {
        self.entries
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(i, _)| *i)
    }

    /// Keyword names for the letters set in `flags`.
    pub fn names_of(&self, flags: &MaildirFlags) -> Vec<Option<&'a str>> {
        flags.keyword_indexes().map(|i| self.name(i)).collect()
    }
}

// ---------------------------------------------------------------------------
// dovecot-uidvalidity

/// Parses `dovecot-uidvalidity` content: 8 hex digits (trailing whitespace tolerated).
pub fn parse_uidvalidity(data: &[u8]) -> Result<u32> {
    let kind = FileKind::Uidvalidity;
    let text = std::str::from_utf8(data)
        .map_err(|_| Error::invalid(kind, 0, "uidvalidity", "not UTF-8"))?
        .trim_end();
    if text.is_empty() || text.len() > 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid(
            kind,
            0,
            "uidvalidity",
            format!("{text:?} is not up to 8 hex digits"),
        ));
    }
    u32::from_str_radix(text, 16).map_err(|e| Error::invalid(kind, 0, "uidvalidity", e.to_string()))
}

/// Value carried by a `dovecot-uidvalidity.<8 hex>` marker file name.
pub fn parse_uidvalidity_marker(name: &str) -> Option<u32> {
    let hex = name.strip_prefix("dovecot-uidvalidity.")?;
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

// ---------------------------------------------------------------------------
// dump

fn guid_hex(g: &[u8; 16]) -> String {
    crate::cache::hex(g)
}

pub fn uidlist_json(u: &Uidlist<'_>) -> Value {
    json!({
        "version": u.version,
        "uid_validity": u.uid_validity,
        "header_next_uid": u.header_next_uid,
        "next_uid": u.next_uid(),
        "mailbox_guid": u.mailbox_guid.as_ref().map(guid_hex),
        "header_extensions": u.header_extensions.iter().map(|(k, v)| json!([k.to_string(), v])).collect::<Vec<_>>(),
        "records": u.records.iter().map(|r| json!({
            "uid": r.uid,
            "filename": r.filename,
            "extensions": r.extensions().map(|(k, v)| json!([k.to_string(), v])).collect::<Vec<_>>(),
            "guid": r.guid(),
        })).collect::<Vec<_>>(),
        "partial_tail": u.partial_tail,
    })
}

pub fn filename_json(f: &MaildirFilename<'_>) -> Value {
    json!({
        "name": f.name,
        "base": f.base,
        "uidlist_name": f.uidlist_name,
        "physical_size": f.physical_size,
        "virtual_size": f.virtual_size,
        "extra_fields": f.extra_fields,
        "info": f.info,
        "flags": f.flags.as_ref().map(|fl| json!({
            "letters": fl.letters(),
            "system": fl.system,
            "keywords": fl.keyword_indexes().collect::<Vec<_>>(),
            "unknown": fl.unknown,
        })),
        "info_extra": f.info_extra,
        "guid_128": guid_hex(&f.guid_128()),
    })
}

/// Parses a Maildir file (`dovecot-uidlist`, `dovecot-keywords`, `dovecot-uidvalidity`,
/// or a message file's name) for `homing dump`.
pub fn dump(path: &Path, kind: FileKind) -> Result<Value> {
    match kind {
        FileKind::MaildirFilename => {
            let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                Error::invalid(kind, 0, "file name", "missing or not UTF-8").with_path(path)
            })?;
            let parsed = parse_filename(name).map_err(|e| e.with_path(path))?;
            let mut v = filename_json(&parsed);
            if let Ok(meta) = std::fs::metadata(path) {
                v["file_size"] = json!(meta.len());
            }
            Ok(v)
        }
        FileKind::Uidlist => {
            let map = MappedFile::open(path)?;
            let u = Uidlist::parse(&map).map_err(|e| e.with_path(path))?;
            Ok(uidlist_json(&u))
        }
        FileKind::Keywords => {
            let map = MappedFile::open(path)?;
            let k = Keywords::parse(&map).map_err(|e| e.with_path(path))?;
            Ok(json!({
                "keywords": k.entries.iter().map(|(i, n)| json!({"index": i, "letter": ((b'a' + i) as char).to_string(), "name": n})).collect::<Vec<_>>(),
                "skipped_lines": k.skipped_lines,
            }))
        }
        FileKind::Uidvalidity => {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(v) = parse_uidvalidity_marker(name) {
                return Ok(json!({ "marker": true, "uid_validity": v }));
            }
            let map = MappedFile::open(path)?;
            let v = parse_uidvalidity(&map).map_err(|e| e.with_path(path))?;
            Ok(json!({ "marker": false, "uid_validity": v }))
        }
        other => Err(Error::Unsupported {
            path: Some(path.to_path_buf()),
            what: format!("{other} is not a Maildir file"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_known_vectors() {
        assert_eq!(
            crate::cache::hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            crate::cache::hex(&sha1(b"")),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        let long = vec![b'a'; 1000];
        assert_eq!(
            crate::cache::hex(&sha1(&long)),
            "291e9a6c66994949b57ba5e650361e98fc36b1ba"
        );
    }

    #[test]
    fn guid_hash_of_maildir_name_matches_spec() {
        // Spec 1.3: verified against the expunge-guid request in the fixture log.
        let g = guid_128_from_string("1795887399.M175599P17102.vm,S=157,W=164");
        assert_eq!(crate::cache::hex(&g), "d6b3c9e3ed26df8aeb484918ae02c55b");
    }
}
