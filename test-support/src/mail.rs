//! Deterministic test mail and fast bulk population of an instance.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use crate::{DovecotInstance, HarnessError};

/// One message to put into a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMail {
    /// Mailbox name with `/` as hierarchy separator (`INBOX`, `Lists/rust`).
    pub mailbox: String,
    /// System flags, e.g. `\Seen`, `\Answered`, `\Flagged`, `\Draft`, `\Deleted`.
    pub flags: Vec<String>,
    /// Keywords, e.g. `$Forwarded`, `work` (at most 26 distinct per mailbox).
    pub keywords: Vec<String>,
    /// Received date (seconds since the epoch).
    pub received: u64,
    /// The full message (headers and body).
    pub body: Vec<u8>,
}

/// A small message whose Subject is `id`, Message-ID `<id@test>` and body
/// `body of id`: distinct for each `id`, easy to recognise in a fetch.
pub fn small_message(id: &str) -> Vec<u8> {
    format!("From: a@example.org\nSubject: {id}\nMessage-ID: <{id}@test>\n\nbody of {id}\n")
        .into_bytes()
}

/// Mail files (in `cur/` and `new/`) of each mailbox directory of the
/// Maildir++ root `root` (`INBOX` for the root itself, `.Name` for the
/// others), sorted by name: a quick comparison of a replica with its source.
pub fn maildir_file_counts(root: &Path) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut dirs = vec![(String::from("INBOX"), root.to_path_buf())];
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && e.path().is_dir() {
            dirs.push((name, e.path()));
        }
    }
    for (name, dir) in dirs {
        let n: usize = ["cur", "new"]
            .iter()
            .map(|s| fs::read_dir(dir.join(s)).map(|r| r.count()).unwrap_or(0))
            .sum();
        out.push((name, n));
    }
    out.sort();
    out
}

/// splitmix64: small, fast and good enough to vary test mail deterministically.
struct Rng(u64);

impl Rng {
    fn new(parts: &[&[u8]]) -> Rng {
        // FNV-1a over the seed material, so each message has its own stream.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for p in parts {
            for b in p.iter().chain(b"/") {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x100_0000_01b3);
            }
        }
        Rng(h)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// True with probability `pct` percent.
    fn chance(&mut self, pct: u64) -> bool {
        self.below(1000) < pct * 10
    }
}

const WORDS: &[&str] = &[
    "mail",
    "replica",
    "pigeon",
    "index",
    "folder",
    "message",
    "sync",
    "state",
    "home",
    "carry",
    "flag",
    "seen",
    "answer",
    "draft",
    "report",
    "meeting",
    "project",
    "rust",
    "dovecot",
    "server",
    "client",
    "transaction",
    "log",
    "cache",
    "guid",
    "uid",
    "modseq",
    "keyword",
    "list",
    "tree",
];
const KEYWORDS: &[&str] = &[
    "$Forwarded",
    "$Junk",
    "$NotJunk",
    "work",
    "personal",
    "todo",
];
/// 2020-01-01T00:00:00Z
const BASE_TIME: u64 = 1_577_836_800;

/// `count` deterministic messages for `user`, spread over `mailboxes` (the first
/// gets double weight). Message `i` depends only on `(seed, user, i)`: sizes of
/// about 300 bytes to 12 KB, \Seen on 70 %, other flags and keywords on a few,
/// received dates ten minutes apart from 2020-01-01.
pub fn generate_mails(seed: u64, user: &str, count: usize, mailboxes: &[&str]) -> Vec<NewMail> {
    let boxes: Vec<&str> = if mailboxes.is_empty() {
        vec!["INBOX"]
    } else {
        mailboxes.to_vec()
    };
    (0..count)
        .map(|i| {
            let mut r = Rng::new(&[
                &seed.to_le_bytes(),
                user.as_bytes(),
                &(i as u64).to_le_bytes(),
            ]);
            let slot = r.below(boxes.len() as u64 + 1) as usize;
            let mailbox = boxes[slot.saturating_sub(1)].to_string();
            let received = BASE_TIME + i as u64 * 600 + r.below(600);
            let mut flags = Vec::new();
            for (flag, pct) in [
                ("\\Answered", 10),
                ("\\Deleted", 1),
                ("\\Draft", 1),
                ("\\Flagged", 5),
                ("\\Seen", 70),
            ] {
                if r.chance(pct) {
                    flags.push(flag.to_string());
                }
            }
            let keywords = KEYWORDS
                .iter()
                .filter(|_| r.chance(4))
                .map(|k| k.to_string())
                .collect();
            let mut body = String::new();
            let _ = write!(
                body,
                "Return-Path: <sender{n}@example.org>\n\
                 Message-ID: <{seed}.{i}.{user}@homing.test>\n\
                 Date: {date}\n\
                 From: Sender {n} <sender{n}@example.org>\n\
                 To: {user} <{user}@homing.test>\n\
                 Subject: {subj} {i}\n\
                 MIME-Version: 1.0\n\
                 Content-Type: text/plain; charset=utf-8\n\n",
                n = r.below(50),
                date = rfc2822_date(received.saturating_sub(r.below(300))),
                subj = WORDS[r.below(WORDS.len() as u64) as usize],
            );
            let target = 300 + r.below(12_000) as usize;
            let mut line = 0;
            while body.len() < target {
                let w = WORDS[r.below(WORDS.len() as u64) as usize];
                body.push_str(w);
                line += w.len() + 1;
                if line > 70 {
                    body.push('\n');
                    line = 0;
                } else {
                    body.push(' ');
                }
            }
            body.push('\n');
            NewMail {
                mailbox,
                flags,
                keywords,
                received,
                body: body.into_bytes(),
            }
        })
        .collect()
}

/// RFC 2822 date in UTC for a unix time (civil-from-days; no time crate needed).
pub fn rfc2822_date(t: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn maildir_flag_letter(flag: &str) -> Option<char> {
    match flag {
        "\\Draft" => Some('D'),
        "\\Flagged" => Some('F'),
        "\\Answered" => Some('R'),
        "\\Seen" => Some('S'),
        "\\Deleted" => Some('T'),
        _ => None,
    }
}

static BATCH: AtomicU64 = AtomicU64::new(0);

impl DovecotInstance {
    /// Adds `mails` to `user` with one `doveadm import` (works for every mail
    /// format): the messages are written as a throw-away Maildir (flags and
    /// keywords in the file names, received date as mtime) and copied in through
    /// Dovecot's storage API, so flags, keywords, received dates and GUIDs survive.
    /// Mailboxes are created as needed. Returns the number of messages imported.
    pub fn populate(&self, user: &str, mails: &[NewMail]) -> Result<usize, HarnessError> {
        self.check_user(user)?;
        if mails.is_empty() {
            return Ok(0);
        }
        let mut names: Vec<&str> = mails.iter().map(|m| m.mailbox.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        self.create_mailboxes(user, &names)?;
        // Make sure INBOX exists before importing into it.
        self.doveadm(["mailbox", "status", "-u", user, "messages", "INBOX"])?
            .ok()?;

        let n = BATCH.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root().join(format!("populate-{n}"));
        let result = self.write_import_maildir(&tmp, mails).and_then(|()| {
            let location = format!("maildir:{}/Maildir:INDEX=MEMORY", tmp.display());
            self.doveadm(["import", "-u", user, &location, "", "all"])?
                .ok()
                .map(|_| mails.len())
        });
        let _ = fs::remove_dir_all(&tmp);
        result
    }

    fn write_import_maildir(&self, tmp: &Path, mails: &[NewMail]) -> Result<(), HarnessError> {
        let (uid, gid) = self.vmail_ids();
        let own = |p: &Path| {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| HarnessError::file(p, e))
        };
        fs::create_dir_all(tmp).map_err(|e| HarnessError::file(tmp, e))?;
        own(tmp)?;
        let root = tmp.join("Maildir");
        // Per mailbox: its directory and keyword -> letter map.
        let mut boxes: BTreeMap<&str, (std::path::PathBuf, Vec<&str>)> = BTreeMap::new();
        for m in mails {
            let entry = boxes.entry(m.mailbox.as_str()).or_insert_with(|| {
                let dir = if m.mailbox == "INBOX" {
                    root.clone()
                } else {
                    // Maildir++ layout: hierarchy separator '.' on disk.
                    root.join(format!(".{}", m.mailbox.replace('/', ".")))
                };
                (dir, Vec::new())
            });
            for k in &m.keywords {
                if !entry.1.contains(&k.as_str()) {
                    entry.1.push(k);
                }
            }
        }
        for (name, (dir, kws)) in &boxes {
            if kws.len() > 26 {
                return Err(HarnessError::BadOutput {
                    command: "populate".into(),
                    reason: format!("mailbox {name} has more than 26 keywords"),
                });
            }
            for sub in ["cur", "new", "tmp"] {
                let d = dir.join(sub);
                fs::create_dir_all(&d).map_err(|e| HarnessError::file(&d, e))?;
            }
            let mut kwfile = String::new();
            for (i, k) in kws.iter().enumerate() {
                let _ = writeln!(kwfile, "{i} {k}");
            }
            let p = dir.join("dovecot-keywords");
            fs::write(&p, kwfile).map_err(|e| HarnessError::file(&p, e))?;
            if *name != "INBOX" {
                let p = dir.join("maildirfolder");
                fs::write(&p, b"").map_err(|e| HarnessError::file(&p, e))?;
            }
        }
        for (i, m) in mails.iter().enumerate() {
            let (dir, kws) = &boxes[m.mailbox.as_str()];
            let mut letters: Vec<char> = m
                .flags
                .iter()
                .filter_map(|f| maildir_flag_letter(f))
                .collect();
            letters.extend(m.keywords.iter().filter_map(|k| {
                kws.iter()
                    .position(|x| x == k)
                    .and_then(|p| char::from_u32('a' as u32 + p as u32))
            }));
            letters.sort_unstable();
            letters.dedup();
            let vsize = m.body.len() + m.body.iter().filter(|b| **b == b'\n').count();
            let name = format!(
                "{}.M{i}P{}Q{i}.homing,S={},W={vsize}:2,{}",
                m.received,
                std::process::id(),
                m.body.len(),
                letters.iter().collect::<String>(),
            );
            let p = dir.join("cur").join(name);
            fs::write(&p, &m.body).map_err(|e| HarnessError::file(&p, e))?;
            let f = fs::File::options()
                .write(true)
                .open(&p)
                .map_err(|e| HarnessError::file(&p, e))?;
            f.set_modified(UNIX_EPOCH + Duration::from_secs(m.received))
                .map_err(|e| HarnessError::file(&p, e))?;
        }
        // Everything below tmp must belong to the mail user who runs the import.
        chown_tree(tmp, uid, gid)
    }
}

fn chown_tree(p: &Path, uid: u32, gid: u32) -> Result<(), HarnessError> {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| HarnessError::file(p, e))?;
    if p.is_dir() {
        for e in fs::read_dir(p).map_err(|e| HarnessError::file(p, e))? {
            let e = e.map_err(|e| HarnessError::file(p, e))?;
            chown_tree(&e.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_varied() {
        let a = generate_mails(7, "bob", 50, &["INBOX", "Archive"]);
        let b = generate_mails(7, "bob", 50, &["INBOX", "Archive"]);
        assert_eq!(a, b);
        let c = generate_mails(8, "bob", 50, &["INBOX", "Archive"]);
        assert_ne!(a, c);
        assert!(a.iter().any(|m| m.mailbox == "Archive"));
        assert!(a.iter().any(|m| m.mailbox == "INBOX"));
        assert!(a.iter().any(|m| m.flags.iter().any(|f| f == "\\Seen")));
        assert!(a.iter().all(|m| m.body.len() >= 300));
        assert!(a.windows(2).all(|w| w[0].received < w[1].received));
    }

    #[test]
    fn dates() {
        assert_eq!(rfc2822_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc2822_date(1_577_836_800),
            "Wed, 1 Jan 2020 00:00:00 +0000"
        );
        assert_eq!(
            rfc2822_date(951_782_400 + 3661),
            "Tue, 29 Feb 2000 01:01:01 +0000"
        );
    }
}
