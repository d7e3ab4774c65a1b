//! Dovecot's mailbox list index (`dovecot.list.index*` at the mail root,
//! on by default in 2.3) caches the mailbox tree. A Dovecot process that
//! starts later rebuilds it from the directories on its first listing, but
//! a running one (an IMAP session) keeps listing from the index until its
//! log says the tree changed. After a tree change homing therefore sets the
//! index's `refresh_flag` (the first byte of the `list` extension header),
//! as Dovecot does when it learns of changes it did not make itself: every
//! Dovecot process then re-reads the directories on its next listing and
//! clears the flag.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;

use index_format::ext::ListHeader;
use index_format::log::LogFile;
use index_format::view::MailboxView;
use index_format::write::{ExtGeometry, TransactionBuilder};

use super::txn::{log_gate_write, read_all};
use super::{log_gate_read, MaildirStore};
use crate::storage::lock::FcntlLock;
use crate::storage::{io_err, Result, StorageError};

const LIST_INDEX: &str = "dovecot.list.index";

/// Appends the `refresh_flag = 1` transaction to the list index log. Does
/// nothing when there is no list index (Dovecot builds it from the
/// directories when it first needs it) or the flag is already set.
pub(crate) fn refresh_later(store: &MaildirStore) -> Result<()> {
    append(store, |view, geometry, tx| {
        let Some(ext) = view.extension("list") else {
            return Ok(false);
        };
        if ext.header.first() == Some(&1) {
            return Ok(false);
        }
        tx.ext_hdr_update(geometry, 0, &[1])?;
        Ok(true)
    })
}

/// Records a mailbox's new GUID in its list index node (`comps` = the
/// name's hierarchy levels). Dovecot answers a GUID lookup of a mailbox it
/// has not opened from this record without checking the mailbox itself,
/// so a stale record would keep announcing the old GUID. A mailbox without
/// a node needs nothing: Dovecot reads the GUID from the mailbox when it
/// adds the node.
pub(crate) fn set_mailbox_guid(
    store: &MaildirStore,
    comps: &[&str],
    guid: &[u8; 16],
) -> Result<()> {
    append(store, |view, geometry, tx| {
        let Some(ext) = view.extension("list") else {
            return Ok(false);
        };
        let names: HashMap<u32, &[u8]> =
            ListHeader::decode(&ext.header).names.into_iter().collect();
        let mut parent = 0u32;
        let mut found = None;
        for (level, comp) in comps.iter().enumerate() {
            let node = view.messages().find_map(|m| {
                let rec = m.list_record()?;
                let named = names.get(&rec.name_id).copied() == Some(comp.as_bytes());
                (rec.parent_uid == parent && named).then_some((m.uid(), rec))
            });
            let Some((uid, rec)) = node else {
                return Ok(false);
            };
            parent = uid;
            if level + 1 == comps.len() {
                found = Some((uid, rec));
            }
        }
        let Some((uid, rec)) = found else {
            return Ok(false);
        };
        if rec.mailbox_guid == *guid {
            return Ok(false);
        }
        let mut data = vec![0u8; usize::from(ext.record_size)];
        if data.len() < 28 {
            return Err(StorageError::Inconsistent {
                path: store.root().join(LIST_INDEX),
                why: format!(
                    "list extension records are {} bytes, not 28",
                    ext.record_size
                ),
            });
        }
        data[0..4].copy_from_slice(&rec.name_id.to_le_bytes());
        data[4..8].copy_from_slice(&rec.parent_uid.to_le_bytes());
        data[8..24].copy_from_slice(guid);
        data[24..28].copy_from_slice(&rec.uid_validity.to_le_bytes());
        tx.ext_rec_updates(geometry, &[(uid, &data)])?;
        Ok(true)
    })
}

/// Appends one transaction built by `build` from the current list index
/// (with the `list` extension's geometry) under the log lock. `build`
/// returns false when there is nothing to write. Nothing happens when there
/// is no list index or it has no `list` extension.
fn append(
    store: &MaildirStore,
    mut build: impl FnMut(&MailboxView, &ExtGeometry, &mut TransactionBuilder) -> Result<bool>,
) -> Result<()> {
    let root = store.root();
    let log_path = root.join(format!("{LIST_INDEX}.log"));
    if !log_path.exists() {
        return Ok(());
    }
    for _ in 0..10 {
        // Mapped before the lock: mapping opens and closes a descriptor of
        // the log, which would drop our own fcntl lock.
        let view = {
            let _gate = log_gate_read();
            MailboxView::open(root.join(LIST_INDEX))?
        };
        let Some(ext) = view.extension("list") else {
            return Ok(());
        };
        let geometry = ExtGeometry {
            name: ext.name.clone(),
            reset_id: ext.reset_id,
            hdr_size: ext.hdr_size(),
            record_size: ext.record_size,
            record_align: ext.record_align,
        };
        // The list index's own transactions are all EXTERNAL.
        let mut tx = TransactionBuilder::new(true);
        if !build(&view, &geometry, &mut tx)? {
            return Ok(());
        }
        let head = view.head();
        let _gate = log_gate_write();
        let lock = FcntlLock::lock_existing(&log_path, store.options().log_lock_timeout)?;
        let bytes = read_all(lock.file(), &log_path)?;
        let lf = LogFile::parse(&bytes).map_err(|e| e.with_path(&log_path))?;
        if lf.header().file_seq != head.file_seq || lf.sync_offset() != head.offset {
            // Written or rotated since we mapped it: map it again.
            continue;
        }
        let f: &File = lock.file();
        let len = f.metadata().map_err(io_err(&log_path))?.len();
        if len > u64::from(head.offset) {
            // A writer died mid-transaction: Dovecot truncates such garbage too.
            f.set_len(u64::from(head.offset))
                .map_err(io_err(&log_path))?;
        }
        let mut w = f;
        w.write_all(&tx.encode()).map_err(io_err(&log_path))?;
        if store.options().fsync {
            f.sync_data().map_err(io_err(&log_path))?;
        }
        return Ok(());
    }
    Err(StorageError::Inconsistent {
        path: log_path,
        why: "the list index log kept changing while we tried to lock it".into(),
    })
}
