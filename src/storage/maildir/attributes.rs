//! Mailbox attributes (METADATA) in Dovecot's file dict
//! (`mail_attribute_dict = file:PATH`): one file for all of a user's
//! mailboxes, keys `priv/<mailbox GUID>/<key>` and `shared/<mailbox
//! GUID>/<key>`. Dovecot rewrites the whole file under the dotlock
//! `PATH.lock` (the new content is written into the lock file, which is
//! then renamed over the file). The dict keeps no timestamps; the change
//! history (modseqs) lives in the mailbox's transaction log.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use index_format::attributes::{encode, mailbox_key, AttributeScope, Attributes};

use super::super::lock::{Dotlock, DotlockSettings, Owner};
use super::super::{io_err, Attribute, MailboxGuid, Result, StorageError};

/// The file dict's dotlock: Dovecot gives up after 2 minutes and
/// overrides a lock that did not change for one.
const DICT_DOTLOCK: DotlockSettings = DotlockSettings {
    timeout: Duration::from_secs(120),
    stale_timeout: Duration::from_secs(60),
};

/// One attribute change of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttributeSet {
    pub private: bool,
    pub key: String,
    /// `None`: unset.
    pub value: Option<Vec<u8>>,
    /// Seconds since the epoch, for the log record (0 = now).
    pub last_change: u32,
}

/// Parses a `mail_attribute_dict` value. Only the file dict with its
/// default (dotlock) locking is supported.
pub fn parse_dict_uri(uri: &str) -> std::result::Result<std::path::PathBuf, String> {
    let Some(path) = uri.strip_prefix("file:") else {
        return Err(format!(
            "mail_attribute_dict {uri}: only the file: dict is supported"
        ));
    };
    if path.is_empty() || !path.starts_with('/') {
        return Err(format!(
            "mail_attribute_dict {uri}: the file dict needs an absolute path"
        ));
    }
    if path.contains(':') {
        return Err(format!(
            "mail_attribute_dict {uri}: file dict parameters (lock=...) are not supported"
        ));
    }
    Ok(path.into())
}

fn hex(guid: &MailboxGuid) -> String {
    guid.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_dict(path: &Path) -> Result<Vec<u8>> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The attributes of mailbox `guid` in the dict at `path` (none when the
/// file does not exist).
pub(crate) fn read(path: &Path, guid: &MailboxGuid) -> Result<Vec<Attribute>> {
    let data = read_dict(path)?;
    let attrs = Attributes::parse(&data);
    let g = hex(guid);
    let mut out: Vec<Attribute> = Vec::new();
    for e in &attrs.entries {
        let Ok(key) = std::str::from_utf8(&e.key) else {
            continue;
        };
        let (private, rest) = if let Some(r) = key.strip_prefix("priv/") {
            (true, r)
        } else if let Some(r) = key.strip_prefix("shared/") {
            (false, r)
        } else {
            continue;
        };
        let Some(name) = rest
            .strip_prefix(g.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            continue;
        };
        // A later duplicate line replaces an earlier one.
        out.retain(|a| !(a.private == private && a.key == name));
        out.push(Attribute {
            private,
            key: name.to_string(),
            value: e.value.to_vec(),
        });
    }
    Ok(out)
}

/// Applies `changes` of mailbox `guid` to the dict at `path`: under the
/// dotlock, the current file is read, changed and written whole into the
/// lock file, which replaces it.
pub(crate) fn update(
    path: &Path,
    owner: Option<Owner>,
    guid: &MailboxGuid,
    changes: &[AttributeSet],
) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
            Owner::apply(owner, parent)?;
        }
    }
    let mut lock = Dotlock::acquire_for_replace(path, DICT_DOTLOCK, owner)?;
    let data = read_dict(path)?;
    let attrs = Attributes::parse(&data);
    // File order is kept; a key's later duplicate replaces the earlier one
    // (the dict holds every mailbox's attributes, so look keys up by hash).
    let mut entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(attrs.entries.len() + 1);
    let mut index: HashMap<Vec<u8>, usize> = HashMap::with_capacity(attrs.entries.len() + 1);
    let mut put = |k: Vec<u8>, v: Option<Vec<u8>>| match index.get(&k) {
        Some(&i) => entries[i].1 = v,
        None => {
            index.insert(k.clone(), entries.len());
            entries.push((k, v));
        }
    };
    for e in attrs.entries {
        put(e.key.into_owned(), Some(e.value.into_owned()));
    }
    let g = hex(guid);
    for c in changes {
        let scope = if c.private {
            AttributeScope::Private
        } else {
            AttributeScope::Shared
        };
        put(mailbox_key(scope, &g, &c.key).into_bytes(), c.value.clone());
    }
    let content = encode(
        entries
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.as_slice(), v.as_slice()))),
    );
    let lock_path = lock.path().to_path_buf();
    let f = lock.file_mut().ok_or_else(|| StorageError::Inconsistent {
        path: lock_path.clone(),
        why: "lock file closed".into(),
    })?;
    f.write_all(&content).map_err(io_err(&lock_path))?;
    lock.replace(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attrs");
        let g1 = [0x11; 16];
        let g2 = [0x22; 16];
        let set = |private, key: &str, value: Option<&[u8]>| AttributeSet {
            private,
            key: key.into(),
            value: value.map(<[u8]>::to_vec),
            last_change: 0,
        };
        update(
            &path,
            None,
            &g1,
            &[
                set(true, "comment", Some(b"a\tb")),
                set(false, "comment", Some(b"s")),
            ],
        )
        .unwrap();
        update(&path, None, &g2, &[set(true, "comment", Some(b"other"))]).unwrap();
        update(&path, None, &g1, &[set(false, "comment", None)]).unwrap();
        let a = read(&path, &g1).unwrap();
        assert_eq!(
            a,
            vec![Attribute {
                private: true,
                key: "comment".into(),
                value: b"a\tb".to_vec()
            }]
        );
        assert_eq!(read(&path, &g2).unwrap()[0].value, b"other");
        assert!(!dir.path().join("attrs.lock").exists());
        let text = fs::read(&path).unwrap();
        assert!(text.starts_with(b"priv/11111111111111111111111111111111/comment\na\x01tb\n"));
    }

    #[test]
    fn dict_uri() {
        assert_eq!(
            parse_dict_uri("file:/home/a/attrs").unwrap(),
            Path::new("/home/a/attrs")
        );
        assert!(parse_dict_uri("proxy::metadata").is_err());
        assert!(parse_dict_uri("file:relative").is_err());
    }
}
