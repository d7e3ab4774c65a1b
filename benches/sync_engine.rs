//! The sync engine alone: two in-memory replicas synced through
//! `sync_engine::local::sync_pair` (both brains, the wire codec's encode and
//! order check, no files, no sockets). 10k mails by default
//! (`HOMING_BENCH_ENGINE_N`): first sync into an empty replica, a stateful
//! sync without changes, and a stateful sync after 1% flag changes, 100 new
//! and 100 expunged mails.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dsync_protocol::{Guid128, SyncType};
use sync_engine::local::sync_pair;
use sync_engine::memory::MemoryReplica;
use sync_engine::SyncSettings;

const SEEN: u8 = 0x08;
const FLAGGED: u8 = 0x02;
const ANSWERED: u8 = 0x01;
const NOW: i64 = 1_700_000_000;

fn count() -> u32 {
    std::env::var("HOMING_BENCH_ENGINE_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

fn body(i: u32) -> Vec<u8> {
    // A few KB, varying, so the copy cost is realistic per mail.
    let len = 2048 + (i.wrapping_mul(2_654_435_761) % 6144) as usize;
    let mut b = format!("Message-ID: <{i}@bench>\nSubject: mail {i}\n\n").into_bytes();
    b.resize(len, b'x');
    b
}

fn source(n: u32) -> MemoryReplica {
    let mut a = MemoryReplica::new();
    a.create_mailbox("INBOX", Guid128([7; 16]), 1000)
        .expect("create INBOX");
    for i in 0..n {
        let uid = a
            .deliver(
                "INBOX",
                &format!("bench-{i:08}"),
                &body(i),
                1_577_836_800 + i64::from(i) * 600,
            )
            .expect("deliver");
        let mut flags = 0;
        if i % 10 < 7 {
            flags |= SEEN;
        }
        if i % 10 == 7 {
            flags |= ANSWERED;
        }
        if i % 20 == 3 {
            flags |= FLAGGED;
        }
        let kw: &[&str] = match i % 25 {
            0 => &["$Forwarded"],
            1 => &["work", "todo"],
            2 => &["$Junk"],
            _ => &[],
        };
        if flags != 0 || !kw.is_empty() {
            a.add_flags("INBOX", uid, flags, kw);
        }
    }
    a
}

fn state_settings(states: Vec<dsync_protocol::MailboxState>) -> SyncSettings {
    SyncSettings {
        sync_type: SyncType::State,
        states,
        ..SyncSettings::default()
    }
}

/// A synced pair and the master's state after it.
fn synced(
    n: u32,
) -> (
    MemoryReplica,
    MemoryReplica,
    Vec<dsync_protocol::MailboxState>,
) {
    let mut a = source(n);
    let mut b = MemoryReplica::new();
    let r = sync_pair(&mut a, &mut b, state_settings(Vec::new()), NOW);
    assert_eq!(r.exit_code(), 0, "first sync: {:?}", r.master.messages);
    let state = r.master.state.expect("a state after a stateful sync");
    assert_eq!(a.view(), b.view());
    (a, b, state)
}

fn change(a: &mut MemoryReplica, n: u32) {
    // 1% flag changes, 100 expunged, 100 new: the same shape as scripts/bench-sync.
    for uid in (1..=n).step_by(100) {
        a.add_flags("INBOX", uid, FLAGGED, &["$label1"]);
        a.remove_flags("INBOX", uid, SEEN, &[]);
    }
    for uid in (51..=n).step_by((n / 100).max(1) as usize).take(100) {
        a.expunge("INBOX", uid);
    }
    for i in 0..100 {
        a.deliver("INBOX", &format!("new-{i:08}"), &body(n + i), NOW)
            .expect("deliver");
    }
}

fn bench(c: &mut Criterion) {
    let n = count();
    let mut g = c.benchmark_group("sync_engine");
    g.sample_size(10);

    let src = source(n);
    g.bench_function(format!("first_sync_{n}"), |bch| {
        bch.iter_batched(
            || (src.clone(), MemoryReplica::new()),
            |(mut a, mut b)| {
                let r = sync_pair(&mut a, &mut b, state_settings(Vec::new()), NOW);
                assert_eq!(r.exit_code(), 0);
                (a, b)
            },
            BatchSize::LargeInput,
        )
    });

    let (a0, b0, st0) = synced(n);
    g.bench_function(format!("no_change_{n}"), |bch| {
        bch.iter_batched(
            || (a0.clone(), b0.clone(), st0.clone()),
            |(mut a, mut b, st)| {
                let r = sync_pair(&mut a, &mut b, state_settings(st), NOW + 60);
                assert_eq!(r.exit_code(), 0);
                (a, b)
            },
            BatchSize::LargeInput,
        )
    });

    let mut a1 = a0.clone();
    change(&mut a1, n);
    {
        // The benchmarked sync must produce equal replicas.
        let (mut a, mut b) = (a1.clone(), b0.clone());
        let r = sync_pair(&mut a, &mut b, state_settings(st0.clone()), NOW + 60);
        assert_eq!(r.exit_code(), 0, "{:?}", r.master.messages);
        assert_eq!(a.view(), b.view(), "incremental sync converges");
    }
    g.bench_function(format!("incremental_1pct_{n}"), |bch| {
        bch.iter_batched(
            || (a1.clone(), b0.clone(), st0.clone()),
            |(mut a, mut b, st)| {
                let r = sync_pair(&mut a, &mut b, state_settings(st), NOW + 60);
                assert_eq!(r.exit_code(), 0);
                (a, b)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
