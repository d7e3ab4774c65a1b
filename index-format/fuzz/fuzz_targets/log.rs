#![no_main]
// Placeholder until the reader exists.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = data;
});
