//! Typed items (spec §4) and their conversion from/to field lists.
//!
//! Optional numeric fields use 0 for "absent": Dovecot omits them exactly
//! when they are 0 (or, for a few time fields, not positive), so this keeps
//! re-encoding byte-exact while making the types simple. Strings whose
//! absence differs from the empty string are `Option`s.

use std::borrow::Cow;

use crate::error::DecodeError;
use crate::escape;
use crate::table::ItemKind;
use crate::types::*;

/// `H`: one side's handshake settings (§3.3).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Handshake {
    pub hostname: Vec<u8>,
    /// Namespace prefixes to sync (LF-separated on the wire). `Some(vec![])`
    /// cannot be sent: a single empty prefix is the empty string.
    pub sync_ns_prefixes: Option<Vec<Vec<u8>>>,
    pub sync_box: Option<Vec<u8>>,
    pub sync_box_guid: Option<Guid128>,
    pub sync_type: Option<SyncType>,
    pub debug: bool,
    pub sync_visible_namespaces: bool,
    /// Mailbox masks; a list of a single empty mask cannot be sent (it looks
    /// like the empty list on the wire).
    pub exclude_mailboxes: Option<Vec<Vec<u8>>>,
    pub send_mail_requests: bool,
    pub backup_send: bool,
    pub backup_recv: bool,
    /// Seconds; 0 = not sent (no user lock).
    pub lock_timeout: u32,
    pub no_mail_sync: bool,
    pub no_backup_overwrite: bool,
    pub purge_remote: bool,
    pub no_notify: bool,
    /// Unix time; 0 = not sent.
    pub sync_since_timestamp: i64,
    /// Bytes; 0 = not sent.
    pub sync_max_size: u64,
    pub sync_flags: Option<Vec<u8>>,
    /// Unix time; 0 = not sent. (A 2.3.19.1 master writes the since value here.)
    pub sync_until_timestamp: i64,
    pub virtual_all_box: Option<Vec<u8>>,
    pub empty_hdr_workaround: bool,
    /// 0 = not sent.
    pub import_commit_msgs_interval: u32,
    /// Header names for header hashes; each is followed by a TAB on the wire.
    pub hashed_headers: Option<Vec<Vec<u8>>>,
    pub alt_char: Option<u8>,
}

/// `S`: a mailbox's sync state (§4.3).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MailboxState {
    pub mailbox_guid: Guid128,
    pub last_uidvalidity: u32,
    pub last_common_uid: u32,
    pub last_common_modseq: u64,
    pub last_common_pvt_modseq: u64,
    pub last_messages_count: u32,
    pub changes_during_sync: bool,
}

/// `N`: a mailbox tree node (§4.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxTreeNode {
    /// Hierarchy levels of the full name, without any separator. Never empty.
    pub name: Vec<Vec<u8>>,
    pub existence: Existence,
    pub mailbox_guid: Option<Guid128>,
    pub uid_validity: u32,
    pub uid_next: u32,
    pub last_renamed_or_created: i64,
    pub subscribed: bool,
    pub last_subscription_change: i64,
}

impl MailboxTreeNode {
    /// The name joined with a hierarchy separator. Levels are not escaped:
    /// a level that contains `sep` needs the storage's own escaping first.
    pub fn joined_name(&self, sep: u8) -> Vec<u8> {
        self.name.join(&[sep][..])
    }

    /// Splits a full mailbox name at the sender's hierarchy separator into
    /// the levels sent in `N.name`.
    pub fn split_name(name: &[u8], sep: u8) -> Vec<Vec<u8>> {
        name.split(|&b| b == sep).map(|l| l.to_vec()).collect()
    }
}

/// One record of a `D` list: GUID (or name hash) and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteRecord {
    pub guid: Guid128,
    pub timestamp: i64,
}

/// `D`: mailbox deletions and unsubscriptions (§4.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxDelete {
    pub hierarchy_sep: u8,
    /// `None` is sent as the empty string.
    pub escape_char: Option<u8>,
    pub mailboxes: Vec<DeleteRecord>,
    pub dirs: Vec<DeleteRecord>,
    pub unsubscribes: Vec<DeleteRecord>,
}

/// `c`: a cache field decision embedded in `B.cache_fields` (§4.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheField {
    pub name: Vec<u8>,
    pub decision: CacheDecision,
    /// 0 = not sent.
    pub last_used: i64,
}

/// `B`: a mailbox's status (§4.6).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Mailbox {
    pub mailbox_guid: Guid128,
    pub uid_validity: u32,
    pub uid_next: u32,
    pub messages_count: u32,
    pub first_recent_uid: u32,
    pub highest_modseq: u64,
    pub highest_pvt_modseq: u64,
    pub mailbox_lost: bool,
    pub mailbox_ignore: bool,
    pub cache_fields: Vec<CacheField>,
    pub have_guids: bool,
    pub have_save_guids: bool,
    pub have_only_guid128: bool,
}

/// Where an attribute's value is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttributeValue {
    /// No value (typically a deletion).
    None,
    /// The value inline in the `value` field.
    Inline(Vec<u8>),
    /// The value follows as a data block.
    Stream,
}

/// `A`: a mailbox attribute (§4.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub attr_type: AttributeType,
    /// Key without the `/private/` or `/shared/` prefix.
    pub key: Vec<u8>,
    pub value: AttributeValue,
    pub deleted: bool,
    pub last_change: i64,
    pub modseq: u64,
}

/// One element of `C.keyword_changes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeywordChange {
    pub op: KeywordOp,
    pub keyword: Vec<u8>,
}

/// `C`: a mail change (§4.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailChange {
    pub change_type: ChangeType,
    pub uid: u32,
    /// Message GUID (`s`, `f`; empty when the storage has none) or the
    /// 32-hex GUID128 of an expunge.
    pub guid: Option<Vec<u8>>,
    /// 32 hex digits, or empty when the peer's mailbox is empty.
    pub hdr_hash: Option<Vec<u8>>,
    pub modseq: u64,
    pub pvt_modseq: u64,
    pub add_flags: MailFlags,
    pub remove_flags: MailFlags,
    pub final_flags: MailFlags,
    pub keywords_reset: bool,
    pub keyword_changes: Vec<KeywordChange>,
    /// Hex on the wire; 0 = not sent.
    pub received_timestamp: u64,
    /// Hex on the wire; 0 = not sent; `u64::MAX` = unknown.
    pub virtual_size: u64,
}

/// `R`: a mail request (§4.10).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MailRequest {
    pub guid: Option<Vec<u8>>,
    /// 0 = not sent.
    pub uid: u32,
}

/// `M`: a mail (§4.11). With `stream` set a data block follows.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Mail {
    pub guid: Option<Vec<u8>>,
    pub uid: u32,
    pub pop3_uidl: Option<Vec<u8>>,
    pub pop3_order: u32,
    /// Sent only when positive.
    pub received_date: i64,
    /// Sent when non-zero.
    pub saved_date: i64,
    pub stream: bool,
}

/// `F`: the slave's finish item (§4.12).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Finish {
    pub error: Option<Vec<u8>>,
    /// `enum mail_error` value; 0 = not sent.
    pub mail_error: i32,
    pub require_full_resync: bool,
}

/// Every line-level item of the protocol after the table block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// Boxed: by far the largest item, sent once per session.
    Handshake(Box<Handshake>),
    MailboxState(MailboxState),
    MailboxTreeNode(MailboxTreeNode),
    MailboxDelete(MailboxDelete),
    Mailbox(Mailbox),
    Attribute(Attribute),
    MailChange(MailChange),
    MailRequest(MailRequest),
    Mail(Mail),
    Finish(Finish),
    /// `.`: end of the current list.
    EndOfList,
    /// `X`: the sender is closing the stream.
    Done,
}

impl Item {
    /// The table kind, for items that have one.
    pub fn kind(&self) -> Option<ItemKind> {
        Some(match self {
            Item::Handshake(_) => ItemKind::Handshake,
            Item::MailboxState(_) => ItemKind::MailboxState,
            Item::MailboxTreeNode(_) => ItemKind::MailboxTreeNode,
            Item::MailboxDelete(_) => ItemKind::MailboxDelete,
            Item::Mailbox(_) => ItemKind::Mailbox,
            Item::Attribute(_) => ItemKind::Attribute,
            Item::MailChange(_) => ItemKind::MailChange,
            Item::MailRequest(_) => ItemKind::MailRequest,
            Item::Mail(_) => ItemKind::Mail,
            Item::Finish(_) => ItemKind::Finish,
            Item::EndOfList | Item::Done => return None,
        })
    }

    /// The line's first byte.
    pub fn letter(&self) -> u8 {
        match self {
            Item::EndOfList => b'.',
            Item::Done => b'X',
            other => other.kind().map(|k| k.letter()).unwrap_or(b'?'),
        }
    }

    /// True when a data block follows this item.
    pub fn has_body(&self) -> bool {
        match self {
            Item::Mail(m) => m.stream,
            Item::Attribute(a) => a.value == AttributeValue::Stream,
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Decoding from fields

/// Field values indexed by our standard key order; `None` = absent.
pub(crate) type FieldsIn<'a> = [Option<Cow<'a, [u8]>>];

pub(crate) struct Ctx {
    pub offset: u64,
    pub kind: ItemKind,
    pub minor: u32,
    pub max_list: usize,
}

impl Ctx {
    fn invalid(&self, key_idx: usize, reason: impl Into<String>) -> DecodeError {
        DecodeError::InvalidField {
            offset: self.offset,
            item: self.kind.name(),
            key: self.kind.keys()[key_idx],
            reason: reason.into(),
        }
    }

    fn too_many(&self, key_idx: usize) -> DecodeError {
        DecodeError::TooManyElements {
            offset: self.offset,
            item: self.kind.name(),
            key: self.kind.keys()[key_idx],
            max: self.max_list,
        }
    }

    fn get<'b>(&self, f: &'b FieldsIn<'_>, i: usize) -> Option<&'b [u8]> {
        f.get(i).and_then(|v| v.as_deref())
    }

    fn req<'b>(&self, f: &'b FieldsIn<'_>, i: usize) -> Result<&'b [u8], DecodeError> {
        self.get(f, i).ok_or(DecodeError::MissingRequiredField {
            offset: self.offset,
            item: self.kind.name(),
            key: self.kind.keys()[i],
        })
    }

    fn flag(&self, f: &FieldsIn<'_>, i: usize) -> bool {
        self.get(f, i).is_some()
    }

    fn bytes(&self, f: &FieldsIn<'_>, i: usize) -> Option<Vec<u8>> {
        self.get(f, i).map(|v| v.to_vec())
    }

    fn u32_req(&self, f: &FieldsIn<'_>, i: usize) -> Result<u32, DecodeError> {
        let v = self.req(f, i)?;
        parse_dec(v)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.invalid(i, bad(v)))
    }

    fn u64_req(&self, f: &FieldsIn<'_>, i: usize) -> Result<u64, DecodeError> {
        let v = self.req(f, i)?;
        parse_dec(v).ok_or_else(|| self.invalid(i, bad(v)))
    }

    fn u32_opt(&self, f: &FieldsIn<'_>, i: usize) -> Result<u32, DecodeError> {
        match self.get(f, i) {
            None => Ok(0),
            Some(v) => parse_dec(v)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| self.invalid(i, bad(v))),
        }
    }

    fn u64_opt(&self, f: &FieldsIn<'_>, i: usize) -> Result<u64, DecodeError> {
        match self.get(f, i) {
            None => Ok(0),
            Some(v) => parse_dec(v).ok_or_else(|| self.invalid(i, bad(v))),
        }
    }

    fn time_opt(&self, f: &FieldsIn<'_>, i: usize) -> Result<i64, DecodeError> {
        match self.get(f, i) {
            None => Ok(0),
            Some(v) => parse_signed(v).ok_or_else(|| self.invalid(i, bad(v))),
        }
    }

    /// Optional number that must be > 0 when present (handshake settings).
    fn positive_u64(&self, f: &FieldsIn<'_>, i: usize) -> Result<u64, DecodeError> {
        match self.get(f, i) {
            None => Ok(0),
            Some(v) => match parse_dec(v) {
                Some(n) if n > 0 => Ok(n),
                _ => Err(self.invalid(i, format!("{} (must be a number > 0)", bad(v)))),
            },
        }
    }

    fn hex_flags(&self, f: &FieldsIn<'_>, i: usize) -> Result<MailFlags, DecodeError> {
        match self.get(f, i) {
            None => Ok(MailFlags(0)),
            Some(v) => parse_hex(v)
                .and_then(|n| u8::try_from(n).ok())
                .map(MailFlags)
                .ok_or_else(|| self.invalid(i, bad(v))),
        }
    }

    fn hex_u64(&self, f: &FieldsIn<'_>, i: usize) -> Result<u64, DecodeError> {
        match self.get(f, i) {
            None => Ok(0),
            Some(v) => parse_hex(v).ok_or_else(|| self.invalid(i, bad(v))),
        }
    }

    fn guid(&self, v: &[u8], i: usize) -> Result<Guid128, DecodeError> {
        Guid128::parse_hex(v)
            .ok_or_else(|| self.invalid(i, format!("{} (not 32 hex digits)", bad(v))))
    }

    fn list(&self, v: &[u8], sep: u8, i: usize) -> Result<Vec<Vec<u8>>, DecodeError> {
        let n = if v.is_empty() {
            0
        } else {
            memchr::memchr_iter(sep, v).count() + 1
        };
        if n > self.max_list {
            return Err(self.too_many(i));
        }
        Ok(escape::split_list(v, sep))
    }

    fn single_byte(&self, v: &[u8], i: usize) -> Result<u8, DecodeError> {
        match v {
            [b] => Ok(*b),
            _ => Err(self.invalid(i, format!("{} (must be exactly one byte)", bad(v)))),
        }
    }
}

fn bad(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(&v[..v.len().min(64)]);
    format!("{s:?}")
}

/// Unsigned decimal: digits only, no sign, no overflow.
pub(crate) fn parse_dec(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Signed decimal (time values): optional `-`, then digits.
pub(crate) fn parse_signed(v: &[u8]) -> Option<i64> {
    match v.split_first() {
        Some((b'-', rest)) => {
            let n = parse_dec(rest)?;
            if n > i64::MAX as u64 + 1 {
                return None;
            }
            Some(
                (n as i128)
                    .checked_neg()
                    .and_then(|x| i64::try_from(x).ok())?,
            )
        }
        _ => parse_dec(v).and_then(|n| i64::try_from(n).ok()),
    }
}

/// Hexadecimal, either case, no prefix.
pub(crate) fn parse_hex(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 16 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        n = (n << 4) | u64::from(hex_val(b)?);
    }
    Some(n)
}

fn delete_list(ctx: &Ctx, v: &[u8], i: usize) -> Result<Vec<DeleteRecord>, DecodeError> {
    let words: Vec<&[u8]> = v.split(|&b| b == b' ').collect();
    if words.len() / 2 > ctx.max_list {
        return Err(ctx.too_many(i));
    }
    if words.len() % 2 != 0 {
        return Err(ctx.invalid(i, "odd number of words (expected GUID TIMESTAMP pairs)"));
    }
    words
        .chunks_exact(2)
        .map(|p| {
            Ok(DeleteRecord {
                guid: ctx.guid(p[0], i)?,
                timestamp: parse_signed(p[1]).ok_or_else(|| ctx.invalid(i, bad(p[1])))?,
            })
        })
        .collect()
}

pub(crate) fn decode_handshake(ctx: &Ctx, f: &FieldsIn<'_>) -> Result<Handshake, DecodeError> {
    let sync_type = match ctx.get(f, 4) {
        None => None,
        Some(b"f") => Some(SyncType::Full),
        Some(b"c") => Some(SyncType::Changed),
        Some(b"s") => Some(SyncType::State),
        Some(v) => return Err(ctx.invalid(4, format!("{} (expected f, c or s)", bad(v)))),
    };
    let hashed_headers = match ctx.get(f, 23) {
        None => None,
        Some(v) => {
            // Every element is followed by a TAB; drop the one trailing separator.
            let body = v.strip_suffix(b"\t").unwrap_or(v);
            if body.is_empty() && !v.is_empty() {
                Some(vec![Vec::new()])
            } else {
                Some(ctx.list(body, b'\t', 23)?)
            }
        }
    };
    let sync_ns_prefixes = match ctx.get(f, 1) {
        None => None,
        Some(v) => {
            if memchr::memchr_iter(b'\n', v).count() >= ctx.max_list {
                return Err(ctx.too_many(1));
            }
            Some(v.split(|&b| b == b'\n').map(|e| e.to_vec()).collect())
        }
    };
    Ok(Handshake {
        hostname: ctx.req(f, 0)?.to_vec(),
        sync_ns_prefixes,
        sync_box: ctx.bytes(f, 2),
        sync_box_guid: match ctx.get(f, 3) {
            None => None,
            Some(v) => Some(ctx.guid(v, 3)?),
        },
        sync_type,
        debug: ctx.flag(f, 5),
        sync_visible_namespaces: ctx.flag(f, 6),
        exclude_mailboxes: match ctx.get(f, 7) {
            None => None,
            Some(v) => Some(ctx.list(v, b'\t', 7)?),
        },
        send_mail_requests: ctx.flag(f, 8),
        backup_send: ctx.flag(f, 9),
        backup_recv: ctx.flag(f, 10),
        lock_timeout: u32::try_from(ctx.positive_u64(f, 11)?)
            .map_err(|_| ctx.invalid(11, "too large"))?,
        no_mail_sync: ctx.flag(f, 12),
        no_backup_overwrite: ctx.flag(f, 13),
        purge_remote: ctx.flag(f, 14),
        no_notify: ctx.flag(f, 15),
        sync_since_timestamp: i64::try_from(ctx.positive_u64(f, 16)?)
            .map_err(|_| ctx.invalid(16, "too large"))?,
        sync_max_size: ctx.positive_u64(f, 17)?,
        sync_flags: ctx.bytes(f, 18),
        sync_until_timestamp: i64::try_from(ctx.positive_u64(f, 19)?)
            .map_err(|_| ctx.invalid(19, "too large"))?,
        virtual_all_box: ctx.bytes(f, 20),
        empty_hdr_workaround: ctx.flag(f, 21),
        import_commit_msgs_interval: u32::try_from(ctx.positive_u64(f, 22)?)
            .map_err(|_| ctx.invalid(22, "too large"))?,
        hashed_headers,
        alt_char: match ctx.get(f, 24) {
            None => None,
            Some(v) => Some(ctx.single_byte(v, 24)?),
        },
    })
}

pub(crate) fn decode_state(ctx: &Ctx, f: &FieldsIn<'_>) -> Result<MailboxState, DecodeError> {
    Ok(MailboxState {
        mailbox_guid: ctx.guid(ctx.req(f, 0)?, 0)?,
        last_uidvalidity: ctx.u32_req(f, 1)?,
        last_common_uid: ctx.u32_req(f, 2)?,
        last_common_modseq: ctx.u64_req(f, 3)?,
        last_common_pvt_modseq: ctx.u64_req(f, 4)?,
        last_messages_count: ctx.u32_opt(f, 5)?,
        changes_during_sync: ctx.flag(f, 6),
    })
}

pub(crate) fn decode_tree_node(
    ctx: &Ctx,
    f: &FieldsIn<'_>,
) -> Result<MailboxTreeNode, DecodeError> {
    let name = ctx.req(f, 0)?;
    if name.is_empty() {
        return Err(ctx.invalid(0, "empty name"));
    }
    let existence = match ctx.req(f, 1)? {
        b"n" => Existence::NonExistent,
        b"y" => Existence::Exists,
        b"d" => Existence::Deleted,
        v => return Err(ctx.invalid(1, format!("{} (expected n, y or d)", bad(v)))),
    };
    Ok(MailboxTreeNode {
        name: ctx.list(name, b'\t', 0)?,
        existence,
        mailbox_guid: match ctx.get(f, 2) {
            None => None,
            Some(v) => Some(ctx.guid(v, 2)?),
        },
        uid_validity: ctx.u32_opt(f, 3)?,
        uid_next: ctx.u32_opt(f, 4)?,
        last_renamed_or_created: ctx.time_opt(f, 5)?,
        subscribed: ctx.flag(f, 6),
        last_subscription_change: ctx.time_opt(f, 7)?,
    })
}

pub(crate) fn decode_delete(ctx: &Ctx, f: &FieldsIn<'_>) -> Result<MailboxDelete, DecodeError> {
    let hierarchy_sep = ctx.single_byte(ctx.req(f, 0)?, 0)?;
    let escape_char = match ctx.get(f, 1) {
        None | Some(b"") => None,
        Some(v) => Some(ctx.single_byte(v, 1)?),
    };
    let list = |i: usize| -> Result<Vec<DeleteRecord>, DecodeError> {
        match ctx.get(f, i) {
            None => Ok(Vec::new()),
            Some(v) => delete_list(ctx, v, i),
        }
    };
    Ok(MailboxDelete {
        hierarchy_sep,
        escape_char,
        mailboxes: list(2)?,
        dirs: list(3)?,
        unsubscribes: list(4)?,
    })
}

/// Decodes one `c` record (already split into its own fields).
pub(crate) fn decode_cache_field(ctx: &Ctx, f: &FieldsIn<'_>) -> Result<CacheField, DecodeError> {
    let name = ctx.req(f, 0)?.to_vec();
    let d = ctx.req(f, 1)?;
    let kind = match d.first() {
        Some(b'n') => CacheDecisionKind::No,
        Some(b't') => CacheDecisionKind::Temp,
        Some(b'y') => CacheDecisionKind::Yes,
        _ => return Err(ctx.invalid(1, format!("{} (expected n, t or y)", bad(d)))),
    };
    let forced = match &d[1..] {
        b"" => false,
        b"F" => true,
        _ => return Err(ctx.invalid(1, format!("{} (only F may follow the decision)", bad(d)))),
    };
    Ok(CacheField {
        name,
        decision: CacheDecision { kind, forced },
        last_used: ctx.time_opt(f, 2)?,
    })
}

pub(crate) fn decode_mailbox(
    ctx: &Ctx,
    f: &FieldsIn<'_>,
    cache_fields: Vec<CacheField>,
) -> Result<Mailbox, DecodeError> {
    let have_guids = ctx.flag(f, 10);
    Ok(Mailbox {
        mailbox_guid: ctx.guid(ctx.req(f, 0)?, 0)?,
        uid_validity: ctx.u32_req(f, 1)?,
        uid_next: ctx.u32_req(f, 2)?,
        messages_count: ctx.u32_req(f, 3)?,
        first_recent_uid: ctx.u32_req(f, 4)?,
        highest_modseq: ctx.u64_req(f, 5)?,
        highest_pvt_modseq: ctx.u64_req(f, 6)?,
        mailbox_lost: ctx.flag(f, 7),
        mailbox_ignore: ctx.flag(f, 8),
        cache_fields,
        have_guids,
        // Peers before minor 2 had no separate flag: GUIDs implied save GUIDs.
        have_save_guids: ctx.flag(f, 11) || (have_guids && ctx.minor < 2),
        have_only_guid128: ctx.flag(f, 12),
    })
}

pub(crate) fn decode_attribute(ctx: &Ctx, f: &FieldsIn<'_>) -> Result<Attribute, DecodeError> {
    let attr_type = match ctx.req(f, 0)? {
        b"p" => AttributeType::Private,
        b"s" => AttributeType::Shared,
        v => return Err(ctx.invalid(0, format!("{} (expected p or s)", bad(v)))),
    };
    let value = if ctx.flag(f, 3) {
        AttributeValue::Stream
    } else if let Some(v) = ctx.get(f, 2) {
        AttributeValue::Inline(v.to_vec())
    } else {
        AttributeValue::None
    };
    Ok(Attribute {
        attr_type,
        key: ctx.req(f, 1)?.to_vec(),
        value,
        deleted: ctx.flag(f, 4),
        last_change: ctx.time_opt(f, 5)?,
        modseq: ctx.u64_opt(f, 6)?,
    })
}

pub(crate) fn decode_change(ctx: &Ctx, f: &FieldsIn<'_>) -> Result<MailChange, DecodeError> {
    let change_type = match ctx.req(f, 0)? {
        b"s" => ChangeType::Save,
        b"e" => ChangeType::Expunge,
        b"f" => ChangeType::FlagChange,
        v => return Err(ctx.invalid(0, format!("{} (expected s, e or f)", bad(v)))),
    };
    let mut keyword_changes: Vec<KeywordChange> = match ctx.get(f, 10) {
        None => Vec::new(),
        Some(v) => ctx
            .list(v, b'\t', 10)?
            .into_iter()
            .map(|e| match e.split_first() {
                Some((&op, name)) => KeywordOp::from_letter(op)
                    .map(|op| KeywordChange {
                        op,
                        keyword: name.to_vec(),
                    })
                    .ok_or_else(|| ctx.invalid(10, format!("{} (unknown operation)", bad(&e)))),
                None => Err(ctx.invalid(10, "empty keyword change")),
            })
            .collect::<Result<_, _>>()?,
    };
    // A receiver keeps a full comparison's changes until the mails arrive:
    // no spare room (a collected list starts at four).
    keyword_changes.shrink_to_fit();
    Ok(MailChange {
        change_type,
        uid: ctx.u32_req(f, 1)?,
        guid: ctx.bytes(f, 2),
        hdr_hash: ctx.bytes(f, 3),
        modseq: ctx.u64_opt(f, 4)?,
        pvt_modseq: ctx.u64_opt(f, 5)?,
        add_flags: ctx.hex_flags(f, 6)?,
        remove_flags: ctx.hex_flags(f, 7)?,
        final_flags: ctx.hex_flags(f, 8)?,
        keywords_reset: ctx.flag(f, 9),
        keyword_changes,
        received_timestamp: ctx.hex_u64(f, 11)?,
        virtual_size: ctx.hex_u64(f, 12)?,
    })
}

pub(crate) fn decode_request(ctx: &Ctx, f: &FieldsIn<'_>) -> Result<MailRequest, DecodeError> {
    Ok(MailRequest {
        guid: ctx.bytes(f, 0),
        uid: ctx.u32_opt(f, 1)?,
    })
}

pub(crate) fn decode_mail(ctx: &Ctx, f: &FieldsIn<'_>) -> Result<Mail, DecodeError> {
    Ok(Mail {
        guid: ctx.bytes(f, 0),
        uid: ctx.u32_opt(f, 1)?,
        pop3_uidl: ctx.bytes(f, 2),
        pop3_order: ctx.u32_opt(f, 3)?,
        // Dovecot sends it only when positive; a negative value could not be
        // sent back unchanged, so it is refused.
        received_date: match ctx.time_opt(f, 4)? {
            t if t < 0 => return Err(ctx.invalid(4, "negative (only positive dates are sent)")),
            t => t,
        },
        saved_date: ctx.time_opt(f, 5)?,
        stream: ctx.flag(f, 6),
    })
}

pub(crate) fn decode_finish(ctx: &Ctx, f: &FieldsIn<'_>) -> Result<Finish, DecodeError> {
    let mail_error = match ctx.get(f, 1) {
        None => 0,
        Some(v) => parse_signed(v)
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| ctx.invalid(1, bad(v)))?,
    };
    Ok(Finish {
        error: ctx.bytes(f, 0),
        mail_error,
        require_full_resync: ctx.flag(f, 2),
    })
}

// ---------------------------------------------------------------------------
// Encoding to fields (values in our standard key order, unescaped)

pub(crate) type FieldsOut<'a> = Vec<Option<Cow<'a, [u8]>>>;

const EMPTY: Option<Cow<'static, [u8]>> = Some(Cow::Borrowed(b""));

fn b(v: &[u8]) -> Option<Cow<'_, [u8]>> {
    Some(Cow::Borrowed(v))
}
fn ob(v: &Option<Vec<u8>>) -> Option<Cow<'_, [u8]>> {
    v.as_deref().map(Cow::Borrowed)
}
fn owned(v: Vec<u8>) -> Option<Cow<'static, [u8]>> {
    Some(Cow::Owned(v))
}
fn dec(n: impl std::fmt::Display) -> Option<Cow<'static, [u8]>> {
    owned(n.to_string().into_bytes())
}
fn dec_nz(n: u64) -> Option<Cow<'static, [u8]>> {
    if n == 0 {
        None
    } else {
        dec(n)
    }
}
fn time_nz(n: i64) -> Option<Cow<'static, [u8]>> {
    if n == 0 {
        None
    } else {
        dec(n)
    }
}
fn time_pos(n: i64) -> Option<Cow<'static, [u8]>> {
    if n > 0 {
        dec(n)
    } else {
        None
    }
}
fn hex_nz(n: u64) -> Option<Cow<'static, [u8]>> {
    if n == 0 {
        None
    } else {
        owned(format!("{n:x}").into_bytes())
    }
}
fn flag(v: bool) -> Option<Cow<'static, [u8]>> {
    if v {
        EMPTY
    } else {
        None
    }
}
fn guid(g: &Guid128) -> Option<Cow<'static, [u8]>> {
    owned(g.to_hex().into_bytes())
}

pub(crate) fn encode_handshake(h: &Handshake) -> FieldsOut<'_> {
    let list_tab = |v: &Option<Vec<Vec<u8>>>| {
        v.as_ref()
            .map(|l| Cow::Owned(escape::join_list(l.iter().map(|e| e.as_slice()), b'\t')))
    };
    vec![
        b(&h.hostname),
        h.sync_ns_prefixes
            .as_ref()
            .map(|l| Cow::Owned(l.join(&b'\n'))),
        ob(&h.sync_box),
        h.sync_box_guid.as_ref().and_then(guid),
        h.sync_type.map(|t| Cow::Owned(vec![t.letter()])),
        flag(h.debug),
        flag(h.sync_visible_namespaces),
        list_tab(&h.exclude_mailboxes),
        flag(h.send_mail_requests),
        flag(h.backup_send),
        flag(h.backup_recv),
        dec_nz(u64::from(h.lock_timeout)),
        flag(h.no_mail_sync),
        flag(h.no_backup_overwrite),
        flag(h.purge_remote),
        flag(h.no_notify),
        time_pos(h.sync_since_timestamp),
        dec_nz(h.sync_max_size),
        ob(&h.sync_flags),
        time_pos(h.sync_until_timestamp),
        ob(&h.virtual_all_box),
        flag(h.empty_hdr_workaround),
        dec_nz(u64::from(h.import_commit_msgs_interval)),
        h.hashed_headers.as_ref().map(|l| {
            let mut out = Vec::new();
            for e in l {
                escape::escape_into(e, &mut out);
                out.push(b'\t');
            }
            Cow::Owned(out)
        }),
        h.alt_char.map(|c| Cow::Owned(vec![c])),
    ]
}

pub(crate) fn encode_state(s: &MailboxState) -> FieldsOut<'static> {
    vec![
        guid(&s.mailbox_guid),
        dec(s.last_uidvalidity),
        dec(s.last_common_uid),
        dec(s.last_common_modseq),
        dec(s.last_common_pvt_modseq),
        dec(s.last_messages_count),
        flag(s.changes_during_sync),
    ]
}

pub(crate) fn encode_tree_node(n: &MailboxTreeNode) -> FieldsOut<'_> {
    vec![
        owned(escape::join_list(
            n.name.iter().map(|e| e.as_slice()),
            b'\t',
        )),
        owned(vec![n.existence.letter()]),
        n.mailbox_guid.as_ref().and_then(guid),
        dec_nz(u64::from(n.uid_validity)),
        dec_nz(u64::from(n.uid_next)),
        time_nz(n.last_renamed_or_created),
        flag(n.subscribed),
        time_nz(n.last_subscription_change),
    ]
}

fn delete_records(l: &[DeleteRecord]) -> Option<Cow<'static, [u8]>> {
    if l.is_empty() {
        return None;
    }
    let mut s = String::new();
    for (i, r) in l.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&r.guid.to_hex());
        s.push(' ');
        s.push_str(&r.timestamp.to_string());
    }
    owned(s.into_bytes())
}

pub(crate) fn encode_delete(d: &MailboxDelete) -> FieldsOut<'static> {
    vec![
        owned(vec![d.hierarchy_sep]),
        owned(d.escape_char.map(|c| vec![c]).unwrap_or_default()),
        delete_records(&d.mailboxes),
        delete_records(&d.dirs),
        delete_records(&d.unsubscribes),
    ]
}

pub(crate) fn encode_cache_field(c: &CacheField) -> FieldsOut<'_> {
    let mut d = vec![match c.decision.kind {
        CacheDecisionKind::No => b'n',
        CacheDecisionKind::Temp => b't',
        CacheDecisionKind::Yes => b'y',
    }];
    if c.decision.forced {
        d.push(b'F');
    }
    vec![b(&c.name), owned(d), time_nz(c.last_used)]
}

/// `cache_fields` must already be serialized (it depends on the `c` table).
pub(crate) fn encode_mailbox(m: &Mailbox, cache_fields: Vec<u8>) -> FieldsOut<'static> {
    vec![
        guid(&m.mailbox_guid),
        dec(m.uid_validity),
        dec(m.uid_next),
        dec(m.messages_count),
        dec(m.first_recent_uid),
        dec(m.highest_modseq),
        dec(m.highest_pvt_modseq),
        flag(m.mailbox_lost),
        flag(m.mailbox_ignore),
        owned(cache_fields),
        flag(m.have_guids),
        flag(m.have_save_guids),
        flag(m.have_only_guid128),
    ]
}

pub(crate) fn encode_attribute(a: &Attribute) -> FieldsOut<'_> {
    vec![
        owned(vec![match a.attr_type {
            AttributeType::Private => b'p',
            AttributeType::Shared => b's',
        }]),
        b(&a.key),
        match &a.value {
            AttributeValue::Inline(v) => b(v),
            _ => None,
        },
        flag(a.value == AttributeValue::Stream),
        flag(a.deleted),
        time_nz(a.last_change),
        dec_nz(a.modseq),
    ]
}

pub(crate) fn encode_change(c: &MailChange) -> FieldsOut<'_> {
    let kw = if c.keyword_changes.is_empty() {
        None
    } else {
        let mut out = Vec::new();
        for (i, k) in c.keyword_changes.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            let mut e = Vec::with_capacity(k.keyword.len() + 1);
            e.push(k.op.letter());
            e.extend_from_slice(&k.keyword);
            escape::escape_into(&e, &mut out);
        }
        owned(out)
    };
    vec![
        owned(vec![c.change_type.letter()]),
        dec(c.uid),
        ob(&c.guid),
        ob(&c.hdr_hash),
        dec_nz(c.modseq),
        dec_nz(c.pvt_modseq),
        hex_nz(u64::from(c.add_flags.0)),
        hex_nz(u64::from(c.remove_flags.0)),
        hex_nz(u64::from(c.final_flags.0)),
        flag(c.keywords_reset),
        kw,
        hex_nz(c.received_timestamp),
        hex_nz(c.virtual_size),
    ]
}

pub(crate) fn encode_request(r: &MailRequest) -> FieldsOut<'_> {
    vec![ob(&r.guid), dec_nz(u64::from(r.uid))]
}

pub(crate) fn encode_mail(m: &Mail) -> FieldsOut<'_> {
    vec![
        ob(&m.guid),
        dec_nz(u64::from(m.uid)),
        ob(&m.pop3_uidl),
        dec_nz(u64::from(m.pop3_order)),
        time_pos(m.received_date),
        time_nz(m.saved_date),
        flag(m.stream),
    ]
}

pub(crate) fn encode_finish(f: &Finish) -> FieldsOut<'_> {
    vec![
        ob(&f.error),
        if f.mail_error == 0 {
            None
        } else {
            dec(f.mail_error)
        },
        flag(f.require_full_resync),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_dec(b"0"), Some(0));
        assert_eq!(parse_dec(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_dec(b"18446744073709551616"), None);
        assert_eq!(parse_dec(b"+1"), None);
        assert_eq!(parse_dec(b""), None);
        assert_eq!(parse_signed(b"-5"), Some(-5));
        assert_eq!(parse_signed(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_signed(b"9223372036854775808"), None);
        assert_eq!(parse_hex(b"2A"), Some(42));
        assert_eq!(parse_hex(b"ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_hex(b"x"), None);
    }
}
