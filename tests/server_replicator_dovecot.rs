//! Dovecot 2.3's own replicator with `homing server` as its peer.
//!
//! A private Dovecot runs the replication plugin, aggregator and replicator
//! with `mail_replica = tcp:` (or `tcps:`) pointing at a `homing server`
//! process (the binary, running as the mail user) that serves the user's
//! replica Maildir. Mail saved, flagged and expunged in Dovecot must reach
//! the replica; changes made on the replica must come back; the replicator
//! must show the user synced without failure; Dovecot's log must stay
//! clean. The server's `-U` notices (`NOTIFY`) are caught by a stand-in
//! replicator socket and checked.
//!
//! Also here: `homing dsync-server -U` over stdio sends the same `NOTIFY`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dsync_protocol::state::SyncState;
use test_support::{
    free_port, require_dovecot, DovecotInstance, InstanceOptions, SnapshotOptions, TestCa,
};

const PASSWORD: &str = "s3cret";

/// doveadm's internal NOREPLICATE code (1001) as a process exit status.
const EXIT_NOREPLICATE: i32 = 1001 & 0xff;

fn homing_bin() -> &'static str {
    env!("CARGO_BIN_EXE_homing")
}

/// A stand-in for the peer's `replicator-doveadm` socket: answers like a
/// replicator and records every line a client sends.
struct FakeReplicator {
    lines: Arc<Mutex<Vec<String>>>,
}

impl FakeReplicator {
    fn start(path: &Path) -> FakeReplicator {
        let listener = UnixListener::bind(path).unwrap();
        // The server runs as the mail user.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let _ = conn.write_all(b"VERSION\treplicator-doveadm-server\t1\t0\n");
                    let Ok(rd) = conn.try_clone() else { return };
                    for line in BufReader::new(rd).lines() {
                        let Ok(line) = line else { return };
                        let answer = line.starts_with("NOTIFY\t");
                        seen.lock().unwrap().push(line);
                        if answer {
                            let _ = conn.write_all(b"+\n");
                        }
                    }
                });
            }
        });
        FakeReplicator { lines }
    }

    /// The NOTIFY lines received so far, split at tabs.
    fn notices(&self) -> Vec<Vec<String>> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("NOTIFY\t"))
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    fn all_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// `homing server` as a child process running as the mail user.
struct HomingServer {
    child: Child,
    stderr: PathBuf,
}

impl HomingServer {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for HomingServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_port(port: u16, server: &mut HomingServer) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = server.child.try_wait() {
            panic!("homing server exited with {st}: {}", server.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("homing server not listening on {port}: {}", server.log());
}

/// `homing server` on `127.0.0.1:port` with the doveadm password in
/// `password`, homes at `home` (a `%u` pattern), mail in `%h/Maildir`, and
/// its `NOTIFY`s going to the `replicator` socket.
fn server_command(port: u16, password: &Path, home: &str, replicator: &Path) -> Command {
    let mut cmd = Command::new(homing_bin());
    cmd.arg("server")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--password-file")
        .arg(password)
        .args(["--home", home])
        .args(["--mail-location", "maildir:%h/Maildir"])
        .args([
            "--set",
            &format!("replicator_socket={}", replicator.display()),
        ]);
    cmd
}

/// Starts `cmd` with its stderr in `stderr`.
fn spawn_server(mut cmd: Command, stderr: PathBuf) -> HomingServer {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    HomingServer { child, stderr }
}

/// A Maildir at `dir` holding one mail, `cur/<name>`.
fn maildir_with_one_mail(dir: &Path, name: &str, text: &[u8]) {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("cur").join(name), text).unwrap();
}

/// The process exited 0 (else its stderr is shown).
fn assert_exit_0(out: &std::process::Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first row of a `doveadm -f tab` answer, as fields.
fn first_row(out: &test_support::DoveadmOutput) -> Vec<String> {
    out.stdout_str()
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split('\t')
        .map(str::to_string)
        .collect()
}

/// The mailbox GUIDs (hex) a dsync state names, sorted.
fn state_guids(s: &SyncState) -> Vec<String> {
    let mut g: Vec<String> = s
        .mailboxes
        .iter()
        .map(|m| m.mailbox_guid.to_hex())
        .collect();
    g.sort();
    g
}

/// Everything of one replication pair.
struct Pair {
    inst: DovecotInstance,
    server: HomingServer,
    notify: FakeReplicator,
    replica_location: String,
    _dir: tempfile::TempDir,
}

fn chown_vmail(p: &Path, inst_ids: (u32, u32)) {
    std::os::unix::fs::chown(p, Some(inst_ids.0), Some(inst_ids.1)).unwrap();
}

/// Starts `homing server` (plain and TLS listeners) and then a Dovecot whose
/// replicator uses it as `mail_replica` over `scheme` (`tcp` or `tcps`).
fn start_pair(tls: bool) -> Option<Pair> {
    start_pair_with(tls, None)
}

/// Like [`start_pair`]; with `passwd`, homing's user database is that
/// passwd-file (else every user with a home directory), and Dovecot has
/// the users named in it.
fn start_pair_with(tls: bool, passwd: Option<&str>) -> Option<Pair> {
    if !require_dovecot("server_replicator_dovecot") {
        return None;
    }
    let vmail = nix_ids();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = dir.path();
    let ca = Arc::new(TestCa::generate("homing replication CA").unwrap());
    let issued = ca.issue_server_cert(&["127.0.0.1", "localhost"]).unwrap();
    std::fs::write(d.join("cert.pem"), &issued.cert_pem).unwrap();
    std::fs::write(d.join("key.pem"), &issued.key_pem).unwrap();
    std::fs::write(d.join("password"), format!("{PASSWORD}\n")).unwrap();
    let users: Vec<String> = match passwd {
        Some(p) => p
            .lines()
            .filter_map(|l| l.split(':').next())
            .map(str::to_string)
            .collect(),
        None => vec!["bob".to_string()],
    };
    for u in &users {
        std::fs::create_dir_all(d.join("replica").join(u)).unwrap();
        chown_vmail(&d.join("replica").join(u), vmail);
    }
    if let Some(p) = passwd {
        std::fs::write(d.join("passwd"), p).unwrap();
        chown_vmail(&d.join("passwd"), vmail);
    }
    std::fs::create_dir_all(d.join("notify")).unwrap();
    for p in [
        d.join("cert.pem"),
        d.join("key.pem"),
        d.join("password"),
        d.join("replica"),
        d.join("replica/bob"),
    ] {
        chown_vmail(&p, vmail);
    }
    std::fs::set_permissions(d.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let notify = FakeReplicator::start(&d.join("notify/replicator-doveadm"));

    let port = free_port().unwrap();
    let tls_port = free_port().unwrap();
    let stderr = d.join("server.log");
    let mut cmd = server_command(
        port,
        &d.join("password"),
        &format!("{}/replica/%u", d.display()),
        &d.join("notify/replicator-doveadm"),
    );
    cmd.env_clear()
        .args(["--tls-listen", &format!("127.0.0.1:{tls_port}")])
        .arg("--tls-cert")
        .arg(d.join("cert.pem"))
        .arg("--tls-key")
        .arg(d.join("key.pem"))
        .args(match passwd {
            Some(_) => vec![
                "--passwd-file".to_string(),
                d.join("passwd").display().to_string(),
            ],
            None => Vec::new(),
        })
        .args(["--set", "hostname=homing-peer"])
        .args(["--set", "auth_failure_delay=100ms"])
        .uid(vmail.0)
        .gid(vmail.1);
    let mut server = spawn_server(cmd, stderr);
    wait_port(port, &mut server);
    wait_port(tls_port, &mut server);

    let replica = if tls {
        format!("tcps:127.0.0.1:{tls_port}")
    } else {
        format!("tcp:127.0.0.1:{port}")
    };
    let extra = format!(
        "mail_plugins = $mail_plugins notify replication\n\
         plugin {{\n  mail_replica = {replica}\n}}\n\
         replication_dsync_parameters = -d -N -l 30 -U\n\
         replication_full_sync_interval = 5 secs\n\
         service replicator {{\n  process_min_avail = 1\n  unix_listener replicator-doveadm {{\n    mode = 0600\n  }}\n}}\n\
         service aggregator {{\n  fifo_listener replication-notify-fifo {{\n    mode = 0666\n  }}\n  unix_listener replication-notify {{\n    mode = 0666\n  }}\n}}\n"
    );
    let inst = DovecotInstance::start(
        InstanceOptions::new()
            .users(&users.iter().map(String::as_str).collect::<Vec<_>>())
            .doveadm_password(PASSWORD)
            .tls(true)
            .ca(ca)
            .extra_conf(extra),
    )
    .expect("private Dovecot instance");
    Some(Pair {
        inst,
        server,
        notify,
        replica_location: format!("maildir:{}/replica/bob/Maildir", d.display()),
        _dir: dir,
    })
}

fn nix_ids() -> (u32, u32) {
    let out = Command::new("id").args(["-u", "vmail"]).output().unwrap();
    let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let out = Command::new("id").args(["-g", "vmail"]).output().unwrap();
    let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (uid, gid)
}

impl Pair {
    /// `doveadm replicator status bob` as tab-separated fields.
    fn status(&self) -> Vec<String> {
        let out = self
            .inst
            .doveadm(["-f", "tab", "replicator", "status", "bob"])
            .unwrap();
        assert_eq!(out.code(), Some(0), "{}", out.stderr_str());
        first_row(&out)
    }

    fn replica_snapshot(&self) -> Option<test_support::Snapshot> {
        self.inst
            .snapshot_with(
                "bob",
                &SnapshotOptions {
                    location: Some(self.replica_location.clone()),
                    ..SnapshotOptions::default()
                },
            )
            .ok()
    }

    /// Waits until the replica (read through Dovecot) equals bob's mailbox
    /// in Dovecot and the replicator has nothing queued for bob.
    fn wait_in_sync(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            let primary = self.inst.snapshot("bob").unwrap();
            if let Some(replica) = self.replica_snapshot() {
                match primary.diff(&replica) {
                    None => {
                        let st = self.status();
                        // username, priority, fast, full, success, failed
                        if st.get(1).map(String::as_str) == Some("none")
                            && st.get(5).map(String::as_str) == Some("-")
                            && st.get(4).map(String::as_str) != Some("-")
                        {
                            return;
                        }
                        last = format!("replicator status: {st:?}");
                    }
                    Some(d) => last = d,
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!(
            "{what}: replica not in sync within 60 s: {last}\nDovecot log:\n{}\nhoming server log:\n{}",
            self.inst.log(),
            self.server.log()
        );
    }

    /// A doveadm command on the replica Maildir (as the peer's Dovecot would
    /// run it), without the replication plugin.
    fn on_replica(&self, args: &[&str], input: Option<&[u8]>) {
        let mut full: Vec<String> = vec![
            "-o".into(),
            format!("mail_location={}", self.replica_location),
            "-o".into(),
            "mail_plugins=".into(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        let out = self.inst.doveadm_with_input(&full, input).unwrap();
        assert_eq!(out.code(), Some(0), "{args:?}: {}", out.stderr_str());
    }
}

fn message(i: usize) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: bob@example.org\r\nSubject: r{i}\r\nMessage-ID: <r{i}@example.org>\r\n\r\nbody {i}\r\n"
    )
    .into_bytes()
}

fn replication_with_homing_peer(tls: bool) {
    let Some(pair) = start_pair(tls) else { return };
    let inst = &pair.inst;

    // Mail saved in Dovecot (the replication plugin notifies the replicator).
    for i in 0..3 {
        inst.save_message("bob", "INBOX", &message(i)).unwrap();
    }
    inst.save_message("bob", "Work", &message(3)).unwrap();
    pair.wait_in_sync("after saves");

    // Flag changes and an expunge in Dovecot.
    for (words, uid) in [("\\Seen \\Flagged", "1"), ("$Important", "2")] {
        inst.doveadm_user(
            "bob",
            &["flags", "add", words, "mailbox", "INBOX", "uid", uid],
        )
        .unwrap();
    }
    inst.doveadm_user("bob", &["expunge", "mailbox", "INBOX", "uid", "3"])
        .unwrap();
    pair.wait_in_sync("after flag changes and an expunge");
    let replica = pair.replica_snapshot().unwrap();
    assert_eq!(replica.mails_in("INBOX").count(), 2);
    assert_eq!(replica.message_count(), 3);

    // Changes on homing's side come back: a new mail, a flag, an expunge.
    // Dovecot's stateful (`-s`) sync skips a mailbox whose numbers on the
    // master match the saved state, even if the replica changed it (in a
    // Dovecot pair the replica's own replicator pushes such changes); the
    // periodic full sync (`replication_full_sync_interval`, 5 s here)
    // looks at every mailbox.
    pair.on_replica(&["save", "-u", "bob", "-m", "Work"], Some(&message(4)));
    pair.on_replica(
        &[
            "flags",
            "add",
            "-u",
            "bob",
            "\\Answered",
            "mailbox",
            "INBOX",
            "uid",
            "2",
        ],
        None,
    );
    pair.on_replica(
        &["expunge", "-u", "bob", "mailbox", "INBOX", "uid", "1"],
        None,
    );
    let out = inst.doveadm(["replicator", "replicate", "bob"]).unwrap();
    assert_eq!(out.code(), Some(0), "{}", out.stderr_str());
    pair.wait_in_sync("after changes on the replica");
    let primary = inst.snapshot("bob").unwrap();
    assert_eq!(primary.message_count(), 3, "{primary:?}");
    let inbox: Vec<_> = primary.mails_in("INBOX").collect();
    assert_eq!(inbox.len(), 1);
    assert!(
        inbox[0].flags.iter().any(|f| f == "\\Answered"),
        "{inbox:?}"
    );
    assert!(
        inbox[0].keywords.iter().any(|k| k == "$Important"),
        "{inbox:?}"
    );
    assert!(primary
        .mails_in("Work")
        .any(|m| m.message_id.contains("r4@")));

    // The replicator's view: synced, not failed.
    let st = pair.status();
    assert_eq!(
        st.get(5).map(String::as_str),
        Some("-"),
        "failed column: {st:?}"
    );
    assert_ne!(
        st.get(4).map(String::as_str),
        Some("-"),
        "success column: {st:?}"
    );

    // `-U` from Dovecot's sync: homing server told its replicator about
    // every session: the first (full) one with `f`, and each with the
    // slave's state, which names the replica's mailboxes.
    let notices = pair.notify.notices();
    assert!(
        !notices.is_empty(),
        "no NOTIFY: {:?}",
        pair.notify.all_lines()
    );
    let lines = pair.notify.all_lines();
    assert_eq!(
        lines[0], "VERSION\treplicator-doveadm-client\t1\t0",
        "{lines:?}"
    );
    for n in &notices {
        assert_eq!(n.len(), 4, "{n:?}");
        assert_eq!(n[1], "bob");
        assert!(n[2].is_empty() || n[2] == "f", "{n:?}");
    }
    assert_eq!(
        notices[0][2], "f",
        "the first sync of a new user is full: {notices:?}"
    );
    let last = notices.last().unwrap();
    let state = SyncState::parse(&last[3]).expect("a valid dsync state");
    let replica = pair.replica_snapshot().unwrap();
    let in_state = state_guids(&state);
    let mut boxes: Vec<String> = replica.mailboxes.iter().map(|b| b.guid.clone()).collect();
    boxes.sort();
    assert_eq!(in_state, boxes, "state of the last NOTIFY: {last:?}");

    inst.assert_log_clean();
    let log = pair.server.log();
    assert!(
        !log.contains("ERROR") && !log.contains("WARN"),
        "homing server log:\n{log}"
    );
}

#[test]
fn dovecot_replicator_syncs_with_homing_server_over_tcp() {
    replication_with_homing_peer(false);
}

#[test]
fn dovecot_replicator_syncs_with_homing_server_over_tcps() {
    replication_with_homing_peer(true);
}

/// `homing dsync-server -U` over stdio: after the session, the same NOTIFY
/// goes to `<base_dir>/replicator-doveadm`; without `-U`, nothing does.
#[test]
fn dsync_server_with_u_notifies_the_local_replicator() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("run")).unwrap();
    let notify = FakeReplicator::start(&d.join("run/replicator-doveadm"));
    let a = d.join("a");
    let b = d.join("b");
    // One mail in A's INBOX, one in A's `Work`.
    for (dir, name) in [
        (a.clone(), "1700000000.M1P1.test:2,S"),
        (a.join(".Work"), "1700000001.M2P1.test:2,"),
    ] {
        maildir_with_one_mail(
            &dir,
            name,
            b"From: a@example.org\r\nSubject: n\r\nMessage-ID: <n@example.org>\r\n\r\nx\r\n",
        );
    }
    let run = |extra: &[&str]| {
        let out = Command::new(homing_bin())
            .arg("-o")
            .arg(format!("mail_location=maildir:{}", a.display()))
            .args(["sync", "-u", "carol", "-s", ""])
            .args(extra)
            .arg(homing_bin())
            .arg("-o")
            .arg(format!("mail_location=maildir:{}", b.display()))
            .arg("-o")
            .arg(format!("base_dir={}", d.join("run").display()))
            .args(["dsync-server", "-ucarol"])
            .args(extra.iter().filter(|x| **x == "-U"))
            .output()
            .unwrap();
        assert_exit_0(&out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // The master's own state, for comparison.
    let master_state = run(&["-f", "-U"]);
    let notices = notify.notices();
    assert_eq!(notices.len(), 1, "{:?}", notify.all_lines());
    assert_eq!(notices[0][1], "carol");
    assert_eq!(notices[0][2], "f");
    let slave = SyncState::parse(&notices[0][3]).unwrap();
    let master = SyncState::parse(&master_state).unwrap();
    assert!(!slave.mailboxes.is_empty());
    assert_eq!(state_guids(&slave), state_guids(&master));

    // A stateful (not full) sync: empty flags.
    run(&["-U"]);
    let notices = notify.notices();
    assert_eq!(notices.len(), 2);
    assert_eq!(notices[1][2], "");

    // Without -U: no notice.
    run(&[]);
    assert_eq!(notify.notices().len(), 2);

    // No replicator listening: the sync still succeeds, silently.
    std::fs::remove_file(d.join("run/replicator-doveadm")).unwrap();
    run(&["-U"]);
}

/// The `NOTIFY` homing sends is understood by Dovecot 2.3's own replicator:
/// the user appears with its fast (and, after `-f`, full) sync time set and
/// no successful sync counted (a notice is not a sync of its own), as the
/// replicator does for a Dovecot peer's `dsync-server -U`.
#[test]
fn notify_reaches_a_real_dovecot_replicator() {
    if !require_dovecot("notify_reaches_a_real_dovecot_replicator") {
        return;
    }
    // A replicator that never syncs on its own; bob is a user of its userdb,
    // which `homing dsync-server` asks (its `-o base_dir` points there).
    let inst = DovecotInstance::start(InstanceOptions::new().users(&["bob"]).extra_conf(
        "replication_max_conns = 0\n\
         service replicator {\n  process_min_avail = 1\n  unix_listener replicator-doveadm {\n    mode = 0600\n  }\n}\n",
    ))
    .expect("private Dovecot instance");
    let sock = inst.run_dir().join("replicator-doveadm");
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    maildir_with_one_mail(
        &a,
        "1700000000.M1P1.test:2,",
        b"Subject: n\r\nMessage-ID: <n@example.org>\r\n\r\nx\r\n",
    );
    let out = Command::new(homing_bin())
        .arg("-o")
        .arg(format!("mail_location=maildir:{}", a.display()))
        .args(["sync", "-f", "-u", "bob"])
        .arg(homing_bin())
        .arg("-o")
        .arg(format!("mail_location=maildir:{}", b.display()))
        .arg("-o")
        .arg(format!("base_dir={}", inst.run_dir().display()))
        .args(["dsync-server", "-ubob", "-U"])
        .output()
        .unwrap();
    assert_exit_0(&out);
    let st = inst
        .doveadm(["-f", "tab", "replicator", "status", "bob"])
        .unwrap();
    let row = first_row(&st);
    // username, priority, fast sync, full sync, success sync, failed
    assert_eq!(row.len(), 6, "{}", st.stdout_str());
    assert_eq!(row[0], "bob");
    assert_eq!(row[1], "none");
    assert_ne!(row[2], "-", "fast sync set by the notice: {row:?}");
    assert_ne!(row[3], "-", "full sync set by a notice with f: {row:?}");
    assert_eq!(row[4], "-", "a notice is not a successful sync: {row:?}");
    assert_eq!(row[5], "-");
    inst.assert_log_clean();
}

/// `homing sync -U tcp:` against `homing server`: `-U` travels on the
/// command line (`dsync-server -uUSER -U`), the server notifies its
/// replicator after the session, not without `-U`, and a `noreplicate`
/// user is refused with NOREPLICATE before any dsync, which `homing sync`
/// reports without crashing (Dovecot 2.3.19.1's doveadm aborts here).
#[test]
fn homing_sync_u_against_homing_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for u in ["carol", "dave"] {
        std::fs::create_dir_all(d.join("homes").join(u)).unwrap();
    }
    std::fs::write(
        d.join("passwd"),
        "carol:x::::::\ndave:x:::::: userdb_noreplicate=y\n",
    )
    .unwrap();
    std::fs::write(d.join("password"), format!("{PASSWORD}\n")).unwrap();
    let notify = FakeReplicator::start(&d.join("replicator-doveadm"));
    let port = free_port().unwrap();
    let mut cmd = server_command(
        port,
        &d.join("password"),
        &format!("{}/homes/%u", d.display()),
        &d.join("replicator-doveadm"),
    );
    cmd.arg("--passwd-file").arg(d.join("passwd"));
    let mut server = spawn_server(cmd, d.join("server.log"));
    wait_port(port, &mut server);
    let local = d.join("local");
    maildir_with_one_mail(
        &local,
        "1700000000.M1P1.test:2,",
        b"Subject: n\r\nMessage-ID: <n@example.org>\r\n\r\nx\r\n",
    );
    let sync = |user: &str, u: bool| {
        let mut c = Command::new(homing_bin());
        c.arg("-o")
            .arg(format!("mail_location=maildir:{}", local.display()))
            .arg("-o")
            .arg(format!("doveadm_password={PASSWORD}"))
            .args(["sync", "-u", user]);
        if u {
            c.arg("-U");
        }
        c.arg(format!("tcp:127.0.0.1:{port}")).output().unwrap()
    };
    let out = sync("carol", true);
    assert_exit_0(&out);
    let notices = notify.notices();
    assert_eq!(notices.len(), 1, "{:?}", notify.all_lines());
    assert_eq!(notices[0][1], "carol");
    assert!(SyncState::parse(&notices[0][3]).is_ok(), "{notices:?}");

    let out = sync("carol", false);
    assert_exit_0(&out);
    assert_eq!(notify.notices().len(), 1, "no NOTIFY without -U");

    // noreplicate: refused only with -U.
    let out = sync("dave", true);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(EXIT_NOREPLICATE), "{err}");
    assert!(err.contains("disabled for replication"), "{err}");
    assert!(
        !d.join("homes/dave/Maildir").exists(),
        "nothing synced for dave"
    );
    let out = sync("dave", false);
    assert_exit_0(&out);
    assert_eq!(notify.notices().len(), 1);
}

/// Spec 7.3.7 with homing as the peer: a user homing's userdb marks
/// `noreplicate` is answered `-NOREPLICATE` before any dsync (the
/// replicator's sync carries `-U`), as a Dovecot peer answers. Dovecot
/// 2.3.19.1's doveadm then aborts (`fd_set_nonblock` assertion, the defect
/// of spec 1.5, under doveadm-server too), so its replicator keeps the user
/// as failed instead of dropping it; the other user replicates normally.
#[test]
fn noreplicate_user_is_refused_to_dovecots_replicator() {
    let Some(pair) = start_pair_with(
        false,
        Some("bob:x::::::\ndave:x:::::: userdb_noreplicate=y\n"),
    ) else {
        return;
    };
    let inst = &pair.inst;
    inst.save_message("bob", "INBOX", &message(0)).unwrap();
    inst.save_message("dave", "INBOX", &message(1)).unwrap();
    pair.wait_in_sync("bob after a save");
    let deadline = Instant::now() + Duration::from_secs(30);
    let dave = loop {
        let out = inst
            .doveadm(["-f", "tab", "replicator", "status", "dave"])
            .unwrap();
        let row = first_row(&out);
        if row.get(5).map(String::as_str) == Some("y") || Instant::now() > deadline {
            break row;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(
        dave.get(5).map(String::as_str),
        Some("y"),
        "{dave:?}\n{}",
        inst.log()
    );
    assert_eq!(dave.get(4).map(String::as_str), Some("-"), "{dave:?}");
    // Nothing was synced or announced for dave.
    let replica_root = pair
        .replica_location
        .trim_start_matches("maildir:")
        .replace("/bob/", "/dave/");
    assert!(
        !Path::new(&replica_root).exists(),
        "nothing synced for dave"
    );
    assert!(pair.notify.notices().iter().all(|n| n[1] == "bob"));
    let log = inst.log();
    assert!(
        log.contains("doveadm(dave)") && log.contains("fd_set_nonblock"),
        "Dovecot 2.3.19.1 aborts on a remote NOREPLICATE:\n{log}"
    );
    inst.assert_log_clean_except(&["doveadm(dave)"]);
    let server_log = pair.server.log();
    assert!(!server_log.contains("ERROR"), "{server_log}");
}
