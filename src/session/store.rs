//! What a session needs from the local replica: the engine's queries and
//! actions, plus bodies as streams (outgoing bodies are read in chunks,
//! incoming ones arrive spooled).
//!
//! Calls are synchronous; the driver makes them from a blocking thread, so
//! an implementation may block on locks and disk I/O.

use std::io::{self, Cursor, Read, Seek};
use std::path::PathBuf;
use std::sync::Arc;

use dsync_protocol::Guid128;
use sync_engine::memory::MemoryReplica;
use sync_engine::{Action, Answer, BodyRef, Query, StorageError};

/// A data block received after an `M` item: in memory when small, spooled to
/// an unnamed temporary file otherwise.
#[derive(Debug)]
pub enum IncomingBody {
    Memory(Vec<u8>),
    /// Positioned at the start of the data.
    File {
        file: std::fs::File,
        len: u64,
    },
    /// `offset..offset + len` of a spool file shared by many bodies (no
    /// descriptor per body; the file goes away with its last body).
    Shared {
        file: Arc<std::fs::File>,
        offset: u64,
        len: u64,
    },
}

impl IncomingBody {
    /// Size of the body in bytes.
    pub fn len(&self) -> u64 {
        match self {
            IncomingBody::Memory(v) => v.len() as u64,
            IncomingBody::File { len, .. } | IncomingBody::Shared { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader over the body.
    pub fn into_reader(self) -> Box<dyn Read + Send> {
        match self {
            IncomingBody::Memory(v) => Box::new(Cursor::new(v)),
            IncomingBody::File { file, len } => Box::new(file.take(len)),
            IncomingBody::Shared { file, offset, len } => Box::new(ReadAt {
                file,
                pos: offset,
                end: offset.saturating_add(len),
            }),
        }
    }

    /// A second reader over the body that leaves this one untouched (a
    /// body still waiting to be saved can be requested by the peer).
    pub fn reread(&self) -> io::Result<Box<dyn Read + Send>> {
        match self {
            IncomingBody::Memory(v) => Ok(Box::new(Cursor::new(v.clone()))),
            IncomingBody::File { file, len } => {
                let mut file = file.try_clone()?;
                // The clone shares the file offset: read by position only.
                let start = file.stream_position()?;
                Ok(Box::new(ReadAt {
                    file: Arc::new(file),
                    pos: start,
                    end: start.saturating_add(*len),
                }))
            }
            IncomingBody::Shared { file, offset, len } => Ok(Box::new(ReadAt {
                file: file.clone(),
                pos: *offset,
                end: offset.saturating_add(*len),
            })),
        }
    }

    /// The whole body in memory (for in-memory stores only).
    pub fn into_vec(self) -> io::Result<Vec<u8>> {
        match self {
            IncomingBody::Memory(v) => Ok(v),
            IncomingBody::File { file, len } => {
                let mut v = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(1 << 24));
                file.take(len).read_to_end(&mut v)?;
                Ok(v)
            }
            body @ IncomingBody::Shared { .. } => {
                let mut v =
                    Vec::with_capacity(usize::try_from(body.len()).unwrap_or(0).min(1 << 24));
                body.into_reader().read_to_end(&mut v)?;
                Ok(v)
            }
        }
    }
}

/// Reads `pos..end` of a file without moving its shared offset.
struct ReadAt {
    file: Arc<std::fs::File>,
    pos: u64,
    end: u64,
}

impl Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let left = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The local replica of a session.
pub trait SessionStore: Send + 'static {
    /// Answers one engine query.
    fn answer(&mut self, query: &Query) -> Answer;

    /// Applies one engine action (a `SaveMail` uses the body last given to
    /// [`SessionStore::set_incoming_body`]).
    fn apply(&mut self, action: &Action) -> Result<(), StorageError>;

    /// Opens the body of a local mail for streaming to the peer; `Ok(None)`
    /// when the mail is gone (it is then sent without a body).
    fn open_body(&mut self, body: &BodyRef) -> io::Result<Option<Box<dyn Read + Send>>>;

    /// The (received, saved) dates of a local mail whose body was just
    /// opened, for a replica that left them out of an undated snapshot
    /// ([`sync_engine::Query::MailboxUndated`]); `None`: not known here.
    fn body_dates(&mut self, _body: &BodyRef) -> Option<(i64, i64)> {
        None
    }

    /// Hands over the data block that followed the last received `M`.
    fn set_incoming_body(&mut self, body: IncomingBody) -> io::Result<()>;

    /// Where large incoming bodies are spooled (on the destination's file
    /// system, so a save can be a rename); `None` = the system temp dir.
    fn spool_dir(&self) -> Option<PathBuf> {
        None
    }

    /// The engine will save or copy nothing below `uid` into `mailbox` any
    /// more in this sync (`Brain::save_floor`): a store that batches saves
    /// to commit them in ascending UID order may commit those below it.
    fn saves_settled_below(&mut self, _mailbox: Guid128, _uid: u32) -> Result<(), StorageError> {
        Ok(())
    }

    /// Makes everything applied so far durable (called once after the
    /// session; a store that batches writes commits them here).
    fn finish(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

impl SessionStore for MemoryReplica {
    fn answer(&mut self, query: &Query) -> Answer {
        MemoryReplica::answer(self, query)
    }

    fn apply(&mut self, action: &Action) -> Result<(), StorageError> {
        MemoryReplica::apply(self, action)
    }

    fn open_body(&mut self, body: &BodyRef) -> io::Result<Option<Box<dyn Read + Send>>> {
        // The replica lives in memory anyway; the copy keeps the reader
        // independent of the store's borrow.
        Ok(self
            .body(body)
            .map(|b| Box::new(Cursor::new(b.to_vec())) as Box<dyn Read + Send>))
    }

    fn set_incoming_body(&mut self, body: IncomingBody) -> io::Result<()> {
        let v = body.into_vec()?;
        MemoryReplica::set_incoming_body(self, v);
        Ok(())
    }
}
