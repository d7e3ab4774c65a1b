//! Damaged index and log files: every parse and replay must answer Ok or Err,
//! never panic, and finish quickly. Each fixture mailbox is replayed with one of
//! its files truncated at many offsets or with bytes flipped at many offsets.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::fixtures;
use index_format::index::IndexFile;
use index_format::log::LogFile;
use index_format::view::MailboxView;

/// A mailbox's index files: (index bytes, log files in order).
struct Set {
    name: String,
    index: Option<Vec<u8>>,
    logs: Vec<Vec<u8>>,
}

fn sets() -> Vec<Set> {
    let mut out = Vec::new();
    let mut stack = vec![fixtures()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut bases: Vec<PathBuf> = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            if let Some(b) = n.strip_suffix(".log") {
                bases.push(d.join(b));
            }
        }
        for b in bases {
            let read = |suffix: &str| {
                let mut s = b.as_os_str().to_os_string();
                s.push(suffix);
                std::fs::read(PathBuf::from(s)).ok()
            };
            let logs: Vec<Vec<u8>> = [".log.2", ".log"].iter().filter_map(|s| read(s)).collect();
            out.push(Set {
                name: b.display().to_string(),
                index: read(""),
                logs,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Runs every reader on the given bytes; the results do not matter, only that they return.
/// The JSON renderings are slow in debug builds; `with_json` runs them on a sample.
fn exercise(index: Option<&[u8]>, logs: &[&[u8]], with_json: bool) {
    if let Some(i) = index {
        if let Ok(f) = IndexFile::parse(i) {
            let _ = f.keywords();
            for r in f.records() {
                let _ = (r.uid(), r.flags());
            }
        }
    }
    for l in logs.iter().take(1) {
        if let Ok(lf) = LogFile::parse(l) {
            for r in lf.records().flatten() {
                let _ = r.body();
            }
            let _ = lf.transactions().count();
        }
        if with_json {
            let _ = index_format::log::dump_bytes(l);
        }
    }
    if let Ok(v) = MailboxView::from_bytes(index, logs) {
        if with_json {
            let _ = v.to_json();
        }
        if let Ok(c) = v.changes_since(0) {
            let _ = c.count();
        }
    }
}

/// Offsets to damage: every byte of the headers, then a stride through the rest.
fn offsets(len: usize) -> Vec<usize> {
    // Large fixtures replay slowly in debug builds: damage them at fewer places.
    let (head, points) = if len > 32 * 1024 {
        (48, 30)
    } else {
        (160, 120)
    };
    let head = len.min(head);
    let mut o: Vec<usize> = (0..head).collect();
    let stride = (len / points).max(1);
    o.extend((head..len).step_by(stride));
    o
}

fn mutate_all(set: &Set, which: usize, deadline: Instant) -> usize {
    let files: Vec<&[u8]> = set
        .index
        .iter()
        .map(|v| v.as_slice())
        .chain(set.logs.iter().map(|v| v.as_slice()))
        .collect();
    let target = files[which];
    let mut n = 0;
    let mut run = |mutated: &[u8]| {
        let mut all: Vec<&[u8]> = files.clone();
        all[which] = mutated;
        let with_json = n % 10 == 0;
        if set.index.is_some() {
            exercise(Some(all[0]), &all[1..], with_json);
        } else {
            exercise(None, &all, with_json);
        }
        n += 1;
    };
    for cut in offsets(target.len()) {
        run(&target[..cut]);
    }
    let mut buf = target.to_vec();
    for o in offsets(target.len()) {
        for x in [0x01u8, 0xff] {
            buf[o] ^= x;
            run(&buf);
            buf[o] ^= x;
        }
        assert!(Instant::now() < deadline, "{}: too slow", set.name);
    }
    n
}

#[test]
fn truncated_and_flipped_files_never_panic() {
    let start = Instant::now();
    // A hang guard, not a speed goal: generous enough for a loaded 2-core machine.
    let deadline = start + Duration::from_secs(900);
    let sets = sets();
    assert!(sets.len() >= 12, "found only {} index/log sets", sets.len());
    let mut runs = 0;
    for set in &sets {
        let nfiles = usize::from(set.index.is_some()) + set.logs.len();
        for which in 0..nfiles {
            runs += mutate_all(set, which, deadline);
        }
    }
    eprintln!("{runs} damaged variants in {:?}", start.elapsed());
}

#[test]
fn damaged_file_on_disk_gives_an_error_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("dovecot.index");
    let src = fixtures().join("index/maildir/Maildir/dovecot.index");
    let mut b = std::fs::read(src).unwrap();
    b.truncate(200);
    std::fs::write(&p, &b).unwrap();
    let err = index_format::index::MappedIndex::open(&p)
        .unwrap()
        .parse()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&p.display().to_string()), "{msg}");
    assert!(msg.contains("header_size"), "{msg}");
    let _ = Path::new(&p);
}

/// Found by fuzzing: a log whose initial modseq is the largest u64 and that
/// appends a message must not overflow the modseq counter.
#[test]
fn modseq_counter_saturates() {
    let mut log =
        std::fs::read(fixtures().join("index/maildir/Maildir/dovecot.index.log.2")).unwrap();
    log[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let lf = LogFile::parse(&log).unwrap();
    assert_eq!(lf.highest_modseq(), u64::MAX);
    let v = MailboxView::from_bytes(None, &[&log]).unwrap();
    assert_eq!(v.messages_count(), 4);
}
