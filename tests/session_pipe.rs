//! The session driver over in-process duplex pipes, two MemoryReplicas,
//! every byte through the real codec.

use dsync_protocol::{Guid128, MailFlags, SyncType};
use homing::session::{run_local_pair, run_session, SessionOptions};
use sync_engine::memory::MemoryReplica;
use sync_engine::{Brain, SyncSettings};

fn g(n: u8) -> Guid128 {
    let mut b = [0u8; 16];
    b[15] = n;
    Guid128(b)
}

fn big(n: usize) -> Vec<u8> {
    let mut v = b"Subject: big\r\n\r\n".to_vec();
    while v.len() < n {
        // Lines starting with '.' exercise dot-stuffing across chunk ends.
        v.extend_from_slice(b".dotted line of a large body\r\n");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_way_sync_with_spooled_bodies_and_conflicts() {
    let mut a = MemoryReplica::new();
    a.now = 1_700_000_000;
    a.create_mailbox("INBOX", g(1), 1000).unwrap();
    a.create_mailbox("Work", g(2), 1001).unwrap();
    a.deliver("INBOX", "m1", &big(300_000), 0).unwrap();
    a.deliver("INBOX", "m2", b"Subject: m2\r\n\r\nsmall\r\n", 0)
        .unwrap();
    a.deliver("Work", "m3", &big(70_000), 0).unwrap();
    let b = MemoryReplica::new();
    // A tiny spool threshold and chunk size: every body goes to a file and
    // is sent in many pieces.
    let opts = SessionOptions {
        spool_threshold: 1024,
        chunk_size: 4096,
        ..SessionOptions::default()
    };
    let (ra, rb) = run_local_pair(a, b, "h", SyncSettings::default(), &opts).await;
    assert_eq!(ra.exit_code(), 0, "{:?} {:?}", ra.outcome, ra.error);
    assert_eq!(rb.exit_code(), 0, "{:?} {:?}", rb.outcome, rb.error);
    assert_eq!(rb.stats.bodies_received, 3);
    assert_eq!(
        rb.stats.bodies_spooled, 2,
        "the two large bodies are spooled"
    );
    assert_eq!(ra.stats.bodies_sent, 3);
    let (mut a, mut b) = (ra.store, rb.store);
    assert_eq!(a.view(), b.view());
    assert_eq!(b.mailbox("INBOX").unwrap().mails[&1].body, big(300_000));

    // Changes on both sides: a UID conflict and a flag merge.
    a.now += 50;
    b.now += 50;
    a.deliver("INBOX", "a-new", b"Subject: a\r\n\r\na\r\n", 0)
        .unwrap();
    b.deliver("INBOX", "b-new", &big(5000), 0).unwrap();
    a.add_flags("INBOX", 2, MailFlags::SEEN, &[]);
    b.add_flags("INBOX", 2, MailFlags::ANSWERED, &["kw"]);
    let full = SyncSettings {
        sync_type: SyncType::Full,
        ..SyncSettings::default()
    };
    let (ra, rb) = run_local_pair(a, b, "h", full, &opts).await;
    assert_eq!(ra.exit_code(), 0, "{:?}", ra.outcome);
    assert_eq!(rb.exit_code(), 0, "{:?}", rb.outcome);
    let (a, b) = (ra.store, rb.store);
    assert_eq!(a.view(), b.view());
    let inbox = &a.view().mailboxes["INBOX"];
    let guids: Vec<&str> = inbox.mails.values().map(|m| m.0.as_str()).collect();
    assert_eq!(guids, ["m1", "m2", "a-new", "b-new"]);
    assert_eq!(*inbox.mails.keys().last().unwrap(), 5);
    let m2 = &inbox.mails[&2];
    assert_eq!(
        m2.1 & (MailFlags::SEEN | MailFlags::ANSWERED),
        MailFlags::SEEN | MailFlags::ANSWERED
    );
    assert_eq!(m2.2, vec!["kw".to_string()]);
}

#[tokio::test]
async fn garbage_from_the_peer_ends_the_session_with_tempfail() {
    let (ours, theirs) = tokio::io::duplex(4096);
    let (r, w) = tokio::io::split(ours);
    let peer = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut pr, mut pw) = tokio::io::split(theirs);
        pw.write_all(b"NOT A DSYNC STREAM\n\n\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = pr.read_to_end(&mut sink).await;
        sink
    });
    let brain = Brain::master(b"h", SyncSettings::default(), 1_700_000_000);
    let res = run_session(
        brain,
        MemoryReplica::new(),
        r,
        w,
        "test peer",
        &SessionOptions::default(),
    )
    .await;
    assert_eq!(res.exit_code(), 75);
    assert!(res.error.is_some());
    let sent = peer.await.unwrap();
    assert!(
        sent.starts_with(b"VERSION\tdsync\t3\t5\n"),
        "we spoke first"
    );
}

#[tokio::test]
async fn peer_closing_early_is_a_failure_not_a_hang() {
    let (ours, theirs) = tokio::io::duplex(4096);
    drop(theirs);
    let (r, w) = tokio::io::split(ours);
    let brain = Brain::slave(b"h", 1_700_000_000);
    let res = run_session(
        brain,
        MemoryReplica::new(),
        r,
        w,
        "gone",
        &SessionOptions::default(),
    )
    .await;
    assert_ne!(res.exit_code(), 0);
}
