//! Two brains against each other over in-memory queues, two MemoryReplicas.

use dsync_protocol::{Guid128, MailFlags, SyncType};
use sync_engine::local::{sync_pair, sync_pair_interleaved};
use sync_engine::memory::MemoryReplica;
use sync_engine::SyncSettings;

/// `sync_pair`, also asserting that both byte streams pass the codec's
/// conversation-order check.
fn checked<A: sync_engine::local::LocalStore, B: sync_engine::local::LocalStore>(
    a: &mut A,
    b: &mut B,
    s: SyncSettings,
    now: i64,
) -> sync_engine::local::PairOutcome {
    let r = sync_pair(a, b, s, now);
    assert!(r.wire_errors.is_empty(), "{:?}", r.wire_errors);
    r
}

fn g(n: u8) -> Guid128 {
    let mut b = [0u8; 16];
    b[15] = n;
    Guid128(b)
}

fn full() -> SyncSettings {
    SyncSettings {
        sync_type: SyncType::Full,
        ..SyncSettings::default()
    }
}

/// INBOX with two mails, `g01-m1` and `g02-m2`.
fn two_mails() -> MemoryReplica {
    let mut r = MemoryReplica::new();
    r.create_mailbox("INBOX", g(1), 1000).unwrap();
    r.deliver("INBOX", "g01-m1", b"Subject: m1\n\nbody1\n", 0)
        .unwrap();
    r.deliver("INBOX", "g02-m2", b"Subject: m2\n\nbody2\n", 0)
        .unwrap();
    r
}

/// [`two_mails`] synced into an empty replica.
fn base() -> (MemoryReplica, MemoryReplica) {
    let mut a = two_mails();
    let mut b = MemoryReplica::new();
    let r = checked(&mut a, &mut b, SyncSettings::default(), 1_700_000_100);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    (a, b)
}

fn uids(r: &MemoryReplica, mb: &str) -> Vec<(u32, String)> {
    r.view().mailboxes[mb]
        .mails
        .iter()
        .map(|(u, (g, _, _))| (*u, g.clone()))
        .collect()
}

/// Sees what a replica is asked and told during a sync, and may fail an
/// action in the replica's place.
trait Spy {
    fn query(&mut self, _q: &sync_engine::Query) {}
    fn answered(&mut self, _a: &sync_engine::Answer) {}
    fn action(&mut self, _a: &sync_engine::Action) -> Result<(), sync_engine::StorageError> {
        Ok(())
    }
}

/// A MemoryReplica watched by a [`Spy`].
struct Observed<S> {
    inner: MemoryReplica,
    spy: S,
}

impl<S: Spy> sync_engine::local::LocalStore for Observed<S> {
    fn answer(&mut self, q: &sync_engine::Query) -> sync_engine::Answer {
        self.spy.query(q);
        let a = self.inner.answer(q);
        self.spy.answered(&a);
        a
    }
    fn apply(&mut self, a: &sync_engine::Action) -> Result<(), sync_engine::StorageError> {
        self.spy.action(a)?;
        self.inner.apply(a)
    }
    fn read_body(&self, r: &sync_engine::BodyRef) -> Option<Vec<u8>> {
        self.inner.body(r).map(|b| b.to_vec())
    }
    fn set_incoming_body(&mut self, body: Vec<u8>) {
        self.inner.set_incoming_body(body)
    }
}

#[test]
fn first_sync_copies_everything() {
    let mut a = MemoryReplica::new();
    a.create_mailbox("INBOX", g(1), 1000).unwrap();
    a.create_mailbox("Work", g(0xa1), 2000).unwrap();
    a.deliver("INBOX", "g01-m1", b"m1", 1_588_672_800).unwrap();
    a.deliver("INBOX", "g02-m2", b"m2", 0).unwrap();
    a.add_flags("INBOX", 1, MailFlags::SEEN, &[]);
    a.add_flags("INBOX", 2, MailFlags::FLAGGED, &["work"]);
    a.deliver("Work", "g03-m3", b"m3", 0).unwrap();
    a.subscribe("Work", true);
    let mut b = MemoryReplica::new();
    let r = checked(&mut a, &mut b, SyncSettings::default(), 1_700_000_100);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), b.view());
    let m1 = &b.mailbox("INBOX").unwrap().mails[&1];
    assert_eq!(m1.meta.received_date, 1_588_672_800);
    assert_eq!(m1.body, b"m1");
    assert_eq!(b.mailbox("Work").unwrap().uid_validity, 2000);
}

#[test]
fn incremental_new_mail_on_slave() {
    let (mut a, mut b) = base();
    b.deliver("INBOX", "g03-m3", b"m3", 0).unwrap();
    let r = checked(&mut a, &mut b, SyncSettings::default(), 1_700_000_200);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), b.view());
    assert_eq!(uids(&a, "INBOX").len(), 3);
}

#[test]
fn uid_conflict_both_mails_survive() {
    let (mut a, mut b) = base();
    a.deliver("INBOX", "g03-m3", b"m3", 0).unwrap();
    b.deliver("INBOX", "g04-m4", b"m4", 0).unwrap();
    let r = checked(&mut a, &mut b, SyncSettings::default(), 1_700_000_200);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), b.view());
    assert_eq!(
        uids(&a, "INBOX"),
        vec![
            (1, "g01-m1".into()),
            (2, "g02-m2".into()),
            (4, "g03-m3".into()),
            (5, "g04-m4".into())
        ]
    );
    assert_eq!(a.mailbox("INBOX").unwrap().uid_next, 6);
    assert_eq!(b.mailbox("INBOX").unwrap().mails[&5].body, b"m4");
    assert_eq!(a.mailbox("INBOX").unwrap().mails[&5].body, b"m4");
}

#[test]
fn flag_conflict_higher_modseq_wins() {
    let (mut a, mut b) = base();
    a.add_flags("INBOX", 1, MailFlags::SEEN, &[]);
    b.add_flags("INBOX", 1, MailFlags::SEEN, &[]);
    b.remove_flags("INBOX", 1, MailFlags::SEEN, &[]);
    let r = checked(&mut a, &mut b, full(), 1_700_000_200);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), b.view());
    assert_eq!(a.view().mailboxes["INBOX"].mails[&1].1, 0);
}

#[test]
fn concurrent_different_flags_are_unioned() {
    let (mut a, mut b) = base();
    a.add_flags("INBOX", 1, MailFlags::SEEN, &["work"]);
    b.add_flags("INBOX", 1, MailFlags::FLAGGED, &["home"]);
    let r = checked(&mut a, &mut b, full(), 1_700_000_200);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), b.view());
    let m = &a.view().mailboxes["INBOX"].mails[&1];
    assert_eq!(m.1, MailFlags::SEEN | MailFlags::FLAGGED);
    assert_eq!(m.2, vec!["home".to_string(), "work".to_string()]);
}

#[test]
fn expunge_propagates_and_wins_over_flag_change() {
    let (mut a, mut b) = base();
    a.expunge("INBOX", 2);
    b.add_flags("INBOX", 2, MailFlags::FLAGGED, &[]);
    let r = checked(&mut a, &mut b, SyncSettings::default(), 1_700_000_200);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), b.view());
    assert_eq!(uids(&b, "INBOX"), vec![(1, "g01-m1".into())]);
}

#[test]
fn rename_and_delete() {
    let (mut a, mut b) = base();
    a.create_mailbox("Work", g(0xa1), 2000).unwrap();
    a.deliver("Work", "g03-m3", b"m3", 0).unwrap();
    a.create_mailbox("Old", g(0xa2), 2001).unwrap();
    assert_eq!(
        checked(&mut a, &mut b, SyncSettings::default(), 1_700_000_200).exit_code(),
        0
    );
    a.now = 1_700_000_300;
    a.rename("Work", "Archive").unwrap();
    b.now = 1_700_000_300;
    b.delete_mailbox("Old").unwrap();
    let r = checked(&mut a, &mut b, SyncSettings::default(), 1_700_000_400);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), b.view());
    assert_eq!(a.mailbox_names(), vec!["Archive", "INBOX"]);
    assert_eq!(uids(&b, "Archive"), vec![(1, "g03-m3".into())]);
}

#[test]
fn backup_reverts_destination() {
    let (mut a, mut b) = base();
    b.add_flags("INBOX", 1, MailFlags::SEEN, &[]);
    b.create_mailbox("Extra", g(0xe1), 5000).unwrap();
    b.deliver("Extra", "g09-m9", b"m9", 0).unwrap();
    a.deliver("INBOX", "g03-m3", b"m3", 0).unwrap();
    a.add_flags("INBOX", 2, MailFlags::ANSWERED, &[]);
    let before = a.view();
    let s = SyncSettings {
        backup_send: true,
        ..SyncSettings::default()
    };
    let r = checked(&mut a, &mut b, s, 1_700_000_200);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), before);
    assert_eq!(a.view().mailboxes, b.view().mailboxes);
}

#[test]
fn oneway_keeps_destination_changes() {
    let (mut a, mut b) = base();
    a.deliver("INBOX", "g03-m3", b"m3", 0).unwrap();
    a.expunge("INBOX", 1);
    b.add_flags("INBOX", 2, MailFlags::SEEN, &[]);
    b.deliver("INBOX", "g09-m9", b"m9", 0).unwrap();
    let before = a.view();
    let s = SyncSettings {
        backup_send: true,
        no_backup_overwrite: true,
        ..SyncSettings::default()
    };
    let r = checked(&mut a, &mut b, s, 1_700_000_200);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), before);
    let v = b.view();
    let m = &v.mailboxes["INBOX"].mails;
    assert_eq!(m.get(&2).map(|x| x.1), Some(MailFlags::SEEN));
    assert_eq!(m.get(&4).map(|x| x.0.as_str()), Some("g03-m3"));
    assert_eq!(m.get(&5).map(|x| x.0.as_str()), Some("g09-m9"));
    assert!(!m.contains_key(&1));
}

#[test]
fn mail_delivered_into_a_remotely_deleted_mailbox_survives() {
    let (mut a, mut b) = base();
    a.create_mailbox("Work", g(0xa1), 2000).unwrap();
    a.deliver("Work", "g03-m3", b"m3", 0).unwrap();
    a.now = 1_700_000_150;
    assert_eq!(
        checked(&mut a, &mut b, SyncSettings::default(), 1_700_000_150).exit_code(),
        0
    );
    a.now = 1_700_000_300;
    b.now = 1_700_000_300;
    a.delete_mailbox("Work").unwrap();
    b.deliver("Work", "g04-m4", b"m4", 0).unwrap();
    let r = checked(&mut a, &mut b, SyncSettings::default(), 1_700_000_400);
    // The slave reports that another run is needed for the new mailbox.
    assert_eq!(
        r.slave.status,
        sync_engine::ExitStatus::ChangesDuringSync,
        "{r:?}"
    );
    let r = checked(&mut a, &mut b, SyncSettings::default(), 1_700_000_500);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), b.view());
    let names = a.mailbox_names();
    assert_eq!(names.len(), 2, "{names:?}");
    let rec = names
        .iter()
        .find(|n| n.starts_with("Work-recovered-"))
        .expect("recovery mailbox");
    assert_eq!(uids(&a, rec), vec![(1, "g04-m4".into())]);
}

#[test]
fn renames_at_the_same_second_agree_on_one_name() {
    let (mut a, mut b) = base();
    a.create_mailbox("Work", g(0xa1), 2000).unwrap();
    a.deliver("Work", "g03-m3", b"m3", 0).unwrap();
    assert_eq!(
        checked(&mut a, &mut b, SyncSettings::default(), 1_700_000_150).exit_code(),
        0
    );
    for (x, y) in [("Yellow", "Xray"), ("Xray", "Yellow")] {
        let (mut a2, mut b2) = (a.clone(), b.clone());
        a2.now = 1_700_000_300;
        b2.now = 1_700_000_300;
        a2.rename("Work", x).unwrap();
        b2.rename("Work", y).unwrap();
        let r = checked(&mut a2, &mut b2, SyncSettings::default(), 1_700_000_400);
        assert_eq!(r.exit_code(), 0, "{r:?}");
        assert_eq!(a2.view(), b2.view());
        // On a tie the name the walk reaches first (the smaller one) wins.
        assert_eq!(a2.mailbox_names(), vec!["INBOX", "Xray"]);
    }
}

/// Fails the first save (while set) as if another process had taken the UID.
struct FailNextSave(bool);

impl Spy for FailNextSave {
    fn action(&mut self, a: &sync_engine::Action) -> Result<(), sync_engine::StorageError> {
        if self.0 && matches!(a, sync_engine::Action::SaveMail { .. }) {
            self.0 = false;
            return Err(sync_engine::StorageError::Exists(
                "UID taken by a concurrent save".into(),
            ));
        }
        Ok(())
    }
}

#[test]
fn concurrent_change_during_sync_reports_and_repairs() {
    let (mut a, b) = base();
    a.deliver("INBOX", "g03-m3", b"m3", 0).unwrap();
    let mut b = Observed {
        inner: b,
        spy: FailNextSave(true),
    };
    let s = SyncSettings {
        sync_type: SyncType::State,
        ..SyncSettings::default()
    };
    let r = checked(&mut a, &mut b, s, 1_700_000_200);
    assert_eq!(r.exit_code(), 2, "{r:?}");
    let st = r.master.state.clone().expect("state");
    assert_eq!(
        st[0].last_common_uid, 2,
        "state falls back to what was common before: {st:?}"
    );
    let r = sync_pair(
        &mut a,
        &mut b,
        SyncSettings {
            states: st,
            sync_type: SyncType::State,
            ..SyncSettings::default()
        },
        1_700_000_300,
    );
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), b.inner.view());
}

#[test]
fn skipped_mailbox_is_named_in_the_state_and_the_chain_turns_incremental() {
    // Identical replicas: a stateless run with a state wanted skips INBOX
    // (six equal numbers) but must still name it in the printed state.
    let (mut a, mut b) = (two_mails(), two_mails());
    let r = checked(&mut a, &mut b, SyncSettings::default(), 1_700_000_200);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), b.view());
    let st = r.master.state.clone().expect("state");
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st[0].mailbox_guid, g(1));
    assert_eq!(st[0].last_uidvalidity, 1000);
    assert_eq!(st[0].last_common_uid, 0, "nothing proven common yet");
    // The next stateful run compares INBOX once and records a real state.
    let state = |states| SyncSettings {
        states,
        sync_type: SyncType::State,
        ..SyncSettings::default()
    };
    let r = checked(&mut a, &mut b, state(st), 1_700_000_300);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    let full_items = r.items_to_slave;
    let st = r.master.state.clone().expect("state");
    assert_eq!(st[0].last_common_uid, 2, "{st:?}");
    // A change on the master is then synced incrementally.
    a.add_flags("INBOX", 2, MailFlags::SEEN, &[]);
    let r = checked(&mut a, &mut b, state(st.clone()), 1_700_000_400);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), b.view());
    let st2 = r.master.state.clone().expect("state");
    assert_eq!(st2[0].last_common_uid, 2);
    // Incremental: only the changed mail is exported, not both.
    assert_eq!(r.items_to_slave + 1, full_items, "{r:?}");
}

/// Counts the flag actions a replica is given.
struct FlagActions(usize);

impl Spy for FlagActions {
    fn action(&mut self, a: &sync_engine::Action) -> Result<(), sync_engine::StorageError> {
        if matches!(
            a,
            sync_engine::Action::UpdateFlags { .. } | sync_engine::Action::ReplaceFlags { .. }
        ) {
            self.0 += 1;
        }
        Ok(())
    }
}

#[test]
fn full_comparison_of_equal_flags_emits_no_flag_action() {
    // Same mails and flags on both sides, but every mail of B went through
    // more flag changes (higher per-mail modseqs).
    let replica = |churn: bool| {
        let mut r = MemoryReplica::new();
        r.create_mailbox("INBOX", g(1), 1000).unwrap();
        for i in 1..=50u32 {
            r.deliver(
                "INBOX",
                &format!("g{i:02}-m"),
                format!("m{i}").as_bytes(),
                0,
            )
            .unwrap();
            if churn {
                r.add_flags("INBOX", i, MailFlags::FLAGGED, &["tmp"]);
                r.remove_flags("INBOX", i, MailFlags::FLAGGED, &["tmp"]);
            }
            if i % 3 == 0 {
                r.add_flags("INBOX", i, MailFlags::SEEN, &["work"]);
            }
        }
        Observed {
            inner: r,
            spy: FlagActions(0),
        }
    };
    let (mut a, mut b) = (replica(false), replica(true));
    for backup in [false, true] {
        let s = SyncSettings {
            backup_send: backup,
            ..full()
        };
        let r = checked(&mut a, &mut b, s, 1_700_000_200);
        assert_eq!(r.exit_code(), 0, "{r:?}");
        assert_eq!((a.spy.0, b.spy.0), (0, 0), "backup {backup}");
    }
    // A real difference is still written, on the side that lacks it.
    a.inner.add_flags("INBOX", 7, MailFlags::ANSWERED, &[]);
    let r = checked(&mut a, &mut b, full(), 1_700_000_300);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!((a.spy.0, b.spy.0), (0, 1));
    assert_eq!(a.inner.view(), b.inner.view());
}

/// Counts the whole-mailbox snapshots and the statuses a replica is asked for.
#[derive(Default)]
struct Queries {
    snapshots: usize,
    statuses: usize,
}

impl Spy for Queries {
    fn query(&mut self, q: &sync_engine::Query) {
        match q {
            sync_engine::Query::Mailbox(_)
            | sync_engine::Query::MailboxUndated(_)
            | sync_engine::Query::MailboxSince { .. } => self.snapshots += 1,
            sync_engine::Query::MailboxStatus(_) => self.statuses += 1,
            sync_engine::Query::Tree
            | sync_engine::Query::LogReach(_)
            | sync_engine::Query::Mails { .. } => {}
        }
    }
}

#[test]
fn stateful_run_reads_only_the_status_of_unchanged_mailboxes() {
    let mut a = MemoryReplica::new();
    a.create_mailbox("INBOX", g(1), 1000).unwrap();
    a.create_mailbox("Work", g(2), 2000).unwrap();
    a.deliver("INBOX", "g01-m1", b"m1", 0).unwrap();
    a.deliver("Work", "g02-m2", b"m2", 0).unwrap();
    let mut b = MemoryReplica::new();
    let r = checked(&mut a, &mut b, full(), 1_700_000_100);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    let state = |states| SyncSettings {
        states,
        sync_type: SyncType::State,
        ..SyncSettings::default()
    };
    // Stateful runs settle the modseqs the copy raised.
    let mut st = r.master.state.clone().expect("state");
    for i in 0..4 {
        let r = checked(&mut a, &mut b, state(st.clone()), 1_700_000_150 + i);
        assert_eq!(r.exit_code(), 0, "{r:?}");
        let next = r.master.state.clone().expect("state");
        if next == st {
            break;
        }
        st = next;
    }
    assert_eq!(st.len(), 2, "{st:?}");
    let mut a = Observed {
        inner: a,
        spy: Queries::default(),
    };
    // Nothing changed: two status reads, no snapshot.
    let r = checked(&mut a, &mut b, state(st.clone()), 1_700_000_200);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!((a.spy.statuses, a.spy.snapshots), (2, 0));
    assert_eq!(r.master.state.as_ref(), Some(&st));
    // One mailbox changed: only that one is read whole, and synced.
    a.inner.deliver("Work", "g03-m3", b"m3", 0).unwrap();
    let r = checked(&mut a, &mut b, state(st), 1_700_000_300);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!((a.spy.statuses, a.spy.snapshots), (4, 1));
    assert_eq!(a.inner.view(), b.view());
}

/// The long lists (`C`, `R`, `M`) are made as they are polled. A side that
/// still has most of its `C` list to send when the peer's whole list has
/// arrived renumbers its conflicting mails meanwhile (the import runs):
/// what it sends must still describe the mailbox as it was exported.
#[test]
fn a_lagging_side_sends_the_lists_it_started_with() {
    for (lag_m, lag_s) in [(usize::MAX, 1), (1, usize::MAX), (2, 1)] {
        let (mut a, mut b) = base();
        // New mails on both sides under the same UIDs (a UID conflict for
        // each), many more on one side: its `C` list is still being sent
        // when the other's has arrived and its conflicting mails move.
        let (few, many) = if lag_s < lag_m {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        for i in 0..40u32 {
            many.deliver(
                "INBOX",
                &format!("gm-{i:03}"),
                format!("m{i}").as_bytes(),
                0,
            )
            .unwrap();
        }
        for i in 0..3u32 {
            few.deliver(
                "INBOX",
                &format!("gf-{i:03}"),
                format!("f{i}").as_bytes(),
                0,
            )
            .unwrap();
        }
        a.add_flags("INBOX", 1, MailFlags::SEEN, &[]);
        let (mut a2, mut b2) = (a.clone(), b.clone());
        let drained = checked(&mut a, &mut b, full(), 1_700_000_200);
        let lagging =
            sync_pair_interleaved(&mut a2, &mut b2, full(), 1_700_000_200, (lag_m, lag_s));
        assert!(lagging.wire_errors.is_empty(), "{:?}", lagging.wire_errors);
        assert_eq!(drained.exit_code(), 0, "{drained:?}");
        assert_eq!(lagging.exit_code(), 0, "{lag_m} {lag_s}: {lagging:?}");
        assert_eq!(a.view(), a2.view(), "{lag_m} {lag_s}");
        assert_eq!(b.view(), b2.view(), "{lag_m} {lag_s}");
        assert_eq!(a2.view(), b2.view());
        assert_eq!(uids(&a2, "INBOX").len(), 45);
    }
}

fn stateful(states: Vec<dsync_protocol::MailboxState>) -> SyncSettings {
    SyncSettings {
        states,
        sync_type: SyncType::State,
        ..SyncSettings::default()
    }
}

fn guids(r: &MemoryReplica, mb: &str) -> Vec<String> {
    let mut v: Vec<String> = uids(r, mb).into_iter().map(|(_, g)| g).collect();
    v.sort();
    v
}

/// A stateful run after a side's transaction log was rotated past the
/// saved state's modseq. That side's log cannot show what changed since,
/// and the peer holds the same state: comparing in full on one side only
/// would take the peer's few changes for its whole mailbox (mails
/// renumbered as conflicts, or taken as expunged).
/// * The master's log: it drops the mailbox from the state it hands over,
///   and both sides compare it in full, in the same run.
/// * The slave's log: the slave answers the mailbox as lost, as Dovecot's
///   does; nothing changes, exit 2 and no state, and a full run converges.
#[test]
fn a_log_rotated_past_the_state_is_compared_in_full_on_both_sides() {
    let (mut a, mut b) = base();
    let r = checked(&mut a, &mut b, stateful(Vec::new()), 1_700_000_200);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    let st = r.master.state.clone().expect("state");
    assert!(st[0].last_common_modseq > 0, "{st:?}");

    a.deliver("INBOX", "g03-m3", b"Subject: m3\n\nbody3\n", 0)
        .unwrap();
    a.add_flags("INBOX", 1, MailFlags::SEEN, &[]);
    b.deliver("INBOX", "g04-m4", b"Subject: m4\n\nbody4\n", 0)
        .unwrap();
    a.rotate_log("INBOX");
    let r = checked(&mut a, &mut b, stateful(st), 1_700_000_300);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert!(
        r.master
            .messages
            .iter()
            .any(|m| m.contains("no longer in transaction log")),
        "{r:?}"
    );
    assert_eq!(a.view(), b.view());
    assert_eq!(guids(&a, "INBOX"), ["g01-m1", "g02-m2", "g03-m3", "g04-m4"]);
    // The mails both had keep their UIDs.
    assert_eq!(
        uids(&a, "INBOX")[..2],
        [(1, "g01-m1".into()), (2, "g02-m2".into())]
    );
    let st = r
        .master
        .state
        .clone()
        .expect("a state after the full comparison");
    // That state's modseq is the lower of the two sides' (as Dovecot's):
    // still below where A's log now starts, so the next run compares in
    // full once more, and records a modseq A's log reaches.
    let r = checked(&mut a, &mut b, stateful(st), 1_700_000_350);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    let st = r.master.state.clone().expect("state");
    let r = checked(&mut a, &mut b, stateful(st), 1_700_000_360);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert!(r.master.messages.is_empty(), "incremental again: {r:?}");
    let st = r.master.state.clone().expect("state");

    let before = (a.view(), b.view());
    b.add_flags("INBOX", 2, MailFlags::FLAGGED, &[]);
    b.rotate_log("INBOX");
    let b_changed = b.view();
    a.deliver("INBOX", "g05-m5", b"Subject: m5\n\nbody5\n", 0)
        .unwrap();
    let a_changed = a.view();
    let r = checked(&mut a, &mut b, stateful(st), 1_700_000_400);
    assert_eq!(r.exit_code(), 2, "{r:?}");
    assert!(
        r.master.state.is_none() || r.master.require_full_resync,
        "{r:?}"
    );
    assert_eq!((a.view(), b.view()), (a_changed, b_changed));
    assert_ne!(before.0, a.view());
    let r = checked(&mut a, &mut b, stateful(Vec::new()), 1_700_000_500);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), b.view());
    assert_eq!(
        guids(&a, "INBOX"),
        ["g01-m1", "g02-m2", "g03-m3", "g04-m4", "g05-m5"]
    );
}

/// A backup removes from the destination what the source expunged, in a
/// full run (the source's logged expunges, trailing ones included) and in
/// a stateful one, as Dovecot's `doveadm backup` does (checked with
/// 2.3.19.1: 10 mails backed up, 7 expunged at the source, `backup -f`
/// leaves 3 on the destination).
#[test]
fn a_backup_expunges_what_the_source_expunged() {
    let mut a = MemoryReplica::new();
    a.create_mailbox("INBOX", g(1), 1000).unwrap();
    for i in 1..=10u32 {
        a.deliver("INBOX", &format!("g{i:02}"), format!("m{i}").as_bytes(), 0)
            .unwrap();
    }
    let mut b = MemoryReplica::new();
    let backup = |sync_type, states| SyncSettings {
        backup_send: true,
        sync_type,
        states,
        ..SyncSettings::default()
    };
    let r = checked(
        &mut a,
        &mut b,
        backup(SyncType::State, Vec::new()),
        1_700_000_100,
    );
    assert_eq!(r.exit_code(), 0, "{r:?}");
    let st = r.master.state.clone().expect("state");

    a.expunge("INBOX", 2);
    let r = checked(&mut a, &mut b, backup(SyncType::State, st), 1_700_000_200);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), b.view());
    assert_eq!(uids(&b, "INBOX").len(), 9);

    for i in 4..=10u32 {
        a.expunge("INBOX", i);
    }
    let r = checked(
        &mut a,
        &mut b,
        backup(SyncType::Full, Vec::new()),
        1_700_000_300,
    );
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(a.view(), b.view());
    assert_eq!(
        uids(&b, "INBOX"),
        [(1, "g01".to_string()), (3, "g03".to_string())]
    );
}

/// What a replica is asked for in a stateful run: the snapshots (whole or
/// partial, with how many mails) and the records asked for by UID.
#[derive(Default)]
struct PartialSpy {
    whole: usize,
    partial_mails: Vec<usize>,
    asked: Vec<Vec<u32>>,
}

impl Spy for PartialSpy {
    fn query(&mut self, q: &sync_engine::Query) {
        match q {
            sync_engine::Query::Mailbox(_) | sync_engine::Query::MailboxUndated(_) => {
                self.whole += 1
            }
            sync_engine::Query::Mails { uids, .. } => self.asked.push(uids.clone()),
            _ => {}
        }
    }
    fn answered(&mut self, a: &sync_engine::Answer) {
        if let sync_engine::Answer::Mailbox(Some(s)) = a {
            if s.partial.is_some() {
                self.partial_mails.push(s.mails.len());
            }
        }
    }
}

/// A stateful run reads only what changed since the state: each side's
/// snapshot holds the mails above the last common UID and those its log
/// changed, and the records of the other mails the peer's changes name are
/// asked for by UID. The result is the same as a whole comparison's: flag
/// changes and expunges on old mails both ways, and a UID conflict where
/// both mails survive.
#[test]
fn a_stateful_run_reads_only_the_mails_that_changed() {
    let mut a = MemoryReplica::new();
    a.create_mailbox("INBOX", g(1), 1000).unwrap();
    for i in 1..=40u32 {
        a.deliver("INBOX", &format!("g{i:02}"), format!("m{i}").as_bytes(), 0)
            .unwrap();
    }
    let mut b = MemoryReplica::new();
    let r = checked(&mut a, &mut b, stateful(Vec::new()), 1_700_000_100);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    // The first state's modseq is the receiver's, below the sender's saves:
    // one more run settles it.
    let st = r.master.state.clone().expect("state");
    let r = checked(&mut a, &mut b, stateful(st), 1_700_000_150);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    let st = r.master.state.clone().expect("state");

    a.add_flags("INBOX", 5, MailFlags::SEEN, &[]);
    a.expunge("INBOX", 7);
    b.add_flags("INBOX", 10, MailFlags::FLAGGED, &[]);
    b.expunge("INBOX", 20);
    a.deliver("INBOX", "only-a", b"a", 0).unwrap();
    b.deliver("INBOX", "only-b", b"b", 0).unwrap();
    let mut oa = Observed {
        inner: a,
        spy: PartialSpy::default(),
    };
    let mut ob = Observed {
        inner: b,
        spy: PartialSpy::default(),
    };
    let r = checked(&mut oa, &mut ob, stateful(st), 1_700_000_200);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    let (a, b) = (oa.inner, ob.inner);
    assert_eq!(a.view(), b.view());
    let got = guids(&a, "INBOX");
    assert_eq!(got.len(), 40 - 2 + 2, "{got:?}");
    assert!(got.contains(&"only-a".to_string()) && got.contains(&"only-b".to_string()));
    // Neither side read its whole mailbox: A's snapshot has its new mail
    // and the mail it flagged (the one it expunged is gone), B's the same.
    assert_eq!((oa.spy.whole, ob.spy.whole), (0, 0));
    assert_eq!(oa.spy.partial_mails, [2]);
    assert_eq!(ob.spy.partial_mails, [2]);
    // Each side asked for the records of the mails the other changed.
    assert_eq!(oa.spy.asked, [vec![10, 20]]);
    assert_eq!(ob.spy.asked, [vec![5, 7]]);
    let flagged = |r: &MemoryReplica, uid: u32| r.view().mailboxes["INBOX"].mails[&uid].1;
    assert_ne!(flagged(&a, 5) & MailFlags::SEEN, 0);
    assert_ne!(flagged(&a, 10) & MailFlags::FLAGGED, 0);
}

/// A saved state whose UIDVALIDITY no longer matches: the partial snapshot
/// read for it is put aside and the mailbox is compared from a whole one.
#[test]
fn a_state_that_no_longer_applies_reads_the_whole_mailbox() {
    let (mut a, mut b) = base();
    let r = checked(&mut a, &mut b, stateful(Vec::new()), 1_700_000_200);
    let mut st = r.master.state.clone().expect("state");
    st[0].last_uidvalidity += 1;
    a.deliver("INBOX", "g03-m3", b"m3", 0).unwrap();
    let mut oa = Observed {
        inner: a,
        spy: PartialSpy::default(),
    };
    let r = checked(&mut oa, &mut b, stateful(st), 1_700_000_300);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(oa.spy.partial_mails.len(), 1);
    assert_eq!(oa.spy.whole, 1);
    assert_eq!(oa.inner.view(), b.view());
    assert_eq!(guids(&b, "INBOX"), ["g01-m1", "g02-m2", "g03-m3"]);
}
