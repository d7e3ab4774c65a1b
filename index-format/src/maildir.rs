//! Not yet implemented.

use std::path::Path;

use crate::error::{Error, FileKind, Result};

/// Parses a Maildir file (`dovecot-uidlist`, `dovecot-keywords`, `dovecot-uidvalidity`,
/// or a message file's name) for `homing dump`.
pub fn dump(path: &Path, kind: FileKind) -> Result<serde_json::Value> {
    let _ = kind;
    Err(Error::Unsupported {
        path: Some(path.to_path_buf()),
        what: "not implemented yet".into(),
    })
}
