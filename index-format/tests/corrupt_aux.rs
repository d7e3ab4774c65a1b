//! Damaged copies of every cache, Maildir, dbox, subscriptions, mailbox log
//! and attribute fixture: truncated at many offsets and with bytes flipped
//! at many offsets. Each reader must answer Ok or Err — never panic — and
//! the whole run must stay within a time bound.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use index_format::cache::{self, Cache};
use index_format::dbox::{self, DboxFile};
use index_format::mailbox_log::MailboxLog;
use index_format::maildir::{self, Keywords, Uidlist};
use index_format::subscriptions::Subscriptions;
use index_format::{attributes, dump};

#[derive(Clone, Copy, Debug)]
enum Reader {
    Cache,
    Dbox,
    MailboxLog,
    Uidlist,
    Keywords,
    Uidvalidity,
    Subscriptions,
    Attributes,
    Filename,
}

/// Runs the reader over `data` the way `dump` and the lookups use it.
fn exercise(reader: Reader, data: &[u8]) {
    match reader {
        Reader::Cache => {
            if let Ok(c) = Cache::parse(data) {
                let v = cache::to_json(&c);
                for head in v["chain_heads"].as_array().into_iter().flatten() {
                    let head = head.as_u64().unwrap_or(0) as u32;
                    let _ = c.records_in_chain(head).count();
                    let _ = c.standard_fields(head);
                    let _ = c.header_field(head, "Subject");
                    for f in c.fields() {
                        let _ = c.lookup(head, f.name);
                    }
                }
            }
        }
        Reader::Dbox => {
            if let Ok(f) = DboxFile::parse(data) {
                let _ = dbox::to_json(&f);
                for m in f.messages().flatten() {
                    let _ = m.body(&f);
                }
            }
        }
        Reader::MailboxLog => {
            let _ = MailboxLog::new(data).records().count();
        }
        Reader::Uidlist => {
            if let Ok(u) = Uidlist::parse(data) {
                let _ = maildir::uidlist_json(&u);
                for r in &u.records {
                    let _ = (r.physical_size(), r.virtual_size(), r.guid());
                }
            }
            streamed_uidlist_agrees(data);
        }
        Reader::Keywords => {
            let _ = Keywords::parse(data);
        }
        Reader::Uidvalidity => {
            let _ = maildir::parse_uidvalidity(data);
        }
        Reader::Subscriptions => {
            if let Ok(s) = Subscriptions::parse(data) {
                for n in &s.names {
                    let _ = n.name('/');
                }
            }
        }
        Reader::Attributes => {
            let a = attributes::Attributes::parse(data);
            for e in &a.entries {
                let _ = attributes::parse_key(&String::from_utf8_lossy(&e.key));
            }
        }
        Reader::Filename => {
            if let Ok(name) = std::str::from_utf8(data) {
                if let Ok(f) = maildir::parse_filename(name) {
                    let _ = maildir::filename_json(&f);
                    if let Some(fl) = &f.flags {
                        let _ = f.with_flags(fl);
                    }
                }
            }
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Every fixture of the kinds covered here, with the reader for it.
fn inputs() -> Vec<(String, Reader, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/index");
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut out = Vec::new();
    for p in files {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".txt") {
            continue;
        }
        let Some(kind) = dump::detect(&p) else {
            continue;
        };
        use index_format::FileKind as K;
        let reader = match kind {
            K::Cache => Reader::Cache,
            K::DboxMail => Reader::Dbox,
            K::MailboxLog => Reader::MailboxLog,
            K::Uidlist => Reader::Uidlist,
            K::Keywords => Reader::Keywords,
            K::Uidvalidity => Reader::Uidvalidity,
            K::Subscriptions => Reader::Subscriptions,
            K::Attributes => Reader::Attributes,
            K::MaildirFilename => {
                out.push((p.display().to_string(), Reader::Filename, name.into_bytes()));
                continue;
            }
            K::Index | K::Log => continue,
        };
        out.push((p.display().to_string(), reader, fs::read(&p).unwrap()));
    }
    out
}

fn offsets(len: usize) -> impl Iterator<Item = usize> {
    // Every offset of small files; a dense stride over larger ones.
    let step = (len / 800).max(1);
    (0..len).step_by(step).chain(len.saturating_sub(64)..len)
}

fn check(what: &str, reader: Reader, data: &[u8]) {
    let r = catch_unwind(AssertUnwindSafe(|| exercise(reader, data)));
    assert!(r.is_ok(), "{what}: reader panicked");
}

#[test]
fn truncated_and_flipped_fixtures_never_panic() {
    let inputs = inputs();
    let kinds: std::collections::BTreeSet<String> =
        inputs.iter().map(|(_, r, _)| format!("{r:?}")).collect();
    assert_eq!(kinds.len(), 9, "every reader has a fixture: {kinds:?}");
    let start = Instant::now();
    let mut runs = 0u64;
    for (path, reader, data) in &inputs {
        // The intact file parses.
        check(path, *reader, data);
        for cut in offsets(data.len()) {
            check(&format!("{path} truncated at {cut}"), *reader, &data[..cut]);
            runs += 1;
        }
        let mut buf = data.clone();
        for at in offsets(data.len()) {
            for x in [0x01u8, 0x80, 0xff] {
                buf[at] ^= x;
                check(&format!("{path} byte {at} ^ {x:#x}"), *reader, &buf);
                buf[at] ^= x;
                runs += 1;
            }
            // Offsets and sizes are u32s: make one very large.
            if at + 4 <= buf.len() {
                let saved: [u8; 4] = buf[at..at + 4].try_into().unwrap();
                buf[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
                check(&format!("{path} u32 at {at} = MAX"), *reader, &buf);
                buf[at..at + 4].copy_from_slice(&saved);
                runs += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    assert!(runs > 10_000, "{runs} damaged inputs");
    assert!(
        elapsed < Duration::from_secs(900),
        "{runs} runs took {elapsed:?}"
    );
}

/// Hands out at most `n` bytes per read: a streamed reader sees lines and
/// characters cut anywhere.
struct Pieces<'a> {
    data: &'a [u8],
    n: usize,
}

impl std::io::Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.n.min(buf.len()).min(self.data.len());
        buf[..k].copy_from_slice(&self.data[..k]);
        self.data = &self.data[k..];
        Ok(k)
    }
}

/// `Uidlist::read_visit`, fed in pieces of 1, 7 and 4096 bytes, answers as
/// `Uidlist::parse` on the whole bytes: the same records, header values and
/// last UID, or the same error.
fn streamed_uidlist_agrees(data: &[u8]) {
    let whole = Uidlist::parse(data);
    for n in [1, 7, 4096] {
        let mut seen = Vec::new();
        let streamed = Uidlist::read_visit(Pieces { data, n }, |r| {
            seen.push((r.uid, r.filename.to_string(), r.extensions().count()))
        });
        match (&whole, streamed) {
            (Ok(u), Ok((head, last))) => {
                let want: Vec<_> = u
                    .records
                    .iter()
                    .map(|r| (r.uid, r.filename.to_string(), r.extensions().count()))
                    .collect();
                assert_eq!(seen, want, "pieces of {n}");
                assert_eq!(last, u.records.last().map_or(0, |r| r.uid), "pieces of {n}");
                assert_eq!(
                    (
                        head.version,
                        head.uid_validity,
                        head.header_next_uid,
                        head.mailbox_guid,
                        head.partial_tail
                    ),
                    (
                        u.version,
                        u.uid_validity,
                        u.header_next_uid,
                        u.mailbox_guid,
                        u.partial_tail
                    ),
                    "pieces of {n}"
                );
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "pieces of {n}"),
            (a, b) => panic!("pieces of {n}: whole {a:?}, streamed {b:?}"),
        }
    }
}
