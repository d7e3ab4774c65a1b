//! The sans-I/O decoder: feed bytes in any split, take events out.

use std::borrow::Cow;

use crate::dot;
use crate::error::DecodeError;
use crate::escape;
use crate::item::{self, Ctx, Handshake, Item};
use crate::order::Conversation;
use crate::table::{ItemKind, KeyMaps, TableDef, Tables};
use crate::types::Role;

/// The `VERSION` line's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolVersion {
    pub major: u32,
    pub minor: u32,
}

impl ProtocolVersion {
    /// What Dovecot 2.3.19.1 announces and this crate sends: 3.5.
    pub const CURRENT: ProtocolVersion = ProtocolVersion { major: 3, minor: 5 };

    /// What the *remote's* minor version allows (§3.1).
    pub fn features(self) -> Features {
        Features {
            attributes: self.minor >= 1,
            save_guids_flag: self.minor >= 2,
            finish: self.minor >= 3,
            hdr_hash_version: if self.minor >= 4 { 3 } else { 1 },
        }
    }

    /// The line as sent, without LF.
    pub fn line(self) -> String {
        format!("VERSION\tdsync\t{}\t{}", self.major, self.minor)
    }
}

/// Behaviour that depends on the remote's minor version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// `A` items and the attribute list end are exchanged (minor ≥ 1).
    pub attributes: bool,
    /// `B.have_save_guids` exists; before minor 2 `have_guids` implies it.
    pub save_guids_flag: bool,
    /// The slave's `F` item is read (minor ≥ 3).
    pub finish: bool,
    /// Header hash algorithm version (§10.3): 1 before minor 4, else 3.
    pub hdr_hash_version: u8,
}

/// Limits for hostile input. All are per stream direction.
#[derive(Clone, Debug)]
pub struct DecoderConfig {
    /// Longest accepted line (item) in bytes, without the LF.
    pub max_line_len: usize,
    /// Most fields in one line (and keys in one table definition).
    pub max_fields: usize,
    /// Most elements in one list field (keywords, cache fields, names …).
    pub max_list_elements: usize,
    /// Largest accepted data block (mail or attribute), after unstuffing.
    pub max_body_size: u64,
    /// Most items in one list (`S`, `N`, `A`, `C`, `R`, `M` lists).
    pub max_list_items: u64,
    /// Most table definition lines.
    pub max_table_lines: usize,
    /// Check the conversation order of §6.
    pub validate_order: bool,
    /// Role of the side that produced the stream, if known.
    pub sender_role: Option<Role>,
    /// Reject escape sequences Dovecot never writes (`\x01` followed by
    /// anything but `1`, `t`, `r`, `n`, or at the end of a line). Dovecot's
    /// own reader accepts them (the escaped byte stands for itself); set to
    /// false to do the same.
    pub strict_escapes: bool,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            max_line_len: 1 << 20,
            max_fields: 256,
            max_list_elements: 65_536,
            max_body_size: 1 << 30,
            max_list_items: 100_000_000,
            max_table_lines: 64,
            validate_order: true,
            sender_role: None,
            strict_escapes: true,
        }
    }
}

/// One decoded piece of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The `VERSION` line.
    Version(ProtocolVersion),
    /// The table block (after its `.`).
    Tables(Tables),
    /// An item line.
    Item(Item),
    /// Data of the block that follows an item with `stream` (unstuffed).
    /// Chunks borrow the decoder's buffer; their boundaries carry no meaning.
    BodyChunk(&'a [u8]),
    /// End of the current data block.
    BodyEnd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Version,
    Tables,
    Handshake,
    Items,
    Body {
        start: u64,
        line_start: bool,
        size: u64,
    },
    BodyEndPending,
}

/// Incremental decoder of one direction of a dsync stream.
#[derive(Debug)]
pub struct Decoder {
    cfg: DecoderConfig,
    buf: Vec<u8>,
    pos: usize,
    /// Where to continue looking for LF (avoids rescanning long partial lines).
    scan_from: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    phase: Phase,
    version: Option<ProtocolVersion>,
    table_defs: Vec<TableDef>,
    tables: Option<Tables>,
    maps: Option<KeyMaps>,
    handshake: Option<Handshake>,
    conv: Conversation,
    failed: Option<DecodeError>,
    ranges: Vec<(usize, usize)>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Self::with_config(DecoderConfig::default())
    }

    pub fn with_config(cfg: DecoderConfig) -> Decoder {
        let conv = Conversation::new(cfg.sender_role, cfg.max_list_items);
        Decoder {
            cfg,
            buf: Vec::new(),
            pos: 0,
            scan_from: 0,
            base: 0,
            phase: Phase::Version,
            version: None,
            table_defs: Vec::new(),
            tables: None,
            maps: None,
            handshake: None,
            conv,
            failed: None,
            ranges: Vec::new(),
        }
    }

    /// Appends received bytes. Consumed bytes are dropped from the buffer
    /// here, so the buffer holds at most one partial line (or ≤ 4 bytes of
    /// a data block) plus what was fed since the last [`Decoder::next_event`].
    pub fn feed(&mut self, data: &[u8]) {
        if self.pos > 0 && (self.pos == self.buf.len() || self.pos >= 4096) {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.scan_from = self.scan_from.saturating_sub(self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes fed but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Stream offset of the next undecoded byte.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// The remote's VERSION, once received.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// The remote's tables, once the block is complete.
    pub fn tables(&self) -> Option<&Tables> {
        self.tables.as_ref()
    }

    /// The stream's own `H`, once received.
    pub fn handshake(&self) -> Option<&Handshake> {
        self.handshake.as_ref()
    }

    /// True inside a data block.
    pub fn in_body(&self) -> bool {
        matches!(self.phase, Phase::Body { .. } | Phase::BodyEndPending)
    }

    /// True once the sender finished cleanly (`X`, `F`, or the master's
    /// end of the mailbox list) — only meaningful with order validation.
    pub fn sender_finished(&self) -> bool {
        self.conv.is_finished()
    }

    /// Tells the order check who sent this stream and what the master's
    /// settings are (needed for a slave's stream, whose own `H` says nothing
    /// about the sync mode).
    pub fn set_session(&mut self, sender: Role, master: &Handshake) {
        self.conv.set_session(sender, master);
    }

    /// Call at end of input: fails if the stream stopped inside a line or a
    /// data block.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if let Some(e) = &self.failed {
            return Err(DecodeError::Poisoned(Box::new(e.clone())));
        }
        match self.phase {
            Phase::Body { start, .. } => Err(DecodeError::UnterminatedBody { offset: start }),
            Phase::BodyEndPending => Ok(()),
            _ if self.pos < self.buf.len() => Err(DecodeError::UnterminatedLine {
                offset: self.offset(),
            }),
            _ => Ok(()),
        }
    }

    /// The next event, `Ok(None)` when more input is needed. After an error
    /// every call fails.
    pub fn next_event(&mut self) -> Result<Option<Event<'_>>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(DecodeError::Poisoned(Box::new(e.clone())));
        }
        match self.step() {
            Ok(Step::Event(ev)) => Ok(Some(ev.into_event(&self.buf))),
            Ok(Step::NeedMore) => Ok(None),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn step(&mut self) -> Result<Step, DecodeError> {
        loop {
            match self.phase {
                Phase::BodyEndPending => {
                    self.phase = Phase::Items;
                    return Ok(Step::Event(Ev::BodyEnd));
                }
                Phase::Body {
                    start,
                    line_start,
                    size,
                } => {
                    let s = dot::scan(&self.buf[self.pos..], line_start);
                    let (a, b) = (self.pos + s.emit.0, self.pos + s.emit.1);
                    let size = size + (b - a) as u64;
                    if size > self.cfg.max_body_size {
                        return Err(DecodeError::BodyTooLarge {
                            offset: start,
                            max: self.cfg.max_body_size,
                        });
                    }
                    self.pos += s.consume;
                    self.scan_from = self.pos;
                    self.phase = if s.end {
                        if a == b {
                            self.phase = Phase::Items;
                            return Ok(Step::Event(Ev::BodyEnd));
                        }
                        Phase::BodyEndPending
                    } else {
                        Phase::Body {
                            start,
                            line_start: s.line_start,
                            size,
                        }
                    };
                    if a < b {
                        return Ok(Step::Event(Ev::Chunk(a, b)));
                    }
                    if s.consume == 0 {
                        return Ok(Step::NeedMore);
                    }
                }
                _ => {
                    let Some((start, end, next)) = self.next_line()? else {
                        return Ok(Step::NeedMore);
                    };
                    let offset = self.base + start as u64;
                    self.pos = next;
                    self.scan_from = next;
                    if let Some(ev) = self.line(start, end, offset)? {
                        return Ok(Step::Event(ev));
                    }
                }
            }
        }
    }

    /// Finds the next complete line: (start, end without CR/LF, next pos).
    fn next_line(&mut self) -> Result<Option<(usize, usize, usize)>, DecodeError> {
        let start = self.pos;
        let from = self.scan_from.max(start);
        match memchr::memchr(b'\n', &self.buf[from..]) {
            Some(off) => {
                let lf = from + off;
                if lf - start > self.cfg.max_line_len {
                    return Err(self.too_long());
                }
                let end = if lf > start && self.buf[lf - 1] == b'\r' {
                    lf - 1
                } else {
                    lf
                };
                Ok(Some((start, end, lf + 1)))
            }
            None => {
                self.scan_from = self.buf.len();
                if self.buf.len() - start > self.cfg.max_line_len {
                    return Err(self.too_long());
                }
                Ok(None)
            }
        }
    }

    fn too_long(&self) -> DecodeError {
        DecodeError::LineTooLong {
            offset: self.offset(),
            max: self.cfg.max_line_len,
        }
    }

    fn line(&mut self, start: usize, end: usize, offset: u64) -> Result<Option<Ev>, DecodeError> {
        match self.phase {
            Phase::Version => {
                let v = parse_version(&self.buf[start..end], offset)?;
                self.version = Some(v);
                self.phase = Phase::Tables;
                Ok(Some(Ev::Version(v)))
            }
            Phase::Tables => {
                self.check_escapes(start, end, offset)?;
                self.table_line(start, end, offset)
            }
            Phase::Handshake | Phase::Items => {
                self.check_escapes(start, end, offset)?;
                self.item_line(start, end, offset)
            }
            Phase::Body { .. } | Phase::BodyEndPending => Ok(None),
        }
    }

    fn minor(&self) -> u32 {
        self.version.map(|v| v.minor).unwrap_or(0)
    }

    fn check_escapes(&self, start: usize, end: usize, offset: u64) -> Result<(), DecodeError> {
        if !self.cfg.strict_escapes {
            return Ok(());
        }
        let line = &self.buf[start..end];
        for i in memchr::memchr_iter(escape::ESCAPE, line) {
            match line.get(i + 1) {
                Some(b'1' | b't' | b'r' | b'n') => {}
                other => {
                    return Err(DecodeError::BadEscape {
                        offset: offset + i as u64,
                        next: other.copied(),
                    })
                }
            }
        }
        Ok(())
    }

    fn table_line(
        &mut self,
        start: usize,
        end: usize,
        offset: u64,
    ) -> Result<Option<Ev>, DecodeError> {
        let line = &self.buf[start..end];
        if line == b"." {
            let minor = self.version.map(|v| v.minor).unwrap_or(0);
            let tables = Tables {
                defs: std::mem::take(&mut self.table_defs),
            };
            let maps = KeyMaps::from_tables(&tables);
            for kind in ItemKind::ALL {
                if !maps.defined[kind.index()] && minor >= kind.min_minor() {
                    return Err(DecodeError::MissingTable {
                        offset,
                        item: kind.name(),
                    });
                }
            }
            self.maps = Some(maps);
            self.tables = Some(tables.clone());
            self.phase = Phase::Handshake;
            return Ok(Some(Ev::Tables(tables)));
        }
        if self.table_defs.len() >= self.cfg.max_table_lines {
            return Err(DecodeError::TooManyTables {
                offset,
                max: self.cfg.max_table_lines,
            });
        }
        let Some((&letter, rest)) = line.split_first() else {
            // Dovecot ignores definitions it does not know, an empty line too.
            return Ok(None);
        };
        let keys: Vec<Vec<u8>> = if rest.is_empty() {
            Vec::new()
        } else {
            if memchr::memchr_iter(b'\t', rest).count() >= self.cfg.max_fields {
                return Err(DecodeError::TooManyKeys {
                    offset,
                    max: self.cfg.max_fields,
                });
            }
            rest.split(|&b| b == b'\t')
                .map(|k| escape::unescape(k).into_owned())
                .collect()
        };
        if let Some(kind) = ItemKind::from_letter(letter) {
            for req in kind.required_keys() {
                if !keys.iter().any(|k| k == req.as_bytes()) {
                    return Err(DecodeError::TableMissingRequiredKey {
                        offset,
                        item: kind.name(),
                        key: req,
                    });
                }
            }
        }
        self.table_defs.push(TableDef { letter, keys });
        Ok(None)
    }

    fn item_line(
        &mut self,
        start: usize,
        end: usize,
        offset: u64,
    ) -> Result<Option<Ev>, DecodeError> {
        let line = &self.buf[start..end];
        let Some(&letter) = line.first() else {
            return Err(DecodeError::EmptyLine { offset });
        };
        let handshake_phase = self.phase == Phase::Handshake;
        // X: the peer is closing; Dovecot looks only at the first byte.
        if letter == b'X' {
            if self.cfg.validate_order && !handshake_phase {
                self.conv.step(b'X', offset)?;
            }
            self.phase = Phase::Items;
            if handshake_phase {
                self.conv
                    .after_handshake(&Handshake::default(), self.minor());
                self.conv.step(b'X', offset)?;
            }
            return Ok(Some(Ev::Item(Item::Done)));
        }
        if line == b"." {
            if handshake_phase {
                return Err(DecodeError::OutOfOrder {
                    offset,
                    got: '.',
                    expected: "H".into(),
                });
            }
            if self.cfg.validate_order {
                self.conv.step(b'.', offset)?;
            }
            return Ok(Some(Ev::Item(Item::EndOfList)));
        }
        let kind = match ItemKind::from_letter(letter) {
            Some(k) if k != ItemKind::CacheField && letter != b'.' => k,
            Some(_) => {
                return Err(DecodeError::OutOfOrder {
                    offset,
                    got: letter as char,
                    expected: "an item line (c is only embedded in B)".into(),
                })
            }
            None => {
                return Err(DecodeError::UnknownItem {
                    offset,
                    letter: letter as char,
                })
            }
        };
        if handshake_phase && kind != ItemKind::Handshake {
            return Err(DecodeError::OutOfOrder {
                offset,
                got: letter as char,
                expected: "H".into(),
            });
        }
        if !handshake_phase {
            if kind == ItemKind::Handshake {
                return Err(DecodeError::OutOfOrder {
                    offset,
                    got: 'H',
                    expected: "no second H".into(),
                });
            }
            if self.cfg.validate_order {
                self.conv.step(letter, offset)?;
            }
        }
        let item = self.decode_item(kind, start + 1, end, offset)?;
        let minor = self.minor();
        match &item {
            Item::Handshake(h) => {
                self.handshake = Some((**h).clone());
                self.conv.after_handshake(h, minor);
                self.phase = Phase::Items;
            }
            Item::MailChange(c) if self.cfg.validate_order => {
                self.conv.change_uid(c.uid, offset)?
            }
            _ => {}
        }
        if item.has_body() {
            self.phase = Phase::Body {
                start: self.base + self.pos as u64,
                line_start: true,
                size: 0,
            };
        }
        Ok(Some(Ev::Item(item)))
    }

    fn decode_item(
        &mut self,
        kind: ItemKind,
        start: usize,
        end: usize,
        offset: u64,
    ) -> Result<Item, DecodeError> {
        let maps = self.maps.as_ref().ok_or(DecodeError::OutOfOrder {
            offset,
            got: kind.letter() as char,
            expected: "the table block".into(),
        })?;
        let ctx = Ctx {
            offset,
            kind,
            minor: self.version.map(|v| v.minor).unwrap_or(0),
            max_list: self.cfg.max_list_elements,
        };
        let rest = &self.buf[start..end];
        split_fields(rest, self.cfg.max_fields, &mut self.ranges).ok_or(
            DecodeError::TooManyFields {
                offset,
                max: self.cfg.max_fields,
            },
        )?;
        let fields = gather(rest, &self.ranges, &maps.decode[kind.index()]);
        check_required(&ctx, &fields)?;
        Ok(match kind {
            ItemKind::Handshake => {
                Item::Handshake(Box::new(item::decode_handshake(&ctx, &fields)?))
            }
            ItemKind::MailboxState => Item::MailboxState(item::decode_state(&ctx, &fields)?),
            ItemKind::MailboxTreeNode => {
                Item::MailboxTreeNode(item::decode_tree_node(&ctx, &fields)?)
            }
            ItemKind::MailboxDelete => Item::MailboxDelete(item::decode_delete(&ctx, &fields)?),
            ItemKind::Mailbox => {
                let mut cache = Vec::new();
                if let Some(v) = fields.get(9).and_then(|v| v.as_deref()) {
                    if !v.is_empty() {
                        let n = memchr::memchr_iter(b'\n', v).count() + 1;
                        if n > self.cfg.max_list_elements {
                            return Err(DecodeError::TooManyElements {
                                offset,
                                item: kind.name(),
                                key: "cache_fields",
                                max: self.cfg.max_list_elements,
                            });
                        }
                        let cctx = Ctx {
                            kind: ItemKind::CacheField,
                            ..ctx
                        };
                        let mut ranges = Vec::new();
                        for rec in v.split(|&b| b == b'\n') {
                            split_fields(rec, self.cfg.max_fields, &mut ranges).ok_or(
                                DecodeError::TooManyFields {
                                    offset,
                                    max: self.cfg.max_fields,
                                },
                            )?;
                            let cf =
                                gather(rec, &ranges, &maps.decode[ItemKind::CacheField.index()]);
                            check_required(&cctx, &cf)?;
                            cache.push(item::decode_cache_field(&cctx, &cf)?);
                        }
                    }
                }
                Item::Mailbox(item::decode_mailbox(&ctx, &fields, cache)?)
            }
            ItemKind::Attribute => Item::Attribute(item::decode_attribute(&ctx, &fields)?),
            ItemKind::MailChange => Item::MailChange(item::decode_change(&ctx, &fields)?),
            ItemKind::MailRequest => Item::MailRequest(item::decode_request(&ctx, &fields)?),
            ItemKind::Mail => Item::Mail(item::decode_mail(&ctx, &fields)?),
            ItemKind::Finish => Item::Finish(item::decode_finish(&ctx, &fields)?),
            ItemKind::CacheField => unreachable_kind(offset)?,
        })
    }
}

fn unreachable_kind(offset: u64) -> Result<Item, DecodeError> {
    Err(DecodeError::OutOfOrder {
        offset,
        got: 'c',
        expected: "an item line".into(),
    })
}

/// Splits at raw TABs. An empty string has zero fields (as in Dovecot).
fn split_fields(s: &[u8], max: usize, out: &mut Vec<(usize, usize)>) -> Option<()> {
    out.clear();
    if s.is_empty() {
        return Some(());
    }
    let mut start = 0;
    for t in memchr::memchr_iter(b'\t', s) {
        if out.len() >= max {
            return None;
        }
        out.push((start, t));
        start = t + 1;
    }
    if out.len() >= max {
        return None;
    }
    out.push((start, s.len()));
    Some(())
}

/// Picks the fields by the sender's table into our key order.
fn gather<'a>(
    s: &'a [u8],
    ranges: &[(usize, usize)],
    map: &[Option<usize>],
) -> Vec<Option<Cow<'a, [u8]>>> {
    map.iter()
        .map(|p| {
            p.and_then(|p| ranges.get(p))
                .and_then(|&(a, b)| escape::decode_field(&s[a..b]))
        })
        .collect()
}

fn check_required(ctx: &Ctx, fields: &[Option<Cow<'_, [u8]>>]) -> Result<(), DecodeError> {
    let keys = ctx.kind.keys();
    for req in ctx.kind.required_keys() {
        let i = keys.iter().position(|k| k == req).unwrap_or(0);
        if fields.get(i).map(|v| v.is_none()).unwrap_or(true) {
            return Err(DecodeError::MissingRequiredField {
                offset: ctx.offset,
                item: ctx.kind.name(),
                key: req,
            });
        }
    }
    Ok(())
}

fn parse_version(line: &[u8], offset: u64) -> Result<ProtocolVersion, DecodeError> {
    let bad = |reason| DecodeError::BadVersionLine { offset, reason };
    let rest = line
        .strip_prefix(b"VERSION\t")
        .ok_or(bad("does not start with VERSION<TAB>"))?;
    let rest = rest
        .strip_prefix(b"dsync\t")
        .ok_or(bad("service is not dsync"))?;
    let mut parts = rest.splitn(2, |&b| b == b'\t');
    let major = parts
        .next()
        .and_then(item::parse_dec)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(bad("major version is not a number"))?;
    let minor = parts
        .next()
        .and_then(item::parse_dec)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(bad("minor version is not a number"))?;
    if major != 3 {
        return Err(DecodeError::UnsupportedVersion { major });
    }
    Ok(ProtocolVersion { major, minor })
}

/// An event before it borrows the buffer.
enum Ev {
    Version(ProtocolVersion),
    Tables(Tables),
    Item(Item),
    Chunk(usize, usize),
    BodyEnd,
}

impl Ev {
    fn into_event(self, buf: &[u8]) -> Event<'_> {
        match self {
            Ev::Version(v) => Event::Version(v),
            Ev::Tables(t) => Event::Tables(t),
            Ev::Item(i) => Event::Item(i),
            Ev::Chunk(a, b) => Event::BodyChunk(&buf[a..b]),
            Ev::BodyEnd => Event::BodyEnd,
        }
    }
}

enum Step {
    Event(Ev),
    NeedMore,
}

/// Convenience for tests and tools: decodes a complete stream into owned
/// events (bodies joined into one `Vec` each).
pub fn decode_all(bytes: &[u8], cfg: DecoderConfig) -> Result<Vec<OwnedEvent>, DecodeError> {
    let mut d = Decoder::with_config(cfg);
    d.feed(bytes);
    let mut out = Vec::new();
    while let Some(ev) = d.next_event()? {
        push_owned(&mut out, ev);
    }
    d.finish()?;
    Ok(out)
}

/// An [`Event`] that owns its data; consecutive body chunks are merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedEvent {
    Version(ProtocolVersion),
    Tables(Tables),
    Item(Item),
    Body(Vec<u8>),
}

/// Appends `ev` to `out`, merging body chunks of one block. A block (even
/// an empty one) is one `Body` entry.
pub fn push_owned(out: &mut Vec<OwnedEvent>, ev: Event<'_>) {
    match ev {
        Event::Version(v) => out.push(OwnedEvent::Version(v)),
        Event::Tables(t) => out.push(OwnedEvent::Tables(t)),
        Event::Item(i) => {
            let body = i.has_body();
            out.push(OwnedEvent::Item(i));
            if body {
                out.push(OwnedEvent::Body(Vec::new()));
            }
        }
        Event::BodyChunk(c) => {
            if let Some(OwnedEvent::Body(b)) = out.last_mut() {
                b.extend_from_slice(c);
            }
        }
        Event::BodyEnd => {}
    }
}
