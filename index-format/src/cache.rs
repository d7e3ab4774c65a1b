//! `dovecot.index.cache` (format 1.1): header, field registry and record chains.
//!
//! The cache is parsed in place from a byte slice (usually a [`MappedFile`]).
//! Messages reach their cache data through the offset stored in the index's
//! `cache` extension: [`Cache::record_chain`] walks the chain that starts there,
//! newest record first, and [`Cache::lookup`] answers one field by name the way
//! Dovecot does (first occurrence wins, bitmask fields are OR-ed over the chain).
//!
//! Dovecot appends records at the end of the file and patches the field header
//! chain only after the new field header is complete, so a map taken while the
//! file grows shows a consistent prefix: a field header that lies past the end
//! of the map is treated as not yet written, and a record that does not fit is
//! reported as truncated instead of being read.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, FileKind, FormatRule, Result};
use crate::mmap::MappedFile;

const KIND: FileKind = FileKind::Cache;
/// Size of the file header.
pub const HEADER_SIZE: usize = 32;
/// Size of a record header (`prev_offset`, `size`).
pub const RECORD_HEADER_SIZE: usize = 8;
/// Field size value that marks a variable-size field.
pub const VARIABLE_SIZE: u32 = u32::MAX;
/// Bound on followed field-header continuations; Dovecot purges long before.
const MAX_FIELD_HEADERS: usize = 1024;
/// Deepest MIME part nesting decoded; Dovecot's parser stops at 100 levels.
const MAX_MIME_DEPTH: usize = 128;

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    let b = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(data: &[u8], off: usize) -> Option<u64> {
    let b = data.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// Decodes the 7-bit-per-byte "packed offset" encoding (spec 1.2).
/// Returns 0 when the marker bits are missing (not yet written).
pub fn unpack_offset(raw: u32) -> u32 {
    let b = raw.to_le_bytes();
    let be = u32::from_be_bytes(b);
    if be & 0x8080_8080 != 0x8080_8080 {
        return 0;
    }
    let n = (be & 0x7f)
        | ((be >> 8 & 0x7f) << 7)
        | ((be >> 16 & 0x7f) << 14)
        | ((be >> 24 & 0x7f) << 21);
    n << 2
}

/// Encodes an offset (multiple of 4, below 2^30) in the packed form, as a raw
/// little-endian u32 as it is stored in the file.
pub fn pack_offset(offset: u32) -> u32 {
    let n = offset >> 2;
    let be = 0x8080_8080
        | (n & 0x7f)
        | ((n >> 7 & 0x7f) << 8)
        | ((n >> 14 & 0x7f) << 16)
        | ((n >> 21 & 0x7f) << 24);
    u32::from_le_bytes(be.to_be_bytes())
}

/// The 32-byte file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CacheHeader {
    pub major_version: u8,
    pub compat_sizeof_uoff_t: u8,
    pub minor_version: u8,
    pub indexid: u32,
    /// Generation; must equal the index `cache` extension's reset_id.
    pub file_seq: u32,
    pub continued_record_count: u32,
    pub record_count: u32,
    pub backwards_compat_used_file_size: u32,
    pub deleted_record_count: u32,
    /// Raw (packed) value as stored.
    pub field_header_offset_raw: u32,
    /// Decoded offset of the first field header (0 = none).
    pub field_header_offset: u32,
}

/// How a field's data is stored and merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldType {
    FixedSize,
    VariableSize,
    String,
    Bitmask,
    Header,
}

impl FieldType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => FieldType::FixedSize,
            1 => FieldType::VariableSize,
            2 => FieldType::String,
            3 => FieldType::Bitmask,
            4 => FieldType::Header,
            _ => return None,
        })
    }

    /// The short name `doveadm dump` prints.
    pub fn short_name(self) -> &'static str {
        match self {
            FieldType::FixedSize => "fix",
            FieldType::VariableSize => "var",
            FieldType::String => "str",
            FieldType::Bitmask => "bit",
            FieldType::Header => "hdr",
        }
    }
}

/// Caching decision of a field (the on-disk byte without the forced bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    No,
    Temp,
    Yes,
    /// A value Dovecot does not define.
    Other(u8),
}

impl Decision {
    fn from_u8(v: u8) -> Self {
        match v & 0x7f {
            0 => Decision::No,
            1 => Decision::Temp,
            2 => Decision::Yes,
            o => Decision::Other(o),
        }
    }

    /// The short name `doveadm dump` prints (`no`, `tmp`, `yes`).
    pub fn short_name(self) -> String {
        match self {
            Decision::No => "no".into(),
            Decision::Temp => "tmp".into(),
            Decision::Yes => "yes".into(),
            Decision::Other(o) => format!("0x{o:x}"),
        }
    }
}

/// One entry of the field registry (from the last field header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheField<'a> {
    /// Name as stored (case is whatever the first requester used).
    pub name: &'a str,
    pub field_type: FieldType,
    /// Fixed size in bytes, or [`VARIABLE_SIZE`].
    pub size: u32,
    pub decision: Decision,
    /// `mail_always_cache_fields` / `mail_never_cache_fields` bit (0x80).
    pub forced: bool,
    /// UNIX time the field was last read by a client.
    pub last_used: u32,
}

impl CacheField<'_> {
    /// True when records store a `u32` size in front of this field's data.
    pub fn is_variable(&self) -> bool {
        self.size == VARIABLE_SIZE
    }
}

/// A parsed cache file borrowing its bytes.
#[derive(Debug, Clone)]
pub struct Cache<'a> {
    data: &'a [u8],
    header: CacheHeader,
    fields: Vec<CacheField<'a>>,
    /// `(offset, size)` of every field header in the chain, oldest first.
    field_headers: Vec<(u32, u32)>,
}

/// One record: a piece of one message's cache data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheRecord<'a> {
    pub offset: u32,
    pub prev_offset: u32,
    pub size: u32,
    /// The field area (after the 8-byte record header).
    body: &'a [u8],
}

/// One field occurrence inside a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldData<'a> {
    /// Position of the field in the registry ("file field index").
    pub field_index: u32,
    /// Offset of the record holding it.
    pub record_offset: u32,
    /// Offset of the data within the file.
    pub data_offset: u32,
    pub data: &'a [u8],
}

/// A decoded field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheValue<'a> {
    /// A 4-byte fixed field (`date.received`, `date.save`, `pop3.order`, ...).
    U32(u32),
    /// An 8-byte fixed field (`size.virtual`, `size.physical`).
    U64(u64),
    /// `date.sent`: time and timezone offset in minutes.
    SentDate { time: u32, tz_offset_minutes: i32 },
    /// A bitmask field, OR-ed over the chain (`flags`).
    Bitmask(u32),
    /// A string field (`imap.bodystructure`, `imap.envelope`, `guid`, ...), no NUL.
    String(&'a [u8]),
    /// A header field; `None` lines means the message has no such header.
    Header(HeaderValue<'a>),
    /// Anything else (variable-size fields such as `mime.parts`), raw.
    Bytes(&'a [u8]),
}

/// Dovecot's standard cache fields of one message (see spec 5.4); `None`
/// when not cached. Strings and serialized structures are raw bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandardFields<'a> {
    /// `flags`: message properties (not IMAP flags), OR-ed over the chain.
    pub flags: Option<u32>,
    /// `date.sent`: time and timezone offset in minutes.
    pub date_sent: Option<(u32, i32)>,
    pub date_received: Option<u32>,
    pub date_save: Option<u32>,
    pub virtual_size: Option<u64>,
    pub physical_size: Option<u64>,
    pub imap_body: Option<&'a [u8]>,
    pub imap_bodystructure: Option<&'a [u8]>,
    pub imap_envelope: Option<&'a [u8]>,
    pub pop3_uidl: Option<&'a [u8]>,
    pub pop3_order: Option<u32>,
    pub guid: Option<&'a [u8]>,
    /// Serialized MIME structure; [`decode_mime_parts`] reads it.
    pub mime_parts: Option<&'a [u8]>,
    pub binary_parts: Option<&'a [u8]>,
    /// Version byte then UTF-8 text.
    pub body_snippet: Option<&'a [u8]>,
}

/// A cached `hdr.*` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderValue<'a> {
    /// 1-based line numbers of each occurrence in the header block.
    pub line_numbers: Vec<u32>,
    /// The header lines verbatim (`Name: value\n`, folded lines included).
    pub text: &'a [u8],
}

impl HeaderValue<'_> {
    /// A zero-length value is a cached "no such header".
    pub fn is_absent(&self) -> bool {
        self.line_numbers.is_empty() && self.text.is_empty()
    }
}

impl<'a> Cache<'a> {
    /// Parses the header and the field registry.
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        if data.len() < HEADER_SIZE {
            return Err(Error::truncated(
                KIND,
                0,
                "cache header",
                HEADER_SIZE as u64,
                data.len() as u64,
            ));
        }
        let u = |off| u32_at(data, off).unwrap_or(0);
        let header = CacheHeader {
            major_version: data[0],
            compat_sizeof_uoff_t: data[1],
            minor_version: data[2],
            indexid: u(4),
            file_seq: u(8),
            continued_record_count: u(12),
            record_count: u(16),
            backwards_compat_used_file_size: u(20),
            deleted_record_count: u(24),
            field_header_offset_raw: u(28),
            field_header_offset: unpack_offset(u(28)),
        };
        if header.major_version != 1 {
            return Err(Error::format(
                KIND,
                0,
                FormatRule::BadVersion {
                    what: "cache major version",
                    found: header.major_version.to_string(),
                },
            ));
        }
        if header.compat_sizeof_uoff_t != 8 {
            return Err(Error::format(
                KIND,
                1,
                FormatRule::BadVersion {
                    what: "cache sizeof(uoff_t)",
                    found: header.compat_sizeof_uoff_t.to_string(),
                },
            ));
        }
        if header.file_seq == 0 {
            return Err(Error::invalid(
                KIND,
                8,
                "file_seq",
                "0 marks an unusable cache file",
            ));
        }
        let mut cache = Cache {
            data,
            header,
            fields: Vec::new(),
            field_headers: Vec::new(),
        };
        cache.read_field_headers()?;
        Ok(cache)
    }

    fn read_field_headers(&mut self) -> Result<()> {
        let data = self.data;
        let mut offset = self.header.field_header_offset;
        if offset == 0 {
            return Ok(());
        }
        // Like Dovecot, only the last complete header of the chain is parsed:
        // it repeats every older field in the same order, so field numbers
        // stay valid, and older headers are merely stepped over.
        loop {
            let off = offset as usize;
            if off < HEADER_SIZE {
                return Err(Error::invalid(
                    KIND,
                    28,
                    "field_header_offset",
                    format!("{offset} points into the file header"),
                ));
            }
            let (Some(next_raw), Some(size)) = (u32_at(data, off), u32_at(data, off + 4)) else {
                // Not yet visible in this map: the newest complete header before it stands.
                if self.field_headers.is_empty() {
                    return Err(Error::truncated(
                        KIND,
                        off as u64,
                        "field header",
                        12,
                        data.len().saturating_sub(off) as u64,
                    ));
                }
                break;
            };
            let end = off as u64 + size as u64;
            if end > data.len() as u64 {
                if self.field_headers.is_empty() {
                    return Err(Error::truncated(
                        KIND,
                        off as u64,
                        "field header",
                        size as u64,
                        (data.len() - off) as u64,
                    ));
                }
                break;
            }
            self.field_headers.push((offset, size));
            let next = unpack_offset(next_raw);
            if next_raw == 0 || next == 0 {
                break;
            }
            if next <= offset {
                return Err(Error::invalid(
                    KIND,
                    off as u64,
                    "field header next_offset",
                    format!("{next} does not follow {offset}"),
                ));
            }
            if self.field_headers.len() >= MAX_FIELD_HEADERS {
                return Err(Error::invalid(
                    KIND,
                    off as u64,
                    "field header chain",
                    "too many continuations",
                ));
            }
            offset = next;
        }
        if let Some(&(off, size)) = self.field_headers.last() {
            let (off, size) = (off as usize, size as usize);
            self.fields = parse_field_header(&data[off..off + size], off)?;
        }
        Ok(())
    }

    pub fn header(&self) -> &CacheHeader {
        &self.header
    }

    /// The whole file as mapped.
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// Field registry of the last (authoritative) field header.
    pub fn fields(&self) -> &[CacheField<'a>] {
        &self.fields
    }

    /// `(offset, unpadded size)` of each field header in the chain, oldest first.
    pub fn field_header_offsets(&self) -> &[(u32, u32)] {
        &self.field_headers
    }

    /// Field number of `name` (case-insensitive), as records refer to it.
    pub fn field_index(&self, name: &str) -> Option<u32> {
        self.fields
            .iter()
            .position(|f| f.name.eq_ignore_ascii_case(name))
            .map(|i| i as u32)
    }

    pub fn field(&self, index: u32) -> Option<&CacheField<'a>> {
        self.fields.get(index as usize)
    }

    /// True when offsets from an index with this `indexid` and `cache`
    /// extension `reset_id` point into this file (spec pitfall 13).
    pub fn matches_index(&self, indexid: u32, cache_reset_id: u32) -> bool {
        self.header.indexid == indexid && self.header.file_seq == cache_reset_id
    }

    /// The record at `offset`, validated to lie wholly inside the file.
    pub fn record(&self, offset: u32) -> Result<CacheRecord<'a>> {
        let off = offset as usize;
        if off < HEADER_SIZE || offset % 4 != 0 {
            return Err(Error::invalid(
                KIND,
                offset as u64,
                "record offset",
                format!("{offset} is not a 4-aligned offset past the header"),
            ));
        }
        let (Some(prev_offset), Some(size)) = (u32_at(self.data, off), u32_at(self.data, off + 4))
        else {
            return Err(Error::truncated(
                KIND,
                off as u64,
                "cache record header",
                8,
                self.data.len().saturating_sub(off) as u64,
            ));
        };
        if (size as usize) < RECORD_HEADER_SIZE || size % 4 != 0 {
            return Err(Error::invalid(
                KIND,
                off as u64,
                "record size",
                format!("{size}"),
            ));
        }
        let end = off as u64 + size as u64;
        if end > self.data.len() as u64 {
            return Err(Error::truncated(
                KIND,
                off as u64,
                "cache record",
                size as u64,
                (self.data.len() - off) as u64,
            ));
        }
        Ok(CacheRecord {
            offset,
            prev_offset,
            size,
            body: &self.data[off + RECORD_HEADER_SIZE..end as usize],
        })
    }

    /// The records of one message's chain, newest first, starting at the
    /// offset taken from the index. Offsets must strictly decrease, which
    /// rules out loops.
    pub fn records_in_chain(&self, offset: u32) -> ChainRecords<'a, '_> {
        ChainRecords {
            cache: self,
            next: offset,
            last: None,
            failed: false,
        }
    }

    /// Every field occurrence of one message's chain, newest record first and
    /// in record order inside each record (the order `doveadm dump` prints).
    pub fn record_chain(&self, offset: u32) -> ChainFields<'a, '_> {
        ChainFields {
            records: self.records_in_chain(offset),
            current: None,
        }
    }

    /// Like [`Cache::record_chain`] but with each field's registry entry and
    /// decoded value: `(field, value)` pairs, newest record first.
    pub fn chain_values<'c>(
        &'c self,
        offset: u32,
    ) -> impl Iterator<Item = Result<(&'c CacheField<'a>, CacheValue<'a>)>> + 'c {
        self.record_chain(offset).map(move |item| {
            let fd = item?;
            let field = self.fields.get(fd.field_index as usize).ok_or_else(|| {
                Error::invalid(
                    KIND,
                    fd.data_offset as u64,
                    "cache field number",
                    format!("{} is not registered", fd.field_index),
                )
            })?;
            let value = decode_value(field, fd.data).map_err(|e| locate(e, fd.data_offset))?;
            Ok((field, value))
        })
    }

    /// Looks up field `name` for the message whose newest record is at
    /// `offset`. The first occurrence wins, except for bitmask fields whose
    /// occurrences are OR-ed. `Ok(None)` when the message has no such data.
    pub fn lookup(&self, offset: u32, name: &str) -> Result<Option<CacheValue<'a>>> {
        match self.field_index(name) {
            Some(index) => self.lookup_field(offset, index),
            None => Ok(None),
        }
    }

    /// [`Cache::lookup`] with a field number resolved once by [`Cache::field_index`].
    pub fn lookup_field(&self, offset: u32, index: u32) -> Result<Option<CacheValue<'a>>> {
        let Some(field) = self.fields.get(index as usize) else {
            return Ok(None);
        };
        let mut bitmask: Option<u32> = None;
        for item in self.record_chain(offset) {
            let fd = item?;
            if fd.field_index != index {
                continue;
            }
            if field.field_type == FieldType::Bitmask {
                let v = fd
                    .data
                    .iter()
                    .take(4)
                    .enumerate()
                    .fold(0u32, |a, (i, b)| a | (*b as u32) << (8 * i));
                bitmask = Some(bitmask.unwrap_or(0) | v);
                continue;
            }
            return decode_value(field, fd.data)
                .map(Some)
                .map_err(|e| locate(e, fd.data_offset));
        }
        Ok(bitmask.map(CacheValue::Bitmask))
    }

    /// The cached header `hdr.<name>` (name case-insensitive, without `hdr.`).
    pub fn header_field(&self, offset: u32, name: &str) -> Result<Option<HeaderValue<'a>>> {
        let Some(index) = self.fields.iter().position(|f| {
            f.name
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case("hdr."))
                && f.name
                    .get(4..)
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
        }) else {
            return Ok(None);
        };
        match self.lookup_field(offset, index as u32)? {
            Some(CacheValue::Header(h)) => Ok(Some(h)),
            _ => Ok(None),
        }
    }

    /// Dovecot's standard fields of one message, in one walk of its chain
    /// (first occurrence wins; `flags` is OR-ed over the chain).
    pub fn standard_fields(&self, offset: u32) -> Result<StandardFields<'a>> {
        let mut s = StandardFields::default();
        for item in self.record_chain(offset) {
            let fd = item?;
            let Some(field) = self.fields.get(fd.field_index as usize) else {
                continue;
            };
            let d = fd.data;
            let name = field.name.to_ascii_lowercase();
            let u32v = || (d.len() == 4).then(|| u32_at(d, 0)).flatten();
            let u64v = || (d.len() == 8).then(|| u64_at(d, 0)).flatten();
            match name.as_str() {
                "flags" => {
                    if let Some(v) = u32v() {
                        s.flags = Some(s.flags.unwrap_or(0) | v);
                    }
                }
                "date.sent" if s.date_sent.is_none() && d.len() == 8 => {
                    s.date_sent =
                        Some((u32_at(d, 0).unwrap_or(0), u32_at(d, 4).unwrap_or(0) as i32))
                }
                "date.received" if s.date_received.is_none() => s.date_received = u32v(),
                "date.save" if s.date_save.is_none() => s.date_save = u32v(),
                "size.virtual" if s.virtual_size.is_none() => s.virtual_size = u64v(),
                "size.physical" if s.physical_size.is_none() => s.physical_size = u64v(),
                "pop3.order" if s.pop3_order.is_none() => s.pop3_order = u32v(),
                "imap.body" => {
                    s.imap_body.get_or_insert(d);
                }
                "imap.bodystructure" => {
                    s.imap_bodystructure.get_or_insert(d);
                }
                "imap.envelope" => {
                    s.imap_envelope.get_or_insert(d);
                }
                "pop3.uidl" => {
                    s.pop3_uidl.get_or_insert(d);
                }
                "guid" => {
                    s.guid.get_or_insert(d);
                }
                "mime.parts" => {
                    s.mime_parts.get_or_insert(d);
                }
                "binary.parts" => {
                    s.binary_parts.get_or_insert(d);
                }
                "body.snippet" => {
                    s.body_snippet.get_or_insert(d);
                }
                _ => {}
            }
        }
        Ok(s)
    }

    /// Like [`Cache::lookup`] but returns the raw bytes of the first occurrence.
    pub fn lookup_raw(&self, offset: u32, name: &str) -> Result<Option<&'a [u8]>> {
        let Some(index) = self.field_index(name) else {
            return Ok(None);
        };
        for item in self.record_chain(offset) {
            let fd = item?;
            if fd.field_index == index {
                return Ok(Some(fd.data));
            }
        }
        Ok(None)
    }

    /// Every record in file order, found by walking from the end of the
    /// header over records and field headers. Used by `dump`; stops at the
    /// first bytes that are neither (a record still being appended, or
    /// garbage), which [`FileScan::end`] reports.
    pub fn scan(&self) -> FileScan<'a, '_> {
        FileScan {
            cache: self,
            pos: HEADER_SIZE as u64,
            stopped: None,
        }
    }

    /// The field occurrences of one record, in record order.
    pub fn record_fields(&self, record: CacheRecord<'a>) -> RecordFields<'a, '_> {
        RecordFields {
            cache: self,
            record,
            pos: 0,
            failed: false,
        }
    }
}

fn locate(e: Error, offset: u32) -> Error {
    match e {
        Error::Format {
            kind, path, rule, ..
        } => Error::Format {
            kind,
            path,
            offset: offset as u64,
            rule,
        },
        other => other,
    }
}

fn parse_field_header<'a>(h: &'a [u8], base: usize) -> Result<Vec<CacheField<'a>>> {
    let err_at = |rel: usize, detail: String| {
        Error::invalid(KIND, (base + rel) as u64, "field header", detail)
    };
    let count = u32_at(h, 8)
        .ok_or_else(|| Error::truncated(KIND, base as u64, "field header", 12, h.len() as u64))?
        as usize;
    // Each field needs at least 10 fixed bytes plus a NUL: the count is bounded by the size.
    let fixed_end = count
        .checked_mul(10)
        .and_then(|n| n.checked_add(12))
        .filter(|&e| e <= h.len())
        .ok_or_else(|| {
            Error::truncated(
                KIND,
                base as u64,
                "field header arrays",
                12 + 10 * count as u64,
                h.len() as u64,
            )
        })?;
    let mut fields = Vec::with_capacity(count);
    let mut name_pos = fixed_end;
    for i in 0..count {
        let last_used = u32_at(h, 12 + 4 * i).unwrap_or(0);
        let size = u32_at(h, 12 + 4 * count + 4 * i).unwrap_or(0);
        let type_byte = h[12 + 8 * count + i];
        let decision_byte = h[12 + 9 * count + i];
        let field_type = FieldType::from_u8(type_byte).ok_or_else(|| {
            err_at(
                12 + 8 * count + i,
                format!("field {i} has unknown type {type_byte}"),
            )
        })?;
        let rest = &h[name_pos..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| err_at(name_pos, format!("name of field {i} is not NUL-terminated")))?;
        let name = std::str::from_utf8(&rest[..nul])
            .map_err(|_| err_at(name_pos, format!("name of field {i} is not UTF-8")))?;
        if name.is_empty() {
            return Err(err_at(name_pos, format!("field {i} has an empty name")));
        }
        if matches!(field_type, FieldType::FixedSize | FieldType::Bitmask) && size == VARIABLE_SIZE
        {
            return Err(err_at(
                12 + 4 * count + 4 * i,
                format!("fixed-size field {name} has no size"),
            ));
        }
        name_pos += nul + 1;
        fields.push(CacheField {
            name,
            field_type,
            size,
            decision: Decision::from_u8(decision_byte),
            forced: decision_byte & 0x80 != 0,
            last_used,
        });
    }
    Ok(fields)
}

/// Decodes one field's data according to its registry entry.
pub fn decode_value<'a>(field: &CacheField<'_>, data: &'a [u8]) -> Result<CacheValue<'a>> {
    Ok(match field.field_type {
        FieldType::FixedSize => {
            if field.name.eq_ignore_ascii_case("date.sent") && data.len() == 8 {
                CacheValue::SentDate {
                    time: u32_at(data, 0).unwrap_or(0),
                    tz_offset_minutes: u32_at(data, 4).unwrap_or(0) as i32,
                }
            } else if data.len() == 4 {
                CacheValue::U32(u32_at(data, 0).unwrap_or(0))
            } else if data.len() == 8 {
                CacheValue::U64(u64_at(data, 0).unwrap_or(0))
            } else {
                CacheValue::Bytes(data)
            }
        }
        FieldType::Bitmask => CacheValue::Bitmask(
            data.iter()
                .take(4)
                .enumerate()
                .fold(0u32, |a, (i, b)| a | (*b as u32) << (8 * i)),
        ),
        FieldType::String => CacheValue::String(data),
        FieldType::VariableSize => CacheValue::Bytes(data),
        FieldType::Header => CacheValue::Header(decode_header(data)?),
    })
}

/// Decodes a `hdr.*` value: line numbers up to a 0 terminator, then the text.
pub fn decode_header(data: &[u8]) -> Result<HeaderValue<'_>> {
    let mut line_numbers = Vec::new();
    let mut pos = 0;
    if data.is_empty() {
        return Ok(HeaderValue {
            line_numbers,
            text: data,
        });
    }
    loop {
        let Some(n) = u32_at(data, pos) else {
            return Err(Error::invalid(
                KIND,
                pos as u64,
                "header field",
                "line number list does not end with 0",
            ));
        };
        pos += 4;
        if n == 0 {
            break;
        }
        line_numbers.push(n);
    }
    Ok(HeaderValue {
        line_numbers,
        text: &data[pos..],
    })
}

/// Iterator over the records of one chain.
pub struct ChainRecords<'a, 'c> {
    cache: &'c Cache<'a>,
    next: u32,
    last: Option<u32>,
    failed: bool,
}

impl<'a> Iterator for ChainRecords<'a, '_> {
    type Item = Result<CacheRecord<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next == 0 {
            return None;
        }
        if let Some(last) = self.last {
            if self.next >= last {
                self.failed = true;
                return Some(Err(Error::invalid(
                    KIND,
                    last as u64,
                    "prev_offset",
                    format!("{} does not precede {last} (loop)", self.next),
                )));
            }
        }
        match self.cache.record(self.next) {
            Ok(rec) => {
                self.last = Some(rec.offset);
                self.next = rec.prev_offset;
                Some(Ok(rec))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Iterator over the field occurrences of a record.
pub struct RecordFields<'a, 'c> {
    cache: &'c Cache<'a>,
    record: CacheRecord<'a>,
    pos: usize,
    failed: bool,
}

impl<'a> Iterator for RecordFields<'a, '_> {
    type Item = Result<FieldData<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        let body = self.record.body;
        if self.failed || self.pos >= body.len() {
            return None;
        }
        let base = self.record.offset as u64 + RECORD_HEADER_SIZE as u64;
        let at = |p: usize| base + p as u64;
        let mut fail = |e: Error| {
            self.failed = true;
            Some(Err(e))
        };
        let Some(field_index) = u32_at(body, self.pos) else {
            return fail(Error::truncated(
                KIND,
                at(self.pos),
                "cache field number",
                4,
                (body.len() - self.pos) as u64,
            ));
        };
        let Some(field) = self.cache.fields.get(field_index as usize) else {
            return fail(Error::invalid(
                KIND,
                at(self.pos),
                "cache field number",
                format!(
                    "{field_index} is not registered ({} fields)",
                    self.cache.fields.len()
                ),
            ));
        };
        let mut p = self.pos + 4;
        let size = if field.is_variable() {
            let Some(s) = u32_at(body, p) else {
                return fail(Error::truncated(
                    KIND,
                    at(p),
                    "cache field size",
                    4,
                    (body.len() - p) as u64,
                ));
            };
            p += 4;
            s
        } else {
            field.size
        };
        let end = p as u64 + size as u64;
        if end > body.len() as u64 {
            return fail(Error::truncated(
                KIND,
                at(p),
                "cache field data",
                size as u64,
                (body.len() - p) as u64,
            ));
        }
        let end = end as usize;
        let item = FieldData {
            field_index,
            record_offset: self.record.offset,
            data_offset: at(p) as u32,
            data: &body[p..end],
        };
        self.pos = (end + 3) & !3;
        Some(Ok(item))
    }
}

/// Iterator over every field of a chain.
pub struct ChainFields<'a, 'c> {
    records: ChainRecords<'a, 'c>,
    current: Option<RecordFields<'a, 'c>>,
}

impl<'a, 'c> ChainFields<'a, 'c> {
    /// The field's registry entry, for an item this iterator returned.
    pub fn field_of(&self, item: &FieldData<'a>) -> Option<&'c CacheField<'a>> {
        self.records.cache.fields.get(item.field_index as usize)
    }
}

impl<'a> Iterator for ChainFields<'a, '_> {
    type Item = Result<FieldData<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(cur) = &mut self.current {
                match cur.next() {
                    Some(Ok(f)) => return Some(Ok(f)),
                    Some(Err(e)) => {
                        self.records.failed = true;
                        self.current = None;
                        return Some(Err(e));
                    }
                    None => self.current = None,
                }
            }
            match self.records.next()? {
                Ok(rec) => self.current = Some(self.records.cache.record_fields(rec)),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// What stopped a linear scan of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    /// Offset where the scan stopped (the file length when it reached the end).
    pub offset: u64,
    /// Why it stopped before the end, if it did.
    pub reason: Option<String>,
}

/// Linear walk over the records of the file.
pub struct FileScan<'a, 'c> {
    cache: &'c Cache<'a>,
    pos: u64,
    stopped: Option<ScanEnd>,
}

impl FileScan<'_, '_> {
    /// Where and why the scan ended; `None` while it is still running.
    pub fn end(&self) -> Option<&ScanEnd> {
        self.stopped.as_ref()
    }
}

impl<'a> Iterator for FileScan<'a, '_> {
    type Item = CacheRecord<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.stopped.is_some() {
            return None;
        }
        let len = self.cache.data.len() as u64;
        loop {
            if self.pos >= len {
                self.stopped = Some(ScanEnd {
                    offset: len,
                    reason: None,
                });
                return None;
            }
            if let Some(&(_, size)) = self
                .cache
                .field_headers
                .iter()
                .find(|(o, _)| *o as u64 == self.pos)
            {
                self.pos += (size as u64 + 3) & !3;
                continue;
            }
            let stop = |reason: String| {
                Some(ScanEnd {
                    offset: self.pos,
                    reason: Some(reason),
                })
            };
            let Ok(off) = u32::try_from(self.pos) else {
                self.stopped = stop("offset beyond 4 GiB".into());
                return None;
            };
            match self.cache.record(off) {
                Ok(rec) => {
                    self.pos += rec.size as u64;
                    return Some(rec);
                }
                Err(e) => {
                    self.stopped = stop(e.to_string());
                    return None;
                }
            }
        }
    }
}

/// One node of a decoded `mime.parts` tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MimePart {
    /// Offset of the part in the message (0 for the root).
    pub physical_pos: u64,
    pub header_physical_size: u64,
    pub header_virtual_size: u64,
    pub body_physical_size: u64,
    pub body_virtual_size: u64,
    /// Present for text and message/rfc822 parts.
    pub body_lines: Option<u32>,
    /// Dovecot's message part flags (0x01 multipart, 0x04 message/rfc822, 0x08 text, 0x40 MIME, ...).
    pub flags: u32,
    pub children: Vec<MimePart>,
}

const PART_MULTIPART: u32 = 0x01;
const PART_RFC822: u32 = 0x04;
const PART_TEXT: u32 = 0x08;

/// Decodes a serialized `mime.parts` value with the same consistency checks
/// Dovecot applies (sizes, positions, message/rfc822 with one child).
pub fn decode_mime_parts(data: &[u8]) -> Result<MimePart> {
    let mut pos = 0usize;
    let mut min_pos = 0u64;
    let mut parts = decode_parts(data, &mut pos, 1, true, &mut min_pos, 0)?;
    if pos != data.len() {
        return Err(Error::invalid(
            KIND,
            pos as u64,
            "mime.parts",
            "too much data",
        ));
    }
    parts
        .pop()
        .ok_or_else(|| Error::invalid(KIND, 0, "mime.parts", "no root part"))
}

fn decode_parts(
    data: &[u8],
    pos: &mut usize,
    siblings: u32,
    root: bool,
    min_pos: &mut u64,
    depth: usize,
) -> Result<Vec<MimePart>> {
    let bad = |p: usize, d: &str| Error::invalid(KIND, p as u64, "mime.parts", d.to_string());
    if depth > MAX_MIME_DEPTH {
        return Err(bad(*pos, "parts nested too deeply"));
    }
    let mut out = Vec::new();
    for _ in 0..siblings {
        let r32 = |pos: &mut usize| -> Result<u32> {
            let v = u32_at(data, *pos).ok_or_else(|| bad(*pos, "not enough data"))?;
            *pos += 4;
            Ok(v)
        };
        let r64 = |pos: &mut usize| -> Result<u64> {
            let v = u64_at(data, *pos).ok_or_else(|| bad(*pos, "not enough data"))?;
            *pos += 8;
            Ok(v)
        };
        let flags = r32(pos)?;
        let physical_pos = if root && out.is_empty() { 0 } else { r64(pos)? };
        if physical_pos < *min_pos {
            return Err(bad(*pos, "physical_pos less than expected"));
        }
        let header_physical_size = r64(pos)?;
        let header_virtual_size = r64(pos)?;
        if header_virtual_size < header_physical_size {
            return Err(bad(*pos, "header_size.virtual_size too small"));
        }
        let body_physical_size = r64(pos)?;
        let body_virtual_size = r64(pos)?;
        let body_lines = if flags & (PART_TEXT | PART_RFC822) != 0 {
            Some(r32(pos)?)
        } else {
            None
        };
        if body_virtual_size < body_physical_size {
            return Err(bad(*pos, "body_size.virtual_size too small"));
        }
        let children_count = if flags & (PART_MULTIPART | PART_RFC822) != 0 {
            r32(pos)?
        } else {
            0
        };
        if flags & PART_RFC822 != 0 && children_count != 1 {
            return Err(bad(*pos, "message/rfc822 part must have exactly one child"));
        }
        let mut children = Vec::new();
        if children_count > 0 {
            *min_pos = physical_pos.saturating_add(header_physical_size);
            let limit = min_pos.saturating_add(body_physical_size);
            children = decode_parts(data, pos, children_count, false, min_pos, depth + 1)?;
            if *min_pos > limit {
                return Err(bad(*pos, "child part location exceeds our size"));
            }
            *min_pos = limit;
        }
        out.push(MimePart {
            physical_pos,
            header_physical_size,
            header_virtual_size,
            body_physical_size,
            body_virtual_size,
            body_lines,
            flags,
            children,
        });
    }
    Ok(out)
}

pub(crate) fn hex(data: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn field_json(cache: &Cache<'_>, fd: &FieldData<'_>) -> Value {
    let Some(field) = cache.field(fd.field_index) else {
        return json!({ "field": fd.field_index, "error": "unregistered field" });
    };
    let mut v = json!({
        "field": fd.field_index,
        "name": field.name,
        "type": field.field_type,
        "offset": fd.data_offset,
        "size": fd.data.len(),
    });
    let obj = v.as_object_mut().expect("json object literal");
    match field.field_type {
        FieldType::FixedSize | FieldType::Bitmask | FieldType::VariableSize => {
            obj.insert("hex".into(), Value::String(hex(fd.data)));
            if field.field_type == FieldType::FixedSize {
                if fd.data.len() == 4 {
                    obj.insert("value".into(), json!(u32_at(fd.data, 0)));
                } else if fd.data.len() == 8 {
                    obj.insert("value".into(), json!(u64_at(fd.data, 0)));
                }
            }
            if field.name.eq_ignore_ascii_case("mime.parts") {
                match decode_mime_parts(fd.data) {
                    Ok(p) => obj.insert("mime_parts".into(), json!(p)),
                    Err(e) => obj.insert("mime_parts_error".into(), json!(e.to_string())),
                };
            }
        }
        FieldType::String => {
            obj.insert("text".into(), json!(String::from_utf8_lossy(fd.data)));
        }
        FieldType::Header => match decode_header(fd.data) {
            Ok(h) => {
                obj.insert("absent".into(), json!(h.is_absent()));
                obj.insert("lines".into(), json!(h.line_numbers));
                obj.insert("text".into(), json!(String::from_utf8_lossy(h.text)));
            }
            Err(e) => {
                obj.insert("hex".into(), json!(hex(fd.data)));
                obj.insert("error".into(), json!(e.to_string()));
            }
        },
    }
    v
}

/// The fields of one message's record chain (newest record first), rendered
/// as in [`to_json`]'s records; a broken link ends the list with an `error`.
pub fn chain_json(cache: &Cache<'_>, offset: u32) -> Value {
    let mut fields = Vec::new();
    for fd in cache.record_chain(offset) {
        match fd {
            Ok(fd) => fields.push(field_json(cache, &fd)),
            Err(e) => {
                fields.push(json!({ "error": e.to_string() }));
                break;
            }
        }
    }
    Value::Array(fields)
}

/// Renders a parsed cache as the JSON value documented in `docs/dump-json.md`.
pub fn to_json(cache: &Cache<'_>) -> Value {
    let h = cache.header();
    let fields: Vec<Value> = cache
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            json!({
                "index": i,
                "name": f.name,
                "type": f.field_type,
                "size": if f.is_variable() { Value::Null } else { json!(f.size) },
                "decision": f.decision.short_name(),
                "forced": f.forced,
                "last_used": f.last_used,
            })
        })
        .collect();
    let mut scan = cache.scan();
    let mut records = Vec::new();
    let mut referenced = std::collections::BTreeSet::new();
    for rec in scan.by_ref() {
        let mut fields = Vec::new();
        let mut error = None;
        for fd in cache.record_fields(rec) {
            match fd {
                Ok(fd) => fields.push(field_json(cache, &fd)),
                Err(e) => error = Some(e.to_string()),
            }
        }
        if rec.prev_offset != 0 {
            referenced.insert(rec.prev_offset);
        }
        let mut r = json!({ "offset": rec.offset, "size": rec.size, "prev_offset": rec.prev_offset, "fields": fields });
        if let Some(e) = error {
            r["error"] = json!(e);
        }
        records.push(r);
    }
    let heads: Vec<u32> = records
        .iter()
        .filter_map(|r| r["offset"].as_u64().map(|o| o as u32))
        .filter(|o| !referenced.contains(o))
        .collect();
    let end = scan.end().cloned().unwrap_or(ScanEnd {
        offset: cache.bytes().len() as u64,
        reason: None,
    });
    json!({
        "header": {
            "major_version": h.major_version,
            "minor_version": h.minor_version,
            "compat_sizeof_uoff_t": h.compat_sizeof_uoff_t,
            "indexid": h.indexid,
            "file_seq": h.file_seq,
            "purges": h.file_seq.wrapping_sub(h.indexid) as i32,
            "continued_record_count": h.continued_record_count,
            "record_count": h.record_count,
            "used_file_size": h.backwards_compat_used_file_size,
            "deleted_record_count": h.deleted_record_count,
            "field_header_offset": h.field_header_offset,
            "field_header_offset_raw": h.field_header_offset_raw,
        },
        "field_headers": cache.field_header_offsets().iter().map(|(o, s)| json!({"offset": o, "size": s})).collect::<Vec<_>>(),
        "fields": fields,
        "records": records,
        "chain_heads": heads,
        "scan_end": { "offset": end.offset, "reason": end.reason },
    })
}

/// A mapped cache file; [`CacheFile::cache`] parses it in place.
pub struct CacheFile {
    map: MappedFile,
}

impl CacheFile {
    /// Maps `path` as it is now (see [`MappedFile::open`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Ok(CacheFile {
            map: MappedFile::open(path)?,
        })
    }

    pub fn path(&self) -> &Path {
        self.map.path()
    }

    /// The parsed header and field registry, borrowing the map; errors name the file.
    pub fn cache(&self) -> Result<Cache<'_>> {
        Cache::parse(&self.map).map_err(|e| e.with_path(self.map.path()))
    }
}

/// Parses the cache file at `path` for `homing dump`.
pub fn dump(path: &Path) -> Result<Value> {
    let file = CacheFile::open(path)?;
    Ok(to_json(&file.cache()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_offsets_round_trip() {
        for v in [0u32, 4, 32, 1248, 1452, (1 << 30) - 4] {
            assert_eq!(unpack_offset(pack_offset(v)), v);
        }
        // Bytes 80 80 80 88 as stored.
        assert_eq!(
            unpack_offset(u32::from_le_bytes([0x80, 0x80, 0x80, 0x88])),
            32
        );
        assert_eq!(
            unpack_offset(u32::from_le_bytes([0x80, 0x80, 0x82, 0xb8])),
            1248
        );
        assert_eq!(unpack_offset(0), 0);
    }

    #[test]
    fn header_value_decoding() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        d.extend_from_slice(b"Subject: x\n");
        let h = decode_header(&d).unwrap();
        assert_eq!(h.line_numbers, vec![3]);
        assert_eq!(h.text, b"Subject: x\n");
        assert!(decode_header(&[]).unwrap().is_absent());
        assert!(decode_header(&[1, 0, 0, 0]).is_err());
    }
}
