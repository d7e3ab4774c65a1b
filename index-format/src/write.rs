//! Byte layout of what a foreign writer adds to Dovecot's files: transaction-log
//! records and transactions (spec 4.2–4.4, 10.2), uidlist lines and headers
//! (6.3), `dovecot-keywords` (6.4) and mailbox-log records (8.3).
//!
//! Pure encoders: no locks, no I/O. The policy (locks, ordering, fsync) lives
//! with the caller.

use crate::le::pack_offset;
use crate::log::rtype as types;

/// One record of a transaction under construction.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    ty: u32,
    payload: Vec<u8>,
}

/// Extension geometry to announce with an EXT_INTRO (spec 4.3.5): the
/// extension's current reset_id and sizes, so the intro never resizes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtGeometry {
    pub name: String,
    pub reset_id: u32,
    pub hdr_size: u32,
    pub record_size: u16,
    pub record_align: u16,
}

/// Builds one log transaction. Records are kept in Dovecot's order
/// (spec 4.4) regardless of the order the methods are called in.
#[derive(Debug, Default, Clone)]
pub struct TransactionBuilder {
    external: bool,
    sync: bool,
    ext_headers: Vec<Rec>,
    header_updates: Vec<Rec>,
    appends: Vec<u8>,
    flag_updates: Vec<u8>,
    ext_rec: Vec<Rec>,
    keyword_updates: Vec<Rec>,
    modseq_updates: Vec<u8>,
    /// ATTRIBUTE_UPDATE keys (`+p<key>` / `-s<key>`) and, in the same
    /// order, their timestamps and value lengths.
    attribute_keys: Vec<Vec<u8>>,
    attribute_nums: Vec<u32>,
    expunges: Vec<u8>,
}

/// Errors in the values handed to the builder (they would be corruption for Dovecot).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("log append uid {uid} is not above the previous uid {prev} (spec 4.3.2: uids strictly increase)")]
    AppendOrder { uid: u32, prev: u32 },
    #[error("uid 0 in a {0} record (spec 4.3: uid 0 is invalid)")]
    ZeroUid(&'static str),
    #[error("flag update range {0}..{1} is reversed (spec 4.3.3)")]
    BadRange(u32, u32),
    #[error("keyword name is empty or longer than 65535 bytes (spec 4.3.10)")]
    BadKeyword,
    #[error("extension record of {got} bytes does not match record size {want} (spec 4.3.8)")]
    ExtRecordSize { got: usize, want: u16 },
    #[error("header update at {offset}+{size} is not 4-byte aligned (spec 4.3.4)")]
    Unaligned { offset: u16, size: u16 },
    #[error("attribute key is empty or contains a NUL byte (spec 4.3.15)")]
    BadAttributeKey,
}

fn pad4(v: &mut Vec<u8>) {
    while v.len() % 4 != 0 {
        v.push(0);
    }
}

impl TransactionBuilder {
    /// `external`: the changes were already carried out in the mail files
    /// (spec 10.1); otherwise they are requests for Dovecot's next sync.
    pub fn new(external: bool) -> Self {
        TransactionBuilder {
            external,
            ..Default::default()
        }
    }

    /// Marks the transaction as made by replication (SYNC bit), so that
    /// replication log scans skip it (spec 4.2).
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    /// True if no record was added.
    pub fn is_empty(&self) -> bool {
        self.ext_headers.is_empty()
            && self.header_updates.is_empty()
            && self.appends.is_empty()
            && self.flag_updates.is_empty()
            && self.ext_rec.is_empty()
            && self.keyword_updates.is_empty()
            && self.modseq_updates.is_empty()
            && self.attribute_keys.is_empty()
            && self.expunges.is_empty()
    }

    /// EXT_INTRO (name form, NO_SHRINK) + EXT_HDR_UPDATE writing `data` at
    /// `offset` of the extension header (4.3.5, 4.3.7). Introducing an
    /// extension that does not exist yet creates it with this geometry.
    pub fn ext_hdr_update(
        &mut self,
        ext: &ExtGeometry,
        offset: u16,
        data: &[u8],
    ) -> Result<(), BuildError> {
        let size = data.len() as u16;
        if data.is_empty()
            || data.len() > u16::MAX as usize
            || offset as u32 + size as u32 > ext.hdr_size
        {
            return Err(BuildError::Unaligned { offset, size });
        }
        let mut p = Vec::with_capacity(4 + data.len() + 3);
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        p.extend_from_slice(data);
        pad4(&mut p);
        self.ext_headers.push(Rec {
            ty: types::EXT_INTRO,
            payload: ext_intro_payload(ext),
        });
        self.ext_headers.push(Rec {
            ty: types::EXT_HDR_UPDATE,
            payload: p,
        });
        Ok(())
    }

    /// Base header update (4.3.4): `data` written at `offset`.
    pub fn header_update(&mut self, offset: u16, data: &[u8]) -> Result<(), BuildError> {
        let size = data.len() as u16;
        if offset % 4 != 0 || size % 4 != 0 || size == 0 {
            return Err(BuildError::Unaligned { offset, size });
        }
        let mut p = Vec::with_capacity(4 + data.len());
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        p.extend_from_slice(data);
        self.header_updates.push(Rec {
            ty: types::HEADER_UPDATE,
            payload: p,
        });
        Ok(())
    }

    /// APPEND (4.3.2) of a new message with its index flags byte.
    pub fn append(&mut self, uid: u32, flags: u8) -> Result<(), BuildError> {
        if uid == 0 {
            return Err(BuildError::ZeroUid("append"));
        }
        if self.appends.len() >= 8 {
            let n = self.appends.len();
            let prev = u32::from_le_bytes([
                self.appends[n - 8],
                self.appends[n - 7],
                self.appends[n - 6],
                self.appends[n - 5],
            ]);
            if uid <= prev {
                return Err(BuildError::AppendOrder { uid, prev });
            }
        }
        self.appends.extend_from_slice(&uid.to_le_bytes());
        // Bytes 5..7 land in the new record; they must be zero (pitfall 8).
        self.appends.extend_from_slice(&[flags, 0, 0, 0]);
        Ok(())
    }

    /// FLAG_UPDATE entry (4.3.3). Callers add entries sorted by uid and
    /// non-overlapping.
    pub fn flag_update(
        &mut self,
        uid1: u32,
        uid2: u32,
        add: u8,
        remove: u8,
    ) -> Result<(), BuildError> {
        if uid1 == 0 {
            return Err(BuildError::ZeroUid("flag update"));
        }
        if uid2 < uid1 {
            return Err(BuildError::BadRange(uid1, uid2));
        }
        self.flag_updates.extend_from_slice(&uid1.to_le_bytes());
        self.flag_updates.extend_from_slice(&uid2.to_le_bytes());
        self.flag_updates.extend_from_slice(&[add, remove, 0, 0]);
        Ok(())
    }

    /// KEYWORD_UPDATE (4.3.10) for one keyword over sorted uid ranges.
    pub fn keyword_update(
        &mut self,
        add: bool,
        name: &str,
        ranges: &[(u32, u32)],
    ) -> Result<(), BuildError> {
        if name.is_empty() || name.len() > u16::MAX as usize {
            return Err(BuildError::BadKeyword);
        }
        let mut p = vec![if add { 0 } else { 1 }, 0];
        p.extend_from_slice(&(name.len() as u16).to_le_bytes());
        p.extend_from_slice(name.as_bytes());
        pad4(&mut p);
        for &(a, b) in ranges {
            if a == 0 {
                return Err(BuildError::ZeroUid("keyword update"));
            }
            if b < a {
                return Err(BuildError::BadRange(a, b));
            }
            p.extend_from_slice(&a.to_le_bytes());
            p.extend_from_slice(&b.to_le_bytes());
        }
        self.keyword_updates.push(Rec {
            ty: types::KEYWORD_UPDATE,
            payload: p,
        });
        Ok(())
    }

    /// EXT_INTRO (name form, NO_SHRINK) + EXT_REC_UPDATE entries for one
    /// extension (4.3.5, 4.3.8). Every `data` must be exactly `record_size` bytes.
    pub fn ext_rec_updates(
        &mut self,
        ext: &ExtGeometry,
        entries: &[(u32, &[u8])],
    ) -> Result<(), BuildError> {
        let mut recs = Vec::new();
        for &(uid, data) in entries {
            if uid == 0 {
                return Err(BuildError::ZeroUid("extension record update"));
            }
            if data.len() != ext.record_size as usize {
                return Err(BuildError::ExtRecordSize {
                    got: data.len(),
                    want: ext.record_size,
                });
            }
            recs.extend_from_slice(&uid.to_le_bytes());
            recs.extend_from_slice(data);
            pad4(&mut recs);
        }
        self.ext_rec.push(Rec {
            ty: types::EXT_INTRO,
            payload: ext_intro_payload(ext),
        });
        self.ext_rec.push(Rec {
            ty: types::EXT_REC_UPDATE,
            payload: recs,
        });
        Ok(())
    }

    /// The highest UID appended so far, if any.
    pub fn max_appended_uid(&self) -> Option<u32> {
        self.appends
            .chunks_exact(8)
            .filter_map(|c| c[..4].try_into().ok().map(u32::from_le_bytes))
            .max()
    }

    /// MODSEQ_UPDATE entry (4.3.13); uid 0 raises only the highest modseq.
    pub fn modseq_update(&mut self, uid: u32, modseq: u64) {
        self.modseq_updates.extend_from_slice(&uid.to_le_bytes());
        self.modseq_updates
            .extend_from_slice(&(modseq as u32).to_le_bytes());
        self.modseq_updates
            .extend_from_slice(&((modseq >> 32) as u32).to_le_bytes());
    }

    /// One change of an ATTRIBUTE_UPDATE record (4.3.15): `set` (a value of
    /// `value_len` bytes) or unset of a private or shared mailbox attribute
    /// `key` (without the `/private` / `/shared` prefix), at `timestamp`.
    pub fn attribute_update(
        &mut self,
        set: bool,
        private: bool,
        key: &[u8],
        timestamp: u32,
        value_len: u32,
    ) -> Result<(), BuildError> {
        if key.is_empty() || key.contains(&0) {
            return Err(BuildError::BadAttributeKey);
        }
        let mut k = Vec::with_capacity(key.len() + 2);
        k.push(if set { b'+' } else { b'-' });
        k.push(if private { b'p' } else { b's' });
        k.extend_from_slice(key);
        self.attribute_keys.push(k);
        self.attribute_nums.push(timestamp);
        if set {
            self.attribute_nums.push(value_len);
        }
        Ok(())
    }

    /// EXPUNGE_GUID entry (4.3.12); an all-zero GUID means "don't verify".
    pub fn expunge_guid(&mut self, uid: u32, guid: [u8; 16]) -> Result<(), BuildError> {
        if uid == 0 {
            return Err(BuildError::ZeroUid("expunge"));
        }
        self.expunges.extend_from_slice(&uid.to_le_bytes());
        self.expunges.extend_from_slice(&guid);
        Ok(())
    }

    /// The records in Dovecot's order (spec 4.4), without boundary.
    fn records(&self) -> Vec<Rec> {
        let mut out = Vec::new();
        out.extend(self.ext_headers.iter().cloned());
        out.extend(self.header_updates.iter().cloned());
        if !self.appends.is_empty() {
            out.push(Rec {
                ty: types::APPEND,
                payload: self.appends.clone(),
            });
        }
        if !self.flag_updates.is_empty() {
            out.push(Rec {
                ty: types::FLAG_UPDATE,
                payload: self.flag_updates.clone(),
            });
        }
        out.extend(self.ext_rec.iter().cloned());
        out.extend(self.keyword_updates.iter().cloned());
        if !self.modseq_updates.is_empty() {
            out.push(Rec {
                ty: types::MODSEQ_UPDATE,
                payload: self.modseq_updates.clone(),
            });
        }
        if !self.attribute_keys.is_empty() {
            // NUL-terminated keys, one more NUL ending the list, padding,
            // then the numbers (what Dovecot 2.3 writes).
            let mut p = Vec::new();
            for k in &self.attribute_keys {
                p.extend_from_slice(k);
                p.push(0);
            }
            p.push(0);
            pad4(&mut p);
            for n in &self.attribute_nums {
                p.extend_from_slice(&n.to_le_bytes());
            }
            out.push(Rec {
                ty: types::ATTRIBUTE_UPDATE,
                payload: p,
            });
        }
        if !self.expunges.is_empty() {
            out.push(Rec {
                ty: types::EXPUNGE_GUID | types::EXPUNGE_PROT,
                payload: self.expunges.clone(),
            });
        }
        out
    }

    /// The bytes to append with one `write()`: a BOUNDARY first when there is
    /// more than one record (4.4). Empty when nothing was added.
    pub fn encode(&self) -> Vec<u8> {
        let recs = self.records();
        let mut bits = 0;
        if self.external {
            bits |= types::EXTERNAL;
        }
        if self.sync {
            bits |= types::SYNC;
        }
        let body_len: usize = recs.iter().map(|r| 8 + r.payload.len()).sum();
        let mut out = Vec::with_capacity(body_len + 12);
        if recs.len() > 1 {
            let total = (12 + body_len) as u32;
            push_record(
                &mut out,
                types::BOUNDARY | types::EXTERNAL | (bits & types::SYNC),
                &total.to_le_bytes(),
            );
        }
        for r in &recs {
            push_record(&mut out, r.ty | bits, &r.payload);
        }
        out
    }
}

fn ext_intro_payload(ext: &ExtGeometry) -> Vec<u8> {
    let mut p = Vec::with_capacity(20 + ext.name.len() + 3);
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    p.extend_from_slice(&ext.reset_id.to_le_bytes());
    p.extend_from_slice(&ext.hdr_size.to_le_bytes());
    p.extend_from_slice(&ext.record_size.to_le_bytes());
    p.extend_from_slice(&ext.record_align.to_le_bytes());
    p.extend_from_slice(&crate::log::EXT_INTRO_NO_SHRINK.to_le_bytes());
    p.extend_from_slice(&(ext.name.len() as u16).to_le_bytes());
    p.extend_from_slice(ext.name.as_bytes());
    pad4(&mut p);
    p
}

fn push_record(out: &mut Vec<u8>, ty: u32, payload: &[u8]) {
    debug_assert!(payload.len() % 4 == 0 && !payload.is_empty());
    let size = (8 + payload.len()) as u32;
    out.extend_from_slice(&pack_offset(size));
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Header of a transaction log that starts a new history (spec 4.1, 10.6):
/// no previous file (prev 0/0), little-endian compat flag.
pub fn log_reset_header(
    indexid: u32,
    file_seq: u32,
    create_stamp: u32,
    initial_modseq: u64,
) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0] = 1;
    h[1] = 3;
    h[2..4].copy_from_slice(&40u16.to_le_bytes());
    h[4..8].copy_from_slice(&indexid.to_le_bytes());
    h[8..12].copy_from_slice(&file_seq.to_le_bytes());
    h[20..24].copy_from_slice(&create_stamp.to_le_bytes());
    h[24..32].copy_from_slice(&initial_modseq.max(1).to_le_bytes());
    h[32] = 1;
    h
}

/// Geometry of the `modseq` extension as Dovecot introduces it (spec 4.6):
/// header {highest modseq, log seq, log offset}, one u64 per message.
pub fn modseq_ext_geometry() -> ExtGeometry {
    ExtGeometry {
        name: crate::ext::MODSEQ.into(),
        reset_id: 0,
        hdr_size: 16,
        record_size: 8,
        record_align: 8,
    }
}

/// Base header offsets a writer updates (spec 3.2).
pub mod header_offsets {
    pub const UID_VALIDITY: u16 = 24;
    pub const NEXT_UID: u16 = 28;
}

// ---------------------------------------------------------------------------
// Maildir text files

/// Optional extension fields of a uidlist record (spec 6.3).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UidlistExt<'a> {
    /// Message GUID, written only when it differs from the file name.
    pub guid: Option<&'a str>,
    pub pop3_uidl: Option<&'a str>,
    pub pop3_order: Option<u32>,
}

/// Rejects text that would break the line format (spaces/newlines in values).
fn ext_value_ok(v: &str) -> bool {
    !v.is_empty()
        && !v
            .bytes()
            .any(|b| b == b' ' || b == b'\n' || b == b'\r' || b == 0)
}

/// One uidlist v3 record line: `<uid>[ <key><value>...] :<name>\n`.
/// Returns `None` if a value or the name cannot be represented.
pub fn uidlist_line(uid: u32, name: &str, ext: &UidlistExt<'_>) -> Option<String> {
    if uid == 0 || name.is_empty() || name.bytes().any(|b| b == b'/' || b == b'\n' || b == 0) {
        return None;
    }
    let mut s = uid.to_string();
    if let Some(g) = ext.guid {
        if !ext_value_ok(g) {
            return None;
        }
        s.push_str(" G");
        s.push_str(g);
    }
    if let Some(p) = ext.pop3_uidl {
        if !ext_value_ok(p) {
            return None;
        }
        s.push_str(" P");
        s.push_str(p);
    }
    if let Some(o) = ext.pop3_order {
        s.push_str(&format!(" O{o}"));
    }
    s.push_str(" :");
    s.push_str(name);
    s.push('\n');
    Some(s)
}

/// A uidlist v3 header line: `3 V<uidvalidity> N<next_uid> G<guid>[ <other>...]\n`.
pub fn uidlist_header(
    uid_validity: u32,
    next_uid: u32,
    mailbox_guid: &[u8; 16],
    other: &[(char, &str)],
) -> String {
    let mut s = format!(
        "3 V{uid_validity} N{next_uid} G{}",
        crate::le::hex(mailbox_guid)
    );
    for (k, v) in other {
        if matches!(k, 'V' | 'N' | 'G') {
            continue;
        }
        s.push(' ');
        s.push(*k);
        s.push_str(v);
    }
    s.push('\n');
    s
}

/// `dovecot-keywords` content: `<index> <name>\n` per keyword (spec 6.4).
pub fn keywords_file(entries: &[(u8, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, n) in entries {
        out.extend_from_slice(format!("{i} {n}\n").as_bytes());
    }
    out
}

/// One 24-byte `dovecot.mailbox.log` record (spec 8.3).
pub fn mailbox_log_record(
    kind: crate::mailbox_log::MailboxLogType,
    id: &[u8; 16],
    timestamp: u32,
) -> [u8; 24] {
    let mut r = [0u8; 24];
    r[0] = kind as u8;
    r[4..20].copy_from_slice(id);
    r[20..24].copy_from_slice(&timestamp.to_be_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogFile, RecordBody, RecordType};

    fn log_with(tx: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 40];
        f[0] = 1;
        f[1] = 3;
        f[2..4].copy_from_slice(&40u16.to_le_bytes());
        f[4..8].copy_from_slice(&7u32.to_le_bytes());
        f[8..12].copy_from_slice(&2u32.to_le_bytes());
        f[24..32].copy_from_slice(&1u64.to_le_bytes());
        f[32] = 1;
        f.extend_from_slice(tx);
        f
    }

    #[test]
    fn transaction_parses_back_with_modseqs() {
        let mut b = TransactionBuilder::new(true);
        b.append(5, 0x08).unwrap();
        b.append(6, 0).unwrap();
        b.keyword_update(true, "$Label1", &[(5, 6)]).unwrap();
        b.flag_update(3, 3, 0x02, 0).unwrap();
        b.expunge_guid(2, [0; 16]).unwrap();
        let bytes = log_with(&b.encode());
        let lf = LogFile::parse(&bytes).unwrap();
        assert_eq!(lf.sync_offset() as usize, bytes.len());
        let recs: Vec<_> = lf.records().collect::<Result<_, _>>().unwrap();
        let kinds: Vec<_> = recs.iter().map(|r| r.record_type().unwrap()).collect();
        assert_eq!(
            kinds,
            vec![
                RecordType::Boundary,
                RecordType::Append,
                RecordType::FlagUpdate,
                RecordType::KeywordUpdate,
                RecordType::ExpungeGuid
            ]
        );
        assert!(recs.iter().all(|r| r.is_external()));
        // append, flag, keyword, expunge each bump the modseq once.
        assert_eq!(lf.highest_modseq(), 5);
        match recs[1].body().unwrap() {
            RecordBody::Append(a) => assert_eq!(a.count(), 2),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ext_header_update_follows_its_intro() {
        let mut b = TransactionBuilder::new(false);
        let g = ExtGeometry {
            name: "modseq".into(),
            reset_id: 0,
            hdr_size: 16,
            record_size: 8,
            record_align: 8,
        };
        b.ext_hdr_update(&g, 0, &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .unwrap();
        b.modseq_update(0, 100);
        let bytes = log_with(&b.encode());
        let lf = LogFile::parse(&bytes).unwrap();
        let kinds: Vec<_> = lf
            .records()
            .map(|r| r.unwrap().record_type().unwrap())
            .collect();
        assert_eq!(
            kinds,
            vec![
                RecordType::Boundary,
                RecordType::ExtIntro,
                RecordType::ExtHdrUpdate,
                RecordType::ModseqUpdate
            ]
        );
        assert_eq!(lf.highest_modseq(), 100);
        assert!(b.ext_hdr_update(&g, 12, &[0; 8]).is_err());
    }

    #[test]
    fn single_record_has_no_boundary() {
        let mut b = TransactionBuilder::new(false);
        b.flag_update(1, 4, 0, 0x08).unwrap();
        let enc = b.encode();
        assert_eq!(enc.len(), 20);
        assert_eq!(
            u32::from_le_bytes(enc[4..8].try_into().unwrap()),
            types::FLAG_UPDATE
        );
    }

    #[test]
    fn attribute_update_matches_dovecot_bytes() {
        // Bytes Dovecot 2.3.19.1 wrote for `metadata set INBOX
        // /private/abcde x` then `unset` (timestamp 0x6b0b5553).
        let mut b = TransactionBuilder::new(false);
        b.attribute_update(true, true, b"abcde", 0x6b0b_5553, 1)
            .unwrap();
        let mut want = crate::le::pack_offset(28).to_vec();
        want.extend_from_slice(&0x0010_0000u32.to_le_bytes());
        want.extend_from_slice(b"+pabcde\0\0\0\0\0");
        want.extend_from_slice(&0x6b0b_5553u32.to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes());
        assert_eq!(b.encode(), want);
        // The key list fills its last word: the terminator takes a whole
        // word of padding, which the reader must skip.
        let bytes = log_with(&want);
        let lf = LogFile::parse(&bytes).unwrap();
        let rec = lf.records().next().unwrap().unwrap();
        match rec.body().unwrap() {
            RecordBody::AttributeUpdate(ch) => {
                assert_eq!(ch.len(), 1);
                assert_eq!(
                    (ch[0].key, ch[0].timestamp, ch[0].value_len),
                    (&b"abcde"[..], 0x6b0b_5553, Some(1))
                );
            }
            other => panic!("not an attribute update: {other:?}"),
        }

        let mut u = TransactionBuilder::new(false);
        u.set_sync(true);
        u.attribute_update(false, false, b"comment", 9, 0).unwrap();
        u.attribute_update(true, true, b"x", 10, 3).unwrap();
        let bytes = log_with(&u.encode());
        let lf = LogFile::parse(&bytes).unwrap();
        let recs: Vec<_> = lf.records().collect::<Result<_, _>>().unwrap();
        // A boundary and the record; the record raises the modseq.
        let rec = recs.last().unwrap();
        assert!(rec.is_sync());
        assert_eq!(lf.highest_modseq(), 2);
        match rec.body().unwrap() {
            RecordBody::AttributeUpdate(ch) => {
                assert_eq!(ch.len(), 2);
                assert!(!ch[0].set);
                assert_eq!(
                    (ch[0].scope, ch[0].key, ch[0].timestamp),
                    (b's', &b"comment"[..], 9)
                );
                assert_eq!(ch[0].value_len, None);
                assert!(ch[1].set);
                assert_eq!(
                    (ch[1].scope, ch[1].key, ch[1].value_len),
                    (b'p', &b"x"[..], Some(3))
                );
            }
            other => panic!("not an attribute update: {other:?}"),
        }
        assert_eq!(
            u.attribute_update(true, true, b"a\0b", 0, 0),
            Err(BuildError::BadAttributeKey)
        );
    }

    #[test]
    fn rejects_what_dovecot_calls_corruption() {
        let mut b = TransactionBuilder::new(true);
        b.append(5, 0).unwrap();
        assert_eq!(
            b.append(5, 0),
            Err(BuildError::AppendOrder { uid: 5, prev: 5 })
        );
        assert!(b.flag_update(0, 1, 1, 0).is_err());
        assert!(b.keyword_update(true, "", &[(1, 1)]).is_err());
        assert!(b.header_update(2, &[0; 4]).is_err());
    }

    #[test]
    fn uidlist_lines() {
        let l = uidlist_line(
            10,
            "1.M1P2.h,S=5,W=6",
            &UidlistExt {
                guid: Some("abc"),
                pop3_uidl: Some("u1"),
                pop3_order: Some(3),
            },
        )
        .unwrap();
        assert_eq!(l, "10 Gabc Pu1 O3 :1.M1P2.h,S=5,W=6\n");
        let text = format!("{}{}", uidlist_header(7, 10, &[0xab; 16], &[]), l);
        let parsed = crate::maildir::Uidlist::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed.next_uid(), 11);
        assert_eq!(parsed.records[0].guid(), "abc");
        assert!(uidlist_line(1, "a/b", &UidlistExt::default()).is_none());
        assert!(uidlist_line(
            1,
            "x",
            &UidlistExt {
                pop3_uidl: Some("a b"),
                ..Default::default()
            }
        )
        .is_none());
    }

    #[test]
    fn mailbox_log_record_round_trips() {
        use crate::mailbox_log::{parse_record, MailboxLogType};
        let r = mailbox_log_record(MailboxLogType::DeleteMailbox, &[7; 16], 0x01020304);
        let p = parse_record(&r, 0).unwrap();
        assert_eq!(p.timestamp, 0x01020304);
    }
}
