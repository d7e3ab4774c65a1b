//! Parsing a 100k-line `dovecot-uidlist` and looking up 100k messages in a
//! generated `dovecot.index.cache`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use index_format::cache::{Cache, CacheValue};
use index_format::maildir::Uidlist;

#[path = "../tests/common/gen.rs"]
mod gen;

const N: u32 = 100_000;

fn uidlist(c: &mut Criterion) {
    let text = gen::uidlist_v3(N);
    let mut g = c.benchmark_group("uidlist");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("parse_100k_lines", |b| {
        b.iter(|| {
            let u = Uidlist::parse(black_box(text.as_bytes())).unwrap();
            assert_eq!(u.records.len(), N as usize);
            u.next_uid()
        })
    });
    let u = Uidlist::parse(text.as_bytes()).unwrap();
    g.bench_function("by_uid_100k", |b| {
        b.iter(|| {
            (1..=N)
                .filter(|&uid| u.by_uid(black_box(uid)).is_some())
                .count()
        })
    });
    g.finish();
}

fn cache(c: &mut Criterion) {
    let (data, heads) = gen::cache_file(N);
    let mut g = c.benchmark_group("cache");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("parse_header_and_fields", |b| {
        b.iter(|| Cache::parse(black_box(&data)).unwrap().fields().len())
    });
    let cache = Cache::parse(&data).unwrap();
    g.bench_function("lookup_date_received_100k", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &h in &heads {
                if let Some(CacheValue::U32(v)) =
                    cache.lookup(black_box(h), "date.received").unwrap()
                {
                    sum += v as u64;
                }
            }
            sum
        })
    });
    let received = cache.field_index("date.received").unwrap();
    g.bench_function("lookup_field_date_received_100k", |b| {
        b.iter(|| {
            heads
                .iter()
                .filter(|&&h| {
                    cache
                        .lookup_field(black_box(h), received)
                        .unwrap()
                        .is_some()
                })
                .count()
        })
    });
    g.bench_function("lookup_flags_bitmask_100k", |b| {
        b.iter(|| {
            heads
                .iter()
                .filter(|&&h| cache.lookup(black_box(h), "flags").unwrap().is_some())
                .count()
        })
    });
    g.bench_function("record_chain_all_fields_100k", |b| {
        b.iter(|| {
            heads
                .iter()
                .map(|&h| {
                    cache
                        .record_chain(black_box(h))
                        .filter(|f| f.is_ok())
                        .count()
                })
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, uidlist, cache);
criterion_main!(benches);
