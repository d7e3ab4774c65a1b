#![no_main]
// The cache reader on arbitrary bytes: header, field registry, the linear
// record scan and JSON rendering used by `dump`, and chain lookups from
// offsets taken from the input (as the index would supply them).
use index_format::cache::{self, Cache};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(c) = Cache::parse(data) else { return };
    let _ = cache::to_json(&c);
    let names: Vec<String> = c.fields().iter().map(|f| f.name.to_string()).collect();
    // A few offsets from the input's tail, and every record the scan found.
    let mut offsets: Vec<u32> = data
        .rchunks_exact(4)
        .take(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    offsets.extend(c.scan().take(64).map(|r| r.offset));
    for off in offsets {
        for fd in c.record_chain(off).take(10_000) {
            let Ok(fd) = fd else { break };
            if let Some(f) = c.field(fd.field_index) {
                let _ = cache::decode_value(f, fd.data);
                let _ = cache::decode_mime_parts(fd.data);
            }
        }
        for n in &names {
            let _ = c.lookup(off, n);
            let _ = c.header_field(off, n);
        }
        let _ = c.standard_fields(off);
    }
});
