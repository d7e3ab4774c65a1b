//! The exporter's indexed answer to a list of mail requests gives exactly
//! what answering each request on its own gives (by GUID, by UID, missing,
//! duplicated GUIDs answered by their first mail).

use dsync_protocol::{Guid128, MailRequest};
use sync_engine::mailbox::{answer_request, answer_requests};
use sync_engine::{MailRecord, MailboxSnapshot, MailboxStatus};

fn snapshot() -> MailboxSnapshot {
    let mut mails: Vec<MailRecord> = (1..=40u32)
        .map(|uid| MailRecord {
            uid,
            guid: format!("guid-{}", uid % 30).into_bytes(),
            received_date: 1_700_000_000 + i64::from(uid),
            saved_date: 1_700_000_100 + i64::from(uid),
            ..MailRecord::default()
        })
        .collect();
    // Out of UID order: the UID lookup must still find it.
    mails.swap(3, 30);
    MailboxSnapshot {
        status: MailboxStatus {
            guid: Guid128(*b"answer-requests!"),
            uid_next: 41,
            ..MailboxStatus::default()
        },
        mails,
        log: Vec::new(),
        log_first_modseq: 0,
        attributes: Vec::new(),
        partial: None,
    }
}

#[test]
fn indexed_answers_equal_one_by_one_answers() {
    let snap = snapshot();
    let mut reqs: Vec<MailRequest> = Vec::new();
    for i in 0..35u32 {
        reqs.push(MailRequest {
            guid: Some(format!("guid-{i}").into_bytes()),
            uid: 0,
        });
    }
    for uid in [1, 4, 31, 40, 41, 999] {
        reqs.push(MailRequest { guid: None, uid });
        reqs.push(MailRequest {
            guid: Some(Vec::new()),
            uid,
        });
    }
    let one_by_one: Vec<_> = reqs.iter().map(|r| answer_request(&snap, r)).collect();
    let indexed = answer_requests(&snap, &reqs);
    assert_eq!(indexed, one_by_one);
    // Duplicated GUIDs: the first mail in snapshot order answers.
    let dup = MailRequest {
        guid: Some(b"guid-1".to_vec()),
        uid: 0,
    };
    let dups: Vec<MailRequest> = std::iter::repeat_n(dup, 9).collect();
    let (_, body) = &answer_requests(&snap, &dups)[0];
    assert_eq!(body.as_ref().map(|b| b.uid), Some(1));
}

/// The receiving side keeps one `PendingMail` per mail it still waits for:
/// a full sync into an empty replica holds one for every mail at once, so
/// its size is part of the per-mail memory (ARCHITECTURE.md invariant 6).
#[test]
fn a_pending_mail_is_an_index_not_a_copy() {
    assert!(std::mem::size_of::<sync_engine::mailbox::PendingMail>() <= 32);
}
