//! Not yet implemented.

use std::path::Path;

use crate::error::{Error, Result};

/// Parses the file at `path` and returns its content for `homing dump`.
pub fn dump(path: &Path) -> Result<serde_json::Value> {
    Err(Error::Unsupported {
        path: Some(path.to_path_buf()),
        what: "not implemented yet".into(),
    })
}
