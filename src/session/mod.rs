//! Runs one dsync [`Brain`] over a byte stream to a peer, with a local
//! [`SessionStore`].
//!
//! Three concurrent parts, so that neither direction ever waits on the other
//! (dsync peers write without waiting for each other):
//!
//! * a reader task decodes the peer's stream; data blocks go to a spool
//!   (memory up to [`SessionOptions::spool_threshold`], then one shared
//!   unnamed temporary file in [`SessionStore::spool_dir`]; small ones go
//!   there too while more than [`SessionOptions::spool_backlog`] bytes wait
//!   for the store), so incoming bodies never pile up in memory; decoded
//!   items are queued for the brain;
//! * a writer task sends encoded bytes from a small bounded queue;
//! * the brain and the store run on a blocking thread: outputs are encoded,
//!   outgoing bodies are read from the store in chunks of
//!   [`SessionOptions::chunk_size`] (the bounded queue throttles them), queries
//!   and actions go to the store.
//!
//! Entry points: [`run_session`] (any role, any stream),
//! [`run_slave_session`] (the `dsync-server` side, for stdio and for the
//! doveadm-protocol server), [`run_master_over`] (master over an opened
//! transport, collecting the transport's outcome) and [`run_local_pair`]
//! (two local stores through an in-process duplex pipe and the wire codec).

pub mod maildir_store;
pub mod store;

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dsync_protocol::{Decoder, DecoderConfig, Encoder, Event, Item};
use serde::Serialize;
use sync_engine::{Action, Brain, ExitStatus, Input, Outcome, Output, SyncSettings};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::transport::{DsyncStream, TransportError};
pub use store::{IncomingBody, SessionStore};

/// Tuning of a session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Incoming bodies larger than this go to a temporary file.
    pub spool_threshold: usize,
    /// In-memory bodies received but not yet saved, in bytes, above which
    /// further bodies go to the temporary file too.
    pub spool_backlog: usize,
    /// Size of the pieces outgoing bodies are read and sent in.
    pub chunk_size: usize,
    /// Limits of the decoder for the peer's stream.
    pub decoder: DecoderConfig,
    /// How long to keep draining the peer's stream after the session ended.
    pub close_grace: Duration,
    /// Counters a progress display reads while the session runs.
    pub progress: Option<Arc<Progress>>,
}

/// Live counters of a running session, updated by its worker thread.
#[derive(Debug, Default)]
pub struct Progress {
    /// Mailboxes this side announced in its tree.
    pub mailboxes_total: AtomicU64,
    /// Mailboxes whose sync started (`B` items sent).
    pub mailboxes_started: AtomicU64,
    /// Mails sent and received with a body.
    pub mails: AtomicU64,
    /// Body bytes sent and received.
    pub bytes: AtomicU64,
}

impl Progress {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn sent(&self, item: &Item) {
        match item {
            Item::MailboxTreeNode(n) if n.mailbox_guid.is_some() => {
                Self::add(&self.mailboxes_total, 1)
            }
            Item::Mailbox(_) => Self::add(&self.mailboxes_started, 1),
            Item::Mail(m) if m.stream => Self::add(&self.mails, 1),
            _ => {}
        }
    }

    /// (mailboxes started, mailboxes total, mails, bytes) now.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.mailboxes_started.load(Ordering::Relaxed),
            self.mailboxes_total.load(Ordering::Relaxed),
            self.mails.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            spool_threshold: 256 * 1024,
            spool_backlog: 2 << 20,
            chunk_size: 64 * 1024,
            decoder: DecoderConfig {
                // Dovecot's own item order is checked by the brain; the
                // decoder's stricter order model is for captures and fuzzing.
                validate_order: false,
                ..DecoderConfig::default()
            },
            close_grace: Duration::from_secs(5),
            progress: None,
        }
    }
}

/// Changes applied to the local replica, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LocalChanges {
    pub mailboxes_created: u64,
    pub mailboxes_deleted: u64,
    pub renames: u64,
    pub subscription_changes: u64,
    pub mails_saved: u64,
    pub mails_copied: u64,
    pub mails_expunged: u64,
    pub uids_reassigned: u64,
    pub flag_changes: u64,
    pub attribute_changes: u64,
    pub failed_actions: u64,
}

impl LocalChanges {
    fn count(&mut self, a: &Action) {
        match a {
            Action::CreateMailbox { .. } | Action::CreateDir { .. } => self.mailboxes_created += 1,
            Action::DeleteMailbox { .. } | Action::DeleteDir { .. } => self.mailboxes_deleted += 1,
            Action::Rename { .. } => self.renames += 1,
            Action::SetSubscribed { .. } => self.subscription_changes += 1,
            Action::SaveMail { .. } => self.mails_saved += 1,
            Action::CopyMail { .. } | Action::CopyToMailbox { .. } => self.mails_copied += 1,
            Action::Expunge { .. } => self.mails_expunged += 1,
            Action::MoveMail { .. } => self.uids_reassigned += 1,
            Action::UpdateFlags { .. } | Action::ReplaceFlags { .. } => self.flag_changes += 1,
            Action::SetAttribute { .. } => self.attribute_changes += 1,
            Action::LockUser { .. }
            | Action::SetMailboxGuid { .. }
            | Action::SetUidValidity { .. }
            | Action::RaiseStatus { .. } => {}
        }
    }
}

/// Traffic of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SessionStats {
    pub items_sent: u64,
    pub items_received: u64,
    pub bodies_sent: u64,
    pub body_bytes_sent: u64,
    pub bodies_received: u64,
    pub body_bytes_received: u64,
    /// Bodies that went to a temporary file rather than memory.
    pub bodies_spooled: u64,
    /// Mails the peer is told about (`M` items with a body sent).
    pub local: LocalChanges,
}

/// Why a session ended without the protocol's normal end.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    #[error("reading from {peer} failed: {reason}")]
    Read { peer: String, reason: String },
    #[error("writing to {peer} failed: {reason}")]
    Write { peer: String, reason: String },
    #[error("{peer} sent a stream that cannot be decoded: {reason}")]
    Decode { peer: String, reason: String },
    #[error("protocol error from {peer}: {reason}")]
    Protocol { peer: String, reason: String },
    #[error("local storage failed: {0}")]
    Storage(String),
    #[error("{0}")]
    Transport(String),
    #[error("the session's worker thread failed")]
    Worker,
}

/// The result of a session: the store is handed back.
pub struct SessionResult<S> {
    pub store: S,
    /// The brain's outcome; when it has none, a temporary failure carrying
    /// the error's text.
    pub outcome: Outcome,
    pub stats: SessionStats,
    /// What cut the session short, if anything.
    pub error: Option<SessionError>,
    /// A transport failure reported after the stream closed (for example a
    /// remote command's non-zero exit).
    pub transport_error: Option<TransportError>,
}

impl<S> SessionResult<S> {
    /// doveadm's exit code for this session.
    pub fn exit_code(&self) -> i32 {
        if let Some(t) = &self.transport_error {
            if self.outcome.status == ExitStatus::Ok || self.error.is_some() {
                return t.exit_code();
            }
        }
        self.outcome.status.code()
    }
}

fn failed_outcome(reason: String) -> Outcome {
    Outcome {
        status: ExitStatus::TempFail,
        messages: vec![reason],
        require_full_resync: false,
        state: None,
        sync_type: dsync_protocol::SyncType::Changed,
    }
}

/// Seconds since the epoch (0 if the clock is before it).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// This host's name as the dsync handshake carries it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

enum Incoming {
    Item(Item, Option<IncomingBody>),
    Closed,
    Failed(SessionError),
}

/// Where an incoming data block is collected.
enum Spool {
    Memory(Vec<u8>),
    /// In the spill file from `offset` on.
    Spilled {
        offset: u64,
        len: u64,
    },
}

/// A spill file is replaced by a fresh one (at a body boundary) once it is
/// this long; the old one goes away with the last body read from it.
const SPILL_FILE_ROTATE: u64 = 1 << 30;

struct Spooler {
    threshold: usize,
    dir: Option<std::path::PathBuf>,
    /// The unnamed file large and backlogged bodies go to, and its length:
    /// one descriptor for all of them, however many wait to be saved.
    file: Option<(Arc<std::fs::File>, u64)>,
    /// Bytes of in-memory bodies decoded but not yet taken by the brain.
    backlog: Arc<AtomicU64>,
    /// Above this backlog, finished bodies go to the spill file as well: the
    /// peer may send faster than the store saves, and the reader never
    /// stops reading (a dsync peer blocked on writing could not read).
    backlog_limit: u64,
}

impl Spooler {
    /// Where a new body starts in the spill file (made or rotated here).
    fn spill_start(&mut self) -> std::io::Result<u64> {
        if self
            .file
            .as_ref()
            .is_none_or(|(_, len)| *len >= SPILL_FILE_ROTATE)
        {
            let f = match &self.dir {
                Some(d) => tempfile::tempfile_in(d)?,
                None => tempfile::tempfile()?,
            };
            self.file = Some((Arc::new(f), 0));
        }
        Ok(self.file.as_ref().map_or(0, |(_, len)| *len))
    }

    fn spill_write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let Some((f, len)) = self.file.as_mut() else {
            return Err(std::io::Error::other("no spill file"));
        };
        f.write_all_at(data, offset)?;
        *len = (*len).max(offset + data.len() as u64);
        Ok(())
    }

    fn append(&mut self, spool: &mut Spool, data: &[u8]) -> std::io::Result<()> {
        if let Spool::Memory(v) = spool {
            if v.len() + data.len() <= self.threshold {
                v.extend_from_slice(data);
                return Ok(());
            }
            let offset = self.spill_start()?;
            let v = std::mem::take(v);
            self.spill_write(offset, &v)?;
            *spool = Spool::Spilled {
                offset,
                len: v.len() as u64,
            };
        }
        if let Spool::Spilled { offset, len } = spool {
            let at = *offset + *len;
            self.spill_write(at, data)?;
            *len += data.len() as u64;
        }
        Ok(())
    }

    fn finish(&mut self, spool: Spool) -> std::io::Result<IncomingBody> {
        let shared = |f: &Option<(Arc<std::fs::File>, u64)>, offset, len| match f {
            Some((file, _)) => Ok(IncomingBody::Shared {
                file: file.clone(),
                offset,
                len,
            }),
            None => Err(std::io::Error::other("no spill file")),
        };
        match spool {
            Spool::Memory(mut v) => {
                // Growth by doubling leaves up to half of a body's buffer
                // unused; the backlog counts bytes, so keep only those.
                v.shrink_to_fit();
                let n = v.len() as u64;
                if self.backlog.load(Ordering::Relaxed) + n <= self.backlog_limit {
                    self.backlog.fetch_add(n, Ordering::Relaxed);
                    return Ok(IncomingBody::Memory(v));
                }
                let offset = self.spill_start()?;
                self.spill_write(offset, &v)?;
                shared(&self.file, offset, n)
            }
            Spool::Spilled { offset, len } => shared(&self.file, offset, len),
        }
    }
}

/// Decoded items the reader may queue ahead of the brain while the driver
/// is busy (saving mails, say).
const READ_AHEAD_ITEMS: usize = 1024;

/// How far the reader runs ahead of the brain. The reader waits while
/// [`READ_AHEAD_ITEMS`] items are queued, except while the driver waits to
/// write to the peer: a peer blocked on writing to us may be what keeps
/// it from reading what we write, so then the reader reads on, without
/// bound, as before. It never waits once the driver is done.
struct Gate {
    queued: AtomicUsize,
    /// The driver is blocked writing, or done: the reader does not wait.
    open: AtomicBool,
    notify: tokio::sync::Notify,
    limit: usize,
}

impl Gate {
    fn new(limit: usize) -> Gate {
        Gate {
            queued: AtomicUsize::new(0),
            open: AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
            limit,
        }
    }

    /// Reader: waits for room for one more item, then counts it.
    async fn admit(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check: no wake-up is missed.
            notified.as_mut().enable();
            if self.queued.load(Ordering::Acquire) < self.limit || self.open.load(Ordering::Acquire)
            {
                break;
            }
            notified.await;
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// Driver: one item taken off the queue.
    fn taken(&self) {
        let before = self.queued.fetch_sub(1, Ordering::AcqRel);
        if before <= self.limit {
            self.notify.notify_one();
        }
    }

    /// Driver: blocked writing (or done) / writing again.
    fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Release);
        if open {
            self.notify.notify_one();
        }
    }
}

/// Reads and decodes the peer's stream until EOF or an error. Keeps reading
/// (and discarding) after the brain stopped listening, so the peer never
/// blocks on a full pipe.
async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: R,
    peer: String,
    cfg: DecoderConfig,
    mut spooler: Spooler,
    tx: mpsc::UnboundedSender<Incoming>,
    gate: Arc<Gate>,
) {
    let mut dec = Decoder::with_config(cfg);
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Option<(Item, Spool)> = None;
    let mut failed = false;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => {
                if !failed {
                    let _ = tx.send(Incoming::Closed);
                }
                return;
            }
            Ok(n) => n,
            Err(e) => {
                if !failed {
                    let reason = TransportError::from_io(&peer, e).to_string();
                    let _ = tx.send(Incoming::Failed(SessionError::Read {
                        peer: peer.clone(),
                        reason,
                    }));
                }
                return;
            }
        };
        if failed {
            continue;
        }
        dec.feed(&buf[..n]);
        loop {
            let ev = match dec.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    failed = true;
                    let _ = tx.send(Incoming::Failed(SessionError::Decode {
                        peer: peer.clone(),
                        reason: e.to_string(),
                    }));
                    break;
                }
            };
            let msg = match ev {
                Event::Version(_) | Event::Tables(_) => continue,
                Event::Item(item) if item.has_body() => {
                    pending = Some((item, Spool::Memory(Vec::new())));
                    continue;
                }
                Event::Item(item) => Incoming::Item(item, None),
                Event::BodyChunk(c) => {
                    if let Some((_, spool)) = &mut pending {
                        // Spooling is short local disk I/O; it does not
                        // wait on the peer.
                        if let Err(e) = spooler.append(spool, c) {
                            failed = true;
                            let _ = tx.send(Incoming::Failed(SessionError::Storage(format!(
                                "spooling an incoming mail failed: {e}"
                            ))));
                            break;
                        }
                    }
                    continue;
                }
                Event::BodyEnd => match pending.take() {
                    Some((item, spool)) => match spooler.finish(spool) {
                        Ok(body) => Incoming::Item(item, Some(body)),
                        Err(e) => {
                            failed = true;
                            let _ = tx.send(Incoming::Failed(SessionError::Storage(format!(
                                "spooling an incoming mail failed: {e}"
                            ))));
                            break;
                        }
                    },
                    None => continue,
                },
            };
            // A closed queue means the brain is done: keep draining.
            if matches!(msg, Incoming::Item(..)) && !tx.is_closed() {
                gate.admit().await;
            }
            let _ = tx.send(msg);
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    peer: String,
    mut rx: mpsc::Receiver<Vec<u8>>,
    spare: std::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(), SessionError> {
    let werr = |e: std::io::Error| SessionError::Write {
        peer: peer.clone(),
        reason: TransportError::from_io(&peer, e).to_string(),
    };
    while let Some(mut buf) = rx.recv().await {
        writer.write_all(&buf).await.map_err(werr)?;
        // Back to the encoder: no allocation (and no growth) per buffer.
        buf.clear();
        let _ = spare.send(buf);
        if rx.is_empty() {
            writer.flush().await.map_err(werr)?;
        }
    }
    writer.flush().await.map_err(werr)?;
    // The peer sees EOF: that is how a dsync session ends.
    let _ = writer.shutdown().await;
    Ok(())
}

/// A send buffer is handed to the writer once it holds `chunk_size` bytes;
/// the last append may add a stuffed chunk (dots can double its size) or an
/// item line.
fn send_buffer_capacity(chunk_size: usize) -> usize {
    3 * chunk_size + 4096
}

struct Driver<S> {
    brain: Brain,
    store: S,
    enc: Encoder,
    buf: Vec<u8>,
    out: mpsc::Sender<Vec<u8>>,
    /// Buffers the writer has sent, for reuse.
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk_size: usize,
    /// Outgoing bodies are read into this, one chunk at a time.
    chunk: Vec<u8>,
    stats: SessionStats,
    peer: String,
    progress: Option<Arc<Progress>>,
    /// The writer is gone (the peer closed its input): output is dropped,
    /// but the peer's stream is still read, as it may carry the peer's own
    /// failure (a finish item with its error class).
    write_closed: bool,
    /// The reader's count of in-memory bodies waiting for the brain.
    backlog: Arc<AtomicU64>,
    gate: Arc<Gate>,
}

impl<S: SessionStore> Driver<S> {
    fn flush(&mut self) -> Result<(), SessionError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(send_buffer_capacity(self.chunk_size)));
        let data = std::mem::replace(&mut self.buf, next);
        if self.write_closed {
            return Ok(());
        }
        match self.out.try_send(data) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(data)) => {
                // Waiting on the peer: the reader must not wait on us.
                self.gate.set_open(true);
                if self.out.blocking_send(data).is_err() {
                    self.write_closed = true;
                }
                self.gate.set_open(false);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.write_closed = true,
        }
        Ok(())
    }

    fn encode_err(&self, e: impl std::fmt::Display) -> SessionError {
        SessionError::Protocol {
            peer: self.peer.clone(),
            reason: format!("cannot encode an item: {e}"),
        }
    }

    /// Handles every output the brain has.
    fn drain(&mut self) -> Result<(), SessionError> {
        while let Some(o) = self.brain.poll() {
            match o {
                Output::Send { mut item, body } => {
                    let reader = match body {
                        Some(r) => self
                            .store
                            .open_body(&r)
                            .map_err(|e| SessionError::Storage(format!("reading a mail: {e}")))?,
                        None => None,
                    };
                    if let Item::Mail(m) = &mut item {
                        m.stream = reader.is_some();
                        // An undated snapshot left the dates out: the
                        // mail's file gives them now.
                        if let (Some(r), true) = (body, m.received_date == 0 && m.saved_date == 0) {
                            if let Some((received, saved)) = self.store.body_dates(&r) {
                                m.received_date = received;
                                m.saved_date = saved;
                            }
                        }
                    }
                    self.enc
                        .encode_item(&item, &mut self.buf)
                        .map_err(|e| self.encode_err(e))?;
                    self.stats.items_sent += 1;
                    if let Some(p) = &self.progress {
                        p.sent(&item);
                    }
                    if let Some(mut rd) = reader {
                        self.send_body(&mut rd)?;
                    }
                    if self.buf.len() >= self.chunk_size {
                        self.flush()?;
                    }
                }
                Output::Query(q) => {
                    let a = self.store.answer(&q);
                    self.feed(Input::Answer(a))?;
                }
                Output::Action(a) => {
                    tracing::trace!(peer = %self.peer, ?a, "apply");
                    self.stats.local.count(&a);
                    if let Err(error) = self.store.apply(&a) {
                        tracing::debug!(?a, %error, "action failed");
                        self.stats.local.failed_actions += 1;
                        self.feed(Input::ActionFailed { action: a, error })?;
                    }
                }
            }
        }
        Ok(())
    }

    fn send_body(&mut self, rd: &mut Box<dyn Read + Send>) -> Result<(), SessionError> {
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.resize(self.chunk_size, 0);
        let r = self.send_chunks(rd, &mut chunk);
        self.chunk = chunk;
        r
    }

    fn send_chunks(
        &mut self,
        rd: &mut Box<dyn Read + Send>,
        chunk: &mut [u8],
    ) -> Result<(), SessionError> {
        loop {
            let n = match rd.read(chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SessionError::Storage(format!("reading a mail: {e}"))),
            };
            self.stats.body_bytes_sent += n as u64;
            if let Some(p) = &self.progress {
                Progress::add(&p.bytes, n as u64);
            }
            self.enc
                .encode_body_chunk(&chunk[..n], &mut self.buf)
                .map_err(|e| self.encode_err(e))?;
            if self.buf.len() >= self.chunk_size {
                self.flush()?;
            }
        }
        self.enc
            .end_body(&mut self.buf)
            .map_err(|e| self.encode_err(e))?;
        self.stats.bodies_sent += 1;
        Ok(())
    }

    fn feed(&mut self, input: Input) -> Result<(), SessionError> {
        self.brain.feed(input).map_err(|e| SessionError::Protocol {
            peer: self.peer.clone(),
            reason: e.to_string(),
        })
    }

    /// The brain's loop: outputs first, then the next peer item.
    fn run(&mut self, rx: &mut mpsc::UnboundedReceiver<Incoming>) -> Result<(), SessionError> {
        self.enc.encode_preamble(&mut self.buf);
        let mut closed = false;
        loop {
            self.drain()?;
            if let Some((mailbox, floor)) = self.brain.save_floor() {
                self.store
                    .saves_settled_below(mailbox, floor)
                    .map_err(|e| SessionError::Storage(e.to_string()))?;
            }
            self.flush()?;
            if self.brain.outcome().is_some() {
                return Ok(());
            }
            if closed && self.write_closed {
                return Err(SessionError::Write {
                    peer: self.peer.clone(),
                    reason: "the connection is closed".into(),
                });
            }
            if closed {
                return Err(SessionError::Read {
                    peer: self.peer.clone(),
                    reason: "EOF before the session finished".into(),
                });
            }
            match rx.blocking_recv() {
                Some(Incoming::Item(item, body)) => {
                    self.gate.taken();
                    self.stats.items_received += 1;
                    if let Some(b) = body {
                        self.stats.bodies_received += 1;
                        self.stats.body_bytes_received += b.len();
                        if let Some(p) = &self.progress {
                            Progress::add(&p.bytes, b.len());
                            Progress::add(&p.mails, 1);
                        }
                        match &b {
                            IncomingBody::Memory(v) => {
                                self.backlog.fetch_sub(v.len() as u64, Ordering::Relaxed);
                            }
                            IncomingBody::File { .. } | IncomingBody::Shared { .. } => {
                                self.stats.bodies_spooled += 1
                            }
                        }
                        self.store
                            .set_incoming_body(b)
                            .map_err(|e| SessionError::Storage(e.to_string()))?;
                    }
                    self.feed(Input::Peer(item))?;
                }
                Some(Incoming::Closed) | None => {
                    closed = true;
                    // The brain decides whether an early close is an error.
                    let _ = self.brain.feed(Input::PeerClosed);
                }
                Some(Incoming::Failed(e)) => {
                    let _ = self.brain.feed(Input::PeerClosed);
                    return Err(e);
                }
            }
        }
    }
}

/// Runs `brain` over `reader`/`writer` with `store` until the session ends.
/// Never panics on peer input; every failure ends in the result.
pub async fn run_session<S, R, W>(
    brain: Brain,
    store: S,
    reader: R,
    writer: W,
    peer: &str,
    opts: &SessionOptions,
) -> SessionResult<S>
where
    S: SessionStore,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (in_tx, mut in_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(8);
    let (spare_tx, spare_rx) = std::sync::mpsc::channel();
    let backlog = Arc::new(AtomicU64::new(0));
    let spooler = Spooler {
        threshold: opts.spool_threshold,
        dir: store.spool_dir(),
        file: None,
        backlog: backlog.clone(),
        backlog_limit: opts.spool_backlog as u64,
    };
    let gate = Arc::new(Gate::new(READ_AHEAD_ITEMS));
    let reader_task = tokio::spawn(read_loop(
        reader,
        peer.to_string(),
        opts.decoder.clone(),
        spooler,
        in_tx,
        gate.clone(),
    ));
    let writer_task = tokio::spawn(write_loop(writer, peer.to_string(), out_rx, spare_tx));
    let chunk_size = opts.chunk_size.max(512);
    let mut driver = Driver {
        brain,
        store,
        enc: Encoder::new(),
        buf: Vec::with_capacity(send_buffer_capacity(chunk_size)),
        out: out_tx,
        spare: spare_rx,
        chunk_size,
        chunk: Vec::new(),
        stats: SessionStats::default(),
        peer: peer.to_string(),
        progress: opts.progress.clone(),
        write_closed: false,
        backlog,
        gate: gate.clone(),
    };
    let worker = tokio::task::spawn_blocking(move || {
        let r = driver.run(&mut in_rx);
        // Done reading: the reader drains the peer without waiting.
        driver.gate.set_open(true);
        // The last batched writes are committed here: a failure is the
        // session's, whatever the brain concluded.
        let finished = driver
            .store
            .finish()
            .map_err(|e| SessionError::Storage(e.to_string()));
        // Closing the queue lets the writer finish and send EOF.
        let (tx, _) = mpsc::channel(1);
        driver.out = tx;
        (driver, r, finished)
    });
    let (driver, run_result, finished) = match worker.await {
        Ok(x) => x,
        Err(_) => {
            reader_task.abort();
            writer_task.abort();
            // The store went down with the thread; nothing to hand back.
            panic!("the session worker thread panicked");
        }
    };
    let write_result = match writer_task.await {
        Ok(r) => r,
        Err(_) => Err(SessionError::Worker),
    };
    // Let the peer finish its side, then stop listening.
    let grace = opts.close_grace;
    let mut reader_task = reader_task;
    if tokio::time::timeout(grace, &mut reader_task).await.is_err() {
        reader_task.abort();
    }
    let Driver {
        brain,
        store,
        stats,
        ..
    } = driver;
    let finish_error = finished.err();
    let error = run_result
        .err()
        .or(write_result.err())
        .or(finish_error.clone());
    let outcome = match (brain.outcome(), &error) {
        // Writes the brain counted as done did not reach the replica: no
        // success, and no state that would skip them next time.
        (Some(o), _) if finish_error.is_some() => {
            let mut o = o.clone();
            o.status = ExitStatus::TempFail;
            o.state = None;
            o.messages
                .extend(finish_error.as_ref().map(|e| e.to_string()));
            o
        }
        (Some(o), _) => o.clone(),
        (None, Some(e)) => failed_outcome(e.to_string()),
        (None, None) => failed_outcome("the session ended without an outcome".into()),
    };
    SessionResult {
        store,
        outcome,
        stats,
        error,
        transport_error: None,
    }
}

/// The slave (`dsync-server`) side over any byte stream: stdio, or the
/// doveadm-protocol server's connection after its `+` line.
pub async fn run_slave_session<S, R, W>(
    reader: R,
    writer: W,
    store: S,
    hostname: &str,
    peer: &str,
    opts: &SessionOptions,
) -> SessionResult<S>
where
    S: SessionStore,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let brain = Brain::slave(hostname.as_bytes(), now());
    run_session(brain, store, reader, writer, peer, opts).await
}

/// The master side over an opened transport; afterwards collects the
/// transport's own outcome (a remote command's exit status).
pub async fn run_master_over<S: SessionStore>(
    stream: DsyncStream,
    store: S,
    hostname: &str,
    settings: SyncSettings,
    opts: &SessionOptions,
) -> SessionResult<S> {
    let peer = stream.peer.clone();
    let (reader, writer, finisher) = stream.into_parts();
    let brain = Brain::master(hostname.as_bytes(), settings, now());
    let mut result = run_session(brain, store, reader, writer, &peer, opts).await;
    if let Err(e) = finisher.finish().await {
        result.transport_error = Some(e);
    }
    result
}

/// Both sides of a local two-store sync, each with its own brain, through an
/// in-process duplex pipe and the wire codec (exactly the bytes a remote
/// peer would see).
pub async fn run_local_pair<A: SessionStore, B: SessionStore>(
    master_store: A,
    slave_store: B,
    hostname: &str,
    settings: SyncSettings,
    opts: &SessionOptions,
) -> (SessionResult<A>, SessionResult<B>) {
    let (m_end, s_end) = tokio::io::duplex(256 * 1024);
    let (m_read, m_write) = tokio::io::split(m_end);
    let (s_read, s_write) = tokio::io::split(s_end);
    let master = Brain::master(hostname.as_bytes(), settings, now());
    let slave = Brain::slave(hostname.as_bytes(), now());
    // The master's counters see both directions already.
    let slave_opts = SessionOptions {
        progress: None,
        ..opts.clone()
    };
    tokio::join!(
        run_session(master, master_store, m_read, m_write, "local slave", opts),
        run_session(
            slave,
            slave_store,
            s_read,
            s_write,
            "local master",
            &slave_opts
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::Gate;
    use std::sync::Arc;
    use std::time::Duration;

    /// The reader waits at the limit; an item taken, or the driver blocked
    /// writing (or done), lets it on.
    #[tokio::test]
    async fn the_gate_holds_the_reader_at_its_limit_unless_the_driver_waits_to_write() {
        let gate = Arc::new(Gate::new(2));
        gate.admit().await;
        gate.admit().await;
        let waits = |g: &Arc<Gate>| {
            let g = g.clone();
            tokio::spawn(async move { g.admit().await })
        };
        let third = waits(&gate);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished(), "a third item waits at the limit");
        gate.taken();
        tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("an item taken lets the reader on")
            .unwrap();

        let fourth = waits(&gate);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!fourth.is_finished());
        gate.set_open(true);
        tokio::time::timeout(Duration::from_secs(5), fourth)
            .await
            .expect("a driver waiting to write lets the reader on")
            .unwrap();
        // Open, the reader never waits, however many are queued.
        for _ in 0..10 {
            tokio::time::timeout(Duration::from_secs(5), gate.admit())
                .await
                .expect("no wait while open");
        }
        gate.set_open(false);
        let held = waits(&gate);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!held.is_finished(), "closed again: the reader waits");
        held.abort();
    }
}
