//! Reads the full state of every mailbox of a Maildir the way a sync does
//! (`Query::Tree`, then `Query::Mailbox` per mailbox) and the storage way
//! (open + iterate messages), printing the time of each. For profiling:
//!
//!     cargo run --release --example read_state -- /path/to/Maildir [ROUNDS]

use std::time::Instant;

use homing::session::maildir_store::MaildirReplica;
use homing::session::SessionStore;
use homing::storage::MailStore;
use sync_engine::{Answer, Query};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: read_state MAILDIR [ROUNDS]");
        std::process::exit(64);
    };
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(1);
    let mut r = match MaildirReplica::open_location(&format!("maildir:{path}")) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    for _ in 0..rounds {
        let t = Instant::now();
        let Answer::Tree(tree) = r.answer(&Query::Tree) else {
            unreachable!("a tree query is answered with a tree")
        };
        let mut mails = 0usize;
        for mb in &tree.mailboxes {
            let Some(guid) = mb.guid else { continue };
            if let Answer::Mailbox(Some(s)) = r.answer(&Query::Mailbox(guid)) {
                mails += s.mails.len();
            }
        }
        let sync_read = t.elapsed();
        let t = Instant::now();
        let mut n = 0usize;
        for e in r.store().list_mailboxes().unwrap_or_default() {
            if e.guid.is_none() {
                continue;
            }
            if let Ok(mb) = r.store().open_mailbox(&e.name) {
                n += mb.messages().filter(|m| m.is_ok()).count();
            }
        }
        println!(
            "sync snapshot: {mails} mails in {:.3} s; storage listing: {n} mails in {:.3} s",
            sync_read.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
    }
}
