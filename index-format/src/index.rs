//! `dovecot.index` (also `dovecot.list.index`, `dovecot.map.index`): the snapshot
//! of a mailbox index at some transaction-log position (spec section 3).
//!
//! [`IndexFile::parse`] reads a byte slice in place: the base header is decoded
//! into [`IndexHeader`], the extension area into [`Extension`]s that borrow their
//! names and header data, and the record array is walked lazily with
//! [`IndexFile::records`]. The state of the mailbox is this snapshot plus the
//! log; [`crate::view::MailboxView`] does that replay.

use std::path::Path;

use crate::error::{Error, FileKind, Result};
use crate::le::{align8, u16_at, u32_at};
use crate::mmap::MappedFile;

const KIND: FileKind = FileKind::Index;

/// Size of the base header written by Dovecot 2.3.
pub const BASE_HEADER_SIZE: usize = 120;
/// Major version of the index format this crate reads.
pub const MAJOR_VERSION: u8 = 7;
/// Minor version Dovecot 2.3 writes.
pub const MINOR_VERSION: u8 = 3;
/// `compat_flags` bit of a little-endian file.
pub const COMPAT_LITTLE_ENDIAN: u8 = 0x01;

/// Base header flag: some record has the DIRTY flag.
pub const HDR_FLAG_HAVE_DIRTY: u32 = 0x2;

/// Message flag bits of a record (spec 1.4).
pub mod flags {
    pub const ANSWERED: u8 = 0x01;
    pub const FLAGGED: u8 = 0x02;
    pub const DELETED: u8 = 0x04;
    pub const SEEN: u8 = 0x08;
    pub const DRAFT: u8 = 0x10;
    /// Historical \Recent bit; never set in 7.3 records.
    pub const RECENT: u8 = 0x20;
    /// Backend-private bit (dbox: message lives in ALT storage).
    pub const BACKEND: u8 = 0x40;
    /// Flags not yet written to the backend (Maildir).
    pub const DIRTY: u8 = 0x80;
    /// The client-visible system flags.
    pub const IMAP_MASK: u8 = 0x1f;
}

/// Byte offsets of the base header fields, as used by HEADER_UPDATE log records.
pub mod hdr_off {
    pub const MAJOR_VERSION: usize = 0;
    pub const MINOR_VERSION: usize = 1;
    pub const BASE_HEADER_SIZE: usize = 2;
    pub const HEADER_SIZE: usize = 4;
    pub const RECORD_SIZE: usize = 8;
    pub const COMPAT_FLAGS: usize = 12;
    pub const INDEXID: usize = 16;
    pub const FLAGS: usize = 20;
    pub const UID_VALIDITY: usize = 24;
    pub const NEXT_UID: usize = 28;
    pub const MESSAGES_COUNT: usize = 32;
    pub const UNUSED_OLD_RECENT_MESSAGES_COUNT: usize = 36;
    pub const SEEN_MESSAGES_COUNT: usize = 40;
    pub const DELETED_MESSAGES_COUNT: usize = 44;
    pub const FIRST_RECENT_UID: usize = 48;
    pub const FIRST_UNSEEN_UID_LOWWATER: usize = 52;
    pub const FIRST_DELETED_UID_LOWWATER: usize = 56;
    pub const LOG_FILE_SEQ: usize = 60;
    pub const LOG_FILE_TAIL_OFFSET: usize = 64;
    pub const LOG_FILE_HEAD_OFFSET: usize = 68;
    pub const UNUSED_OLD_SYNC_SIZE_PART1: usize = 72;
    pub const LOG2_ROTATE_TIME: usize = 76;
    pub const LAST_TEMP_FILE_SCAN: usize = 80;
    pub const DAY_STAMP: usize = 84;
    pub const DAY_FIRST_UID: usize = 88;
}

/// The 120-byte base header of an index (spec 3.2), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct IndexHeader {
    pub major_version: u8,
    pub minor_version: u8,
    pub base_header_size: u16,
    pub header_size: u32,
    pub record_size: u32,
    pub compat_flags: u8,
    pub indexid: u32,
    pub flags: u32,
    pub uid_validity: u32,
    pub next_uid: u32,
    pub messages_count: u32,
    pub unused_old_recent_messages_count: u32,
    pub seen_messages_count: u32,
    pub deleted_messages_count: u32,
    pub first_recent_uid: u32,
    pub first_unseen_uid_lowwater: u32,
    pub first_deleted_uid_lowwater: u32,
    pub log_file_seq: u32,
    pub log_file_tail_offset: u32,
    pub log_file_head_offset: u32,
    pub unused_old_sync_size_part1: u32,
    pub log2_rotate_time: u32,
    pub last_temp_file_scan: u32,
    pub day_stamp: u32,
    pub day_first_uid: [u32; 8],
}

impl IndexHeader {
    /// Decodes the fields of a base header. `b` must hold at least 120 bytes,
    /// else `None`.
    pub fn decode(b: &[u8]) -> Option<IndexHeader> {
        if b.len() < BASE_HEADER_SIZE {
            return None;
        }
        let u = |o| u32_at(b, o).unwrap_or(0);
        let mut day_first_uid = [0u32; 8];
        for (i, d) in day_first_uid.iter_mut().enumerate() {
            *d = u(hdr_off::DAY_FIRST_UID + 4 * i);
        }
        Some(IndexHeader {
            major_version: b[0],
            minor_version: b[1],
            base_header_size: u16_at(b, 2).unwrap_or(0),
            header_size: u(hdr_off::HEADER_SIZE),
            record_size: u(hdr_off::RECORD_SIZE),
            compat_flags: b[hdr_off::COMPAT_FLAGS],
            indexid: u(hdr_off::INDEXID),
            flags: u(hdr_off::FLAGS),
            uid_validity: u(hdr_off::UID_VALIDITY),
            next_uid: u(hdr_off::NEXT_UID),
            messages_count: u(hdr_off::MESSAGES_COUNT),
            unused_old_recent_messages_count: u(hdr_off::UNUSED_OLD_RECENT_MESSAGES_COUNT),
            seen_messages_count: u(hdr_off::SEEN_MESSAGES_COUNT),
            deleted_messages_count: u(hdr_off::DELETED_MESSAGES_COUNT),
            first_recent_uid: u(hdr_off::FIRST_RECENT_UID),
            first_unseen_uid_lowwater: u(hdr_off::FIRST_UNSEEN_UID_LOWWATER),
            first_deleted_uid_lowwater: u(hdr_off::FIRST_DELETED_UID_LOWWATER),
            log_file_seq: u(hdr_off::LOG_FILE_SEQ),
            log_file_tail_offset: u(hdr_off::LOG_FILE_TAIL_OFFSET),
            log_file_head_offset: u(hdr_off::LOG_FILE_HEAD_OFFSET),
            unused_old_sync_size_part1: u(hdr_off::UNUSED_OLD_SYNC_SIZE_PART1),
            log2_rotate_time: u(hdr_off::LOG2_ROTATE_TIME),
            last_temp_file_scan: u(hdr_off::LAST_TEMP_FILE_SCAN),
            day_stamp: u(hdr_off::DAY_STAMP),
            day_first_uid,
        })
    }

    /// The base header of an index that does not exist yet (spec 4.7
    /// "empty-map defaults"), as 120 bytes.
    pub fn empty_bytes(indexid: u32) -> [u8; BASE_HEADER_SIZE] {
        let mut b = [0u8; BASE_HEADER_SIZE];
        b[0] = MAJOR_VERSION;
        b[1] = MINOR_VERSION;
        b[2..4].copy_from_slice(&(BASE_HEADER_SIZE as u16).to_le_bytes());
        let mut put = |o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
        put(hdr_off::HEADER_SIZE, BASE_HEADER_SIZE as u32);
        put(hdr_off::RECORD_SIZE, 8);
        put(hdr_off::INDEXID, indexid);
        put(hdr_off::NEXT_UID, 1);
        put(hdr_off::FIRST_RECENT_UID, 1);
        put(hdr_off::LOG_FILE_SEQ, 1);
        b[hdr_off::COMPAT_FLAGS] = COMPAT_LITTLE_ENDIAN;
        b
    }
}

/// One extension of the extension area (spec 3.3), borrowing from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    /// Position in the extension list: the number log EXT_INTRO records use.
    pub index: usize,
    pub name: &'a str,
    pub reset_id: u32,
    pub hdr_size: u32,
    pub record_offset: u16,
    pub record_size: u16,
    pub record_align: u16,
    /// File offset of the header data.
    pub hdr_offset: usize,
    /// The extension's header data (`hdr_size` bytes).
    pub header: &'a [u8],
}

/// Checks the rules for an extension name (spec 3.3).
pub(crate) fn valid_ext_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() < 64
        && name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b' ')
}

/// Checks an extension's geometry against the rules of spec 3.3.
pub(crate) fn check_ext_geometry(
    hdr_size: u32,
    record_offset: u16,
    record_size: u16,
    record_align: u16,
    total_record_size: u32,
) -> std::result::Result<(), String> {
    if hdr_size == 0 && record_size == 0 {
        return Err("both hdr_size and record_size are 0".into());
    }
    if hdr_size >= 16 * 1024 * 1024 {
        return Err(format!("hdr_size {hdr_size} too large"));
    }
    if record_size > 0 {
        if !(1..=8).contains(&record_align) || !record_align.is_power_of_two() {
            return Err(format!("record_align {record_align} not 1, 2, 4 or 8"));
        }
        if record_size >= 32768 {
            return Err(format!("record_size {record_size} too large"));
        }
        if record_offset % record_align != 0 {
            return Err(format!(
                "record_offset {record_offset} not aligned to {record_align}"
            ));
        }
        if u32::from(record_offset) + u32::from(record_size) > total_record_size {
            return Err(format!(
                "record data {record_offset}+{record_size} beyond record_size {total_record_size}"
            ));
        }
        if total_record_size % u32::from(record_align) != 0 {
            return Err(format!(
                "record_size {total_record_size} not a multiple of record_align {record_align}"
            ));
        }
    } else if record_align > 8 {
        return Err(format!("record_align {record_align} too large"));
    }
    Ok(())
}

/// A parsed `dovecot.index`, borrowing the file's bytes.
#[derive(Debug, Clone)]
pub struct IndexFile<'a> {
    bytes: &'a [u8],
    header: IndexHeader,
    extensions: Vec<Extension<'a>>,
}

impl<'a> IndexFile<'a> {
    /// Parses and validates an index file's header, extension area and record
    /// array bounds. Records are not copied; see [`IndexFile::records`].
    pub fn parse(bytes: &'a [u8]) -> Result<IndexFile<'a>> {
        let header = IndexHeader::decode(bytes).ok_or_else(|| {
            Error::truncated(
                KIND,
                0,
                "base header",
                BASE_HEADER_SIZE as u64,
                bytes.len() as u64,
            )
        })?;
        if header.major_version != MAJOR_VERSION {
            return Err(Error::format(
                KIND,
                0,
                crate::FormatRule::BadVersion {
                    what: "index major version",
                    found: header.major_version.to_string(),
                },
            ));
        }
        if header.compat_flags != COMPAT_LITTLE_ENDIAN {
            return Err(Error::Unsupported {
                path: None,
                what: format!(
                    "index compat_flags {:#x} (only little-endian files are read)",
                    header.compat_flags
                ),
            });
        }
        let base = usize::from(header.base_header_size);
        if base < BASE_HEADER_SIZE {
            return Err(Error::invalid(
                KIND,
                2,
                "base_header_size",
                format!("{base} < {BASE_HEADER_SIZE}"),
            ));
        }
        let header_size = header.header_size as usize;
        if header_size < base || header_size > bytes.len() {
            return Err(Error::invalid(
                KIND,
                4,
                "header_size",
                format!("{header_size} outside [{base}, file size {}]", bytes.len()),
            ));
        }
        if header.record_size < 8 {
            return Err(Error::invalid(
                KIND,
                8,
                "record_size",
                format!("{} < 8", header.record_size),
            ));
        }
        let records_len = u64::from(header.messages_count) * u64::from(header.record_size);
        let available = (bytes.len() - header_size) as u64;
        if records_len > available {
            return Err(Error::truncated(
                KIND,
                header_size as u64,
                "record array",
                records_len,
                available,
            ));
        }
        if header.next_uid == 0 {
            return Err(Error::invalid(KIND, 28, "next_uid", "0"));
        }
        if header.uid_validity == 0 && header.next_uid != 1 {
            return Err(Error::invalid(
                KIND,
                24,
                "uid_validity",
                format!("0 with next_uid {}", header.next_uid),
            ));
        }
        if header.seen_messages_count > header.messages_count
            || header.deleted_messages_count > header.messages_count
        {
            return Err(Error::invalid(
                KIND,
                40,
                "seen/deleted messages count",
                "larger than messages_count",
            ));
        }
        let extensions = parse_extensions(bytes, base, header_size, header.record_size)?;
        let file = IndexFile {
            bytes,
            header,
            extensions,
        };
        if let Some(last) = file.records().last() {
            if last.uid() == 0 || last.uid() >= header.next_uid {
                return Err(Error::invalid(
                    KIND,
                    (header_size
                        + (header.messages_count as usize - 1) * header.record_size as usize)
                        as u64,
                    "record uid",
                    format!(
                        "last uid {} not in [1, next_uid {})",
                        last.uid(),
                        header.next_uid
                    ),
                ));
            }
        }
        Ok(file)
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The decoded base header, as stored in the file (before any log replay).
    pub fn header(&self) -> &IndexHeader {
        &self.header
    }

    /// The raw base header bytes (`base_header_size` of them).
    pub fn base_header_bytes(&self) -> &'a [u8] {
        &self.bytes[..usize::from(self.header.base_header_size)]
    }

    /// Extensions in file order (their position is the log's extension id).
    pub fn extensions(&self) -> &[Extension<'a>] {
        &self.extensions
    }

    /// Looks an extension up by its (case-sensitive) name.
    pub fn extension(&self, name: &str) -> Option<&Extension<'a>> {
        self.extensions.iter().find(|e| e.name == name)
    }

    /// Keyword names from the `keywords` extension header, in keyword index order.
    pub fn keywords(&self) -> Result<Vec<&'a str>> {
        match self.extension(crate::ext::KEYWORDS) {
            Some(e) => crate::ext::parse_keywords_header(e.header).map_err(|(off, what)| {
                Error::invalid(KIND, (e.hdr_offset + off) as u64, "keywords header", what)
            }),
            None => Ok(Vec::new()),
        }
    }

    /// The raw record array.
    pub fn records_bytes(&self) -> &'a [u8] {
        let start = self.header.header_size as usize;
        let len = self.header.messages_count as usize * self.header.record_size as usize;
        &self.bytes[start..start + len]
    }

    /// Iterates the message records in sequence order without copying.
    pub fn records(&self) -> impl ExactSizeIterator<Item = RecordRef<'a>> + DoubleEndedIterator {
        self.records_bytes()
            .chunks_exact(self.header.record_size as usize)
            .map(|bytes| RecordRef { bytes })
    }

    /// The record with 1-based sequence number `seq`.
    pub fn record(&self, seq: u32) -> Option<RecordRef<'a>> {
        let rs = self.header.record_size as usize;
        let i = (seq as usize).checked_sub(1)?;
        let b = self.records_bytes().get(i * rs..(i + 1) * rs)?;
        Some(RecordRef { bytes: b })
    }

    /// Finds a record by uid (binary search; records are sorted by uid).
    pub fn lookup_uid(&self, uid: u32) -> Option<(u32, RecordRef<'a>)> {
        let rs = self.header.record_size as usize;
        let recs = self.records_bytes();
        let n = recs.len() / rs;
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let u = u32_at(recs, mid * rs).unwrap_or(0);
            match u.cmp(&uid) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    return Some((
                        mid as u32 + 1,
                        RecordRef {
                            bytes: &recs[mid * rs..(mid + 1) * rs],
                        },
                    ))
                }
            }
        }
        None
    }
}

fn parse_extensions<'a>(
    bytes: &'a [u8],
    base: usize,
    header_size: usize,
    record_size: u32,
) -> Result<Vec<Extension<'a>>> {
    let mut exts: Vec<Extension<'a>> = Vec::new();
    let mut off = align8(base);
    while off < header_size {
        let area = &bytes[..header_size];
        let field = |o: usize, what: &'static str| {
            u32_at(area, o).ok_or_else(|| {
                Error::truncated(
                    KIND,
                    o as u64,
                    what,
                    4,
                    header_size.saturating_sub(o) as u64,
                )
            })
        };
        let hdr_size = field(off, "extension header")?;
        let reset_id = field(off + 4, "extension header")?;
        let short = |o: usize| u16_at(area, o).unwrap_or(0);
        if off + 16 > header_size {
            return Err(Error::truncated(
                KIND,
                off as u64,
                "extension header",
                16,
                (header_size - off) as u64,
            ));
        }
        let record_offset = short(off + 8);
        let ext_record_size = short(off + 10);
        let record_align = short(off + 12);
        let name_size = usize::from(short(off + 14));
        let name_bytes = area.get(off + 16..off + 16 + name_size).ok_or_else(|| {
            Error::truncated(
                KIND,
                (off + 16) as u64,
                "extension name",
                name_size as u64,
                header_size.saturating_sub(off + 16) as u64,
            )
        })?;
        if !valid_ext_name(name_bytes) {
            return Err(Error::invalid(
                KIND,
                (off + 16) as u64,
                "extension name",
                format!(
                    "{:?} is not 1..63 of [A-Za-z0-9_ -]",
                    String::from_utf8_lossy(name_bytes)
                ),
            ));
        }
        // valid_ext_name admits ASCII only.
        let name = std::str::from_utf8(name_bytes).unwrap_or_default();
        let hdr_offset = off + align8(16 + name_size);
        let hdr_end = hdr_offset
            .checked_add(hdr_size as usize)
            .filter(|&e| e <= header_size)
            .ok_or_else(|| {
                Error::truncated(
                    KIND,
                    hdr_offset as u64,
                    "extension header data",
                    u64::from(hdr_size),
                    header_size.saturating_sub(hdr_offset) as u64,
                )
            })?;
        check_ext_geometry(
            hdr_size,
            record_offset,
            ext_record_size,
            record_align,
            record_size,
        )
        .map_err(|d| {
            Error::invalid(
                KIND,
                off as u64,
                "extension geometry",
                format!("{name}: {d}"),
            )
        })?;
        if exts.iter().any(|e| e.name == name) {
            return Err(Error::invalid(
                KIND,
                off as u64,
                "extension name",
                format!("duplicate extension {name}"),
            ));
        }
        exts.push(Extension {
            index: exts.len(),
            name,
            reset_id,
            hdr_size,
            record_offset,
            record_size: ext_record_size,
            record_align,
            hdr_offset,
            header: &bytes[hdr_offset..hdr_end],
        });
        off = hdr_offset + align8(hdr_size as usize);
    }
    if off != header_size && !exts.is_empty() {
        return Err(Error::invalid(
            KIND,
            off as u64,
            "extension area",
            format!("last extension ends at {off}, header_size is {header_size}"),
        ));
    }
    Ok(exts)
}

/// One message record of an index file or a view, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    bytes: &'a [u8],
}

impl<'a> RecordRef<'a> {
    /// Wraps raw record bytes (at least 8).
    pub fn new(bytes: &'a [u8]) -> Self {
        RecordRef { bytes }
    }
    pub fn uid(&self) -> u32 {
        u32_at(self.bytes, 0).unwrap_or(0)
    }
    /// The flags byte (spec 1.4), including the BACKEND and DIRTY bits.
    pub fn flags(&self) -> u8 {
        self.bytes.get(4).copied().unwrap_or(0)
    }
    /// The whole record.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// The data of an extension in this record, if it has record data.
    pub fn ext_data(&self, record_offset: u16, record_size: u16) -> Option<&'a [u8]> {
        if record_size == 0 {
            return None;
        }
        let o = usize::from(record_offset);
        self.bytes.get(o..o + usize::from(record_size))
    }
}

/// An index file mapped from disk; [`MappedIndex::parse`] gives the borrowed view.
pub struct MappedIndex {
    map: MappedFile,
}

impl MappedIndex {
    /// Maps the index at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Ok(MappedIndex {
            map: MappedFile::open(path)?,
        })
    }
    /// Parses the mapped bytes; errors carry the file's path.
    pub fn parse(&self) -> Result<IndexFile<'_>> {
        IndexFile::parse(self.map.bytes()).map_err(|e| e.with_path(self.map.path()))
    }
    pub fn path(&self) -> &Path {
        self.map.path()
    }
    pub fn bytes(&self) -> &[u8] {
        self.map.bytes()
    }
}

/// Parses the file at `path` and returns its content for `homing dump`: the
/// index as stored and the mailbox state after replaying its log (the state
/// `doveadm dump` prints).
pub fn dump(path: &Path) -> Result<serde_json::Value> {
    crate::view::dump_index(path)
}
