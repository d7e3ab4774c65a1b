//! Runs a master and a slave brain against each other over in-memory
//! queues, each with its own local store: the same conversation as over a
//! socket, without one.

use std::collections::VecDeque;

use dsync_protocol::{Decoder, DecoderConfig, Encoder, Handshake, Item, Role};

use crate::brain::{Brain, EngineError, ExitStatus, Input, Outcome, Output, SyncSettings};
use crate::memory::MemoryReplica;
use crate::storage::*;

/// What a driver needs from a local replica.
pub trait LocalStore {
    fn answer(&mut self, q: &Query) -> Answer;
    fn apply(&mut self, a: &Action) -> Result<(), StorageError>;
    /// The body a [`BodyRef`] designates (copied; in-memory use only).
    fn read_body(&self, r: &BodyRef) -> Option<Vec<u8>>;
    /// The data block that followed the last received `M`.
    fn set_incoming_body(&mut self, body: Vec<u8>);
}

impl LocalStore for MemoryReplica {
    fn answer(&mut self, q: &Query) -> Answer {
        MemoryReplica::answer(self, q)
    }
    fn apply(&mut self, a: &Action) -> Result<(), StorageError> {
        MemoryReplica::apply(self, a)
    }
    fn read_body(&self, r: &BodyRef) -> Option<Vec<u8>> {
        self.body(r).map(|b| b.to_vec())
    }
    fn set_incoming_body(&mut self, body: Vec<u8>) {
        MemoryReplica::set_incoming_body(self, body)
    }
}

/// Both sides' results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairOutcome {
    pub master: Outcome,
    pub slave: Outcome,
    /// Items sent master→slave and slave→master (for inspection).
    pub items_to_slave: usize,
    pub items_to_master: usize,
    /// Problems found by encoding both directions with the wire codec and
    /// decoding them with its conversation-order check (empty when fine).
    pub wire_errors: Vec<String>,
}

impl PairOutcome {
    /// doveadm's exit code for the run, as seen by the master.
    pub fn exit_code(&self) -> i32 {
        self.master.status.code()
    }
}

type Wire = VecDeque<(Item, Option<Vec<u8>>)>;

/// Encodes one direction's items with the real codec and decodes them again
/// with the conversation-order check, so that every in-memory session also
/// proves its byte stream is one a Dovecot peer would accept in that order.
struct WireCheck {
    role: Role,
    enc: Encoder,
    dec: Decoder,
    started: bool,
    error: Option<String>,
}

impl WireCheck {
    fn new(role: Role) -> WireCheck {
        WireCheck {
            role,
            enc: Encoder::new(),
            dec: Decoder::with_config(DecoderConfig {
                sender_role: Some(role),
                ..DecoderConfig::default()
            }),
            started: false,
            error: None,
        }
    }

    fn check(&mut self, item: &Item, body: Option<&[u8]>, master_h: &Option<Handshake>) {
        if self.error.is_some() {
            return;
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            if let Some(h) = master_h {
                self.dec.set_session(self.role, h);
            }
            self.enc.encode_preamble(&mut out);
        }
        let r = self
            .enc
            .encode_item(item, &mut out)
            .and_then(|()| match body {
                Some(b) => {
                    self.enc.encode_body_chunk(b, &mut out)?;
                    self.enc.end_body(&mut out)
                }
                None => Ok(()),
            });
        if let Err(e) = r {
            self.error = Some(format!("{:?} cannot be encoded: {e}", self.role));
            return;
        }
        self.dec.feed(&out);
        loop {
            match self.dec.next_event() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    self.error = Some(format!(
                        "{:?} stream rejected at {:?}: {e}",
                        self.role,
                        item.letter() as char
                    ));
                    break;
                }
            }
        }
    }
}

fn drain<S: LocalStore>(
    brain: &mut Brain,
    store: &mut S,
    wire: &mut Wire,
    sent: &mut usize,
    check: &mut WireCheck,
    master_h: &mut Option<Handshake>,
    budget: usize,
) -> Result<bool, EngineError> {
    let mut any = false;
    for _ in 0..budget {
        let Some(out) = brain.poll() else { break };
        any = true;
        match out {
            Output::Send { item, body } => {
                let mut item = item;
                let bytes = body.and_then(|r| store.read_body(&r));
                if let Item::Mail(m) = &mut item {
                    m.stream = bytes.is_some();
                }
                if let (Item::Handshake(h), Role::Master) = (&item, check.role) {
                    *master_h = Some((**h).clone());
                }
                check.check(&item, bytes.as_deref(), master_h);
                *sent += 1;
                wire.push_back((item, bytes));
            }
            Output::Query(q) => {
                let a = store.answer(&q);
                brain.feed(Input::Answer(a))?;
            }
            Output::Action(a) => {
                if let Err(error) = store.apply(&a) {
                    brain.feed(Input::ActionFailed { action: a, error })?;
                }
            }
        }
    }
    Ok(any)
}

fn failed(e: &EngineError) -> Outcome {
    Outcome {
        status: ExitStatus::TempFail,
        messages: vec![e.to_string()],
        require_full_resync: false,
        state: None,
        sync_type: dsync_protocol::SyncType::Changed,
    }
}

/// Runs one sync between `master_store` (the side running the command) and
/// `slave_store`.
pub fn sync_pair<A: LocalStore, B: LocalStore>(
    master_store: &mut A,
    slave_store: &mut B,
    settings: SyncSettings,
    now: i64,
) -> PairOutcome {
    sync_pair_interleaved(
        master_store,
        slave_store,
        settings,
        now,
        (usize::MAX, usize::MAX),
    )
}

/// [`sync_pair`] with a driver that handles at most `outputs_per_turn`
/// (master, slave) outputs of a brain before it feeds the brain the next
/// peer item: a brain must give the same result however far its outputs
/// were drained when a peer item arrives.
pub fn sync_pair_interleaved<A: LocalStore, B: LocalStore>(
    master_store: &mut A,
    slave_store: &mut B,
    settings: SyncSettings,
    now: i64,
    outputs_per_turn: (usize, usize),
) -> PairOutcome {
    let (budget_m, budget_s) = (outputs_per_turn.0.max(1), outputs_per_turn.1.max(1));
    let mut m = Brain::master(b"master", settings, now);
    let mut s = Brain::slave(b"slave", now);
    let (mut to_s, mut to_m): (Wire, Wire) = (VecDeque::new(), VecDeque::new());
    let (mut n_s, mut n_m) = (0usize, 0usize);
    let mut err: Option<EngineError> = None;
    let mut check_m = WireCheck::new(Role::Master);
    let mut check_s = WireCheck::new(Role::Slave);
    let mut master_h: Option<Handshake> = None;
    for _ in 0..10_000_000u64 {
        let r = (|| -> Result<bool, EngineError> {
            let mut progress = drain(
                &mut m,
                master_store,
                &mut to_s,
                &mut n_s,
                &mut check_m,
                &mut master_h,
                budget_m,
            )?;
            progress |= drain(
                &mut s,
                slave_store,
                &mut to_m,
                &mut n_m,
                &mut check_s,
                &mut master_h,
                budget_s,
            )?;
            if let Some((item, body)) = to_s.pop_front() {
                if let Some(b) = body {
                    slave_store.set_incoming_body(b);
                }
                s.feed(Input::Peer(item))?;
                drain(
                    &mut s,
                    slave_store,
                    &mut to_m,
                    &mut n_m,
                    &mut check_s,
                    &mut master_h,
                    budget_s,
                )?;
                progress = true;
            }
            if let Some((item, body)) = to_m.pop_front() {
                if let Some(b) = body {
                    master_store.set_incoming_body(b);
                }
                m.feed(Input::Peer(item))?;
                drain(
                    &mut m,
                    master_store,
                    &mut to_s,
                    &mut n_s,
                    &mut check_m,
                    &mut master_h,
                    budget_m,
                )?;
                progress = true;
            }
            Ok(progress)
        })();
        match r {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
        if m.outcome().is_some() && s.outcome().is_some() && to_s.is_empty() && to_m.is_empty() {
            break;
        }
    }
    let stuck = EngineError::Remote("the conversation stopped before both sides finished".into());
    let e = err.unwrap_or(stuck);
    PairOutcome {
        master: m.outcome().cloned().unwrap_or_else(|| failed(&e)),
        slave: s.outcome().cloned().unwrap_or_else(|| failed(&e)),
        items_to_slave: n_s,
        items_to_master: n_m,
        wire_errors: check_m.error.into_iter().chain(check_s.error).collect(),
    }
}
