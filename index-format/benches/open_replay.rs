//! Open + replay of a 1,000,000-message mailbox index with a realistic log
//! tail (flag and keyword updates, deliveries, expunges, tail updates).
//! Goal: under 100 ms.

use criterion::{criterion_group, criterion_main, Criterion};
use index_format::view::MailboxView;

#[path = "../tests/common/synth.rs"]
mod synth;

fn open_replay(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    // About 4,000 transactions ≈ 200 KiB of log: the size past which Dovecot
    // would rewrite dovecot.index anyway.
    let want = synth::write_mailbox(tmp.path(), 1_000_000, 4_000, 0x5eed);
    let v = MailboxView::open(tmp.path()).expect("open");
    assert!(v.problems().is_empty());
    assert_eq!(v.messages_count(), want.messages_count);
    assert_eq!(v.highest_modseq(), want.highest_modseq);
    eprintln!(
        "1M messages, log tail {} bytes in {} transactions",
        want.log_size, want.transactions
    );
    drop(v);
    let mut g = c.benchmark_group("open_replay");
    g.sample_size(20);
    g.bench_function("1M messages + log tail", |b| {
        b.iter(|| {
            let v = MailboxView::open(tmp.path()).expect("open");
            std::hint::black_box(v.messages_count())
        })
    });
    g.finish();
}

criterion_group!(benches, open_replay);
criterion_main!(benches);
