#![no_main]
// Maildir file names: parse, rebuild with the same flags, parse again.
use index_format::maildir;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(f) = maildir::parse_filename(name) else {
        return;
    };
    let _ = f.guid_128();
    let _ = maildir::filename_json(&f);
    if let Some(flags) = &f.flags {
        let renamed = f.with_flags(flags);
        let again = maildir::parse_filename(&renamed).expect("a rebuilt name parses");
        assert_eq!(again.uidlist_name, f.uidlist_name);
        assert_eq!(
            again.flags.as_ref().map(|x| x.letters()),
            Some(flags.letters())
        );
        let built = maildir::build_filename(f.base, f.physical_size, f.virtual_size, flags);
        let b = maildir::parse_filename(&built).expect("a built name parses");
        assert_eq!(b.physical_size, f.physical_size);
        assert_eq!(b.virtual_size, f.virtual_size);
    }
    let _ = maildir::parse_uidvalidity_marker(name);
});
