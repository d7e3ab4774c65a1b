//! One consistent mailbox view: `dovecot.index` replayed with its transaction
//! log (`.log.2` + `.log`), as Dovecot maps an index (spec 4.5–4.7).
//!
//! [`MailboxView::open`] takes a mailbox index directory or an index path
//! (`…/dovecot.index`, `…/dovecot.map.index`, `…/dovecot.list.index`; the file
//! itself may be missing when the state lives only in the log). The view owns
//! a copy of the record array (so extension relayouts and expunges can be
//! applied) and keeps the log files mapped for [`MailboxView::changes_since`].

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, FileKind, Result};
use crate::ext::{self, ModseqHeader};
use crate::index::{flags, hdr_off, IndexFile, IndexHeader, RecordRef, BASE_HEADER_SIZE};
use crate::le::{align4, hex, u32_at, u64_at};
use crate::log::{
    ExtIntro, ExtRecUpdates, LogFile, LogHeader, LogPosition, LogRecord, RecordBody, RecordType,
    EXT_INTRO_NO_SHRINK,
};
use crate::mmap::MappedFile;

/// A record size that admits every valid geometry (multiple of 8): intros are
/// checked before the relayout computes the real one.
const ANY_RECORD_SIZE: u32 = 0xffff_fff8;

/// Upper bound of all extension headers together (Dovecot's own limit is
/// 16 MiB per extension).
const MAX_HEADER_BYTES: usize = 32 << 20;
/// Record arrays may always grow to this size through relayouts; beyond it
/// only up to four times their current size.
const MAX_RECORDS_BYTES_FLOOR: usize = 64 << 20;

/// Keep at most this many replay problems (the rest are counted).
const MAX_PROBLEMS: usize = 64;

/// An extension of the replayed map (owned; geometry may change during replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewExtension {
    pub name: String,
    pub reset_id: u32,
    /// Header data (`hdr_size` bytes).
    pub header: Vec<u8>,
    pub record_offset: u16,
    pub record_size: u16,
    pub record_align: u16,
}

impl ViewExtension {
    pub fn hdr_size(&self) -> u32 {
        self.header.len() as u32
    }
}

/// Location of an extension's data inside every record, for fast per-message access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtHandle {
    pub offset: u16,
    pub size: u16,
}

/// Something in the log that Dovecot would treat as corruption; replay skipped it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplayProblem {
    pub file_seq: u32,
    pub offset: u32,
    pub what: String,
}

/// The bytes of a log file: mapped from disk, or owned (tests, fuzzing).
pub enum LogSource {
    Mapped(MappedFile),
    Owned(Vec<u8>),
}

impl LogSource {
    fn bytes(&self) -> &[u8] {
        match self {
            LogSource::Mapped(m) => m.bytes(),
            LogSource::Owned(v) => v,
        }
    }
    fn path(&self) -> Option<&Path> {
        match self {
            LogSource::Mapped(m) => Some(m.path()),
            LogSource::Owned(_) => None,
        }
    }
}

/// A log file of the view, kept mapped.
struct LoadedLog {
    src: LogSource,
    header: LogHeader,
    sync_offset: u32,
}

impl LoadedLog {
    fn parse(&self) -> Result<LogFile<'_>> {
        LogFile::parse(self.src.bytes()).map_err(|e| match self.src.path() {
            Some(p) => e.with_path(p),
            None => e,
        })
    }
}

/// The replayed state of one mailbox index.
pub struct MailboxView {
    index_path: PathBuf,
    /// Header of `dovecot.index` as stored, when the file exists and was used.
    file_header: Option<IndexHeader>,
    base: Vec<u8>,
    exts: Vec<ViewExtension>,
    record_size: usize,
    records: Vec<u8>,
    /// Records marked expunged during replay, compacted at the end.
    dead: Vec<bool>,
    dead_count: usize,
    keywords: Vec<String>,
    logs: Vec<LoadedLog>,
    replay_start: Option<LogPosition>,
    log_highest_modseq: u64,
    problems: Vec<ReplayProblem>,
    problem_count: usize,
    index_deleted: bool,
}

impl std::fmt::Debug for MailboxView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxView")
            .field("index_path", &self.index_path)
            .field("messages_count", &self.messages_count())
            .field("next_uid", &self.next_uid())
            .field("head", &self.head())
            .finish_non_exhaustive()
    }
}

/// Where replay ended.
struct Replayed {
    last_seq: u32,
    last_end: u32,
    tail: u32,
    modseq: u64,
    advanced: bool,
}

/// The current-extension state of the replay (selected by EXT_INTRO).
#[derive(Debug, Clone, Copy)]
struct CurExt {
    idx: usize,
    record_size: u16,
    ignore: bool,
}

impl MailboxView {
    /// Opens the index of a mailbox directory or at an index path, maps the
    /// logs and replays them.
    pub fn open(path: impl AsRef<Path>) -> Result<MailboxView> {
        let index_path = resolve_index_path(path.as_ref())?;
        let index_map = match MappedFile::open(&index_path) {
            Ok(m) => Some(m),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut logs = Vec::new();
        for suffix in [".log.2", ".log"] {
            let p = with_suffix(&index_path, suffix);
            match MappedFile::open(&p) {
                Ok(map) => logs.push(LogSource::Mapped(map)),
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let index_bytes = index_map.as_ref().map(|m| m.bytes());
        let mut view = Self::from_parts(index_bytes, logs).map_err(|e| e.with_path(&index_path))?;
        view.index_path = index_path;
        Ok(view)
    }

    /// Builds a view from an index file's bytes (optional) and log files
    /// (any order; `.log.2` and `.log`). Used by [`MailboxView::open`], tests and fuzzers.
    pub fn from_parts(index: Option<&[u8]>, sources: Vec<LogSource>) -> Result<MailboxView> {
        let mut logs = Vec::new();
        for src in sources {
            let mut l = LoadedLog {
                src,
                header: LogHeader::default(),
                sync_offset: 0,
            };
            let lf = l.parse()?;
            let (header, sync_offset) = (*lf.header(), lf.sync_offset());
            l.header = header;
            l.sync_offset = sync_offset;
            logs.push(l);
        }
        logs.sort_by_key(|l| l.header.file_seq);
        logs.dedup_by_key(|l| l.header.file_seq);
        let file = match index {
            Some(b) => Some(IndexFile::parse(b)?),
            None => None,
        };
        let mut view = MailboxView {
            index_path: PathBuf::new(),
            file_header: None,
            base: Vec::new(),
            exts: Vec::new(),
            record_size: 8,
            records: Vec::new(),
            dead: Vec::new(),
            dead_count: 0,
            keywords: Vec::new(),
            logs,
            replay_start: None,
            log_highest_modseq: 0,
            problems: Vec::new(),
            problem_count: 0,
            index_deleted: false,
        };
        view.load_and_replay(file.as_ref())?;
        Ok(view)
    }

    /// Builds a view from in-memory copies of an index and its log files.
    pub fn from_bytes(index: Option<&[u8]>, logs: &[&[u8]]) -> Result<MailboxView> {
        Self::from_parts(
            index,
            logs.iter().map(|l| LogSource::Owned(l.to_vec())).collect(),
        )
    }

    fn load_from_index(&mut self, f: &IndexFile<'_>) {
        self.file_header = Some(*f.header());
        self.base = f.base_header_bytes().to_vec();
        self.exts = f
            .extensions()
            .iter()
            .map(|e| ViewExtension {
                name: e.name.to_string(),
                reset_id: e.reset_id,
                header: e.header.to_vec(),
                record_offset: e.record_offset,
                record_size: e.record_size,
                record_align: e.record_align,
            })
            .collect();
        self.record_size = f.header().record_size as usize;
        // Room for appends the log may hold (each append entry is 8 log bytes),
        // so that replaying them does not move the whole array.
        let log_bytes: usize = self.logs.iter().map(|l| l.src.bytes().len()).sum();
        let extra = (log_bytes / 8).min(1 << 20) * self.record_size;
        let src = f.records_bytes();
        let mut recs = Vec::with_capacity(src.len() + extra);
        recs.extend_from_slice(src);
        self.records = recs;
        self.dead = Vec::new();
        self.dead_count = 0;
        self.keywords = f
            .keywords()
            .map(|k| k.into_iter().map(str::to_string).collect())
            .unwrap_or_default();
    }

    fn load_empty(&mut self, indexid: u32) {
        self.file_header = None;
        self.base = IndexHeader::empty_bytes(indexid).to_vec();
        self.exts.clear();
        self.record_size = 8;
        self.records.clear();
        self.dead.clear();
        self.dead_count = 0;
        self.keywords.clear();
    }

    fn load_and_replay(&mut self, file: Option<&IndexFile<'_>>) -> Result<()> {
        // Which log (by position in self.logs) and offset to start from.
        let newest = self.logs.last().map(|l| l.header);
        let mut start: Option<(usize, u32, bool)> = None; // (log idx, offset, from index)
        if let Some(f) = file {
            let h = f.header();
            let ids_match = newest.is_none_or(|n| n.indexid == h.indexid);
            if ids_match {
                if let Some(i) = self
                    .logs
                    .iter()
                    .position(|l| l.header.file_seq == h.log_file_seq)
                {
                    let l = &self.logs[i];
                    if h.log_file_head_offset < u32::from(l.header.hdr_size)
                        || h.log_file_head_offset > l.sync_offset
                    {
                        return Err(Error::invalid(
                            FileKind::Index,
                            hdr_off::LOG_FILE_HEAD_OFFSET as u64,
                            "log_file_head_offset",
                            format!(
                                "{} outside log seq {} records [{}, {}]",
                                h.log_file_head_offset,
                                h.log_file_seq,
                                l.header.hdr_size,
                                l.sync_offset
                            ),
                        ));
                    }
                    start = Some((i, h.log_file_head_offset, true));
                } else if self.logs.is_empty()
                    || self.logs.iter().all(|l| l.header.file_seq < h.log_file_seq)
                {
                    // No log (or only older ones): the index alone is the state.
                    self.load_from_index(f);
                    self.logs.retain(|_| false);
                    return Ok(());
                }
            }
        }
        if start.is_none() {
            // No usable index position: replay from the newest reset log.
            let reset = self
                .logs
                .iter()
                .rposition(|l| l.header.prev_file_seq == 0)
                .ok_or_else(|| {
                    let what = match file {
                        Some(f) => format!(
                            "index refers to log seq {} which is not available, and no reset log is",
                            f.header().log_file_seq
                        ),
                        None => "no index file and no log that starts a history (prev_file_seq 0)".into(),
                    };
                    Error::Unsupported { path: None, what }
                })?;
            start = Some((reset, u32::from(self.logs[reset].header.hdr_size), false));
        }
        let Some((first, offset, from_index)) = start else {
            return Ok(());
        };
        match (from_index, file) {
            (true, Some(f)) => self.load_from_index(f),
            _ => self.load_empty(self.logs[first].header.indexid),
        }
        // Files before the start are not needed for state, but stay for changes_since.
        self.replay_start = Some(LogPosition {
            file_seq: self.logs[first].header.file_seq,
            offset,
        });
        let index_tail = self
            .file_header
            .filter(|h| from_index && h.log_file_seq == self.logs[first].header.file_seq)
            .map(|h| h.log_file_tail_offset);
        // The logs are taken out of self while replaying so records can borrow them.
        let logs = std::mem::take(&mut self.logs);
        let res = self.replay_logs(&logs, first, offset, index_tail);
        self.logs = logs;
        let Replayed {
            last_seq,
            last_end,
            tail,
            modseq,
            advanced,
        } = res?;
        // Final header position (spec 4.7).
        let old_tail =
            index_tail.filter(|_| last_seq == self.replay_start.map_or(0, |p| p.file_seq));
        self.set_u32(hdr_off::LOG_FILE_SEQ, last_seq);
        self.set_u32(hdr_off::LOG_FILE_HEAD_OFFSET, last_end);
        self.set_u32(
            hdr_off::LOG_FILE_TAIL_OFFSET,
            old_tail.map_or(tail, |t| t.max(tail)),
        );
        if advanced {
            if let Some(i) = self.ext_index(ext::MODSEQ) {
                let mut h = ModseqHeader::decode(&self.exts[i].header);
                h.highest_modseq = modseq;
                h.log_seq = last_seq;
                h.log_offset = last_end;
                let enc = h.encode();
                let n = self.exts[i].header.len().min(16);
                self.exts[i].header[..n].copy_from_slice(&enc[..n]);
            }
        }
        self.compact();
        Ok(())
    }

    fn replay_logs(
        &mut self,
        logs: &[LoadedLog],
        first: usize,
        offset: u32,
        index_tail: Option<u32>,
    ) -> Result<Replayed> {
        let mut out = Replayed {
            last_seq: logs[first].header.file_seq,
            last_end: offset,
            tail: 0,
            modseq: 0,
            advanced: false,
        };
        let mut cur_ext: Option<CurExt> = None;
        for li in first..logs.len() {
            let (seq, hdr) = (logs[li].header.file_seq, logs[li].header);
            if li > first {
                let prev = &logs[li - 1];
                if hdr.prev_file_seq == 0 {
                    // A new history starts: the map is rebuilt from nothing.
                    self.load_empty(hdr.indexid);
                    cur_ext = None;
                } else if hdr.prev_file_seq != prev.header.file_seq
                    || hdr.prev_file_offset != prev.sync_offset
                {
                    return Err(Error::invalid(
                        FileKind::Log,
                        12,
                        "prev_file",
                        format!(
                            "log seq {seq} continues {}/{}, but the previous log is {}/{}",
                            hdr.prev_file_seq,
                            hdr.prev_file_offset,
                            prev.header.file_seq,
                            prev.sync_offset
                        ),
                    ));
                }
            }
            let from = if li == first {
                offset
            } else {
                u32::from(hdr.hdr_size)
            };
            // Tail tracking (spec 4.5) restarts per file; only the last one counts.
            let mut last_read = match index_tail {
                Some(t) if li == first => t,
                _ => 0,
            };
            let mut max_tail = last_read;
            let lf = logs[li].parse()?;
            let mut records = lf.records_from(from)?;
            out.modseq = records.modseq();
            for r in records.by_ref() {
                let rec = r?;
                out.advanced = true;
                out.modseq = rec.modseq;
                // Tail: external records may be skipped over; tail updates move it.
                if rec.is_external() {
                    if let Some(v) = tail_update_value(&rec) {
                        if v > logs[li].sync_offset {
                            self.problem(
                                seq,
                                rec.offset,
                                format!("tail offset {v} beyond the log"),
                            );
                        } else if v >= last_read {
                            last_read = v;
                            max_tail = max_tail.max(v);
                        }
                    } else if max_tail == rec.offset {
                        max_tail = rec.end();
                    }
                }
                self.apply(seq, &rec, &mut cur_ext);
            }
            if li == logs.len() - 1 {
                self.log_highest_modseq = lf.highest_modseq();
            }
            out.last_seq = seq;
            out.last_end = logs[li].sync_offset;
            out.tail = max_tail;
        }
        Ok(out)
    }

    // ----- header access -----

    fn get_u32(&self, off: usize) -> u32 {
        u32_at(&self.base, off).unwrap_or(0)
    }

    fn set_u32(&mut self, off: usize, v: u32) {
        if let Some(s) = self.base.get_mut(off..off + 4) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    }

    fn problem(&mut self, file_seq: u32, offset: u32, what: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(ReplayProblem {
                file_seq,
                offset,
                what,
            });
        }
    }

    fn ext_index(&self, name: &str) -> Option<usize> {
        self.exts.iter().position(|e| e.name == name)
    }

    fn n_slots(&self) -> usize {
        self.records.len() / self.record_size
    }

    fn slot_uid(&self, i: usize) -> u32 {
        u32_at(&self.records, i * self.record_size).unwrap_or(0)
    }

    /// First slot with uid >= `uid`.
    fn lower_bound(&self, uid: u32) -> usize {
        let (mut lo, mut hi) = (0usize, self.n_slots());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.slot_uid(mid) < uid {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn is_dead(&self, i: usize) -> bool {
        self.dead_count > 0 && self.dead.get(i).copied().unwrap_or(false)
    }

    /// Live slots with uid in [uid1, uid2].
    fn slots_in(&self, uid1: u32, uid2: u32) -> std::ops::Range<usize> {
        if uid1 > uid2 {
            return 0..0;
        }
        let a = self.lower_bound(uid1);
        let b = if uid2 == u32::MAX {
            self.n_slots()
        } else {
            self.lower_bound(uid2 + 1)
        };
        a..b.max(a)
    }

    fn slot_of_uid(&self, uid: u32) -> Option<usize> {
        let i = self.lower_bound(uid);
        (i < self.n_slots() && self.slot_uid(i) == uid && !self.is_dead(i)).then_some(i)
    }

    fn modseq_handle(&self) -> Option<ExtHandle> {
        let e = &self.exts[self.ext_index(ext::MODSEQ)?];
        (e.record_size == 8).then_some(ExtHandle {
            offset: e.record_offset,
            size: 8,
        })
    }

    fn raise_modseq(&mut self, h: Option<ExtHandle>, slot: usize, modseq: u64) {
        let Some(h) = h else { return };
        let o = slot * self.record_size + usize::from(h.offset);
        if let Some(s) = self.records.get_mut(o..o + 8) {
            let old = u64_at(s, 0).unwrap_or(0);
            if modseq > old {
                s.copy_from_slice(&modseq.to_le_bytes());
            }
        }
    }

    // ----- counters (spec 4.7 "Counters") -----

    fn update_counts(
        &mut self,
        uid: u32,
        old: u8,
        new: u8,
        lower_lowwaters: bool,
    ) -> std::result::Result<(), String> {
        let count = self.get_u32(hdr_off::MESSAGES_COUNT);
        let next_uid = self.get_u32(hdr_off::NEXT_UID);
        if (old ^ new) & flags::SEEN != 0 {
            let seen = self.get_u32(hdr_off::SEEN_MESSAGES_COUNT);
            if old & flags::SEEN != 0 {
                if seen == 0 {
                    return Err("seen counter below 0".into());
                }
                self.set_u32(hdr_off::SEEN_MESSAGES_COUNT, seen - 1);
            } else {
                if seen >= count {
                    return Err("seen counter above messages count".into());
                }
                self.set_u32(hdr_off::SEEN_MESSAGES_COUNT, seen + 1);
                if seen + 1 == count {
                    self.set_u32(hdr_off::FIRST_UNSEEN_UID_LOWWATER, next_uid);
                }
            }
        }
        if (old ^ new) & flags::DELETED != 0 {
            let del = self.get_u32(hdr_off::DELETED_MESSAGES_COUNT);
            if old & flags::DELETED != 0 {
                if del == 0 {
                    return Err("deleted counter below 0".into());
                }
                self.set_u32(hdr_off::DELETED_MESSAGES_COUNT, del - 1);
                if del == 1 {
                    self.set_u32(hdr_off::FIRST_DELETED_UID_LOWWATER, next_uid);
                }
            } else {
                if del >= count {
                    return Err("deleted counter above messages count".into());
                }
                self.set_u32(hdr_off::DELETED_MESSAGES_COUNT, del + 1);
            }
        }
        if lower_lowwaters {
            if new & flags::SEEN == 0 && uid < self.get_u32(hdr_off::FIRST_UNSEEN_UID_LOWWATER) {
                self.set_u32(hdr_off::FIRST_UNSEEN_UID_LOWWATER, uid);
            }
            if new & flags::DELETED != 0 && uid < self.get_u32(hdr_off::FIRST_DELETED_UID_LOWWATER)
            {
                self.set_u32(hdr_off::FIRST_DELETED_UID_LOWWATER, uid);
            }
        }
        if new & flags::DIRTY != 0 {
            let f = self.get_u32(hdr_off::FLAGS);
            self.set_u32(hdr_off::FLAGS, f | crate::index::HDR_FLAG_HAVE_DIRTY);
        }
        Ok(())
    }

    // ----- replay of one record (spec 4.3) -----

    fn apply(&mut self, seq: u32, rec: &LogRecord<'_>, cur_ext: &mut Option<CurExt>) {
        let body = match rec.body() {
            Ok(b) => b,
            Err(e) => {
                self.problem(seq, rec.offset, e.to_string());
                return;
            }
        };
        let ty = rec.record_type();
        if self.index_deleted
            && !matches!(ty, Some(RecordType::IndexUndeleted | RecordType::Boundary))
        {
            return;
        }
        let external = rec.is_external();
        let modseq = rec.modseq;
        let r = match body {
            RecordBody::Append(entries) => self.apply_appends(entries, modseq),
            RecordBody::Expunge(ranges) => {
                if external {
                    for (a, b) in ranges {
                        for i in self.slots_in(a, b) {
                            self.expunge_slot(i);
                        }
                    }
                }
                Ok(())
            }
            RecordBody::ExpungeGuid(entries) => {
                if external {
                    for (uid, _) in entries {
                        if uid == 0 {
                            return self.problem(seq, rec.offset, "expunge of uid 0".into());
                        }
                        if let Some(i) = self.slot_of_uid(uid) {
                            self.expunge_slot(i);
                        }
                    }
                }
                Ok(())
            }
            RecordBody::FlagUpdate(entries) => {
                let mh = self.modseq_handle();
                let mut res = Ok(());
                for u in entries {
                    if u.uid1 == 0 || u.uid1 > u.uid2 {
                        res = Err(format!("flag update range {}-{}", u.uid1, u.uid2));
                        break;
                    }
                    let bump = (u.add_flags | u.remove_flags) & flags::IMAP_MASK != 0
                        || u.modseq_inc_flag != 0;
                    for i in self.slots_in(u.uid1, u.uid2) {
                        if self.is_dead(i) {
                            continue;
                        }
                        let o = i * self.record_size + 4;
                        let old = self.records[o];
                        let new = (old & !u.remove_flags) | u.add_flags;
                        self.records[o] = new;
                        let uid = self.slot_uid(i);
                        if let Err(e) = self.update_counts(uid, old, new, true) {
                            res = Err(e);
                        }
                        if bump {
                            self.raise_modseq(mh, i, modseq);
                        }
                    }
                }
                res
            }
            RecordBody::HeaderUpdate(updates) => {
                let mut res = Ok(());
                for u in updates {
                    let (o, n) = (u.offset as usize, u.data.len());
                    if o + n > self.base.len() {
                        res = Err(format!("header update {o}+{n} beyond the base header"));
                        continue;
                    }
                    let keep: Vec<(usize, u32)> = [
                        hdr_off::HEADER_SIZE,
                        hdr_off::RECORD_SIZE,
                        hdr_off::MESSAGES_COUNT,
                        hdr_off::LOG_FILE_TAIL_OFFSET,
                    ]
                    .iter()
                    .map(|&f| (f, self.get_u32(f)))
                    .collect();
                    let old_next = self.get_u32(hdr_off::NEXT_UID);
                    let old_prefix: Vec<u8> = self.base[..hdr_off::HEADER_SIZE].to_vec();
                    self.base[o..o + n].copy_from_slice(u.data);
                    // Structural fields are the view's own; the tail comes from 4.5.
                    self.base[..hdr_off::HEADER_SIZE].copy_from_slice(&old_prefix);
                    self.base[hdr_off::COMPAT_FLAGS] = crate::index::COMPAT_LITTLE_ENDIAN;
                    for (f, v) in keep {
                        self.set_u32(f, v);
                    }
                    if self.get_u32(hdr_off::NEXT_UID) < old_next {
                        self.set_u32(hdr_off::NEXT_UID, old_next);
                    }
                }
                res
            }
            RecordBody::ExtIntro(intros) => {
                let mut res = Ok(());
                for i in intros {
                    match self.apply_intro(&i) {
                        Ok(c) => *cur_ext = Some(c),
                        Err(e) => {
                            *cur_ext = None;
                            res = Err(e);
                        }
                    }
                }
                res
            }
            RecordBody::ExtReset {
                new_reset_id,
                preserve_data,
            } => match *cur_ext {
                Some(c) => {
                    let e = &mut self.exts[c.idx];
                    e.reset_id = new_reset_id;
                    if !preserve_data {
                        e.header.iter_mut().for_each(|b| *b = 0);
                        let (o, s) = (usize::from(e.record_offset), usize::from(e.record_size));
                        if s > 0 {
                            for rec in self.records.chunks_exact_mut(self.record_size) {
                                if let Some(d) = rec.get_mut(o..o + s) {
                                    d.fill(0);
                                }
                            }
                        }
                        if e.name == ext::KEYWORDS {
                            self.keywords.clear();
                        }
                    }
                    // Later updates in this generation apply again.
                    *cur_ext = Some(CurExt { ignore: false, ..c });
                    Ok(())
                }
                None => Err("ext-reset without ext-intro".into()),
            },
            RecordBody::ExtHdrUpdate(updates) => match *cur_ext {
                Some(c) if c.ignore => Ok(()),
                Some(c) => {
                    let mut res = Ok(());
                    for u in updates {
                        let e = &mut self.exts[c.idx];
                        let (o, n) = (u.offset as usize, u.data.len());
                        if o + n > e.header.len() {
                            res = Err(format!(
                                "ext {} header update {o}+{n} beyond hdr_size {}",
                                e.name,
                                e.header.len()
                            ));
                            continue;
                        }
                        e.header[o..o + n].copy_from_slice(u.data);
                    }
                    let name = self.exts[c.idx].name.clone();
                    if name == ext::MODSEQ {
                        self.modseq_header_applied();
                    } else if name == ext::KEYWORDS {
                        self.reparse_keywords();
                    }
                    res
                }
                None => Err("ext-hdr update without ext-intro".into()),
            },
            RecordBody::ExtRecUpdate(payload) => match *cur_ext {
                Some(c) if c.ignore => Ok(()),
                Some(c) => self.apply_ext_rec(c, payload),
                None => Err("extension record updated without intro prefix".into()),
            },
            RecordBody::ExtAtomicInc(entries) => match *cur_ext {
                Some(c) if c.ignore => Ok(()),
                Some(c) => {
                    let e = &self.exts[c.idx];
                    let (o, s) = (
                        usize::from(e.record_offset),
                        usize::from(c.record_size.min(e.record_size)),
                    );
                    let mut res = Ok(());
                    for (uid, diff) in entries {
                        let Some(i) = self.slot_of_uid(uid) else {
                            continue;
                        };
                        let at = i * self.record_size + o;
                        let Some(d) = self.records.get_mut(at..at + s) else {
                            continue;
                        };
                        let max: u128 = match s {
                            1 => u8::MAX.into(),
                            2 => u16::MAX.into(),
                            4 => u32::MAX.into(),
                            8 => u64::MAX.into(),
                            _ => {
                                res = Err(format!("atomic inc of a {s}-byte field"));
                                break;
                            }
                        };
                        let v =
                            d.iter().rev().fold(0u128, |a, &x| (a << 8) | u128::from(x)) as i128;
                        let nv = v + i128::from(diff);
                        if nv < 0 || nv as u128 > max {
                            res = Err(format!("atomic inc of uid {uid} by {diff} out of range"));
                            continue;
                        }
                        for (k, b) in d.iter_mut().enumerate() {
                            *b = ((nv as u128) >> (8 * k)) as u8;
                        }
                    }
                    res
                }
                None => Err("atomic inc without ext-intro".into()),
            },
            RecordBody::KeywordUpdate { add, name, uids } => {
                self.apply_keyword_update(add, name, uids, modseq)
            }
            RecordBody::KeywordReset(ranges) => {
                let mh = self.modseq_handle();
                if let Some(ki) = self.ext_index(ext::KEYWORDS) {
                    let (o, s) = (
                        usize::from(self.exts[ki].record_offset),
                        usize::from(self.exts[ki].record_size),
                    );
                    for (a, b) in ranges {
                        for i in self.slots_in(a, b) {
                            if self.is_dead(i) {
                                continue;
                            }
                            let at = i * self.record_size + o;
                            if let Some(d) = self.records.get_mut(at..at + s) {
                                d.fill(0);
                            }
                            self.raise_modseq(mh, i, modseq);
                        }
                    }
                }
                Ok(())
            }
            RecordBody::ModseqUpdate(entries) => match self.modseq_handle() {
                None => Err("modseq update before the modseq extension exists".into()),
                Some(h) => {
                    for (uid, m) in entries {
                        if uid == 0 {
                            continue;
                        }
                        if let Some(i) = self.slot_of_uid(uid) {
                            self.raise_modseq(Some(h), i, m);
                        }
                    }
                    Ok(())
                }
            },
            RecordBody::IndexDeleted => {
                if external {
                    self.index_deleted = true;
                }
                Ok(())
            }
            RecordBody::IndexUndeleted => {
                self.index_deleted = false;
                Ok(())
            }
            RecordBody::Boundary { .. } | RecordBody::AttributeUpdate(_) => Ok(()),
        };
        if let Err(what) = r {
            self.problem(seq, rec.offset, what);
        }
    }

    fn apply_appends(
        &mut self,
        entries: crate::log::Appends<'_>,
        modseq: u64,
    ) -> std::result::Result<(), String> {
        let mh = self.modseq_handle();
        for e in entries {
            let next_uid = self.get_u32(hdr_off::NEXT_UID);
            if e.uid < next_uid || e.uid == 0 {
                return Err(format!(
                    "append of uid {} but next_uid is {next_uid}",
                    e.uid
                ));
            }
            let start = self.records.len();
            self.records.resize(start + self.record_size, 0);
            self.records[start..start + 8].copy_from_slice(e.raw);
            if self.dead_count > 0 {
                self.dead.push(false);
            }
            let count = self.get_u32(hdr_off::MESSAGES_COUNT);
            self.set_u32(hdr_off::MESSAGES_COUNT, count.saturating_add(1));
            self.set_u32(hdr_off::NEXT_UID, e.uid.saturating_add(1));
            self.update_counts(e.uid, 0, e.flags, true)?;
            let slot = self.n_slots() - 1;
            self.raise_modseq(mh, slot, modseq);
        }
        Ok(())
    }

    fn expunge_slot(&mut self, i: usize) {
        if self.is_dead(i) {
            return;
        }
        if self.dead.len() < self.n_slots() {
            self.dead.resize(self.n_slots(), false);
        }
        let uid = self.slot_uid(i);
        let old = self.records[i * self.record_size + 4];
        // Counters as if the flags were cleared, then the message leaves the count.
        let _ = self.update_counts(uid, old, 0, false);
        self.dead[i] = true;
        self.dead_count += 1;
        let count = self.get_u32(hdr_off::MESSAGES_COUNT);
        self.set_u32(hdr_off::MESSAGES_COUNT, count.saturating_sub(1));
    }

    fn compact(&mut self) {
        if self.dead_count == 0 {
            self.dead.clear();
            return;
        }
        let rs = self.record_size;
        let n = self.n_slots();
        let mut w = 0usize;
        let mut i = 0usize;
        // Move runs of live records at once; expunges are usually sparse.
        while i < n {
            if self.dead.get(i).copied().unwrap_or(false) {
                i += 1;
                continue;
            }
            let start = i;
            while i < n && !self.dead.get(i).copied().unwrap_or(false) {
                i += 1;
            }
            if w != start {
                self.records.copy_within(start * rs..i * rs, w * rs);
            }
            w += i - start;
        }
        self.records.truncate(w * rs);
        self.dead.clear();
        self.dead_count = 0;
        self.set_u32(hdr_off::MESSAGES_COUNT, w as u32);
    }

    fn modseq_header_applied(&mut self) {
        // Records without a modseq get the highest modseq the header announces (spec 4.6).
        let Some(i) = self.ext_index(ext::MODSEQ) else {
            return;
        };
        let highest = ModseqHeader::decode(&self.exts[i].header).highest_modseq;
        let Some(h) = self.modseq_handle() else {
            return;
        };
        if highest == 0 {
            return;
        }
        let o = usize::from(h.offset);
        for rec in self.records.chunks_exact_mut(self.record_size) {
            if let Some(s) = rec.get_mut(o..o + 8) {
                if u64_at(s, 0) == Some(0) {
                    s.copy_from_slice(&highest.to_le_bytes());
                }
            }
        }
    }

    fn reparse_keywords(&mut self) {
        if let Some(i) = self.ext_index(ext::KEYWORDS) {
            self.keywords = ext::parse_keywords_header(&self.exts[i].header)
                .map(|v| v.into_iter().map(str::to_string).collect())
                .unwrap_or_default();
        }
    }

    fn apply_ext_rec(&mut self, c: CurExt, payload: &[u8]) -> std::result::Result<(), String> {
        let e = &self.exts[c.idx];
        let (o, cur_size) = (usize::from(e.record_offset), usize::from(e.record_size));
        if cur_size == 0 {
            return Err(format!("record update of header-only extension {}", e.name));
        }
        let upd = ExtRecUpdates::new(payload, c.record_size);
        if payload.len() % upd.entry_size() != 0 {
            return Err("ext-rec payload not a multiple of the entry size".into());
        }
        let next_uid = self.get_u32(hdr_off::NEXT_UID);
        let n = usize::from(c.record_size).min(cur_size);
        for (uid, data) in upd {
            if uid == 0 || uid >= next_uid {
                return Err(format!("ext-rec for uid {uid}, next_uid {next_uid}"));
            }
            let Some(i) = self.slot_of_uid(uid) else {
                continue;
            };
            let at = i * self.record_size + o;
            if let Some(d) = self.records.get_mut(at..at + cur_size) {
                d[..n].copy_from_slice(&data[..n]);
                d[n..].fill(0);
            }
        }
        Ok(())
    }

    /// EXT_INTRO (spec 4.3.5): select, create or resize an extension.
    fn apply_intro(&mut self, i: &ExtIntro<'_>) -> std::result::Result<CurExt, String> {
        let idx = if i.ext_id == u32::MAX {
            if !crate::index::valid_ext_name(i.name) {
                return Err(format!(
                    "bad extension name {:?}",
                    String::from_utf8_lossy(i.name)
                ));
            }
            let name = std::str::from_utf8(i.name).unwrap_or_default();
            self.ext_index(name)
        } else {
            let n = i.ext_id as usize;
            if n >= self.exts.len() {
                return Err(format!("ext-intro of unknown extension id {n}"));
            }
            Some(n)
        };
        let no_shrink = i.flags & EXT_INTRO_NO_SHRINK != 0;
        match idx {
            Some(idx) => {
                if self.exts[idx].name == ext::KEYWORDS && i.ext_id == u32::MAX {
                    return Err("keywords introduced by ext-intro".into());
                }
                if self.exts[idx].reset_id != i.reset_id {
                    return Ok(CurExt {
                        idx,
                        record_size: i.record_size,
                        ignore: true,
                    });
                }
                self.resize_ext(idx, i.hdr_size, i.record_size, i.record_align, no_shrink)?;
                Ok(CurExt {
                    idx,
                    record_size: i.record_size,
                    ignore: false,
                })
            }
            None => {
                let name = std::str::from_utf8(i.name).unwrap_or_default().to_string();
                if name == ext::KEYWORDS {
                    return Err("keywords introduced by ext-intro".into());
                }
                crate::index::check_ext_geometry(
                    i.hdr_size,
                    0,
                    i.record_size,
                    i.record_align,
                    ANY_RECORD_SIZE,
                )
                .map_err(|d| format!("ext-intro {name}: {d}"))?;
                self.check_header_budget(i.hdr_size as usize)?;
                self.exts.push(ViewExtension {
                    name,
                    reset_id: i.reset_id,
                    header: vec![0; i.hdr_size as usize],
                    record_offset: 0,
                    record_size: i.record_size,
                    record_align: i.record_align,
                });
                let idx = self.exts.len() - 1;
                if i.record_size > 0 || i.record_align > 0 {
                    let old: Vec<(u16, u16)> = self
                        .exts
                        .iter()
                        .enumerate()
                        .map(|(k, e)| {
                            if k == idx {
                                (0, 0)
                            } else {
                                (e.record_offset, e.record_size)
                            }
                        })
                        .collect();
                    if let Err(e) = self.relayout(&old) {
                        self.exts.pop();
                        return Err(e);
                    }
                }
                Ok(CurExt {
                    idx,
                    record_size: i.record_size,
                    ignore: false,
                })
            }
        }
    }

    fn resize_ext(
        &mut self,
        idx: usize,
        hdr_size: u32,
        record_size: u16,
        record_align: u16,
        no_shrink: bool,
    ) -> std::result::Result<(), String> {
        let e = &self.exts[idx];
        let (mut hs, mut rs, mut ra) = (hdr_size, record_size, record_align);
        if no_shrink {
            hs = hs.max(e.hdr_size());
            rs = rs.max(e.record_size);
            ra = ra.max(e.record_align);
        }
        crate::index::check_ext_geometry(hs, 0, rs, ra, ANY_RECORD_SIZE)
            .map_err(|d| format!("ext-intro {}: {d}", e.name))?;
        let record_changed = rs != e.record_size || ra != e.record_align;
        let (old_rs, old_ra) = (e.record_size, e.record_align);
        if hs as usize > e.header.len() {
            self.check_header_budget(hs as usize - e.header.len())?;
        }
        if record_changed {
            let old: Vec<(u16, u16)> = self
                .exts
                .iter()
                .map(|e| (e.record_offset, e.record_size))
                .collect();
            self.exts[idx].record_size = rs;
            self.exts[idx].record_align = ra;
            if let Err(e) = self.relayout(&old) {
                self.exts[idx].record_size = old_rs;
                self.exts[idx].record_align = old_ra;
                return Err(e);
            }
        }
        if hs != self.exts[idx].hdr_size() {
            self.exts[idx].header.resize(hs as usize, 0);
        }
        Ok(())
    }

    /// Recomputes record offsets and record size (spec 3.4) and moves the data.
    /// `old` holds every extension's previous (offset, size).
    /// Refuses header growth beyond [`MAX_HEADER_BYTES`] in total.
    fn check_header_budget(&self, extra: usize) -> std::result::Result<(), String> {
        let cur: usize = self.exts.iter().map(|e| e.header.len()).sum();
        if cur.saturating_add(extra) > MAX_HEADER_BYTES {
            return Err(format!(
                "extension headers would exceed {MAX_HEADER_BYTES} bytes"
            ));
        }
        Ok(())
    }

    fn relayout(&mut self, old: &[(u16, u16)]) -> std::result::Result<(), String> {
        let n = self.exts.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| self.exts[b].record_align.cmp(&self.exts[a].record_align));
        let mut placed = vec![false; n];
        let mut new_off = vec![0u16; n];
        let mut offset = 5usize;
        let mut max_align = 4usize;
        loop {
            let mut progressed = false;
            let mut remaining = false;
            let mut min_align = usize::MAX;
            for &k in &order {
                let e = &self.exts[k];
                max_align = max_align.max(usize::from(e.record_align));
                if placed[k] || e.record_size == 0 {
                    continue;
                }
                remaining = true;
                let al = usize::from(e.record_align.max(1));
                if offset % al == 0 {
                    new_off[k] = offset as u16;
                    placed[k] = true;
                    offset += usize::from(e.record_size);
                    progressed = true;
                    break;
                }
                min_align = min_align.min(al);
            }
            if progressed {
                continue;
            }
            if !remaining {
                break;
            }
            offset = offset.div_ceil(min_align) * min_align;
        }
        let new_rs = offset.div_ceil(max_align) * max_align;
        let old_rs = self.record_size;
        let count = self.n_slots();
        // Input decides the record size; keep the copy it implies bounded.
        let limit = MAX_RECORDS_BYTES_FLOOR.max(self.records.len().saturating_mul(4));
        if new_rs > u16::MAX as usize || count.saturating_mul(new_rs) > limit {
            return Err(format!(
                "record size {new_rs} for {count} records exceeds the memory bound"
            ));
        }
        let mut recs = vec![0u8; count * new_rs];
        for s in 0..count {
            let src = &self.records[s * old_rs..(s + 1) * old_rs];
            let dst = &mut recs[s * new_rs..(s + 1) * new_rs];
            dst[..5].copy_from_slice(&src[..5]);
            for (k, e) in self.exts.iter().enumerate() {
                let (oo, os) = old.get(k).copied().unwrap_or((0, 0));
                let m = usize::from(os.min(e.record_size));
                if m == 0 {
                    continue;
                }
                let (oo, no) = (usize::from(oo), usize::from(new_off[k]));
                if let (Some(from), true) = (src.get(oo..oo + m), no + m <= new_rs) {
                    dst[no..no + m].copy_from_slice(from);
                }
            }
        }
        for (k, e) in self.exts.iter_mut().enumerate() {
            e.record_offset = if e.record_size > 0 { new_off[k] } else { 0 };
        }
        self.records = recs;
        self.record_size = new_rs;
        self.set_u32(hdr_off::RECORD_SIZE, new_rs as u32);
        Ok(())
    }

    fn apply_keyword_update(
        &mut self,
        add: bool,
        name: &[u8],
        uids: crate::log::UidRanges<'_>,
        modseq: u64,
    ) -> std::result::Result<(), String> {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut kw = self
            .keywords
            .iter()
            .position(|k| k.eq_ignore_ascii_case(&name));
        if kw.is_none() {
            kw = Some(self.add_keyword(&name)?);
        }
        let kw = kw.unwrap_or(0);
        let Some(ki) = self.ext_index(ext::KEYWORDS) else {
            return Err("keywords extension missing".into());
        };
        if kw / 8 >= usize::from(self.exts[ki].record_size) {
            if !add {
                return Ok(());
            }
            let (hs, count) = (self.exts[ki].hdr_size(), self.keywords.len());
            self.grow_keywords(ki, hs, count)?;
        }
        let e = &self.exts[ki];
        let at_in_rec = usize::from(e.record_offset) + kw / 8;
        let mask = 1u8 << (kw % 8);
        let mh = self.modseq_handle();
        for (a, b) in uids {
            for i in self.slots_in(a, b) {
                if self.is_dead(i) {
                    continue;
                }
                let at = i * self.record_size + at_in_rec;
                if let Some(byte) = self.records.get_mut(at) {
                    if add {
                        *byte |= mask;
                    } else {
                        *byte &= !mask;
                    }
                }
                self.raise_modseq(mh, i, modseq);
            }
        }
        Ok(())
    }

    /// Appends a keyword to the `keywords` header (growth rule of spec 3.5).
    fn add_keyword(&mut self, name: &str) -> std::result::Result<usize, String> {
        if self.keywords.len() >= 0xffff {
            return Err("too many keywords".into());
        }
        let mut names = self.keywords.clone();
        names.push(name.to_string());
        let mut buf = ext::build_keywords_header(&names);
        buf.resize(align4(buf.len()), 0);
        let count = names.len();
        let existing = self.ext_index(ext::KEYWORDS);
        let grow = match existing {
            None => true,
            Some(ki) => {
                let e = &self.exts[ki];
                buf.len() > e.header.len() || usize::from(e.record_size) * 8 < count
            }
        };
        let ki = if grow {
            let hs = (buf.len() + 128) as u32;
            match existing {
                Some(ki) => {
                    self.grow_keywords(ki, hs, count)?;
                    ki
                }
                None => {
                    let rs = keyword_record_size(count);
                    self.check_header_budget(hs as usize)?;
                    self.exts.push(ViewExtension {
                        name: ext::KEYWORDS.to_string(),
                        reset_id: 0,
                        header: vec![0; hs as usize],
                        record_offset: 0,
                        record_size: rs,
                        record_align: 1,
                    });
                    let idx = self.exts.len() - 1;
                    let old: Vec<(u16, u16)> = self
                        .exts
                        .iter()
                        .enumerate()
                        .map(|(k, e)| {
                            if k == idx {
                                (0, 0)
                            } else {
                                (e.record_offset, e.record_size)
                            }
                        })
                        .collect();
                    if let Err(e) = self.relayout(&old) {
                        self.exts.pop();
                        return Err(e);
                    }
                    idx
                }
            }
        } else {
            existing.unwrap_or(0)
        };
        let h = &mut self.exts[ki].header;
        let n = buf.len().min(h.len());
        h[..n].copy_from_slice(&buf[..n]);
        self.keywords = names;
        Ok(count - 1)
    }

    fn grow_keywords(
        &mut self,
        ki: usize,
        hdr_size: u32,
        count: usize,
    ) -> std::result::Result<(), String> {
        let rs = keyword_record_size(count);
        // Internal intro with flags 0: exact geometry.
        self.resize_ext(ki, hdr_size, rs, 1, false)
    }
}

fn keyword_record_size(count: usize) -> u16 {
    let mut rs = count.div_ceil(8);
    if rs % 4 != 0 {
        rs += 1;
    }
    rs.min(32767) as u16
}

fn tail_update_value(rec: &LogRecord<'_>) -> Option<u32> {
    if rec.record_type() != Some(RecordType::HeaderUpdate) {
        return None;
    }
    let Ok(RecordBody::HeaderUpdate(us)) = rec.body() else {
        return None;
    };
    let t = hdr_off::LOG_FILE_TAIL_OFFSET;
    us.iter().find_map(|u| {
        let (o, n) = (u.offset as usize, u.data.len());
        (o <= t && t + 4 <= o + n).then(|| u32_at(u.data, t - o).unwrap_or(0))
    })
}

/// Resolves a mailbox directory or index path to the index path (the file may not exist).
fn resolve_index_path(p: &Path) -> Result<PathBuf> {
    if p.is_dir() {
        for name in ["dovecot.index", "dovecot.map.index", "dovecot.list.index"] {
            let cand = p.join(name);
            if cand.exists() || with_suffix(&cand, ".log").exists() {
                return Ok(cand);
            }
        }
        return Err(Error::Unsupported {
            path: Some(p.to_path_buf()),
            what: "directory holds no dovecot.index, dovecot.map.index or dovecot.list.index (or their logs)".into(),
        });
    }
    let s = p.to_string_lossy();
    for suffix in [".log.2", ".log"] {
        if let Some(base) = s.strip_suffix(suffix) {
            return Ok(PathBuf::from(base));
        }
    }
    Ok(p.to_path_buf())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// One message of the view.
#[derive(Debug, Clone, Copy)]
pub struct Message<'v> {
    view: &'v MailboxView,
    seq: u32,
    rec: RecordRef<'v>,
}

impl<'v> Message<'v> {
    /// 1-based sequence number.
    pub fn seq(&self) -> u32 {
        self.seq
    }
    pub fn uid(&self) -> u32 {
        self.rec.uid()
    }
    /// The flags byte, including the BACKEND (0x40) and DIRTY (0x80) bits.
    pub fn flags(&self) -> u8 {
        self.rec.flags()
    }
    /// IMAP system flags only (spec 1.4 mask 0x1f).
    pub fn imap_flags(&self) -> u8 {
        self.rec.flags() & flags::IMAP_MASK
    }
    /// The raw record.
    pub fn record(&self) -> &'v [u8] {
        self.rec.bytes()
    }
    /// Extension data by handle (see [`MailboxView::ext_handle`]).
    pub fn ext(&self, h: ExtHandle) -> Option<&'v [u8]> {
        self.rec.ext_data(h.offset, h.size)
    }
    /// Extension data by name.
    pub fn ext_by_name(&self, name: &str) -> Option<&'v [u8]> {
        self.ext(self.view.ext_handle(name)?)
    }
    /// The message's modseq; 0 ("unknown") reads as the view's highest modseq.
    pub fn modseq(&self) -> u64 {
        match self.ext_by_name(ext::MODSEQ).and_then(|d| u64_at(d, 0)) {
            Some(m) if m != 0 => m,
            _ => self.view.highest_modseq(),
        }
    }
    /// Keyword indexes set on this message.
    pub fn keyword_indexes(&self) -> impl Iterator<Item = usize> + 'v {
        let bits = self.ext_by_name(ext::KEYWORDS).unwrap_or(&[]);
        let max = self.view.keywords.len();
        bits.iter()
            .enumerate()
            .flat_map(|(i, &b)| {
                (0..8)
                    .filter(move |k| b & (1 << k) != 0)
                    .map(move |k| i * 8 + k)
            })
            .filter(move |&k| k < max)
    }
    /// Keyword names set on this message.
    pub fn keywords(&self) -> impl Iterator<Item = &'v str> + 'v {
        let names = &self.view.keywords;
        self.keyword_indexes().map(move |k| names[k].as_str())
    }
    /// Offset of the newest cache record (`cache` extension), if any.
    pub fn cache_offset(&self) -> Option<u32> {
        self.ext_by_name(ext::CACHE)
            .and_then(|d| u32_at(d, 0))
            .filter(|&o| o != 0)
    }
    /// Message GUID from the mdbox `guid` extension.
    pub fn guid(&self) -> Option<[u8; 16]> {
        self.ext_by_name(ext::GUID)
            .and_then(|d| crate::le::guid_at(d, 0))
    }
    /// mdbox `mdbox` record: map uid and save date.
    pub fn mdbox(&self) -> Option<ext::MdboxRecord> {
        self.ext_by_name(ext::MDBOX).map(ext::MdboxRecord::decode)
    }
    /// mdbox map index `map` record.
    pub fn map_record(&self) -> Option<ext::MapRecord> {
        self.ext_by_name(ext::MAP).map(ext::MapRecord::decode)
    }
    /// mdbox map index `ref` refcount.
    pub fn refcount(&self) -> Option<u16> {
        self.ext_by_name(ext::REF)
            .and_then(|d| crate::le::u16_at(d, 0))
    }
    /// Virtual size from the `vsize` extension (stored + 1; 0 = unknown).
    pub fn vsize(&self) -> Option<u32> {
        let d = self.ext_by_name(ext::VSIZE)?;
        if d.len() != 4 {
            return None;
        }
        u32_at(d, 0).and_then(|v| v.checked_sub(1))
    }
    /// List index `list` record.
    pub fn list_record(&self) -> Option<ext::ListRecord> {
        self.ext_by_name(ext::LIST).map(ext::ListRecord::decode)
    }
}

/// A log record as seen through [`MailboxView::changes_since`].
#[derive(Debug, Clone, Copy)]
pub struct Change<'v> {
    pub file_seq: u32,
    pub record: LogRecord<'v>,
    /// The EXT_INTRO in effect (for ext-rec / ext-hdr / atomic-inc records).
    pub intro: Option<ExtIntro<'v>>,
}

/// Log records with a modseq above a given value, oldest first.
pub struct ChangesSince<'v> {
    files: Vec<(u32, LogFile<'v>)>,
    file: usize,
    iter: Option<crate::log::Records<'v>>,
    intro: Option<ExtIntro<'v>>,
    min_modseq: u64,
    complete: bool,
}

impl<'v> ChangesSince<'v> {
    /// True when the available logs hold every change after the requested
    /// modseq; false means older history was rotated away and the caller must
    /// compare full state instead.
    pub fn is_complete(&self) -> bool {
        self.complete
    }
}

impl<'v> Iterator for ChangesSince<'v> {
    type Item = Result<Change<'v>>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.iter.is_none() {
                let (_, f) = self.files.get(self.file)?;
                self.iter = Some(f.records());
                self.intro = None;
            }
            let seq = self.files[self.file].0;
            let it = self.iter.as_mut()?;
            match it.next() {
                None => {
                    self.iter = None;
                    self.file += 1;
                }
                Some(Err(e)) => {
                    self.iter = None;
                    self.file = self.files.len();
                    return Some(Err(e));
                }
                Some(Ok(r)) => {
                    if r.record_type() == Some(RecordType::ExtIntro) {
                        if let Ok(RecordBody::ExtIntro(v)) = r.body() {
                            self.intro = v.last().copied();
                        }
                    }
                    if r.modseq > self.min_modseq {
                        return Some(Ok(Change {
                            file_seq: seq,
                            record: r,
                            intro: self.intro,
                        }));
                    }
                }
            }
        }
    }
}

impl MailboxView {
    /// Path of the index (which may not exist as a file).
    pub fn index_path(&self) -> &Path {
        &self.index_path
    }

    /// The replayed base header.
    pub fn header(&self) -> IndexHeader {
        let mut b = self.base.clone();
        b.resize(b.len().max(BASE_HEADER_SIZE), 0);
        let mut h = IndexHeader::decode(&b).unwrap_or_default();
        h.header_size = self.header_size();
        h
    }

    /// The header of `dovecot.index` as stored, when the file was used.
    pub fn file_header(&self) -> Option<&IndexHeader> {
        self.file_header.as_ref()
    }

    /// Size the header would have if written (base + extension area).
    pub fn header_size(&self) -> u32 {
        let mut n = crate::le::align8(self.base.len());
        for e in &self.exts {
            n += crate::le::align8(16 + e.name.len()) + crate::le::align8(e.header.len());
        }
        n as u32
    }

    pub fn uid_validity(&self) -> u32 {
        self.get_u32(hdr_off::UID_VALIDITY)
    }
    pub fn next_uid(&self) -> u32 {
        self.get_u32(hdr_off::NEXT_UID)
    }
    pub fn messages_count(&self) -> u32 {
        (self.records.len() / self.record_size) as u32
    }
    pub fn record_size(&self) -> u32 {
        self.record_size as u32
    }

    /// HIGHESTMODSEQ: the `modseq` header after replay, else the log's highest modseq.
    pub fn highest_modseq(&self) -> u64 {
        match self.extension(ext::MODSEQ) {
            Some(e) => ModseqHeader::decode(&e.header).highest_modseq,
            None => self.log_highest_modseq,
        }
    }

    /// Highest modseq derived from the newest log file.
    pub fn log_highest_modseq(&self) -> u64 {
        self.log_highest_modseq
    }

    /// Where the view ends in the log (file seq and sync offset): the head.
    pub fn head(&self) -> LogPosition {
        LogPosition {
            file_seq: self.get_u32(hdr_off::LOG_FILE_SEQ),
            offset: self.get_u32(hdr_off::LOG_FILE_HEAD_OFFSET),
        }
    }

    /// Reader-computed tail offset in the head log file (spec 4.5).
    pub fn tail_offset(&self) -> u32 {
        self.get_u32(hdr_off::LOG_FILE_TAIL_OFFSET)
    }

    /// Where replay started (index head, or the start of a reset log); `None`
    /// when there was no log.
    pub fn replay_start(&self) -> Option<LogPosition> {
        self.replay_start
    }

    /// Headers and sync offsets of the mapped log files, oldest first.
    pub fn log_files(&self) -> Vec<(LogHeader, u32)> {
        self.logs
            .iter()
            .map(|l| (l.header, l.sync_offset))
            .collect()
    }

    /// Log records Dovecot would reject; replay skipped them.
    pub fn problems(&self) -> &[ReplayProblem] {
        &self.problems
    }

    /// Number of skipped records (may exceed `problems().len()`).
    pub fn problem_count(&self) -> usize {
        self.problem_count
    }

    /// True if an EXTERNAL INDEX_DELETED was replayed (mailbox being deleted).
    pub fn is_deleted(&self) -> bool {
        self.index_deleted
    }

    /// Extensions in map order (the order log ext ids refer to).
    pub fn extensions(&self) -> &[ViewExtension] {
        &self.exts
    }

    /// An extension by (case-sensitive) name.
    pub fn extension(&self, name: &str) -> Option<&ViewExtension> {
        self.exts.iter().find(|e| e.name == name)
    }

    /// Per-record location of an extension with record data.
    pub fn ext_handle(&self, name: &str) -> Option<ExtHandle> {
        let e = self.extension(name)?;
        (e.record_size > 0).then_some(ExtHandle {
            offset: e.record_offset,
            size: e.record_size,
        })
    }

    /// Keyword names in keyword index order.
    pub fn keywords(&self) -> &[String] {
        &self.keywords
    }

    /// Index of a keyword (names compare case-insensitively, as Dovecot does).
    pub fn keyword_index(&self, name: &str) -> Option<usize> {
        self.keywords
            .iter()
            .position(|k| k.eq_ignore_ascii_case(name))
    }

    /// Mailbox GUID from the sdbox `dbox-hdr` or mdbox `mdbox-hdr` header.
    pub fn mailbox_guid(&self) -> Option<[u8; 16]> {
        [ext::DBOX_HDR, ext::MDBOX_HDR]
            .iter()
            .find_map(|n| self.extension(n))
            .map(|e| ext::DboxHeader::decode(&e.header).mailbox_guid)
    }

    /// Messages in sequence (= uid) order, without copying.
    pub fn messages(&self) -> impl ExactSizeIterator<Item = Message<'_>> + '_ {
        self.records
            .chunks_exact(self.record_size)
            .enumerate()
            .map(move |(i, b)| Message {
                view: self,
                seq: i as u32 + 1,
                rec: RecordRef::new(b),
            })
    }

    /// The message with sequence number `seq` (1-based).
    pub fn message(&self, seq: u32) -> Option<Message<'_>> {
        let i = (seq as usize).checked_sub(1)?;
        let b = self
            .records
            .get(i * self.record_size..(i + 1) * self.record_size)?;
        Some(Message {
            view: self,
            seq,
            rec: RecordRef::new(b),
        })
    }

    /// Looks a message up by uid (binary search).
    pub fn lookup_uid(&self, uid: u32) -> Option<Message<'_>> {
        let i = self.slot_of_uid(uid)?;
        self.message(i as u32 + 1)
    }

    /// Messages with uid in [uid1, uid2].
    pub fn uid_range(&self, uid1: u32, uid2: u32) -> impl Iterator<Item = Message<'_>> + '_ {
        self.slots_in(uid1, uid2)
            .filter_map(move |i| self.message(i as u32 + 1))
    }

    /// The modseq above which the mapped log files hold every change: 0
    /// when they reach back to the mailbox's start, else the oldest file's
    /// initial modseq. [`changes_since`](Self::changes_since) of this value
    /// is complete; of anything lower, it is not.
    pub fn logged_since(&self) -> u64 {
        match self.logs.first() {
            Some(l) if l.header.prev_file_seq == 0 => 0,
            Some(l) => l.header.initial_modseq,
            None => self.highest_modseq(),
        }
    }

    /// Log records (all mapped log files, oldest first, complete transactions
    /// only) whose modseq is above `modseq`. Records that do not change the
    /// modseq carry the modseq of the change they belong with.
    pub fn changes_since(&self, modseq: u64) -> Result<ChangesSince<'_>> {
        let mut files = Vec::new();
        for l in &self.logs {
            files.push((l.header.file_seq, l.parse()?));
        }
        let complete = match self.logs.first() {
            Some(l) => l.header.prev_file_seq == 0 || l.header.initial_modseq <= modseq,
            None => modseq >= self.highest_modseq(),
        };
        Ok(ChangesSince {
            files,
            file: 0,
            iter: None,
            intro: None,
            min_modseq: modseq,
            complete,
        })
    }

    /// The view as JSON (shape in `docs/dump-json.md`, section "Index").
    pub fn to_json(&self) -> Value {
        let h = self.header();
        let exts: Vec<Value> = self
            .exts
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut v = json!({
                    "index": i, "name": e.name, "hdr_size": e.hdr_size(), "reset_id": e.reset_id,
                    "record_offset": e.record_offset, "record_size": e.record_size,
                    "record_align": e.record_align, "header": hex(&e.header),
                });
                if let Some(d) = ext::header_json(&e.name, &e.header) {
                    v["decoded"] = d;
                }
                v
            })
            .collect();
        let rec_exts: Vec<(&ViewExtension, ExtHandle)> = self
            .exts
            .iter()
            .filter(|e| e.record_size > 0)
            .map(|e| {
                (
                    e,
                    ExtHandle {
                        offset: e.record_offset,
                        size: e.record_size,
                    },
                )
            })
            .collect();
        let records: Vec<Value> = self
            .messages()
            .map(|m| {
                let mut ev = serde_json::Map::new();
                for (e, hd) in &rec_exts {
                    let d = m.ext(*hd).unwrap_or(&[]);
                    let mut x = json!({"hex": hex(d)});
                    if let Some(v) = ext::record_json(&e.name, d) {
                        x["value"] = v;
                    }
                    if e.name == ext::KEYWORDS {
                        x["value"] = json!(m.keywords().collect::<Vec<_>>());
                    }
                    ev.insert(e.name.clone(), x);
                }
                json!({"seq": m.seq(), "uid": m.uid(), "flags": m.flags(), "modseq": m.modseq(), "ext": ev})
            })
            .collect();
        json!({
            "header": h,
            "extensions": exts,
            "keywords": self.keywords,
            "highest_modseq": self.highest_modseq(),
            "replay_start": self.replay_start,
            "problems": self.problems,
            "records": records,
        })
    }
}

/// Renders an index for `homing dump`: the stored file and the replayed view.
pub fn dump_index(path: &Path) -> Result<Value> {
    let file_json = match MappedFile::open(path) {
        Ok(map) => {
            let f = IndexFile::parse(map.bytes()).map_err(|e| e.with_path(path))?;
            Some(json!({
                "header": f.header(),
                "extensions": f.extensions().iter().map(|e| json!({
                    "index": e.index, "name": e.name, "hdr_size": e.hdr_size,
                    "reset_id": e.reset_id, "record_offset": e.record_offset,
                    "record_size": e.record_size, "record_align": e.record_align,
                    "hdr_offset": e.hdr_offset, "header": hex(e.header),
                })).collect::<Vec<_>>(),
                "keywords": f.keywords().map_err(|e| e.with_path(path))?,
                "messages_count": f.header().messages_count,
            }))
        }
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let view = MailboxView::open(path)?;
    let mut v = view.to_json();
    v["file"] = file_json.unwrap_or(Value::Null);
    Ok(v)
}
