//! Detects which Dovecot file a path holds and renders its parsed content.
//!
//! Each reader module exposes `dump(path) -> serde_json::Value`; the value's
//! shape is documented in `docs/dump-json.md`.

use std::path::Path;

use crate::error::{Error, FileKind, Result};

/// Guesses the kind of a Dovecot file from its name, then from its first bytes.
pub fn detect(path: &Path) -> Option<FileKind> {
    let name = path.file_name()?.to_str()?;
    let kind = match name {
        "dovecot-uidlist" => FileKind::Uidlist,
        "dovecot-keywords" => FileKind::Keywords,
        "dovecot-uidvalidity" => FileKind::Uidvalidity,
        n if n.starts_with("dovecot-uidvalidity.") => FileKind::Uidvalidity,
        "subscriptions" => FileKind::Subscriptions,
        "dovecot-attributes" => FileKind::Attributes,
        n if n.starts_with("dovecot.mailbox.log") => FileKind::MailboxLog,
        n if n.ends_with(".index.log") || n.ends_with(".index.log.2") => FileKind::Log,
        n if n.ends_with(".index.cache") => FileKind::Cache,
        n if n.ends_with(".index") => FileKind::Index,
        n if is_dbox_mail_name(n) => FileKind::DboxMail,
        n if n.contains(":2,") || n.contains(",S=") => FileKind::MaildirFilename,
        _ => return None,
    };
    Some(kind)
}

fn is_dbox_mail_name(n: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    n.strip_prefix("u.").is_some_and(digits) || n.strip_prefix("m.").is_some_and(digits)
}

/// Parses the file at `path` (of the given kind, or detected) into a JSON value.
pub fn dump(path: &Path, kind: Option<FileKind>) -> Result<(FileKind, serde_json::Value)> {
    let kind = kind
        .or_else(|| detect(path))
        .ok_or_else(|| Error::Unsupported {
            path: Some(path.to_path_buf()),
            what: "cannot tell which Dovecot file this is from its name".into(),
        })?;
    let value = match kind {
        FileKind::Index => crate::index::dump(path)?,
        FileKind::Log => crate::log::dump(path)?,
        FileKind::Cache => cache_with_messages(path)?,
        FileKind::Uidlist
        | FileKind::Keywords
        | FileKind::Uidvalidity
        | FileKind::MaildirFilename => crate::maildir::dump(path, kind)?,
        FileKind::DboxMail => crate::dbox::dump(path)?,
        FileKind::Subscriptions => crate::subscriptions::dump(path)?,
        FileKind::MailboxLog => crate::mailbox_log::dump(path)?,
        FileKind::Attributes => crate::attributes::dump(path)?,
    };
    Ok((kind, value))
}

/// The cache dump, plus each message's fields by UID when the mailbox's
/// `dovecot.index` lies beside the cache (as `doveadm dump` shows them).
fn cache_with_messages(path: &Path) -> Result<serde_json::Value> {
    let mut value = crate::cache::dump(path)?;
    let Some(index_path) = path
        .to_str()
        .and_then(|p| p.strip_suffix(".cache"))
        .map(std::path::PathBuf::from)
    else {
        return Ok(value);
    };
    if !index_path.exists() {
        return Ok(value);
    }
    // The index is optional context: a broken one leaves the cache dump as it is.
    let Ok(view) = crate::view::MailboxView::open(&index_path) else {
        return Ok(value);
    };
    let file = crate::cache::CacheFile::open(path)?;
    let cache = file.cache()?;
    let reset_id = view.extension("cache").map(|e| e.reset_id).unwrap_or(0);
    let matches = cache.matches_index(view.header().indexid, reset_id);
    let mut messages = Vec::new();
    if matches {
        for msg in view.messages() {
            let Some(offset) = msg.cache_offset().filter(|o| *o != 0) else {
                continue;
            };
            messages.push(serde_json::json!({
                "uid": msg.uid(),
                "offset": offset,
                "fields": crate::cache::chain_json(&cache, offset),
            }));
        }
    }
    if let Some(obj) = value.as_object_mut() {
        obj.insert("index_matches".into(), matches.into());
        obj.insert("messages".into(), messages.into());
    }
    Ok(value)
}
