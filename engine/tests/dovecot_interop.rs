//! The engine as master against a real `doveadm dsync-server` (Dovecot
//! 2.3.19.1, Maildir) over the wire codec: first copy, changes in both
//! directions, and a UID conflict. Skipped when Dovecot is unavailable.

use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use dsync_protocol::{Decoder, DecoderConfig, Encoder, Event, Item, MailFlags, SyncType};
use sync_engine::memory::MemoryReplica;
use sync_engine::{Brain, Input, Outcome, Output, SyncSettings};
use test_support::{dovecot_or_skip, small_message, DovecotInstance, InstanceOptions};

#[path = "common/memory_vs_dovecot.rs"]
mod memory_vs_dovecot;
use memory_vs_dovecot::*;

/// Runs one sync with this process's `store` as master and the instance's
/// user as slave; returns the master's outcome and the server's stderr.
fn sync_with_dovecot(
    inst: &DovecotInstance,
    store: &mut MemoryReplica,
    settings: SyncSettings,
) -> (Outcome, String) {
    let mut child = inst
        .doveadm_command()
        .arg("dsync-server")
        .arg(format!("-u{USER}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dsync-server");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let brain = Brain::master(b"homing-test", settings, store.now);
    let (outcome, failed) = run_brain(brain, store, stdin, stdout);
    let _ = child.wait();
    let stderr = err_reader.join().unwrap_or_default();
    let outcome =
        outcome.unwrap_or_else(|| panic!("no outcome: {failed:?}; server stderr: {stderr}"));
    (outcome, stderr)
}

/// Drives one brain over a byte stream pair until it has an outcome.
fn run_brain<W: Write, R: Read + Send + 'static>(
    mut brain: Brain,
    store: &mut MemoryReplica,
    mut writer: W,
    mut reader: R,
) -> (Option<Outcome>, Option<String>) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader_thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut enc = Encoder::new();
    let mut dec = Decoder::with_config(DecoderConfig {
        validate_order: false,
        ..DecoderConfig::default()
    });
    let mut out = Vec::new();
    enc.encode_preamble(&mut out);

    // Handles every pending output of the brain: items to the wire,
    // queries and actions to the store.
    fn drain(brain: &mut Brain, store: &mut MemoryReplica, enc: &mut Encoder, out: &mut Vec<u8>) {
        while let Some(o) = brain.poll() {
            match o {
                Output::Send { mut item, body } => {
                    let bytes = body.and_then(|r| store.body(&r).map(|b| b.to_vec()));
                    if let Item::Mail(m) = &mut item {
                        m.stream = bytes.is_some();
                    }
                    enc.encode_item(&item, out).expect("encode");
                    if let Some(b) = bytes {
                        enc.encode_body_chunk(&b, out).expect("body");
                        enc.end_body(out).expect("end body");
                    }
                }
                Output::Query(q) => {
                    let a = store.answer(&q);
                    let _ = brain.feed(Input::Answer(a));
                }
                Output::Action(a) => {
                    if let Err(error) = store.apply(&a) {
                        let _ = brain.feed(Input::ActionFailed { action: a, error });
                    }
                }
            }
        }
    }

    let mut pending_mail: Option<(Item, Vec<u8>)> = None;
    let mut failed = None;
    'outer: loop {
        drain(&mut brain, store, &mut enc, &mut out);
        if !out.is_empty() {
            if writer.write_all(&out).and_then(|_| writer.flush()).is_err() {
                failed = Some("write to the peer failed".to_string());
                break;
            }
            out.clear();
        }
        if brain.outcome().is_some() {
            break;
        }
        let data = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(d) => d,
            Err(_) => {
                let _ = brain.feed(Input::PeerClosed);
                break;
            }
        };
        dec.feed(&data);
        loop {
            let ev = match dec.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    failed = Some(format!("decode: {e}"));
                    break 'outer;
                }
            };
            let item = match ev {
                Event::Version(_) | Event::Tables(_) => continue,
                Event::BodyChunk(c) => {
                    if let Some((_, body)) = &mut pending_mail {
                        body.extend_from_slice(c);
                    }
                    continue;
                }
                Event::BodyEnd => match pending_mail.take() {
                    Some((item, body)) => {
                        store.set_incoming_body(body);
                        item
                    }
                    None => continue,
                },
                Event::Item(item) => {
                    if item.has_body() {
                        pending_mail = Some((item, Vec::new()));
                        continue;
                    }
                    item
                }
            };
            if let Err(e) = brain.feed(Input::Peer(item)) {
                failed = Some(e.to_string());
                break 'outer;
            }
            drain(&mut brain, store, &mut enc, &mut out);
        }
    }
    drop(writer);
    drop(rx);
    let _ = reader_thread.join();
    (brain.outcome().cloned(), failed)
}

#[test]
fn sync_with_real_dsync_server() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&[USER]));
    seed(&inst);

    // 1. First copy into an empty homing replica.
    let mut a = MemoryReplica::new();
    a.now = 1_800_000_000;
    let (o, err) = sync_with_dovecot(&inst, &mut a, SyncSettings::default());
    assert_eq!(o.status.code(), 0, "{o:?}\n{err}");
    assert_eq!(homing_view(&a), dovecot_view(&inst), "{o:?}\n{err}");
    let snap = inst.snapshot(USER).expect("snapshot");
    for mb in &snap.mailboxes {
        let ours = a.mailbox(&mb.name).expect("mailbox copied");
        assert_eq!(ours.guid.to_hex(), mb.guid, "mailbox GUID of {}", mb.name);
        assert_eq!(
            ours.uid_validity, mb.uidvalidity,
            "UIDVALIDITY of {}",
            mb.name
        );
    }
    let body = &a.mailbox("INBOX").expect("INBOX").mails[&1].body;
    assert_eq!(body, &small_message("d1"), "body streamed byte-exact");

    // 2. Changes on both sides, full sync.
    a.now += 10;
    a.deliver("INBOX", "homing-h1", &small_message("h1"), 0)
        .expect("deliver");
    a.add_flags("INBOX", 1, MailFlags::SEEN, &[]);
    add_flags(&inst, USER, "\\Answered", "Work", "1");
    let full = SyncSettings {
        sync_type: SyncType::Full,
        ..SyncSettings::default()
    };
    let (o, err) = sync_with_dovecot(&inst, &mut a, full.clone());
    assert_eq!(o.status.code(), 0, "{o:?}\n{err}");
    let dv = dovecot_view(&inst);
    assert_eq!(homing_view(&a), dv, "{o:?}\n{err}");
    assert!(
        dv.iter()
            .any(|(mb, uid, g, _)| mb == "INBOX" && *uid == 3 && g == "homing-h1"),
        "{dv:?}"
    );

    // 3. UID conflict: both sides get a different mail as UID 4.
    a.now += 10;
    a.deliver("INBOX", "homing-h2", &small_message("h2"), 0)
        .expect("deliver");
    save_all(&inst, USER, &[("INBOX", "d4")]);
    let (o, err) = sync_with_dovecot(&inst, &mut a, full);
    assert_eq!(o.status.code(), 0, "{o:?}\n{err}");
    let dv = dovecot_view(&inst);
    assert_eq!(homing_view(&a), dv, "{o:?}\n{err}");
    let inbox: Vec<u32> = dv.iter().filter(|x| x.0 == "INBOX").map(|x| x.1).collect();
    assert_eq!(
        inbox,
        vec![1, 2, 3, 5, 6],
        "both conflicting mails renumbered, none lost: {dv:?}"
    );
    assert_no_log_errors(&inst);
}

#[test]
fn tree_changes_and_backup_with_real_dsync_server() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&[USER]));
    save_all(
        &inst,
        USER,
        &[("INBOX", "d1"), ("Work", "d2"), ("Home", "d3")],
    );
    let mut a = MemoryReplica::new();
    a.now = 1_800_000_000;
    let (o, err) = sync_with_dovecot(&inst, &mut a, SyncSettings::default());
    assert_eq!(o.status.code(), 0, "{o:?}\n{err}");
    assert_eq!(homing_boxes(&a), dovecot_boxes(&inst));

    // Rename and create here, delete there.
    a.now += 100;
    let work_guid = a.mailbox("Work").expect("Work").guid;
    a.rename("Work", "Archive").expect("rename");
    a.create_mailbox("New", dsync_protocol::Guid128([0x5a; 16]), 4242)
        .expect("create");
    a.deliver("New", "homing-n1", &small_message("n1"), 0)
        .expect("deliver");
    inst.doveadm_user(USER, &["mailbox", "delete", "Home"])
        .expect("delete");
    let full = SyncSettings {
        sync_type: SyncType::Full,
        ..SyncSettings::default()
    };
    let (o, err) = sync_with_dovecot(&inst, &mut a, full);
    assert_eq!(o.status.code(), 0, "{o:?}\n{err}");
    let boxes = dovecot_boxes(&inst);
    assert_eq!(homing_boxes(&a), boxes, "{o:?}\n{err}");
    assert!(
        boxes.contains(&("Archive".to_string(), work_guid.to_hex())),
        "{boxes:?}"
    );
    assert!(
        !boxes.iter().any(|(n, _)| n == "Home" || n == "Work"),
        "{boxes:?}"
    );
    assert_eq!(homing_view(&a), dovecot_view(&inst));

    // Backup from here: the destination's own changes are reverted.
    a.now += 100;
    a.add_flags("INBOX", 1, MailFlags::SEEN, &[]);
    save_all(&inst, USER, &[("Archive", "d9")]);
    add_flags(&inst, USER, "\\Flagged", "Archive", "1");
    let before = a.view();
    let backup = SyncSettings {
        backup_send: true,
        ..SyncSettings::default()
    };
    let (o, err) = sync_with_dovecot(&inst, &mut a, backup);
    assert_eq!(o.status.code(), 0, "{o:?}\n{err}");
    assert_eq!(a.view(), before, "the backup source is never changed");
    assert_eq!(homing_view(&a), dovecot_view(&inst), "{o:?}\n{err}");
    assert_no_log_errors(&inst);
}

/// Runs `doveadm sync -u bob <wrapper>` where the wrapper connects the
/// command's stdio to two FIFOs served by a slave brain over `store`.
fn dovecot_master_sync(
    inst: &DovecotInstance,
    store: &mut MemoryReplica,
    command: &str,
    extra: &[&str],
) -> (i32, Outcome, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    for f in ["to_slave", "from_slave"] {
        let p = d.join(f);
        let st = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("0666")
            .arg(&p)
            .status()
            .expect("mkfifo");
        assert!(st.success());
    }
    let wrapper = d.join("wrap.sh");
    std::fs::write(
        &wrapper,
        // A background job of a script reads /dev/null unless its stdin
        // is redirected explicitly.
        format!(
            "#!/bin/sh\nexec 3<&0\ncat <&3 > {dir}/to_slave &\nexec cat {dir}/from_slave 3<&-\n",
            dir = d.display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut cmd = inst.doveadm_command();
    cmd.arg(command)
        .args(extra)
        .arg("-u")
        .arg(USER)
        .arg(wrapper.display().to_string());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn doveadm sync");
    let to_slave = d.join("to_slave");
    let opener = std::thread::spawn(move || std::fs::File::open(to_slave).expect("open to_slave"));
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("from_slave"))
        .expect("open from_slave");
    let reader = opener.join().expect("opener");
    let brain = Brain::slave(b"homing-slave", store.now);
    let (outcome, failed) = run_brain(brain, store, writer, reader);
    let out = child.wait_with_output().expect("doveadm sync");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let outcome =
        outcome.unwrap_or_else(|| panic!("slave has no outcome: {failed:?}; doveadm: {stderr}"));
    (out.status.code().unwrap_or(-1), outcome, stderr)
}

#[test]
fn slave_for_real_doveadm_sync() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&[USER]));
    save_all(
        &inst,
        USER,
        &[("INBOX", "d1"), ("INBOX", "d2"), ("Work", "d3")],
    );
    add_flags(&inst, USER, "\\Seen kw1", "INBOX", "1");
    let mut b = MemoryReplica::new();
    b.now = 1_800_000_000;
    let (code, o, err) = dovecot_master_sync(&inst, &mut b, "sync", &[]);
    assert_eq!(code, 0, "{o:?}\n{err}");
    assert_eq!(o.status.code(), 0, "{o:?}\n{err}");
    assert_eq!(homing_view(&b), dovecot_view(&inst), "{o:?}\n{err}");
    assert_eq!(homing_boxes(&b), dovecot_boxes(&inst));

    // Both sides change; Dovecot's master decides the mailbox order.
    b.now += 100;
    b.deliver("INBOX", "homing-s1", &small_message("s1"), 0)
        .expect("deliver");
    b.add_flags("INBOX", 2, MailFlags::FLAGGED, &[]);
    save_all(&inst, USER, &[("INBOX", "d4")]);
    let (code, o, err) = dovecot_master_sync(&inst, &mut b, "sync", &["-f"]);
    assert_eq!(code, 0, "{o:?}\n{err}");
    assert_eq!(homing_view(&b), dovecot_view(&inst), "{o:?}\n{err}");
    let inbox: Vec<u32> = homing_view(&b)
        .iter()
        .filter(|x| x.0 == "INBOX")
        .map(|x| x.1)
        .collect();
    assert_eq!(
        inbox,
        vec![1, 2, 4, 5],
        "UID conflict resolved the same way on both sides"
    );

    // `doveadm backup` into this replica: its own changes are reverted, an
    // extra mail above the source's UIDNEXT makes the mailbox be recreated.
    b.now += 100;
    b.deliver("Work", "homing-x1", &small_message("x1"), 0)
        .expect("deliver");
    b.remove_flags("INBOX", 1, MailFlags::SEEN, &[]);
    b.create_mailbox("Extra", dsync_protocol::Guid128([0x77; 16]), 77)
        .expect("create");
    let (code, o, err) = dovecot_master_sync(&inst, &mut b, "backup", &[]);
    assert_eq!(code, 0, "{o:?}\n{err}");
    assert_eq!(homing_view(&b), dovecot_view(&inst), "{o:?}\n{err}");
    assert_eq!(homing_boxes(&b), dovecot_boxes(&inst));
    assert_no_log_errors(&inst);
}
