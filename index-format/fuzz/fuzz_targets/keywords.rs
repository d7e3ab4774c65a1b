#![no_main]
// dovecot-keywords (and the dovecot-uidvalidity content) on arbitrary bytes.
use index_format::maildir::{self, Keywords};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(k) = Keywords::parse(data) {
        for (i, n) in &k.entries {
            assert!((*i as usize) < maildir::MAX_KEYWORDS);
            assert!(k.index_of(n).is_some());
        }
    }
    let _ = maildir::parse_uidvalidity(data);
});
