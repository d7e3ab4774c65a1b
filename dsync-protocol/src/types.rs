//! Small value types shared by the items: GUIDs, flags, enums.

use std::fmt;

/// A 128-bit GUID (mailbox GUIDs, state records, delete records, expunge
/// GUIDs). On the wire: exactly 32 hex digits, lower case when sent.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Guid128(pub [u8; 16]);

impl Guid128 {
    /// All-zero GUID (Dovecot's "empty" GUID).
    pub const EMPTY: Guid128 = Guid128([0; 16]);

    /// Parses exactly 32 hex digits (either case).
    pub fn parse_hex(s: &[u8]) -> Option<Guid128> {
        if s.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        Some(Guid128(out))
    }

    /// Lower-case hex form, as Dovecot sends it.
    pub fn to_hex(&self) -> String {
        hex_lower(&self.0)
    }

    /// True for the all-zero GUID.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Guid128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid128({})", self.to_hex())
    }
}

pub(crate) fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Lower-case hex of arbitrary bytes.
pub fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// IMAP system flags as the bit set carried in `C` items (hex on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MailFlags(pub u8);

impl MailFlags {
    pub const ANSWERED: u8 = 0x01;
    pub const FLAGGED: u8 = 0x02;
    pub const DELETED: u8 = 0x04;
    pub const SEEN: u8 = 0x08;
    pub const DRAFT: u8 = 0x10;
    /// `\Recent`: Dovecot includes it in `final_flags`; never stored.
    pub const RECENT: u8 = 0x20;

    pub fn contains(self, bit: u8) -> bool {
        self.0 & bit == bit
    }

    /// IMAP names of the set bits, in bit order; unknown bits as `0xNN`.
    pub fn names(self) -> Vec<String> {
        const NAMES: [&str; 6] = [
            "\\Answered",
            "\\Flagged",
            "\\Deleted",
            "\\Seen",
            "\\Draft",
            "\\Recent",
        ];
        let mut v = Vec::new();
        for (i, n) in NAMES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                v.push((*n).to_string());
            }
        }
        if self.0 & 0xc0 != 0 {
            v.push(format!("0x{:02x}", self.0 & 0xc0));
        }
        v
    }
}

impl fmt::Debug for MailFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MailFlags({:#04x} {:?})", self.0, self.names())
    }
}

/// `H.sync_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncType {
    /// `f`: every mailbox is synced fully.
    Full,
    /// `c`: mailboxes whose `B` differ are synced.
    Changed,
    /// `s`: stateful, the master sends the state list first.
    State,
}

impl SyncType {
    pub fn letter(self) -> u8 {
        match self {
            SyncType::Full => b'f',
            SyncType::Changed => b'c',
            SyncType::State => b's',
        }
    }
}

/// `N.existence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Existence {
    /// `n`: placeholder (parent only, or subscription only).
    NonExistent,
    /// `y`: exists (mailbox when a GUID is set, else a directory).
    Exists,
    /// `d`: deleted (accepted, never sent by Dovecot 2.3.19.1).
    Deleted,
}

impl Existence {
    pub fn letter(self) -> u8 {
        match self {
            Existence::NonExistent => b'n',
            Existence::Exists => b'y',
            Existence::Deleted => b'd',
        }
    }
}

/// Cache decision of a `c` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheDecisionKind {
    No,
    Temp,
    Yes,
}

/// `c.decision`: `n`/`t`/`y`, optionally followed by `F` (forced).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheDecision {
    pub kind: CacheDecisionKind,
    pub forced: bool,
}

/// `A.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttributeType {
    /// `p`, keys under `/private/`.
    Private,
    /// `s`, keys under `/shared/`.
    Shared,
}

/// `C.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeType {
    /// `s`: a mail the peer may not have.
    Save,
    /// `e`: an expunge.
    Expunge,
    /// `f`: flag/keyword change of an existing mail.
    FlagChange,
}

impl ChangeType {
    pub fn letter(self) -> u8 {
        match self {
            ChangeType::Save => b's',
            ChangeType::Expunge => b'e',
            ChangeType::FlagChange => b'f',
        }
    }
}

/// Operation character of one `C.keyword_changes` element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeywordOp {
    /// `+`: added since the last common modseq.
    Add,
    /// `-`: removed since then.
    Remove,
    /// `=`: currently set, unchanged.
    Final,
    /// `&`: added and currently set.
    AddFinal,
}

impl KeywordOp {
    pub fn letter(self) -> u8 {
        match self {
            KeywordOp::Add => b'+',
            KeywordOp::Remove => b'-',
            KeywordOp::Final => b'=',
            KeywordOp::AddFinal => b'&',
        }
    }

    pub fn from_letter(b: u8) -> Option<KeywordOp> {
        Some(match b {
            b'+' => KeywordOp::Add,
            b'-' => KeywordOp::Remove,
            b'=' => KeywordOp::Final,
            b'&' => KeywordOp::AddFinal,
            _ => return None,
        })
    }
}

/// Role of the side that produced a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `doveadm sync`/`backup`: decides the mailbox order, ends the mailbox list.
    Master,
    /// `doveadm dsync-server`: answers `B`, sends `F`.
    Slave,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_hex() {
        let g = Guid128::parse_hex(b"1ba080387b140b6b5f7e000083ecc375").unwrap();
        assert_eq!(g.to_hex(), "1ba080387b140b6b5f7e000083ecc375");
        assert_eq!(
            Guid128::parse_hex(b"1BA080387B140B6B5F7E000083ECC375"),
            Some(g)
        );
        assert_eq!(Guid128::parse_hex(b"1ba0"), None);
        assert_eq!(
            Guid128::parse_hex(b"1ba080387b140b6b5f7e000083ecc37g"),
            None
        );
    }

    #[test]
    fn flag_names() {
        assert_eq!(
            MailFlags(0x2a).names(),
            vec!["\\Flagged", "\\Seen", "\\Recent"]
        );
    }
}
