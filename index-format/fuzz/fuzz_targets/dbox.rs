#![no_main]
// dbox mail files: file header, every message, and messages at offsets
// taken from the input (as an mdbox map record would give them).
use index_format::dbox::{self, DboxFile};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(f) = DboxFile::parse(data) else { return };
    let _ = dbox::to_json(&f);
    for m in f.messages().take(10_000) {
        let Ok(m) = m else { break };
        assert_eq!(m.body(&f).map(|b| b.len() as u64), Some(m.body_size));
        assert!(m.end_offset <= data.len() as u64);
    }
    for b in data.rchunks_exact(8).take(4) {
        let off = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let _ = f.message_at(off);
        let _ = f.message_at(off % (data.len() as u64 + 1));
    }
});
