//! Maildir storage, side by side with real doveadm on the same data:
//!
//! * `read_full_state`: every message's uid, flags, keywords, GUID, modseq of
//!   a generated Maildir with a Dovecot-built index (homing: open the store
//!   and iterate; doveadm: `fetch 'uid flags guid' mailbox INBOX all`).
//! * `write_new_mails`: 10k new mails in one commit into a fresh mailbox
//!   (homing: one transaction; doveadm: `import` of a Maildir with those mails).
//!
//! Sizes: `HOMING_BENCH_READ_N` (default 100000), `HOMING_BENCH_WRITE_N`
//! (default 10000). Needs root and Dovecot (as the storage tests do).
//! `scripts/bench-storage` runs this and prints the ratios.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use homing::storage::maildir::{MaildirOptions, MaildirStore};
use homing::storage::{flags, MailStore, NewMessage};
use test_support::{dovecot_unavailable_reason, DovecotInstance, InstanceOptions};

const USER: &str = "alice";

fn env_n(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mail(n: usize) -> Vec<u8> {
    format!(
        "From: sender{}@example.org\nTo: alice@example.org\nSubject: bench message {n}\nMessage-ID: <b{n}@example.org>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\n{}\n",
        n % 97,
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n".repeat(1 + n % 20)
    )
    .into_bytes()
}

/// Saves `n` mails into `mailbox` with homing, in commits of 5000.
fn fill(store: &MaildirStore, mailbox: &str, n: usize) {
    let mut done = 0;
    while done < n {
        let mut tx = store.begin(mailbox).expect("begin");
        for i in done..(done + 5000).min(n) {
            let msg = NewMessage {
                flags: if i % 3 == 0 { flags::SEEN } else { 0 },
                keywords: if i % 10 == 0 {
                    vec!["$Label1".into()]
                } else {
                    Vec::new()
                },
                ..Default::default()
            };
            tx.save(msg, &mut &mail(i)[..]).expect("save");
        }
        tx.commit().expect("commit");
        done = (done + 5000).min(n);
    }
}

fn doveadm_ok(inst: &DovecotInstance, args: &[&str]) {
    let out = inst.doveadm(args).expect("run doveadm");
    assert!(
        out.success(),
        "doveadm {args:?} failed: {}",
        out.stderr_str()
    );
}

fn bench(c: &mut Criterion) {
    if let Some(why) = dovecot_unavailable_reason() {
        eprintln!("maildir bench skipped: {why}");
        return;
    }
    let read_n = env_n("HOMING_BENCH_READ_N", 100_000);
    let write_n = env_n("HOMING_BENCH_WRITE_N", 10_000);
    let inst = DovecotInstance::start(InstanceOptions::new()).expect("start dovecot");
    let root = inst.mail_dir(USER);
    // Dovecot creates the user's Maildir and INBOX index.
    doveadm_ok(&inst, &["mailbox", "create", "-u", USER, "Setup"]);
    doveadm_ok(
        &inst,
        &["mailbox", "status", "-u", USER, "messages", "INBOX"],
    );
    let fast = MaildirOptions {
        fsync: false,
        ..Default::default()
    };
    let gen_store = MaildirStore::open(&root, fast.clone()).expect("open");
    let t = Instant::now();
    fill(&gen_store, "INBOX", read_n);
    // Dovecot builds its index and cache for all of them.
    doveadm_ok(
        &inst,
        &[
            "fetch",
            "-u",
            USER,
            "uid flags guid",
            "mailbox",
            "INBOX",
            "all",
        ],
    );
    eprintln!(
        "generated {read_n} mails and Dovecot's index in {:?}",
        t.elapsed()
    );

    let store = MaildirStore::open(&root, MaildirOptions::default()).expect("open");
    let mut g = c.benchmark_group("read_full_state");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("homing", |b| {
        b.iter(|| {
            let mb = store.open_mailbox("INBOX").expect("open mailbox");
            let mut n = 0usize;
            let mut seen = 0usize;
            for m in mb.messages() {
                let m = m.expect("message");
                n += 1;
                seen +=
                    usize::from(m.flags & flags::SEEN != 0) + m.guid.len() % 2 + m.keywords.len();
                std::hint::black_box(m.modseq);
            }
            assert_eq!(n, read_n);
            seen
        })
    });
    g.bench_function("doveadm_fetch", |b| {
        b.iter(|| {
            doveadm_ok(
                &inst,
                &[
                    "fetch",
                    "-u",
                    USER,
                    "uid flags guid",
                    "mailbox",
                    "INBOX",
                    "all",
                ],
            )
        })
    });
    g.finish();

    // A source Maildir for doveadm import, written once.
    let src = tempfile::tempdir().expect("tempdir");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir(src.path().join(d)).expect("mkdir");
    }
    let src_store = MaildirStore::open(src.path(), fast).expect("open src");
    fill(&src_store, "INBOX", write_n);
    let (vuid, vgid) = inst.vmail_ids();
    let mut stack = vec![src.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        std::os::unix::fs::chown(&d, Some(vuid), Some(vgid)).expect("chown");
        for e in std::fs::read_dir(&d).expect("readdir").flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(e.path());
            } else {
                std::os::unix::fs::chown(e.path(), Some(vuid), Some(vgid)).expect("chown");
            }
        }
    }
    let bodies: Vec<Vec<u8>> = (0..write_n).map(mail).collect();

    let mut g = c.benchmark_group("write_new_mails");
    g.sample_size(10).measurement_time(Duration::from_secs(30));
    let mut k = 0u32;
    g.bench_function("homing", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                k += 1;
                let name = format!("W{k}");
                let t = Instant::now();
                store.create_mailbox(&name, None, None).expect("create");
                let mut tx = store.begin(&name).expect("begin");
                for (i, body) in bodies.iter().enumerate() {
                    let msg = NewMessage {
                        flags: if i % 3 == 0 { flags::SEEN } else { 0 },
                        ..Default::default()
                    };
                    tx.save(msg, &mut &body[..]).expect("save");
                }
                tx.commit().expect("commit");
                total += t.elapsed();
                std::fs::remove_dir_all(store.mailbox_dir(&name).expect("dir")).expect("cleanup");
            }
            total
        })
    });
    let src_loc = format!("maildir:{}", src.path().display());
    g.bench_function("doveadm_import", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                k += 1;
                let parent = format!("I{k}");
                let t = Instant::now();
                doveadm_ok(&inst, &["import", "-u", USER, &src_loc, &parent, "all"]);
                total += t.elapsed();
                // The import lands in `<parent>/INBOX`; the parent is only a name level.
                let imported = format!("{parent}/INBOX");
                doveadm_ok(&inst, &["mailbox", "delete", "-u", USER, &imported]);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
