//! Read-only memory maps of Dovecot's files.
//!
//! This is the only `unsafe` code of the crate. Dovecot maps its own files the same way.

use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

/// A file mapped read-only, or held in memory when it is empty (an empty file cannot be mapped).
pub struct MappedFile {
    path: PathBuf,
    map: Option<Mmap>,
}

impl MappedFile {
    /// Maps the whole file at `path` as it is now.
    ///
    /// Dovecot only appends to logs and caches and replaces index files by
    /// rename, so the mapped prefix stays valid; readers stop at the last
    /// consistent point they can verify (a complete record or transaction).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len == 0 {
            return Ok(MappedFile { path, map: None });
        }
        // SAFETY: the map is read-only. Another process (Dovecot) may append to the
        // file while it is mapped, which only makes bytes past our length visible
        // or not; our readers never trust bytes beyond what they validated. A file
        // truncated under us could raise SIGBUS: Dovecot never truncates logs,
        // caches or indexes in place (it writes a new file and renames it), which is
        // the same assumption Dovecot's own mmap readers make.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Ok(MappedFile {
            path,
            map: Some(map),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

impl Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}
