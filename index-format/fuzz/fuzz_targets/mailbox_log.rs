#![no_main]
// dovecot.mailbox.log on arbitrary bytes.
use index_format::mailbox_log::MailboxLog;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let log = MailboxLog::new(data);
    let mut n = 0;
    for r in log.records() {
        let Ok(r) = r else { break };
        assert_eq!(r.offset as usize, n * 24);
        n += 1;
    }
    assert!(log.partial_tail() < 24);
});
