#![no_main]
//! Transaction log bytes: parse, decode every record, group transactions, and
//! replay the log alone and on top of an index taken from the same input.
use index_format::log::LogFile;
use index_format::view::MailboxView;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(lf) = LogFile::parse(data) {
        for r in lf.records().flatten() {
            let _ = r.body();
        }
        let _ = lf.transactions().count();
    }
    if data.len() < 4096 {
        let _ = index_format::log::dump_bytes(data);
    }
    if let Ok(v) = MailboxView::from_bytes(None, &[data]) {
        // JSON rendering is slow (hex of declared headers up to 16 MiB):
        // sample it on small inputs only.
        if data.len() < 4096 && v.header_size() < (1 << 20) {
            let _ = v.to_json();
        }
        if let Ok(c) = v.changes_since(1) {
            let _ = c.count();
        }
    }
    // First two bytes: length of an index prefix; the rest is its log.
    if data.len() > 2 {
        let split = (usize::from(u16::from_le_bytes([data[0], data[1]])) % (data.len() - 1))
            .min(data.len() - 2);
        let (index, log) = data[2..].split_at(split);
        if let Ok(v) = MailboxView::from_bytes(Some(index), &[log]) {
            // JSON rendering is slow (hex of declared headers up to 16 MiB):
            // sample it on small inputs only.
            if data.len() < 4096 && v.header_size() < (1 << 20) {
                let _ = v.to_json();
            }
        }
    }
});
