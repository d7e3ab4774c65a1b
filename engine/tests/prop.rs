//! Random operation sequences on two synced replicas, then sync: the
//! replicas converge, and no mail that existed before the sync is lost
//! unless an operation expunged it or deleted its mailbox.

use std::collections::BTreeSet;

use dsync_protocol::{Guid128, MailFlags, SyncType};
use proptest::prelude::*;
use sync_engine::local::{sync_pair, sync_pair_interleaved};
use sync_engine::memory::{MemNode, MemoryReplica};
use sync_engine::SyncSettings;

#[derive(Clone, Debug)]
enum Op {
    Deliver {
        side: bool,
        mailbox: usize,
    },
    AddFlag {
        side: bool,
        mailbox: usize,
        mail: usize,
        bit: u8,
    },
    RemoveFlag {
        side: bool,
        mailbox: usize,
        mail: usize,
        bit: u8,
    },
    Keyword {
        side: bool,
        mailbox: usize,
        mail: usize,
        kw: usize,
        add: bool,
    },
    Expunge {
        side: bool,
        mailbox: usize,
        mail: usize,
    },
    Create {
        side: bool,
        name: usize,
    },
    Rename {
        side: bool,
        mailbox: usize,
        name: usize,
    },
    Delete {
        side: bool,
        mailbox: usize,
    },
    Subscribe {
        side: bool,
        name: usize,
        on: bool,
    },
}

const NAMES: &[&str] = &["Work", "Home", "Archive", "Lists", "Lists/rust", "Old"];
const KEYWORDS: &[&str] = &["work", "home", "$Label1"];

fn op() -> impl Strategy<Value = Op> {
    let bit = prop_oneof![
        Just(MailFlags::SEEN),
        Just(MailFlags::FLAGGED),
        Just(MailFlags::ANSWERED)
    ];
    prop_oneof![
        4 => (any::<bool>(), 0..4usize).prop_map(|(side, mailbox)| Op::Deliver { side, mailbox }),
        3 => (any::<bool>(), 0..4usize, 0..6usize, bit.clone()).prop_map(|(side, mailbox, mail, bit)| Op::AddFlag { side, mailbox, mail, bit }),
        2 => (any::<bool>(), 0..4usize, 0..6usize, bit).prop_map(|(side, mailbox, mail, bit)| Op::RemoveFlag { side, mailbox, mail, bit }),
        2 => (any::<bool>(), 0..4usize, 0..6usize, 0..3usize, any::<bool>()).prop_map(|(side, mailbox, mail, kw, add)| Op::Keyword { side, mailbox, mail, kw, add }),
        2 => (any::<bool>(), 0..4usize, 0..6usize).prop_map(|(side, mailbox, mail)| Op::Expunge { side, mailbox, mail }),
        1 => (any::<bool>(), 0..NAMES.len()).prop_map(|(side, name)| Op::Create { side, name }),
        1 => (any::<bool>(), 0..4usize, 0..NAMES.len()).prop_map(|(side, mailbox, name)| Op::Rename { side, mailbox, name }),
        1 => (any::<bool>(), 1..4usize).prop_map(|(side, mailbox)| Op::Delete { side, mailbox }),
        1 => (any::<bool>(), 0..NAMES.len(), any::<bool>()).prop_map(|(side, name, on)| Op::Subscribe { side, name, on }),
    ]
}

fn mailboxes(r: &MemoryReplica) -> Vec<String> {
    r.mailbox_names()
}

fn all_guids(r: &MemoryReplica) -> BTreeSet<String> {
    r.nodes
        .values()
        .filter_map(|n| match n {
            MemNode::Mailbox(m) => Some(
                m.mails
                    .values()
                    .map(|x| String::from_utf8_lossy(&x.meta.guid).into_owned()),
            ),
            MemNode::Dir => None,
        })
        .flatten()
        .collect()
}

fn guids_in(r: &MemoryReplica, mailbox: &str) -> Vec<String> {
    r.mailbox(mailbox)
        .map(|m| {
            m.mails
                .values()
                .map(|x| String::from_utf8_lossy(&x.meta.guid).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn guids_of_mailbox(r: &MemoryReplica, guid: Guid128) -> Vec<String> {
    r.nodes
        .values()
        .filter_map(|n| match n {
            MemNode::Mailbox(m) if m.guid == guid => Some(
                m.mails
                    .values()
                    .map(|x| String::from_utf8_lossy(&x.meta.guid).into_owned())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

struct World {
    a: MemoryReplica,
    b: MemoryReplica,
    now: i64,
    counter: u32,
    removed: BTreeSet<String>,
}

impl World {
    fn new() -> World {
        let mut a = MemoryReplica::new();
        let mut b = MemoryReplica::new();
        a.create_mailbox("INBOX", Guid128([1; 16]), 1000)
            .expect("create");
        a.create_mailbox("Work", Guid128([2; 16]), 2000)
            .expect("create");
        for i in 0..3 {
            a.deliver("INBOX", &format!("base-{i}"), b"base", 0)
                .expect("deliver");
        }
        a.deliver("Work", "base-w", b"base", 0).expect("deliver");
        let r = sync_pair(&mut a, &mut b, SyncSettings::default(), 1_700_000_000);
        assert_eq!(r.exit_code(), 0);
        World {
            a,
            b,
            now: 1_700_000_010,
            counter: 0,
            removed: BTreeSet::new(),
        }
    }

    fn apply(&mut self, op: &Op) {
        self.now += 1;
        self.a.now = self.now;
        self.b.now = self.now;
        let side = match op {
            Op::Deliver { side, .. }
            | Op::AddFlag { side, .. }
            | Op::RemoveFlag { side, .. }
            | Op::Keyword { side, .. }
            | Op::Expunge { side, .. }
            | Op::Create { side, .. }
            | Op::Rename { side, .. }
            | Op::Delete { side, .. }
            | Op::Subscribe { side, .. } => *side,
        };
        let r = if side { &mut self.a } else { &mut self.b };
        let boxes = mailboxes(r);
        let pick = |i: usize| boxes.get(i % boxes.len().max(1)).cloned();
        let uid_of = |r: &MemoryReplica, mb: &str, i: usize| {
            r.mailbox(mb).and_then(|m| {
                let uids: Vec<u32> = m.mails.keys().copied().collect();
                if uids.is_empty() {
                    None
                } else {
                    Some(uids[i % uids.len()])
                }
            })
        };
        match op {
            Op::Deliver { mailbox, .. } => {
                if let Some(mb) = pick(*mailbox) {
                    self.counter += 1;
                    let g = format!("new-{}-{}", if side { "a" } else { "b" }, self.counter);
                    let _ = r.deliver(&mb, &g, g.as_bytes(), 0);
                }
            }
            Op::AddFlag {
                mailbox, mail, bit, ..
            }
            | Op::RemoveFlag {
                mailbox, mail, bit, ..
            } => {
                if let Some(mb) = pick(*mailbox) {
                    if let Some(uid) = uid_of(r, &mb, *mail) {
                        if matches!(op, Op::AddFlag { .. }) {
                            r.add_flags(&mb, uid, *bit, &[]);
                        } else {
                            r.remove_flags(&mb, uid, *bit, &[]);
                        }
                    }
                }
            }
            Op::Keyword {
                mailbox,
                mail,
                kw,
                add,
                ..
            } => {
                if let Some(mb) = pick(*mailbox) {
                    if let Some(uid) = uid_of(r, &mb, *mail) {
                        if *add {
                            r.add_flags(&mb, uid, 0, &[KEYWORDS[*kw]]);
                        } else {
                            r.remove_flags(&mb, uid, 0, &[KEYWORDS[*kw]]);
                        }
                    }
                }
            }
            Op::Expunge { mailbox, mail, .. } => {
                if let Some(mb) = pick(*mailbox) {
                    if let Some(uid) = uid_of(r, &mb, *mail) {
                        if let Some(m) = r.mailbox(&mb).and_then(|m| m.mails.get(&uid)) {
                            self.removed
                                .insert(String::from_utf8_lossy(&m.meta.guid).into_owned());
                        }
                        r.expunge(&mb, uid);
                    }
                }
            }
            Op::Create { name, .. } => {
                self.counter += 1;
                let mut g = [0u8; 16];
                g[0] = 0x40;
                g[12..].copy_from_slice(&self.counter.to_be_bytes());
                g[1] = u8::from(side);
                let _ = r.create_mailbox(NAMES[*name], Guid128(g), 3000 + self.counter);
            }
            Op::Rename { mailbox, name, .. } => {
                if let Some(mb) = pick(*mailbox) {
                    if mb != "INBOX" {
                        let _ = r.rename(&mb, NAMES[*name]);
                    }
                }
            }
            Op::Delete { mailbox, .. } => {
                if let Some(mb) = pick(*mailbox) {
                    if mb != "INBOX" {
                        // The deletion covers the mailbox's mails on both
                        // sides as they are now; later deliveries must survive.
                        let mut gone = guids_in(r, &mb);
                        let guid = r.mailbox(&mb).map(|m| m.guid);
                        if r.delete_mailbox(&mb).is_ok() {
                            let other = if side { &self.b } else { &self.a };
                            if let Some(g) = guid {
                                gone.extend(guids_of_mailbox(other, g));
                            }
                            self.removed.extend(gone);
                        }
                    }
                }
            }
            Op::Subscribe { name, on, .. } => r.subscribe(NAMES[*name], *on),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_changes_converge_without_losing_mail(ops in prop::collection::vec(op(), 0..25)) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op);
        }
        let before: BTreeSet<String> = all_guids(&w.a).union(&all_guids(&w.b)).cloned().collect();
        let settings = SyncSettings { sync_type: SyncType::Full, ..SyncSettings::default() };
        let mut runs = Vec::new();
        for i in 0..3 {
            let r = sync_pair(&mut w.a, &mut w.b, settings.clone(), w.now + 100 + i);
            prop_assert!(r.wire_errors.is_empty(), "wire: {:?}", r.wire_errors);
            runs.push(r.clone());
            if w.a.view() == w.b.view() && r.exit_code() == 0 && r.slave.status.code() == 0 {
                break;
            }
        }
        prop_assert_eq!(w.a.view(), w.b.view(), "runs: {:?}", runs);
        let last = runs.last().map(|r| (r.exit_code(), r.slave.status.code()));
        prop_assert_eq!(last, Some((0, 0)), "runs: {:?}", runs);
        let after = all_guids(&w.a);
        let lost: Vec<&String> = before.iter().filter(|g| !after.contains(*g) && !w.removed.contains(*g)).collect();
        prop_assert!(lost.is_empty(), "lost mails {:?}; runs: {:?}", lost, runs);
        // Every mailbox has unique UIDs below UIDNEXT.
        for (name, mb) in &w.a.view().mailboxes {
            if let Some(max) = mb.mails.keys().max() {
                prop_assert!(*max < mb.uid_next, "{}: uid {} >= uidnext {}", name, max, mb.uid_next);
            }
        }
    }

    /// The brain makes its long lists (`C`, `R`, `M`) one item at a time as
    /// they are polled; a driver that feeds a peer item before it polled
    /// everything must get the same sync as one that drains first.
    #[test]
    fn draining_outputs_partly_before_feeding_gives_the_same_sync(
        ops in prop::collection::vec(op(), 0..25),
        per_turn in 1usize..4,
        slow_slave in any::<bool>(),
    ) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op);
        }
        let settings = SyncSettings { sync_type: SyncType::Full, ..SyncSettings::default() };
        let (mut a1, mut b1) = (w.a.clone(), w.b.clone());
        let (mut a2, mut b2) = (w.a.clone(), w.b.clone());
        let drained = sync_pair(&mut a1, &mut b1, settings.clone(), w.now + 100);
        // One side lags behind: its peer's items arrive while it still has
        // its own lists to send.
        let budgets = if slow_slave { (usize::MAX, per_turn) } else { (per_turn, usize::MAX) };
        let partial = sync_pair_interleaved(&mut a2, &mut b2, settings, w.now + 100, budgets);
        prop_assert!(partial.wire_errors.is_empty(), "wire: {:?}", partial.wire_errors);
        prop_assert_eq!(
            (drained.exit_code(), drained.slave.status.code()),
            (partial.exit_code(), partial.slave.status.code())
        );
        prop_assert_eq!(a1.view(), a2.view());
        prop_assert_eq!(b1.view(), b2.view());
    }
}

/// A replica that answers every snapshot query with the whole mailbox, as
/// a store without partial snapshots would.
struct Whole(MemoryReplica);

impl sync_engine::local::LocalStore for Whole {
    fn answer(&mut self, q: &sync_engine::Query) -> sync_engine::Answer {
        match q {
            sync_engine::Query::MailboxSince { guid, .. } => {
                self.0.answer(&sync_engine::Query::MailboxUndated(*guid))
            }
            other => self.0.answer(other),
        }
    }
    fn apply(&mut self, a: &sync_engine::Action) -> Result<(), sync_engine::StorageError> {
        self.0.apply(a)
    }
    fn read_body(&self, r: &sync_engine::BodyRef) -> Option<Vec<u8>> {
        self.0.body(r).map(<[u8]>::to_vec)
    }
    fn set_incoming_body(&mut self, body: Vec<u8>) {
        self.0.set_incoming_body(body)
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200),
        ..ProptestConfig::default()
    })]

    /// A stateful run that reads only what changed since the state (partial
    /// snapshots, old mails asked for by UID) ends exactly as one that reads
    /// whole mailboxes: same replicas, same exit codes, same next state.
    #[test]
    fn a_stateful_run_from_partial_snapshots_equals_one_from_whole_ones(
        before in prop::collection::vec(op(), 0..10),
        ops in prop::collection::vec(op(), 0..25),
    ) {
        let mut w = World::new();
        for op in &before {
            w.apply(op);
        }
        let stateful = |states| SyncSettings {
            sync_type: SyncType::State,
            states,
            ..SyncSettings::default()
        };
        // A settled state: the first one's modseq is the receiver's.
        let mut state = Vec::new();
        for i in 0..3 {
            let r = sync_pair(&mut w.a, &mut w.b, stateful(state.clone()), w.now + 10 + i);
            state = r.master.state.clone().unwrap_or_default();
        }
        for op in &ops {
            w.apply(op);
        }
        let (mut a1, mut b1) = (w.a.clone(), w.b.clone());
        let (mut a2, mut b2) = (Whole(w.a.clone()), Whole(w.b.clone()));
        let partial = sync_pair(&mut a1, &mut b1, stateful(state.clone()), w.now + 100);
        let whole = sync_pair(&mut a2, &mut b2, stateful(state), w.now + 100);
        prop_assert!(partial.wire_errors.is_empty(), "wire: {:?}", partial.wire_errors);
        prop_assert_eq!(
            (partial.exit_code(), partial.slave.status.code()),
            (whole.exit_code(), whole.slave.status.code()),
            "partial: {:?}\nwhole: {:?}", partial, whole
        );
        prop_assert_eq!(&partial.master.state, &whole.master.state);
        prop_assert_eq!(a1.view(), a2.0.view());
        prop_assert_eq!(b1.view(), b2.0.view());
    }
}
