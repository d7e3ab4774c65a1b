#![no_main]
// File-dict attribute files on arbitrary bytes.
use index_format::attributes::{parse_key, Attributes};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let a = Attributes::parse(data);
    for e in &a.entries {
        if let Ok(k) = std::str::from_utf8(&e.key) {
            let _ = parse_key(k);
        }
        assert!(a.get(&e.key).is_some());
    }
});
