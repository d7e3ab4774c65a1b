//! The `doveadm sync -s` state string (spec §9).

use base64::Engine as _;
use thiserror::Error;

use crate::item::MailboxState;
use crate::types::Guid128;

const RECORD: usize = 44;
const V0_RECORD: usize = 40;

/// One mailbox record of the state string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StateRecord {
    pub mailbox_guid: Guid128,
    pub last_uidvalidity: u32,
    pub last_common_uid: u32,
    pub last_common_modseq: u64,
    pub last_common_pvt_modseq: u64,
    pub last_messages_count: u32,
}

impl From<&MailboxState> for StateRecord {
    fn from(s: &MailboxState) -> Self {
        StateRecord {
            mailbox_guid: s.mailbox_guid,
            last_uidvalidity: s.last_uidvalidity,
            last_common_uid: s.last_common_uid,
            last_common_modseq: s.last_common_modseq,
            last_common_pvt_modseq: s.last_common_pvt_modseq,
            last_messages_count: s.last_messages_count,
        }
    }
}

impl From<&StateRecord> for MailboxState {
    fn from(r: &StateRecord) -> Self {
        MailboxState {
            mailbox_guid: r.mailbox_guid,
            last_uidvalidity: r.last_uidvalidity,
            last_common_uid: r.last_common_uid,
            last_common_modseq: r.last_common_modseq,
            last_common_pvt_modseq: r.last_common_pvt_modseq,
            last_messages_count: r.last_messages_count,
            changes_during_sync: false,
        }
    }
}

/// Which layout the parsed string had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateFormat {
    /// Header `01 00 00 00`, 44-byte records, CRC-32.
    V1,
    /// The old headerless format; Dovecot accepts it as an empty state.
    V0,
}

/// A decoded state: the records in their stored order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncState {
    pub format: StateFormat,
    /// The four header bytes (not checked by Dovecot beyond the layout).
    pub header: [u8; 4],
    pub mailboxes: Vec<StateRecord>,
}

impl Default for SyncState {
    fn default() -> Self {
        SyncState {
            format: StateFormat::V1,
            header: [1, 0, 0, 0],
            mailboxes: Vec::new(),
        }
    }
}

/// Why a state string was rejected (Dovecot then falls back to a full sync).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StateError {
    #[error("state string is not valid base64")]
    InvalidBase64,
    #[error("state is too small ({len} bytes, at least 8 needed)")]
    TooSmall { len: usize },
    #[error("state size {len} is not 8 + 44 × N bytes")]
    BadLength { len: usize },
    #[error("state CRC mismatch: stored {stored:08x}, computed {computed:08x}")]
    CrcMismatch { stored: u32, computed: u32 },
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn is_v0(blob: &[u8]) -> bool {
    blob.len() >= 4 && (blob.len() - 4) % V0_RECORD == 0 && {
        let (body, crc) = blob.split_at(blob.len() - 4);
        crc32fast::hash(body) == le32(crc)
    }
}

impl SyncState {
    /// Parses the printed string (surrounding whitespace ignored).
    pub fn parse(s: &str) -> Result<SyncState, StateError> {
        let blob = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| StateError::InvalidBase64)?;
        SyncState::from_bytes(&blob)
    }

    /// Parses the binary blob.
    pub fn from_bytes(blob: &[u8]) -> Result<SyncState, StateError> {
        let v0_empty = SyncState {
            format: StateFormat::V0,
            header: [0; 4],
            mailboxes: Vec::new(),
        };
        if blob == [0, 0, 0, 0] {
            return Ok(v0_empty);
        }
        if blob.len() < 8 {
            return Err(StateError::TooSmall { len: blob.len() });
        }
        let (body, crc) = blob.split_at(blob.len() - 4);
        if (blob.len() - 8) % RECORD != 0 {
            if is_v0(blob) {
                return Ok(v0_empty);
            }
            return Err(StateError::BadLength { len: blob.len() });
        }
        let computed = crc32fast::hash(body);
        if computed != le32(crc) {
            if is_v0(blob) {
                return Ok(v0_empty);
            }
            return Err(StateError::CrcMismatch {
                stored: le32(crc),
                computed,
            });
        }
        let mut header = [0u8; 4];
        header.copy_from_slice(&body[..4]);
        let mailboxes = body[4..]
            .chunks_exact(RECORD)
            .map(|r| {
                let mut g = [0u8; 16];
                g.copy_from_slice(&r[..16]);
                StateRecord {
                    mailbox_guid: Guid128(g),
                    last_uidvalidity: le32(&r[16..]),
                    last_common_uid: le32(&r[20..]),
                    last_common_modseq: le64(&r[24..]),
                    last_common_pvt_modseq: le64(&r[32..]),
                    last_messages_count: le32(&r[40..]),
                }
            })
            .collect();
        Ok(SyncState {
            format: StateFormat::V1,
            header,
            mailboxes,
        })
    }

    /// The binary blob (always the V1 layout).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + RECORD * self.mailboxes.len());
        b.extend_from_slice(&self.header);
        for r in &self.mailboxes {
            b.extend_from_slice(&r.mailbox_guid.0);
            b.extend_from_slice(&r.last_uidvalidity.to_le_bytes());
            b.extend_from_slice(&r.last_common_uid.to_le_bytes());
            b.extend_from_slice(&r.last_common_modseq.to_le_bytes());
            b.extend_from_slice(&r.last_common_pvt_modseq.to_le_bytes());
            b.extend_from_slice(&r.last_messages_count.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// The string `doveadm sync -s` prints.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.to_bytes())
    }

    /// The records as `S` items (the master's state list, §6.2).
    pub fn to_items(&self) -> Vec<MailboxState> {
        self.mailboxes.iter().map(MailboxState::from).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors() {
        assert_eq!(SyncState::parse("!!"), Err(StateError::InvalidBase64));
        assert_eq!(
            SyncState::parse("AQAA"),
            Err(StateError::TooSmall { len: 3 })
        );
        assert_eq!(
            SyncState::parse("AAAAAA==").map(|s| s.format),
            Ok(StateFormat::V0)
        );
        let mut good = SyncState::default();
        good.mailboxes.push(StateRecord {
            last_uidvalidity: 7,
            ..Default::default()
        });
        let mut b = good.to_bytes();
        assert_eq!(SyncState::from_bytes(&b), Ok(good.clone()));
        b[20] ^= 1;
        assert!(matches!(
            SyncState::from_bytes(&b),
            Err(StateError::CrcMismatch { .. })
        ));
        b.push(0);
        assert_eq!(
            SyncState::from_bytes(&b),
            Err(StateError::BadLength { len: 53 })
        );
    }

    #[test]
    fn v0_is_accepted_as_empty() {
        let mut blob = vec![9u8; 40];
        let crc = crc32fast::hash(&blob);
        blob.extend_from_slice(&crc.to_le_bytes());
        let s = SyncState::from_bytes(&blob).unwrap();
        assert_eq!(s.format, StateFormat::V0);
        assert!(s.mailboxes.is_empty());
    }
}
