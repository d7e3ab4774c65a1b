//! Writes N deterministic, realistically sized mails straight into a Maildir's
//! `cur/` (names, flags and the `dovecot-keywords` letters as Dovecot reads
//! them), for benchmarks: Dovecot then indexes them with one `force-resync`,
//! which is far faster than importing mail one by one.
//!
//! Sizes are lognormal (median 8 KB, sigma 1.0, clamped to 2 KB..200 KB);
//! 70% text/plain, 15% multipart/alternative, 15% with a base64 attachment.
//! Flags: \Seen 70%, \Answered 10%, \Flagged 5%, \Draft 1%, \Deleted 0.2%;
//! eight keywords on 1-5% each. Mail `i` depends only on (seed, i).
//!
//!   gen_maildir MAILDIR COUNT [SEED] [START]
//!
//! Run it as the mail user so the files get the right owner.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use test_support::rfc2822_date;

const KEYWORDS: [(&str, u64); 8] = [
    ("$Forwarded", 50),
    ("$MDNSent", 10),
    ("$Junk", 20),
    ("$NotJunk", 30),
    ("work", 40),
    ("personal", 30),
    ("todo", 20),
    ("$label1", 10),
];
const WORDS: [&str; 24] = [
    "mail",
    "server",
    "replica",
    "index",
    "the",
    "of",
    "and",
    "sync",
    "message",
    "folder",
    "modseq",
    "uid",
    "quarterly",
    "report",
    "meeting",
    "tomorrow",
    "attached",
    "please",
    "review",
    "thanks",
    "cache",
    "storage",
    "network",
    "deploy",
];

/// splitmix64 keyed by (seed, i).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// True with probability `permille` / 1000.
    fn permille(&mut self, permille: u64) -> bool {
        self.next() % 1000 < permille
    }
    fn word(&mut self) -> &'static str {
        WORDS[(self.next() % WORDS.len() as u64) as usize]
    }
}

fn lognormal_size(r: &mut Rng) -> usize {
    // Box-Muller; median 8192, sigma 1.0.
    let u1 = r.unit().max(1e-12);
    let u2 = r.unit();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (8192.0 * z.exp()).clamp(2048.0, 204_800.0) as usize
}

fn text_lines(r: &mut Rng, out: &mut String, bytes: usize) {
    let start = out.len();
    let mut line = 0;
    while out.len() - start < bytes {
        let w = r.word();
        out.push_str(w);
        line += w.len() + 1;
        if line > 70 {
            out.push('\n');
            line = 0;
        } else {
            out.push(' ');
        }
    }
    out.push('\n');
}

fn base64_lines(r: &mut Rng, out: &mut String, bytes: usize) {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut n = 0;
    while n < bytes {
        for _ in 0..76 {
            out.push(A[(r.next() & 63) as usize] as char);
        }
        out.push('\n');
        n += 77;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: gen_maildir MAILDIR COUNT [SEED] [START]");
        std::process::exit(64);
    }
    let dir = Path::new(&args[1]);
    let parse = |i: usize, default: u64| -> u64 {
        args.get(i).map_or(default, |s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("gen_maildir: not a number: {s}");
                std::process::exit(64)
            })
        })
    };
    let count = parse(2, 0);
    let seed = parse(3, 1);
    let start = parse(4, 0);
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(dir.join(sub)).expect("create maildir");
    }
    // Keyword letters a.. in this order; Dovecot reads the mapping from dovecot-keywords.
    let mut kw = String::new();
    for (i, (name, _)) in KEYWORDS.iter().enumerate() {
        let _ = writeln!(kw, "{i} {name}");
    }
    fs::write(dir.join("dovecot-keywords"), kw).expect("write dovecot-keywords");

    let base = 1_577_836_800u64; // 2020-01-01
    let mut total = 0u64;
    for i in start..start + count {
        let mut r = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ i.wrapping_mul(0x9e37_79b9));
        r.next();
        let received = base + i * 600 + r.next() % 600;
        let size = lognormal_size(&mut r);
        let kind = r.next() % 100;
        let mut m = String::with_capacity(size + 1024);
        let _ = write!(
            m,
            "Return-Path: <sender{a}@example.org>\nDelivered-To: bob@example.com\n\
             Received: from mx.example.org by mail.example.com with LMTP id {i}; {date}\n\
             Message-ID: <{seed}.{i}@bench.example.org>\nDate: {date}\n\
             From: Sender {a} <sender{a}@example.org>\nTo: bob@example.com\n\
             Subject: {re}{w1} {w2} {i}\nMIME-Version: 1.0\n",
            a = r.next() % 500,
            date = rfc2822_date(received),
            re = if r.permille(250) { "Re: " } else { "" },
            w1 = r.word(),
            w2 = r.word(),
        );
        let body = size.saturating_sub(m.len() + 200);
        if kind < 70 {
            m.push_str("Content-Type: text/plain; charset=utf-8\n\n");
            text_lines(&mut r, &mut m, body);
        } else if kind < 85 {
            let _ = write!(m, "Content-Type: multipart/alternative; boundary=\"b{i}\"\n\n--b{i}\nContent-Type: text/plain; charset=utf-8\n\n");
            text_lines(&mut r, &mut m, body / 2);
            let _ = write!(
                m,
                "--b{i}\nContent-Type: text/html; charset=utf-8\n\n<html><body><p>\n"
            );
            text_lines(&mut r, &mut m, body / 2);
            let _ = write!(m, "</p></body></html>\n--b{i}--\n");
        } else {
            let _ = write!(m, "Content-Type: multipart/mixed; boundary=\"b{i}\"\n\n--b{i}\nContent-Type: text/plain; charset=utf-8\n\n");
            text_lines(&mut r, &mut m, body / 5);
            let _ = write!(m, "--b{i}\nContent-Type: application/octet-stream; name=\"f{i}.bin\"\nContent-Transfer-Encoding: base64\n\n");
            base64_lines(&mut r, &mut m, body * 4 / 5);
            let _ = writeln!(m, "--b{i}--");
        }
        let mut flags = String::new();
        // Maildir info letters must be in ASCII order: D F R S T, then keywords a..
        if r.permille(10) {
            flags.push('D');
        }
        if r.permille(50) {
            flags.push('F');
        }
        if r.permille(100) {
            flags.push('R');
        }
        if r.permille(700) {
            flags.push('S');
        }
        if r.permille(2) {
            flags.push('T');
        }
        for (k, (_, permille)) in KEYWORDS.iter().enumerate() {
            if r.permille(*permille) {
                flags.push((b'a' + k as u8) as char);
            }
        }
        let name = format!("{received}.M{i}P{seed}Q0.bench,S={}:2,{flags}", m.len());
        let path = dir.join("cur").join(name);
        let mut f = fs::File::create(&path).expect("create mail file");
        f.write_all(m.as_bytes()).expect("write mail");
        f.set_modified(UNIX_EPOCH + Duration::from_secs(received))
            .expect("set mtime");
        total += m.len() as u64;
    }
    println!("{{\"messages\": {count}, \"bytes\": {total}}}");
}
