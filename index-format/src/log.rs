//! `dovecot.index.log` / `.log.2`: the transaction log (spec section 4).
//!
//! [`LogFile::parse`] validates the 40-byte header and walks the record framing
//! once to find the **sync offset**: the end of the last complete transaction.
//! Everything after it (a record whose packed size is still 0, a record or a
//! boundary-announced transaction running past the end of the mapped bytes) is
//! an unfinished append and is never exposed, exactly as Dovecot reads a log
//! another process is appending to.
//!
//! [`LogFile::records`] then yields [`LogRecord`]s with their derived modseq
//! (spec 4.6); [`LogRecord::body`] decodes the payload into a [`RecordBody`].

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, FileKind, Result};
use crate::le::{align4, hex, le32, u16_at, u32_at, u64_at, unpack_offset};
use crate::mmap::MappedFile;

const KIND: FileKind = FileKind::Log;

/// Size of the log header written by Dovecot 2.3.
pub const HEADER_SIZE: usize = 40;
/// Smallest header Dovecot accepts (older files).
pub const MIN_HEADER_SIZE: usize = 24;
/// Major version of the log format.
pub const MAJOR_VERSION: u8 = 1;

/// Record type bits (spec 4.2, 4.3).
pub mod rtype {
    pub const EXPUNGE: u32 = 0x0000_0001;
    pub const APPEND: u32 = 0x0000_0002;
    pub const FLAG_UPDATE: u32 = 0x0000_0004;
    pub const HEADER_UPDATE: u32 = 0x0000_0020;
    pub const EXT_INTRO: u32 = 0x0000_0040;
    pub const EXT_RESET: u32 = 0x0000_0080;
    pub const EXT_HDR_UPDATE: u32 = 0x0000_0100;
    pub const EXT_REC_UPDATE: u32 = 0x0000_0200;
    pub const KEYWORD_UPDATE: u32 = 0x0000_0400;
    pub const KEYWORD_RESET: u32 = 0x0000_0800;
    pub const EXT_ATOMIC_INC: u32 = 0x0000_1000;
    pub const EXPUNGE_GUID: u32 = 0x0000_2000;
    pub const MODSEQ_UPDATE: u32 = 0x0000_8000;
    pub const EXT_HDR_UPDATE32: u32 = 0x0001_0000;
    pub const INDEX_DELETED: u32 = 0x0002_0000;
    pub const INDEX_UNDELETED: u32 = 0x0004_0000;
    pub const BOUNDARY: u32 = 0x0008_0000;
    pub const ATTRIBUTE_UPDATE: u32 = 0x0010_0000;
    /// Protection pattern OR'ed into both expunge types.
    pub const EXPUNGE_PROT: u32 = 0x0000_cd90;
    pub const TYPE_MASK: u32 = 0x0fff_ffff;
    pub const EXTERNAL: u32 = 0x1000_0000;
    pub const SYNC: u32 = 0x2000_0000;
}

/// The kind of a log record, from its type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordType {
    Expunge,
    Append,
    FlagUpdate,
    HeaderUpdate,
    ExtIntro,
    ExtReset,
    ExtHdrUpdate,
    ExtHdrUpdate32,
    ExtRecUpdate,
    KeywordUpdate,
    KeywordReset,
    ExtAtomicInc,
    ExpungeGuid,
    ModseqUpdate,
    IndexDeleted,
    IndexUndeleted,
    Boundary,
    AttributeUpdate,
}

impl RecordType {
    /// Classifies a raw type field; `None` for unknown types (corruption in Dovecot).
    pub fn from_raw(t: u32) -> Option<RecordType> {
        use rtype::*;
        Some(match t & TYPE_MASK {
            x if x == EXPUNGE | EXPUNGE_PROT => RecordType::Expunge,
            x if x == EXPUNGE_GUID | EXPUNGE_PROT => RecordType::ExpungeGuid,
            APPEND => RecordType::Append,
            FLAG_UPDATE => RecordType::FlagUpdate,
            HEADER_UPDATE => RecordType::HeaderUpdate,
            EXT_INTRO => RecordType::ExtIntro,
            EXT_RESET => RecordType::ExtReset,
            EXT_HDR_UPDATE => RecordType::ExtHdrUpdate,
            EXT_HDR_UPDATE32 => RecordType::ExtHdrUpdate32,
            EXT_REC_UPDATE => RecordType::ExtRecUpdate,
            KEYWORD_UPDATE => RecordType::KeywordUpdate,
            KEYWORD_RESET => RecordType::KeywordReset,
            EXT_ATOMIC_INC => RecordType::ExtAtomicInc,
            MODSEQ_UPDATE => RecordType::ModseqUpdate,
            INDEX_DELETED => RecordType::IndexDeleted,
            INDEX_UNDELETED => RecordType::IndexUndeleted,
            BOUNDARY => RecordType::Boundary,
            ATTRIBUTE_UPDATE => RecordType::AttributeUpdate,
            _ => return None,
        })
    }

    /// The name `doveadm dump` uses for this type.
    pub fn name(self) -> &'static str {
        match self {
            RecordType::Expunge => "expunge",
            RecordType::Append => "append",
            RecordType::FlagUpdate => "flag-update",
            RecordType::HeaderUpdate => "header-update",
            RecordType::ExtIntro => "ext-intro",
            RecordType::ExtReset => "ext-reset",
            RecordType::ExtHdrUpdate => "ext-hdr",
            RecordType::ExtHdrUpdate32 => "ext-hdr32",
            RecordType::ExtRecUpdate => "ext-rec",
            RecordType::KeywordUpdate => "keyword-update",
            RecordType::KeywordReset => "keyword-reset",
            RecordType::ExtAtomicInc => "ext-atomic-inc",
            RecordType::ExpungeGuid => "expunge-guid",
            RecordType::ModseqUpdate => "modseq-update",
            RecordType::IndexDeleted => "index-deleted",
            RecordType::IndexUndeleted => "index-undeleted",
            RecordType::Boundary => "boundary",
            RecordType::AttributeUpdate => "attribute-update",
        }
    }
}

/// The log file header (spec 4.1), decoded; short headers are zero-extended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct LogHeader {
    pub major_version: u8,
    pub minor_version: u8,
    pub hdr_size: u16,
    /// 0 = the log was marked corrupted.
    pub indexid: u32,
    pub file_seq: u32,
    /// 0 = this log starts a new history (reset).
    pub prev_file_seq: u32,
    pub prev_file_offset: u32,
    pub create_stamp: u32,
    pub initial_modseq: u64,
    pub compat_flags: u8,
}

impl LogHeader {
    /// Decodes and validates a log header.
    pub fn parse(b: &[u8]) -> Result<LogHeader> {
        if b.len() < MIN_HEADER_SIZE {
            return Err(Error::truncated(
                KIND,
                0,
                "log header",
                MIN_HEADER_SIZE as u64,
                b.len() as u64,
            ));
        }
        let hdr_size = u16_at(b, 2).unwrap_or(0);
        let hs = usize::from(hdr_size);
        if hs < MIN_HEADER_SIZE {
            return Err(Error::invalid(
                KIND,
                2,
                "hdr_size",
                format!("{hs} < {MIN_HEADER_SIZE}"),
            ));
        }
        if hs > b.len() {
            return Err(Error::truncated(
                KIND,
                0,
                "log header",
                hs as u64,
                b.len() as u64,
            ));
        }
        // Fields past hdr_size read as zero (older, shorter headers).
        let mut h = [0u8; HEADER_SIZE];
        let n = hs.min(HEADER_SIZE);
        h[..n].copy_from_slice(&b[..n]);
        let hdr = LogHeader {
            major_version: h[0],
            minor_version: h[1],
            hdr_size,
            indexid: u32_at(&h, 4).unwrap_or(0),
            file_seq: u32_at(&h, 8).unwrap_or(0),
            prev_file_seq: u32_at(&h, 12).unwrap_or(0),
            prev_file_offset: u32_at(&h, 16).unwrap_or(0),
            create_stamp: u32_at(&h, 20).unwrap_or(0),
            initial_modseq: u64_at(&h, 24).unwrap_or(0),
            compat_flags: h[32],
        };
        if hdr.major_version != MAJOR_VERSION {
            return Err(Error::format(
                KIND,
                0,
                crate::FormatRule::BadVersion {
                    what: "log major version",
                    found: hdr.major_version.to_string(),
                },
            ));
        }
        // Before 1.2 compat_flags was not written; from 1.2 on only little-endian is readable.
        if hdr.minor_version >= 2 && hdr.compat_flags != 1 {
            return Err(Error::Unsupported {
                path: None,
                what: format!(
                    "log compat_flags {:#x} (only little-endian files are read)",
                    hdr.compat_flags
                ),
            });
        }
        if hdr.file_seq == 0 {
            return Err(Error::invalid(KIND, 8, "file_seq", "0"));
        }
        Ok(hdr)
    }

    /// True when the log was marked corrupted by Dovecot (indexid overwritten with 0).
    pub fn is_marked_corrupted(&self) -> bool {
        self.indexid == 0
    }
}

/// A position in the log history: file sequence and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct LogPosition {
    pub file_seq: u32,
    pub offset: u32,
}

/// A parsed transaction log, borrowing the file's bytes.
#[derive(Debug, Clone)]
pub struct LogFile<'a> {
    bytes: &'a [u8],
    header: LogHeader,
    sync_offset: usize,
    end_modseq: u64,
}

impl<'a> LogFile<'a> {
    /// Parses the header and finds the sync offset (end of the last complete
    /// transaction). Framing corruption inside the complete part is an error.
    pub fn parse(bytes: &'a [u8]) -> Result<LogFile<'a>> {
        let header = LogHeader::parse(bytes)?;
        let hs = usize::from(header.hdr_size);
        let mut sync_offset = hs;
        let mut off = hs;
        // End of the boundary-announced transaction we are inside, if any.
        let mut tx_end: Option<usize> = None;
        let mut modseq = ModseqCounter::new(&header);
        let mut end_modseq = modseq.cur;
        while let Some(raw) = bytes.get(off..off + 8) {
            let size = unpack_offset([raw[0], raw[1], raw[2], raw[3]]) as usize;
            if size == 0 {
                break; // not yet written
            }
            if size < 8 {
                return Err(Error::invalid(
                    KIND,
                    off as u64,
                    "record size",
                    format!("{size} < 8"),
                ));
            }
            let Some(end) = off.checked_add(size).filter(|&e| e <= bytes.len()) else {
                break; // being appended
            };
            let t = le32(&raw[4..8]);
            let payload = &bytes[off + 8..end];
            if t & rtype::TYPE_MASK == rtype::BOUNDARY {
                if tx_end.is_some() {
                    return Err(Error::invalid(
                        KIND,
                        off as u64,
                        "boundary",
                        "boundary inside a transaction",
                    ));
                }
                let tx_size = u32_at(payload, 0).ok_or_else(|| {
                    Error::truncated(KIND, off as u64, "boundary record", 12, size as u64)
                })? as usize;
                if tx_size < size {
                    return Err(Error::invalid(
                        KIND,
                        off as u64,
                        "boundary size",
                        format!("{tx_size} smaller than the boundary record"),
                    ));
                }
                match off.checked_add(tx_size).filter(|&e| e <= bytes.len()) {
                    Some(e) => tx_end = Some(e),
                    None => break, // transaction not completely written yet
                }
            }
            modseq.apply(t, payload);
            off = end;
            match tx_end {
                Some(te) if off == te => {
                    tx_end = None;
                    sync_offset = off;
                    end_modseq = modseq.cur;
                }
                Some(te) if off > te => {
                    return Err(Error::invalid(
                        KIND,
                        off as u64,
                        "boundary size",
                        format!("transaction ends at {te}, inside a record"),
                    ));
                }
                Some(_) => {}
                None => {
                    sync_offset = off;
                    end_modseq = modseq.cur;
                }
            }
        }
        Ok(LogFile {
            bytes,
            header,
            sync_offset,
            end_modseq,
        })
    }

    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// End of the last complete transaction: where the next one is appended,
    /// and how far readers may go.
    pub fn sync_offset(&self) -> u32 {
        self.sync_offset as u32
    }

    /// Bytes after the sync offset (an unfinished append, or garbage).
    pub fn trailing_bytes(&self) -> usize {
        self.bytes.len() - self.sync_offset
    }

    /// The file's highest modseq: the modseq at the sync offset (spec 4.6).
    pub fn highest_modseq(&self) -> u64 {
        self.end_modseq
    }

    /// All complete records, from the header to the sync offset.
    pub fn records(&self) -> Records<'a> {
        Records {
            bytes: &self.bytes[..self.sync_offset],
            off: usize::from(self.header.hdr_size),
            modseq: ModseqCounter::new(&self.header),
            failed: false,
        }
    }

    /// Complete records starting at `offset`, which must be a record start
    /// (e.g. an index's head offset). Modseqs are derived from the file start.
    pub fn records_from(&self, offset: u32) -> Result<Records<'a>> {
        let target = offset as usize;
        let mut it = self.records();
        if target < usize::from(self.header.hdr_size) || target > self.sync_offset {
            return Err(Error::invalid(
                KIND,
                u64::from(offset),
                "log offset",
                format!(
                    "outside the records [{}, {}]",
                    self.header.hdr_size, self.sync_offset
                ),
            ));
        }
        while it.off < target {
            match it.next() {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        if it.off != target {
            return Err(Error::invalid(
                KIND,
                u64::from(offset),
                "log offset",
                "not at a record boundary",
            ));
        }
        Ok(it)
    }

    /// Complete transactions: a boundary with the records it covers, or a
    /// single unbounded record.
    pub fn transactions(&self) -> Transactions<'a> {
        Transactions {
            records: self.records(),
            pending: None,
        }
    }
}

/// Derives modseqs while walking a log (spec 4.6).
#[derive(Debug, Clone)]
pub(crate) struct ModseqCounter {
    pub cur: u64,
    minor: u8,
}

impl ModseqCounter {
    pub(crate) fn new(h: &LogHeader) -> Self {
        ModseqCounter {
            cur: h.initial_modseq,
            minor: h.minor_version,
        }
    }

    /// Applies one record's effect on the modseq counter.
    pub(crate) fn apply(&mut self, t: u32, payload: &[u8]) {
        let Some(ty) = RecordType::from_raw(t) else {
            return;
        };
        let external = t & rtype::EXTERNAL != 0;
        match ty {
            RecordType::ExtIntro if self.cur == 0 => {
                // Legacy logs without initial_modseq start counting when modseqs get enabled.
                if let Some(name) = first_intro_name(payload) {
                    if name == b"modseq" {
                        self.cur = 1;
                    }
                }
            }
            _ if self.cur == 0 => {}
            // Saturating: a damaged initial_modseq near u64::MAX must not overflow.
            RecordType::Expunge | RecordType::ExpungeGuid if external => {
                self.cur = self.cur.saturating_add(1)
            }
            RecordType::Append
            | RecordType::KeywordUpdate
            | RecordType::KeywordReset
            | RecordType::AttributeUpdate => self.cur = self.cur.saturating_add(1),
            RecordType::FlagUpdate if self.minor < 3 || flag_update_bumps_modseq(payload) => {
                self.cur = self.cur.saturating_add(1)
            }
            RecordType::ModseqUpdate => {
                for c in payload.chunks_exact(12) {
                    let m = u64::from(le32(&c[4..8])) | u64::from(le32(&c[8..12])) << 32;
                    self.cur = self.cur.max(m);
                }
            }
            _ => {}
        }
    }
}

fn first_intro_name(p: &[u8]) -> Option<&[u8]> {
    let ns = usize::from(u16_at(p, 18)?);
    p.get(20..20 + ns)
}

fn flag_update_bumps_modseq(p: &[u8]) -> bool {
    p.chunks_exact(12)
        .any(|c| (c[8] | c[9]) & crate::index::flags::IMAP_MASK != 0 || c[10] != 0)
}

/// One complete record of a log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRecord<'a> {
    /// File offset of the record header.
    pub offset: u32,
    /// Total size including the 8-byte record header.
    pub size: u32,
    /// The raw type field, with EXTERNAL/SYNC bits.
    pub raw_type: u32,
    /// Modseq after this record (spec 4.6).
    pub modseq: u64,
    /// Payload (after the 8-byte header).
    pub payload: &'a [u8],
}

impl<'a> LogRecord<'a> {
    /// The record's type; `None` for unknown types.
    pub fn record_type(&self) -> Option<RecordType> {
        RecordType::from_raw(self.raw_type)
    }
    /// True for changes already carried out in the backend.
    pub fn is_external(&self) -> bool {
        self.raw_type & rtype::EXTERNAL != 0
    }
    /// True for changes written by dsync.
    pub fn is_sync(&self) -> bool {
        self.raw_type & rtype::SYNC != 0
    }
    /// End offset of this record.
    pub fn end(&self) -> u32 {
        self.offset.saturating_add(self.size)
    }
    /// Decodes the payload. EXT_REC_UPDATE and EXT_ATOMIC_INC entries need the
    /// record size of the preceding EXT_INTRO; see [`ExtRecUpdates`].
    pub fn body(&self) -> Result<RecordBody<'a>> {
        let ty = self.record_type().ok_or_else(|| {
            Error::invalid(
                KIND,
                u64::from(self.offset),
                "record type",
                format!("unknown type {:#x}", self.raw_type),
            )
        })?;
        decode_body(ty, self.payload).map_err(|(rel, what)| {
            Error::invalid(
                KIND,
                u64::from(self.offset) + 8 + rel as u64,
                ty.name(),
                what,
            )
        })
    }
}

/// Iterator over complete records; stops after the first error.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    bytes: &'a [u8],
    off: usize,
    modseq: ModseqCounter,
    failed: bool,
}

impl<'a> Records<'a> {
    /// Offset of the next record.
    pub fn offset(&self) -> u32 {
        self.off as u32
    }
    /// Modseq before the next record.
    pub fn modseq(&self) -> u64 {
        self.modseq.cur
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<LogRecord<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let raw = self.bytes.get(self.off..self.off + 8)?;
        let size = unpack_offset([raw[0], raw[1], raw[2], raw[3]]) as usize;
        // LogFile::parse validated the framing up to the sync offset.
        let Some(end) = self
            .off
            .checked_add(size)
            .filter(|&e| size >= 8 && e <= self.bytes.len())
        else {
            self.failed = true;
            return Some(Err(Error::invalid(
                KIND,
                self.off as u64,
                "record size",
                format!("{size}"),
            )));
        };
        let raw_type = le32(&raw[4..8]);
        let payload = &self.bytes[self.off + 8..end];
        self.modseq.apply(raw_type, payload);
        let rec = LogRecord {
            offset: self.off as u32,
            size: size as u32,
            raw_type,
            modseq: self.modseq.cur,
            payload,
        };
        self.off = end;
        Some(Ok(rec))
    }
}

/// A complete transaction: its records in order (the boundary first, if any).
#[derive(Debug, Clone)]
pub struct Transaction<'a> {
    pub offset: u32,
    pub end: u32,
    pub records: Vec<LogRecord<'a>>,
}

/// Iterator over complete transactions.
#[derive(Debug, Clone)]
pub struct Transactions<'a> {
    records: Records<'a>,
    pending: Option<LogRecord<'a>>,
}

impl<'a> Iterator for Transactions<'a> {
    type Item = Result<Transaction<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let first = match self.pending.take() {
            Some(r) => r,
            None => match self.records.next()? {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            },
        };
        let mut tx = Transaction {
            offset: first.offset,
            end: first.end(),
            records: vec![first],
        };
        if first.record_type() == Some(RecordType::Boundary) {
            let want = first
                .offset
                .saturating_add(u32_at(first.payload, 0).unwrap_or(0));
            while tx.end < want {
                match self.records.next() {
                    Some(Ok(r)) => {
                        tx.end = r.end();
                        tx.records.push(r);
                    }
                    Some(Err(e)) => return Some(Err(e)),
                    None => break,
                }
            }
        }
        Some(Ok(tx))
    }
}

/// `{uid1, uid2}` ranges (EXPUNGE, KEYWORD_RESET, keyword update uid ranges).
#[derive(Debug, Clone)]
pub struct UidRanges<'a>(&'a [u8]);

impl<'a> Iterator for UidRanges<'a> {
    type Item = (u32, u32);
    fn next(&mut self) -> Option<(u32, u32)> {
        let c = self.0.get(..8)?;
        self.0 = &self.0[8..];
        Some((le32(c), le32(&c[4..])))
    }
}

/// APPEND entries: `(uid, flags)` plus the raw 8 bytes.
#[derive(Debug, Clone)]
pub struct Appends<'a>(&'a [u8]);

/// One appended message record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendEntry<'a> {
    pub uid: u32,
    pub flags: u8,
    /// The 8 bytes copied verbatim into the index record.
    pub raw: &'a [u8],
}

impl<'a> Iterator for Appends<'a> {
    type Item = AppendEntry<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        let c = self.0.get(..8)?;
        self.0 = &self.0[8..];
        Some(AppendEntry {
            uid: le32(c),
            flags: c[4],
            raw: c,
        })
    }
}

/// A FLAG_UPDATE entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FlagUpdate {
    pub uid1: u32,
    pub uid2: u32,
    pub add_flags: u8,
    pub remove_flags: u8,
    pub modseq_inc_flag: u8,
}

/// FLAG_UPDATE entries.
#[derive(Debug, Clone)]
pub struct FlagUpdates<'a>(&'a [u8]);

impl<'a> Iterator for FlagUpdates<'a> {
    type Item = FlagUpdate;
    fn next(&mut self) -> Option<FlagUpdate> {
        let c = self.0.get(..12)?;
        self.0 = &self.0[12..];
        Some(FlagUpdate {
            uid1: le32(c),
            uid2: le32(&c[4..]),
            add_flags: c[8],
            remove_flags: c[9],
            modseq_inc_flag: c[10],
        })
    }
}

/// An EXT_INTRO entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtIntro<'a> {
    /// Extension index in the map, or `u32::MAX` to look up by name.
    pub ext_id: u32,
    pub reset_id: u32,
    pub hdr_size: u32,
    pub record_size: u16,
    pub record_align: u16,
    pub flags: u16,
    pub name: &'a [u8],
}

/// EXT_INTRO flag: never shrink the extension.
pub const EXT_INTRO_NO_SHRINK: u16 = 0x1;

/// `(offset, data)` entries of a (base or extension) header update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderUpdate<'a> {
    pub offset: u32,
    pub data: &'a [u8],
}

/// `(uid, guid)` entries of EXPUNGE_GUID.
#[derive(Debug, Clone)]
pub struct ExpungeGuids<'a>(&'a [u8]);

impl<'a> Iterator for ExpungeGuids<'a> {
    type Item = (u32, [u8; 16]);
    fn next(&mut self) -> Option<Self::Item> {
        let c = self.0.get(..20)?;
        self.0 = &self.0[20..];
        Some((le32(c), crate::le::guid_at(c, 4).unwrap_or_default()))
    }
}

/// `(uid, modseq)` entries of MODSEQ_UPDATE.
#[derive(Debug, Clone)]
pub struct ModseqUpdates<'a>(&'a [u8]);

impl<'a> Iterator for ModseqUpdates<'a> {
    type Item = (u32, u64);
    fn next(&mut self) -> Option<Self::Item> {
        let c = self.0.get(..12)?;
        self.0 = &self.0[12..];
        Some((
            le32(c),
            u64::from(le32(&c[4..])) | u64::from(le32(&c[8..])) << 32,
        ))
    }
}

/// `(uid, diff)` entries of EXT_ATOMIC_INC.
#[derive(Debug, Clone)]
pub struct AtomicIncs<'a>(&'a [u8]);

impl<'a> Iterator for AtomicIncs<'a> {
    type Item = (u32, i32);
    fn next(&mut self) -> Option<Self::Item> {
        let c = self.0.get(..8)?;
        self.0 = &self.0[8..];
        Some((le32(c), le32(&c[4..]) as i32))
    }
}

/// EXT_REC_UPDATE entries `(uid, data)`; the data size comes from the
/// preceding EXT_INTRO (`record_size`), each entry padded to 4 bytes.
#[derive(Debug, Clone)]
pub struct ExtRecUpdates<'a> {
    rest: &'a [u8],
    record_size: usize,
}

impl<'a> ExtRecUpdates<'a> {
    /// Splits an EXT_REC_UPDATE payload with the intro's record size.
    pub fn new(payload: &'a [u8], record_size: u16) -> Self {
        ExtRecUpdates {
            rest: payload,
            record_size: usize::from(record_size),
        }
    }
    /// Bytes per entry.
    pub fn entry_size(&self) -> usize {
        align4(4 + self.record_size)
    }
}

impl<'a> Iterator for ExtRecUpdates<'a> {
    type Item = (u32, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let es = self.entry_size();
        if self.rest.len() < 4 + self.record_size {
            self.rest = &[];
            return None;
        }
        let uid = le32(self.rest);
        let data = &self.rest[4..4 + self.record_size];
        self.rest = self.rest.get(es..).unwrap_or(&[]);
        Some((uid, data))
    }
}

/// One change of an ATTRIBUTE_UPDATE record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeChange<'a> {
    /// `+` set or `-` unset.
    pub set: bool,
    /// `p` private or `s` shared.
    pub scope: u8,
    pub key: &'a [u8],
    pub timestamp: u32,
    /// Value length, for sets.
    pub value_len: Option<u32>,
}

/// A decoded record payload.
#[derive(Debug, Clone)]
pub enum RecordBody<'a> {
    Expunge(UidRanges<'a>),
    Append(Appends<'a>),
    FlagUpdate(FlagUpdates<'a>),
    HeaderUpdate(Vec<HeaderUpdate<'a>>),
    ExtIntro(Vec<ExtIntro<'a>>),
    ExtReset {
        new_reset_id: u32,
        preserve_data: bool,
    },
    ExtHdrUpdate(Vec<HeaderUpdate<'a>>),
    /// Raw payload; split it with [`ExtRecUpdates::new`] and the intro's record size.
    ExtRecUpdate(&'a [u8]),
    KeywordUpdate {
        add: bool,
        name: &'a [u8],
        uids: UidRanges<'a>,
    },
    KeywordReset(UidRanges<'a>),
    ExtAtomicInc(AtomicIncs<'a>),
    ExpungeGuid(ExpungeGuids<'a>),
    ModseqUpdate(ModseqUpdates<'a>),
    IndexDeleted,
    IndexUndeleted,
    Boundary {
        size: u32,
    },
    AttributeUpdate(Vec<AttributeChange<'a>>),
}

type DecodeResult<T> = std::result::Result<T, (usize, String)>;

fn exact(p: &[u8], entry: usize) -> DecodeResult<()> {
    if p.is_empty() || p.len() % entry != 0 {
        return Err((
            0,
            format!(
                "payload of {} bytes is not a non-empty multiple of {entry}",
                p.len()
            ),
        ));
    }
    Ok(())
}

fn decode_header_updates(p: &[u8], wide: bool) -> DecodeResult<Vec<HeaderUpdate<'_>>> {
    let mut out = Vec::new();
    let mut i = 0usize;
    let hl = if wide { 8 } else { 4 };
    while i < p.len() {
        let (offset, size) = if wide {
            (u32_at(p, i), u32_at(p, i + 4))
        } else {
            (u16_at(p, i).map(u32::from), u16_at(p, i + 2).map(u32::from))
        };
        let (Some(offset), Some(size)) = (offset, size) else {
            return Err((i, "truncated update header".into()));
        };
        let start = i + hl;
        let data = start
            .checked_add(size as usize)
            .and_then(|e| p.get(start..e))
            .ok_or((i, format!("update of {size} bytes runs past the record")))?;
        if size == 0 {
            return Err((i, "update of 0 bytes".into()));
        }
        out.push(HeaderUpdate { offset, data });
        i = align4(start + size as usize);
    }
    Ok(out)
}

fn decode_intros(p: &[u8]) -> DecodeResult<Vec<ExtIntro<'_>>> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < p.len() {
        let e = p.get(i..i + 20).ok_or((i, "truncated intro".to_string()))?;
        let name_size = usize::from(u16_at(e, 18).unwrap_or(0));
        let name = p
            .get(i + 20..i + 20 + name_size)
            .ok_or((i, format!("name of {name_size} bytes runs past the record")))?;
        out.push(ExtIntro {
            ext_id: le32(e),
            reset_id: le32(&e[4..]),
            hdr_size: le32(&e[8..]),
            record_size: u16_at(e, 12).unwrap_or(0),
            record_align: u16_at(e, 14).unwrap_or(0),
            flags: u16_at(e, 16).unwrap_or(0),
            name,
        });
        i = align4(i + 20 + name_size);
    }
    if out.is_empty() {
        return Err((0, "empty intro".into()));
    }
    Ok(out)
}

fn decode_attributes(p: &[u8]) -> DecodeResult<Vec<AttributeChange<'_>>> {
    let mut keys: Vec<(bool, u8, &[u8])> = Vec::new();
    let mut i = 0usize;
    let mut extra = 0usize;
    while i < p.len() && p[i] != 0 {
        let len = p[i..]
            .iter()
            .position(|&c| c == 0)
            .ok_or((i, "key not NUL-terminated".to_string()))?;
        let s = &p[i..i + len];
        if s.len() < 2 || !(s[0] == b'+' || s[0] == b'-') {
            return Err((i, "key does not start with + or - and a scope".into()));
        }
        let set = s[0] == b'+';
        extra += if set { 2 } else { 1 };
        keys.push((set, s[1], &s[2..]));
        i += len + 1;
    }
    // The key list ends with one more NUL; the numbers start at the next
    // 4-byte boundary after it (a list that fills its last word exactly
    // gets a whole word of padding, as Dovecot writes it).
    if p.get(i) != Some(&0) {
        return Err((i, "key list does not end with NUL".into()));
    }
    let i = align4(i + 1);
    let rest = p.get(i..).unwrap_or(&[]);
    if rest.len() != extra * 4 {
        return Err((
            i,
            format!(
                "{} bytes of timestamps/lengths, expected {}",
                rest.len(),
                extra * 4
            ),
        ));
    }
    let mut nums = rest.chunks_exact(4).map(le32);
    let mut out = Vec::with_capacity(keys.len());
    for (set, scope, key) in keys {
        let timestamp = nums.next().unwrap_or(0);
        let value_len = if set { nums.next() } else { None };
        out.push(AttributeChange {
            set,
            scope,
            key,
            timestamp,
            value_len,
        });
    }
    Ok(out)
}

fn decode_body(ty: RecordType, p: &[u8]) -> DecodeResult<RecordBody<'_>> {
    Ok(match ty {
        RecordType::Expunge => {
            exact(p, 8)?;
            RecordBody::Expunge(UidRanges(p))
        }
        RecordType::KeywordReset => {
            exact(p, 8)?;
            RecordBody::KeywordReset(UidRanges(p))
        }
        RecordType::Append => {
            exact(p, 8)?;
            RecordBody::Append(Appends(p))
        }
        RecordType::FlagUpdate => {
            exact(p, 12)?;
            RecordBody::FlagUpdate(FlagUpdates(p))
        }
        RecordType::HeaderUpdate => RecordBody::HeaderUpdate(decode_header_updates(p, false)?),
        RecordType::ExtHdrUpdate => RecordBody::ExtHdrUpdate(decode_header_updates(p, false)?),
        RecordType::ExtHdrUpdate32 => RecordBody::ExtHdrUpdate(decode_header_updates(p, true)?),
        RecordType::ExtIntro => RecordBody::ExtIntro(decode_intros(p)?),
        RecordType::ExtReset => {
            let new_reset_id = u32_at(p, 0).ok_or((0, "shorter than 4 bytes".to_string()))?;
            RecordBody::ExtReset {
                new_reset_id,
                preserve_data: p.get(4).is_some_and(|&b| b != 0),
            }
        }
        RecordType::ExtRecUpdate => {
            if p.is_empty() {
                return Err((0, "empty payload".into()));
            }
            RecordBody::ExtRecUpdate(p)
        }
        RecordType::ExtAtomicInc => {
            exact(p, 8)?;
            RecordBody::ExtAtomicInc(AtomicIncs(p))
        }
        RecordType::KeywordUpdate => {
            let modify = *p.first().ok_or((0, "empty payload".to_string()))?;
            let name_size = usize::from(u16_at(p, 2).ok_or((0, "truncated".to_string()))?);
            if name_size == 0 {
                return Err((2, "empty keyword name".into()));
            }
            let name = p
                .get(4..4 + name_size)
                .ok_or((2, format!("name of {name_size} bytes runs past the record")))?;
            let uids = p.get(align4(4 + name_size)..).unwrap_or(&[]);
            if uids.len() % 8 != 0 {
                return Err((
                    align4(4 + name_size),
                    "uid ranges not a multiple of 8 bytes".into(),
                ));
            }
            if modify > 1 {
                return Err((0, format!("modify_type {modify}")));
            }
            RecordBody::KeywordUpdate {
                add: modify == 0,
                name,
                uids: UidRanges(uids),
            }
        }
        RecordType::ExpungeGuid => {
            exact(p, 20)?;
            RecordBody::ExpungeGuid(ExpungeGuids(p))
        }
        RecordType::ModseqUpdate => {
            exact(p, 12)?;
            RecordBody::ModseqUpdate(ModseqUpdates(p))
        }
        RecordType::IndexDeleted => RecordBody::IndexDeleted,
        RecordType::IndexUndeleted => RecordBody::IndexUndeleted,
        RecordType::Boundary => RecordBody::Boundary {
            size: u32_at(p, 0).ok_or((0, "shorter than 4 bytes".to_string()))?,
        },
        RecordType::AttributeUpdate => RecordBody::AttributeUpdate(decode_attributes(p)?),
    })
}

/// A log file mapped from disk; [`MappedLog::parse`] gives the borrowed view.
pub struct MappedLog {
    map: MappedFile,
}

impl MappedLog {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Ok(MappedLog {
            map: MappedFile::open(path)?,
        })
    }
    pub fn parse(&self) -> Result<LogFile<'_>> {
        LogFile::parse(self.map.bytes()).map_err(|e| e.with_path(self.map.path()))
    }
    pub fn path(&self) -> &Path {
        self.map.path()
    }
    pub fn bytes(&self) -> &[u8] {
        self.map.bytes()
    }
}

/// Base header field names by offset, for readable header updates in dumps.
pub fn base_header_field(offset: u32) -> Option<(&'static str, usize)> {
    use crate::index::hdr_off::*;
    let o = offset as usize;
    Some(match o {
        MAJOR_VERSION => ("major_version", 1),
        MINOR_VERSION => ("minor_version", 1),
        BASE_HEADER_SIZE => ("base_header_size", 2),
        HEADER_SIZE => ("header_size", 4),
        RECORD_SIZE => ("record_size", 4),
        COMPAT_FLAGS => ("compat_flags", 1),
        INDEXID => ("indexid", 4),
        FLAGS => ("flags", 4),
        UID_VALIDITY => ("uid_validity", 4),
        NEXT_UID => ("next_uid", 4),
        MESSAGES_COUNT => ("messages_count", 4),
        UNUSED_OLD_RECENT_MESSAGES_COUNT => ("unused_old_recent_messages_count", 4),
        SEEN_MESSAGES_COUNT => ("seen_messages_count", 4),
        DELETED_MESSAGES_COUNT => ("deleted_messages_count", 4),
        FIRST_RECENT_UID => ("first_recent_uid", 4),
        FIRST_UNSEEN_UID_LOWWATER => ("first_unseen_uid_lowwater", 4),
        FIRST_DELETED_UID_LOWWATER => ("first_deleted_uid_lowwater", 4),
        LOG_FILE_SEQ => ("log_file_seq", 4),
        LOG_FILE_TAIL_OFFSET => ("log_file_tail_offset", 4),
        LOG_FILE_HEAD_OFFSET => ("log_file_head_offset", 4),
        UNUSED_OLD_SYNC_SIZE_PART1 => ("unused_old_sync_size_part1", 4),
        LOG2_ROTATE_TIME => ("log2_rotate_time", 4),
        LAST_TEMP_FILE_SCAN => ("last_temp_file_scan", 4),
        DAY_STAMP => ("day_stamp", 4),
        DAY_FIRST_UID => ("day_first_uid", 32),
        _ => return None,
    })
}

fn uint_le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |a, &x| (a << 8) | u64::from(x))
}

fn header_update_json(u: &HeaderUpdate<'_>) -> Value {
    // Split into known fields where the update covers them exactly.
    let mut fields = Vec::new();
    let mut off = u.offset;
    let mut rest = u.data;
    while !rest.is_empty() {
        match base_header_field(off) {
            Some((name, size)) if size <= rest.len() && name != "day_first_uid" => {
                fields.push(json!({"field": name, "value": uint_le(&rest[..size])}));
                off += size as u32;
                rest = &rest[size..];
            }
            Some(("day_first_uid", 32)) if rest.len() >= 32 => {
                let v: Vec<u32> = rest[..32].chunks_exact(4).map(le32).collect();
                fields.push(json!({"field": "day_first_uid", "value": v}));
                off += 32;
                rest = &rest[32..];
            }
            _ => break,
        }
    }
    json!({"offset": u.offset, "size": u.data.len(), "data": hex(u.data), "fields": fields})
}

/// Renders one record (with the current intro's record size for ext-rec) as JSON.
pub fn record_json(r: &LogRecord<'_>, intro_record_size: Option<u16>) -> Value {
    let ty = r.record_type();
    let mut v = json!({
        "offset": r.offset,
        "size": r.size,
        "type": ty.map(|t| t.name()).unwrap_or("unknown"),
        "raw_type": r.raw_type,
        "external": r.is_external(),
        "sync": r.is_sync(),
        "modseq": r.modseq,
    });
    let body = match r.body() {
        Ok(b) => b,
        Err(e) => {
            v["error"] = json!(e.to_string());
            v["payload"] = json!(hex(r.payload));
            return v;
        }
    };
    let data = match body {
        RecordBody::Expunge(u) | RecordBody::KeywordReset(u) => {
            json!({"uids": u.map(|(a, b)| json!([a, b])).collect::<Vec<_>>()})
        }
        RecordBody::Append(a) => json!({"records": a
            .map(|e| json!({"uid": e.uid, "flags": e.flags}))
            .collect::<Vec<_>>()}),
        RecordBody::FlagUpdate(f) => json!({"updates": f.collect::<Vec<_>>()}),
        RecordBody::HeaderUpdate(us) => {
            json!({"updates": us.iter().map(header_update_json).collect::<Vec<_>>()})
        }
        RecordBody::ExtHdrUpdate(us) => json!({"updates": us
            .iter()
            .map(|u| json!({"offset": u.offset, "size": u.data.len(), "data": hex(u.data)}))
            .collect::<Vec<_>>()}),
        RecordBody::ExtIntro(is) => json!({"intros": is
            .iter()
            .map(|i| json!({
                "ext_id": i.ext_id, "reset_id": i.reset_id, "hdr_size": i.hdr_size,
                "record_size": i.record_size, "record_align": i.record_align,
                "flags": i.flags, "name_size": i.name.len(),
                "name": String::from_utf8_lossy(i.name),
            }))
            .collect::<Vec<_>>()}),
        RecordBody::ExtReset {
            new_reset_id,
            preserve_data,
        } => json!({"new_reset_id": new_reset_id, "preserve_data": preserve_data}),
        RecordBody::ExtRecUpdate(p) => match intro_record_size {
            Some(rs) => json!({"record_size": rs, "updates": ExtRecUpdates::new(p, rs)
                .map(|(uid, d)| json!({"uid": uid, "data": hex(d)}))
                .collect::<Vec<_>>()}),
            None => json!({"error": "ext-rec without a preceding ext-intro", "payload": hex(p)}),
        },
        RecordBody::KeywordUpdate { add, name, uids } => json!({
            "modify": if add { 0 } else { 1 },
            "name": String::from_utf8_lossy(name),
            "uids": uids.map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
        }),
        RecordBody::ExtAtomicInc(a) => json!({"updates": a
            .map(|(uid, diff)| json!({"uid": uid, "diff": diff}))
            .collect::<Vec<_>>()}),
        RecordBody::ExpungeGuid(g) => json!({"expunges": g
            .map(|(uid, guid)| json!({"uid": uid, "guid": hex(&guid)}))
            .collect::<Vec<_>>()}),
        RecordBody::ModseqUpdate(m) => json!({"updates": m
            .map(|(uid, modseq)| json!({"uid": uid, "modseq": modseq}))
            .collect::<Vec<_>>()}),
        RecordBody::IndexDeleted | RecordBody::IndexUndeleted => json!({}),
        RecordBody::Boundary { size } => json!({"size": size}),
        RecordBody::AttributeUpdate(a) => json!({"changes": a
            .iter()
            .map(|c| json!({
                "op": if c.set { "add" } else { "remove" },
                "scope": match c.scope { b'p' => "private", b's' => "shared", _ => "?" },
                "key": String::from_utf8_lossy(c.key),
                "timestamp": c.timestamp,
                "value_len": c.value_len,
            }))
            .collect::<Vec<_>>()}),
    };
    v["data"] = data;
    v
}

/// Renders a whole log file as JSON (shape in `docs/dump-json.md`).
pub fn dump_bytes(bytes: &[u8]) -> Result<Value> {
    let log = LogFile::parse(bytes)?;
    let h = log.header();
    let mut records = Vec::new();
    let mut intro_rs: Option<u16> = None;
    let mut prev_modseq = h.initial_modseq;
    for r in log.records() {
        let r = r?;
        let mut v = record_json(&r, intro_rs);
        v["modseq_changed"] = json!(r.modseq != prev_modseq);
        prev_modseq = r.modseq;
        if let Ok(RecordBody::ExtIntro(is)) = r.body() {
            intro_rs = is.last().map(|i| i.record_size);
        }
        records.push(v);
    }
    Ok(json!({
        "header": h,
        "sync_offset": log.sync_offset(),
        "trailing_bytes": log.trailing_bytes(),
        "highest_modseq": log.highest_modseq(),
        "records": records,
    }))
}

/// Parses the file at `path` and returns its content for `homing dump`.
pub fn dump(path: &Path) -> Result<serde_json::Value> {
    let map = MappedFile::open(path)?;
    dump_bytes(map.bytes()).map_err(|e| e.with_path(path))
}
