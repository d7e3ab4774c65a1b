#![no_main]
// subscriptions files, and the tab-escaping round trip.
use index_format::subscriptions::{tab_escape, tab_unescape, Subscriptions};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Subscriptions::parse(data) {
        for n in &s.names {
            let _ = n.levels();
            let _ = n.name('/');
        }
    }
    assert_eq!(&*tab_unescape(&tab_escape(data)), data);
});
