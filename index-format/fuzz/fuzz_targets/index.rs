#![no_main]
//! `dovecot.index` bytes: parse, walk the records, and replay an (empty) log view.
use index_format::index::IndexFile;
use index_format::view::MailboxView;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(f) = IndexFile::parse(data) {
        let _ = f.keywords();
        for r in f.records() {
            let _ = (r.uid(), r.flags());
        }
        for e in f.extensions() {
            let _ = index_format::ext::header_json(e.name, e.header);
        }
        let _ = f.lookup_uid(3);
    }
    if let Ok(v) = MailboxView::from_bytes(Some(data), &[]) {
        // JSON rendering is slow (hex of declared headers up to 16 MiB):
        // sample it on small inputs only.
        if data.len() < 4096 && v.header_size() < (1 << 20) {
            let _ = v.to_json();
        }
    }
});
