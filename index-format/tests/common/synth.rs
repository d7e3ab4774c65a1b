//! Synthetic mailbox indexes for benchmarks and tests: a `dovecot.index`
//! snapshot of `messages` messages and a `dovecot.index.log` tail of
//! transactions on top (flag and keyword updates, appends with cache and
//! vsize records, expunges, tail-offset updates), laid out as Dovecot 2.3
//! writes them. This is test scaffolding, not a product writer.
#![allow(dead_code)]

use std::path::Path;

pub const INDEXID: u32 = 1_700_000_000;
pub const UID_VALIDITY: u32 = 1_700_000_001;
const RECORD_SIZE: usize = 24;
const KW_OFF: usize = 5;
const MODSEQ_OFF: usize = 8;
const CACHE_OFF: usize = 16;
const VSIZE_OFF: usize = 20;
const SEEN: u8 = 0x08;
const FLAGGED: u8 = 0x02;

/// What the generated mailbox must look like after replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub next_uid: u32,
    pub messages_count: u32,
    pub highest_modseq: u64,
    pub log_size: u32,
    pub transactions: u32,
}

/// Small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn align8(v: &mut Vec<u8>) {
    while v.len() % 8 != 0 {
        v.push(0);
    }
}

fn ext_entry(
    out: &mut Vec<u8>,
    name: &str,
    reset_id: u32,
    hdr: &[u8],
    rec_off: u16,
    rec_size: u16,
    align: u16,
) {
    out.extend_from_slice(&(hdr.len() as u32).to_le_bytes());
    out.extend_from_slice(&reset_id.to_le_bytes());
    out.extend_from_slice(&rec_off.to_le_bytes());
    out.extend_from_slice(&rec_size.to_le_bytes());
    out.extend_from_slice(&align.to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    align8(out);
    out.extend_from_slice(hdr);
    align8(out);
}

fn keywords_header() -> Vec<u8> {
    let names = ["$Important", "project-x"];
    let mut h = Vec::new();
    h.extend_from_slice(&(names.len() as u32).to_le_bytes());
    let mut off = 0u32;
    for n in names {
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&off.to_le_bytes());
        off += n.len() as u32 + 1;
    }
    for n in names {
        h.extend_from_slice(n.as_bytes());
        h.push(0);
    }
    while h.len() % 4 != 0 {
        h.push(0);
    }
    h.resize(h.len() + 128, 0);
    h
}

/// Log writer state.
struct Log {
    buf: Vec<u8>,
    modseq: u64,
    txs: u32,
}

impl Log {
    fn record(&mut self, ty: u32, payload: &[u8]) {
        let size = 8 + payload.len();
        assert_eq!(size % 4, 0);
        self.buf
            .extend_from_slice(&index_format::pack_offset(size as u32));
        self.buf.extend_from_slice(&ty.to_le_bytes());
        self.buf.extend_from_slice(payload);
    }
    /// Writes records as one transaction (a boundary first when more than one).
    fn tx(&mut self, recs: &[(u32, Vec<u8>)]) {
        if recs.len() > 1 {
            let total: usize = 12 + recs.iter().map(|r| 8 + r.1.len()).sum::<usize>();
            self.record(0x1008_0000, &(total as u32).to_le_bytes());
        }
        for (t, p) in recs {
            self.record(*t, p);
        }
        self.txs += 1;
    }
}

fn intro_by_id(ext_id: u32, reset_id: u32, hdr_size: u32, rec_size: u16, align: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&ext_id.to_le_bytes());
    p.extend_from_slice(&reset_id.to_le_bytes());
    p.extend_from_slice(&hdr_size.to_le_bytes());
    p.extend_from_slice(&rec_size.to_le_bytes());
    p.extend_from_slice(&align.to_le_bytes());
    p.extend_from_slice(&1u16.to_le_bytes()); // NO_SHRINK
    p.extend_from_slice(&0u16.to_le_bytes());
    p
}

/// Writes `dovecot.index` and `dovecot.index.log` into `dir`.
pub fn write_mailbox(dir: &Path, messages: u32, tail_transactions: u32, seed: u64) -> Expected {
    let mut rng = Rng(seed | 1);
    let n = messages as usize;
    let initial_modseq = u64::from(messages) + 10;
    // Extension area: cache, keywords, modseq, hdr-vsize, vsize (map ids 0..4).
    let mut exts = Vec::new();
    ext_entry(&mut exts, "cache", INDEXID, &[], CACHE_OFF as u16, 4, 4);
    ext_entry(
        &mut exts,
        "keywords",
        0,
        &keywords_header(),
        KW_OFF as u16,
        2,
        1,
    );
    let mut mh = Vec::new();
    mh.extend_from_slice(&initial_modseq.to_le_bytes());
    mh.extend_from_slice(&3u32.to_le_bytes());
    mh.extend_from_slice(&40u32.to_le_bytes());
    ext_entry(&mut exts, "modseq", 0, &mh, MODSEQ_OFF as u16, 8, 8);
    ext_entry(&mut exts, "hdr-vsize", 0, &[0u8; 16], 0, 0, 8);
    ext_entry(&mut exts, "vsize", 0, &[], VSIZE_OFF as u16, 4, 4);
    let header_size = 120 + exts.len();

    let mut recs = vec![0u8; n * RECORD_SIZE];
    let mut seen = 0u32;
    let mut first_unseen = messages + 1;
    for (i, r) in recs.chunks_exact_mut(RECORD_SIZE).enumerate() {
        let uid = i as u32 + 1;
        put32(r, 0, uid);
        let x = rng.below(100);
        let mut f = 0u8;
        if x < 90 {
            f |= SEEN;
            seen += 1;
        } else if uid < first_unseen {
            first_unseen = uid;
        }
        if x % 20 == 0 {
            f |= FLAGGED;
        }
        r[4] = f;
        r[KW_OFF] = (rng.below(4)) as u8;
        r[MODSEQ_OFF..MODSEQ_OFF + 8].copy_from_slice(&u64::from(uid).to_le_bytes());
        put32(r, VSIZE_OFF, 1000 + (uid % 5000) + 1);
    }
    let mut base = [0u8; 120];
    base[0] = 7;
    base[1] = 3;
    base[2..4].copy_from_slice(&120u16.to_le_bytes());
    put32(&mut base, 4, header_size as u32);
    put32(&mut base, 8, RECORD_SIZE as u32);
    base[12] = 1;
    put32(&mut base, 16, INDEXID);
    put32(&mut base, 24, UID_VALIDITY);
    put32(&mut base, 28, messages + 1);
    put32(&mut base, 32, messages);
    put32(&mut base, 40, seen);
    put32(&mut base, 48, messages + 1);
    put32(&mut base, 52, first_unseen);
    put32(&mut base, 56, messages + 1);
    put32(&mut base, 60, 3);
    put32(&mut base, 64, 40);
    put32(&mut base, 68, 40);
    put32(&mut base, 76, 0xffff_ffff);
    let mut index = Vec::with_capacity(header_size + recs.len());
    index.extend_from_slice(&base);
    index.extend_from_slice(&exts);
    index.extend_from_slice(&recs);
    std::fs::write(dir.join("dovecot.index"), &index).unwrap();

    // The log: seq 3, continuing a rotated seq 2.
    let mut log = Log {
        buf: Vec::new(),
        modseq: initial_modseq,
        txs: 0,
    };
    let mut h = [0u8; 40];
    h[0] = 1;
    h[1] = 3;
    h[2..4].copy_from_slice(&40u16.to_le_bytes());
    put32(&mut h, 4, INDEXID);
    put32(&mut h, 8, 3);
    put32(&mut h, 12, 2);
    put32(&mut h, 16, 100_000);
    put32(&mut h, 20, INDEXID + 100);
    h[24..32].copy_from_slice(&initial_modseq.to_le_bytes());
    h[32] = 1;
    log.buf.extend_from_slice(&h);

    let mut next_uid = messages + 1;
    let mut dead = vec![false; n + 1];
    let mut alive = messages;
    for _ in 0..tail_transactions {
        let kind = rng.below(100);
        if kind < 45 {
            // STORE: one flag update over a small uid range (a request, not external).
            let uid1 = 1 + rng.below(u64::from(next_uid - 1)) as u32;
            let uid2 = (uid1 + rng.below(8) as u32).min(next_uid - 1);
            let (add, rm) = if rng.below(2) == 0 {
                (SEEN, 0)
            } else {
                (FLAGGED, SEEN)
            };
            let mut p = Vec::new();
            p.extend_from_slice(&uid1.to_le_bytes());
            p.extend_from_slice(&uid2.to_le_bytes());
            p.extend_from_slice(&[add, rm, 0, 0]);
            log.tx(&[(0x4, p)]);
            log.modseq += 1;
        } else if kind < 60 {
            let uid1 = 1 + rng.below(u64::from(next_uid - 1)) as u32;
            let name = if rng.below(2) == 0 {
                "$Important"
            } else {
                "project-x"
            };
            let mut p = vec![rng.below(2) as u8, 0];
            p.extend_from_slice(&(name.len() as u16).to_le_bytes());
            p.extend_from_slice(name.as_bytes());
            while p.len() % 4 != 0 {
                p.push(0);
            }
            p.extend_from_slice(&uid1.to_le_bytes());
            p.extend_from_slice(&uid1.to_le_bytes());
            log.tx(&[(0x400, p)]);
            log.modseq += 1;
        } else if kind < 80 {
            // Delivery: appends with cache offsets and vsizes.
            let k = 1 + rng.below(4) as u32;
            let mut app = Vec::new();
            let mut cache = Vec::new();
            let mut vs = Vec::new();
            for j in 0..k {
                let uid = next_uid + j;
                app.extend_from_slice(&uid.to_le_bytes());
                app.extend_from_slice(&[0, 0, 0, 0]);
                cache.extend_from_slice(&uid.to_le_bytes());
                cache.extend_from_slice(&(1024 + 256 * uid).to_le_bytes());
                vs.extend_from_slice(&uid.to_le_bytes());
                vs.extend_from_slice(&(2000 + uid % 100).to_le_bytes());
            }
            log.tx(&[
                (0x1000_0002, app),
                (0x1000_0040, intro_by_id(0, INDEXID, 0, 4, 4)),
                (0x1000_0200, cache),
                (0x1000_0040, intro_by_id(4, 0, 0, 4, 4)),
                (0x1000_0200, vs),
            ]);
            next_uid += k;
            alive += k;
            dead.resize(next_uid as usize + 1, false);
            log.modseq += 1;
        } else if kind < 92 {
            // Expunge by the backend sync: external expunge-guid records.
            let mut p = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let uid = 1 + rng.below(u64::from(next_uid - 1)) as u32;
                if dead[uid as usize] {
                    continue;
                }
                dead[uid as usize] = true;
                alive -= 1;
                p.extend_from_slice(&uid.to_le_bytes());
                p.extend_from_slice(&[0u8; 16]);
            }
            if p.is_empty() {
                continue;
            }
            log.tx(&[(0x1000_0000 | 0x2000 | 0xcd90, p)]);
            log.modseq += 1;
        } else {
            // End of a sync: the tail offset moves to the end of this record.
            let end = log.buf.len() as u32 + 16;
            let mut p = Vec::new();
            p.extend_from_slice(&64u16.to_le_bytes());
            p.extend_from_slice(&4u16.to_le_bytes());
            p.extend_from_slice(&end.to_le_bytes());
            log.record(0x1000_0020, &p);
            log.txs += 1;
        }
    }
    std::fs::write(dir.join("dovecot.index.log"), &log.buf).unwrap();
    Expected {
        next_uid,
        messages_count: alive,
        highest_modseq: log.modseq,
        log_size: log.buf.len() as u32,
        transactions: log.txs,
    }
}
