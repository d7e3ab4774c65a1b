#![no_main]
// The dovecot-uidlist reader on arbitrary bytes, plus the per-record
// accessors (extensions, sizes, GUIDs) the Maildir backend uses.
use index_format::maildir::{self, Uidlist};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(u) = Uidlist::parse(data) else { return };
    let next = u.next_uid();
    for r in &u.records {
        assert!(r.uid < next || next == u32::MAX);
        let _ = r.extensions().count();
        let _ = (r.physical_size(), r.virtual_size());
        let _ = maildir::guid_128_from_string(r.guid());
        assert_eq!(u.by_uid(r.uid).map(|x| x.uid), Some(r.uid));
    }
    let _ = maildir::uidlist_json(&u);
});
