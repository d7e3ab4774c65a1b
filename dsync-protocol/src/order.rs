//! Conversation order of one direction (spec §6), checked with a small set
//! of possible positions: one stream alone cannot always tell which list a
//! `.` ends (it depends on the peer's `B`), so every reading is kept until
//! the following items rule it out.

use crate::error::DecodeError;
use crate::item::Handshake;
use crate::types::{Role, SyncType};

/// List sequences of one per-mailbox exchange, by role (§6.4).
const SHAPES: [&[u8]; 4] = [b"ACRM", b"ACM", b"R", b""];
/// The same for a sender older than minor 1, which has no attribute lists.
const SHAPES_NO_ATTRIBUTES: [&[u8]; 4] = [b"CRM", b"CM", b"R", b""];
const TWO_WAY: u8 = 0;
const NO_REQUESTS: u8 = 1;
const DESTINATION: u8 = 2;
const DESTINATION_NO_REQUESTS: u8 = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    StateList,
    Tree,
    AfterTree,
    MailboxLoop,
    Exchange { shape: u8, idx: u8 },
    Ended,
    AfterFinish,
    Done,
}

#[derive(Clone, Debug)]
pub(crate) struct Conversation {
    states: Vec<St>,
    shapes: Vec<u8>,
    role: Option<Role>,
    last_change_uid: Option<u32>,
    list_letter: u8,
    list_items: u64,
    max_list_items: u64,
    scratch: Vec<St>,
    attributes: bool,
}

impl Conversation {
    pub fn new(role: Option<Role>, max_list_items: u64) -> Conversation {
        Conversation {
            states: Vec::new(),
            shapes: vec![TWO_WAY, NO_REQUESTS, DESTINATION],
            role,
            last_change_uid: None,
            list_letter: 0,
            list_items: 0,
            max_list_items,
            scratch: Vec::new(),
            attributes: true,
        }
    }

    /// Starts the item phase after the stream's own `H`.
    pub fn after_handshake(&mut self, own: &Handshake, sender_minor: u32) {
        self.attributes = sender_minor >= 1;
        // Only a master puts the sync type into its H.
        if self.role.is_none() && own.sync_type.is_some() {
            self.set_session(Role::Master, own);
        }
        let state_list = own.sync_type == Some(SyncType::State) && self.role != Some(Role::Slave);
        self.states = vec![if state_list { St::StateList } else { St::Tree }];
    }

    /// Narrows the exchange shapes once the sender's role and the master's
    /// settings are known.
    pub fn set_session(&mut self, sender: Role, master: &Handshake) {
        self.role = Some(sender);
        // The master's H describes the slave's backup role.
        let (source, destination) = match sender {
            Role::Master => (master.backup_recv, master.backup_send),
            Role::Slave => (master.backup_send, master.backup_recv),
        };
        let mr = master.send_mail_requests;
        self.shapes = vec![if destination {
            if mr {
                DESTINATION
            } else {
                DESTINATION_NO_REQUESTS
            }
        } else if source || !mr {
            NO_REQUESTS
        } else {
            TWO_WAY
        }];
    }

    fn successors(&self, st: St, letter: u8, out: &mut Vec<St>) {
        if letter == b'X' {
            if st != St::Done {
                out.push(St::Done);
            }
            return;
        }
        match (st, letter) {
            (St::StateList, b'S') => out.push(St::StateList),
            (St::StateList, b'.') => out.push(St::Tree),
            (St::Tree, b'N') => out.push(St::Tree),
            (St::Tree, b'.') => out.push(St::AfterTree),
            (St::AfterTree, b'D') => out.push(St::MailboxLoop),
            (St::MailboxLoop, b'B') => {
                out.push(St::MailboxLoop);
                for &shape in &self.shapes {
                    out.push(St::Exchange { shape, idx: 0 });
                }
            }
            (St::MailboxLoop, b'.') if self.role != Some(Role::Slave) => out.push(St::Ended),
            (St::MailboxLoop, b'F') if self.role != Some(Role::Master) => out.push(St::AfterFinish),
            (St::Exchange { shape, idx }, l) => {
                let seq = if self.attributes {
                    SHAPES[shape as usize]
                } else {
                    SHAPES_NO_ATTRIBUTES[shape as usize]
                };
                let i = idx as usize;
                if i < seq.len() {
                    if l == seq[i] {
                        out.push(st);
                    } else if l == b'.' {
                        out.push(St::Exchange {
                            shape,
                            idx: idx + 1,
                        });
                    }
                } else if l == b'S' {
                    out.push(St::MailboxLoop);
                }
            }
            _ => {}
        }
    }

    fn expected(&self) -> String {
        let mut v = Vec::new();
        for l in b".XSNDBACRMF" {
            let mut tmp = Vec::new();
            for &st in &self.states {
                self.successors(st, *l, &mut tmp);
            }
            if !tmp.is_empty() {
                v.push((*l as char).to_string());
            }
        }
        if v.is_empty() {
            "nothing (the stream is finished)".into()
        } else {
            v.join(" ")
        }
    }

    /// Checks that an item with this letter may come next.
    pub fn step(&mut self, letter: u8, offset: u64) -> Result<(), DecodeError> {
        let mut raw = std::mem::take(&mut self.scratch);
        raw.clear();
        for &st in &self.states {
            self.successors(st, letter, &mut raw);
        }
        let mut next = Vec::with_capacity(raw.len());
        for s in raw.drain(..) {
            if !next.contains(&s) {
                next.push(s);
            }
        }
        self.scratch = raw;
        if next.is_empty() {
            if self.states.contains(&St::Done) {
                return Err(DecodeError::DataAfterDone { offset });
            }
            return Err(DecodeError::OutOfOrder {
                offset,
                got: letter as char,
                expected: self.expected(),
            });
        }
        self.states = next;
        if letter != b'C' {
            self.last_change_uid = None;
        }
        if matches!(letter, b'S' | b'N' | b'A' | b'C' | b'R' | b'M') && letter == self.list_letter {
            self.list_items += 1;
            if self.list_items > self.max_list_items {
                return Err(DecodeError::ListTooLong {
                    offset,
                    max: self.max_list_items,
                });
            }
        } else {
            self.list_letter = letter;
            self.list_items = 1;
        }
        Ok(())
    }

    /// Checks the strict UID order of a `C` list.
    pub fn change_uid(&mut self, uid: u32, offset: u64) -> Result<(), DecodeError> {
        if let Some(prev) = self.last_change_uid {
            if uid <= prev {
                return Err(DecodeError::ChangesNotAscending { offset, prev, uid });
            }
        }
        self.last_change_uid = Some(uid);
        Ok(())
    }

    /// The sender is known to have finished cleanly (`X`, or `F`, or the
    /// master's end of the mailbox list).
    pub fn is_finished(&self) -> bool {
        self.states
            .iter()
            .any(|s| matches!(s, St::Done | St::AfterFinish | St::Ended))
    }
}
