#![no_main]
// The dovecot-uidlist reader on arbitrary bytes, plus the per-record
// accessors (extensions, sizes, GUIDs) the Maildir backend uses.
use index_format::maildir::{self, Uidlist};

/// At most 7 bytes per read: the streamed reader sees lines cut anywhere.
struct Pieces<'a>(&'a [u8]);

impl std::io::Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = 7.min(buf.len()).min(self.0.len());
        buf[..k].copy_from_slice(&self.0[..k]);
        self.0 = &self.0[k..];
        Ok(k)
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Streamed, the same answer as parsed whole.
    let mut seen = Vec::new();
    let streamed =
        Uidlist::read_visit(Pieces(data), |r| seen.push((r.uid, r.filename.to_string())));
    let whole = Uidlist::parse(data);
    assert_eq!(streamed.is_ok(), whole.is_ok());
    let Ok(u) = whole else { return };
    let want: Vec<_> = u
        .records
        .iter()
        .map(|r| (r.uid, r.filename.to_string()))
        .collect();
    assert_eq!(seen, want);
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
