//! The recorded dsync scenarios (`fixtures/scenarios/expected.json`) replayed
//! on real Dovecot Maildirs, with homing taking one side of every sync:
//!
//! * `homing_master`: `homing sync` on replica A against a real
//!   `doveadm dsync-server` serving replica B;
//! * `homing_slave`: real `doveadm sync` on replica A against
//!   `homing dsync-server` serving replica B (two-way scenarios only);
//! * `homing_server_tcp` / `homing_server_tcps`: real `doveadm sync` with
//!   `tcp:`/`tcps:` against a running `homing server` (the binary, as the
//!   mail user) serving replica B (two-way scenarios only, as above);
//! * `doveadm_oracle`: both sides real Dovecot, which checks that this
//!   replay reproduces the recorded end states at all.
//!
//! Each scenario's setup and operation lines are turned back into the
//! doveadm commands and Maildir file writes that produced them; both replicas
//! are then read back with doveadm and compared with the recorded end state.
//! Scenarios that show a deliberate difference (docs/differences.md) or need
//! sdbox/mbox replicas are held to homing's documented behaviour instead: no
//! mail is lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use test_support::scenarios::{
    self, between, diff_side, expected_side, parse_date, BoxState, MailEnd, SideState,
};
use test_support::{require_dovecot, DovecotInstance, InstanceOptions, DOVEADM};

/// Scenarios homing deliberately does not reproduce, with the reason.
const KNOWN: &[(&str, &str)] = &[
    ("delete_vs_new_mail", "differences.md #1: the mail delivered after the deletion is kept in a `Work-recovered-…` mailbox"),
    ("create_same_name_different_guid", "differences.md #2: homing adopts the larger GUID instead of swapping; as master, the Dovecot slave still swaps, so run 1 exits 2 and run 2 converges"),
    ("initial_both_nonempty_maildir", "differences.md #2: homing adopts the larger GUID instead of swapping; as master, the Dovecot slave still swaps, so the one recorded run exits 2 (a second run converges)"),
    ("delete_and_recreate_same_name", "differences.md #3: the deletion is honoured, the re-created mailbox is new"),
    ("rename_vs_create_conflict", "differences.md #4: the loser is renamed to `X-temp-<GUID>` in one run"),
    ("state_remote_only_change", "differences.md #7: other HIGHESTMODSEQ numbers than the saved state"),
    ("opt_mailbox_guid", "differences.md: B's auto-created INBOX with a random GUID"),
];

/// Scenarios recorded with sdbox or mbox replicas: replayed on Maildir, so
/// only homing's documented behaviour is checked.
const OTHER_FORMAT: &[(&str, &str)] = &[
    (
        "create_same_name_different_guid_sdbox",
        "recorded with sdbox replicas",
    ),
    (
        "delete_and_recreate_same_name_sdbox",
        "recorded with sdbox replicas; differences.md #3",
    ),
    (
        "initial_both_nonempty_sdbox",
        "recorded with sdbox replicas",
    ),
    (
        "hdr_hash_mbox",
        "recorded with an mbox replica (header-hash matching is not implemented)",
    ),
    (
        "hdr_hash_mbox_conflict",
        "recorded with an mbox replica (Dovecot itself aborts)",
    ),
];

/// Mails a deliberate difference removes on purpose: (scenario, message-id, why).
const ALLOWED_ABSENT: &[(&str, &str, &str)] = &[
    (
        "delete_and_recreate_same_name",
        "m3",
        "m3 was in the deleted mailbox (differences.md #3)",
    ),
    (
        "delete_and_recreate_same_name_sdbox",
        "m3",
        "m3 was in the deleted mailbox (differences.md #3)",
    ),
];

/// Open defects found by this test, per variant, with their cause. They are
/// counted as failures in the summary; the test fails when one of them
/// starts passing (so the list is kept current) or when another scenario fails.
const OPEN_BUGS: &[(Variant, &str, &str)] = &[];

/// Scenarios recorded with two local replicas whose exit code differs when
/// B is a remote `doveadm dsync-server` (the homing-master variant):
/// (scenario, recorded local code, code over a stream, why).
const STREAM_EXIT_CODES: &[(&str, i32, i32, &str)] = &[(
    "backup_inbox_stuck",
    65,
    75,
    "the 2.3.19.1 dsync-server that fails to delete INBOX ends with `X` and no finish item, so its \
     error class (NOTPOSSIBLE, 65 in a local run) never reaches the master: real `doveadm backup` \
     with the same remote command exits 75 too (checked by hand with a capturing wrapper)",
)];

/// Scenarios whose outcome depends on timing, with the reason. A failure is
/// reported and counted, but does not fail the test; a pass is fine.
const TIMING_DEPENDENT: &[(Variant, &str, &str)] = &[(
    Variant::HomingMaster,
    "rename_vs_delete",
    "the mail-recovery rule (differences.md #1) compares save and deletion times to the second: \
     when the replay saves the mail in the deletion's second, homing keeps it in a \
     `-recovered-` mailbox and exits 2 (no mail lost; Dovecot drops nothing here either)",
)];

/// Scenarios this replay does not reproduce even with Dovecot on both sides.
const REPLAY_LIMITS: &[(&str, &str)] = &[];

const USER_IN_MAIL: &str = "alice";
const THREADS: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    DoveadmOracle,
    HomingMaster,
    HomingSlave,
    HomingServerTcp,
    HomingServerTcps,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::DoveadmOracle => "doveadm both sides",
            Variant::HomingMaster => "homing master",
            Variant::HomingSlave => "homing slave",
            Variant::HomingServerTcp => "homing server tcp",
            Variant::HomingServerTcps => "homing server tcps",
        }
    }

    /// Variants where real doveadm is the master and homing serves B.
    fn homing_serves_b(self) -> bool {
        matches!(
            self,
            Variant::HomingSlave | Variant::HomingServerTcp | Variant::HomingServerTcps
        )
    }
}

/// A running `homing server` (as the mail user) that serves `maildir:%h/B`
/// for the users of one Dovecot instance, with plain and TLS listeners.
struct PeerServer {
    child: Child,
    tcp: String,
    tcps: String,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PeerServer {
    fn start(inst: &DovecotInstance) -> PeerServer {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let (uid, gid) = inst.vmail_ids();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let ca = test_support::TestCa::generate("homing scenario CA").expect("CA");
        let issued = ca
            .issue_server_cert(&["127.0.0.1", "localhost"])
            .expect("certificate");
        let ca_file = d.join("ca.pem");
        ca.write_cert(&ca_file).expect("CA file");
        std::fs::write(d.join("cert.pem"), &issued.cert_pem).expect("cert");
        std::fs::write(d.join("key.pem"), &issued.key_pem).expect("key");
        std::fs::write(d.join("password"), inst.doveadm_password()).expect("password");
        for f in ["cert.pem", "key.pem", "password"] {
            chown(d.join(f), Some(uid), Some(gid)).expect("chown");
        }
        let home_root = inst
            .home("x")
            .parent()
            .expect("homes directory")
            .to_path_buf();
        let (port, tls_port) = (
            test_support::free_port().expect("port"),
            test_support::free_port().expect("port"),
        );
        let mut child = Command::new(homing_bin())
            .env_clear()
            .arg("server")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--tls-listen", &format!("127.0.0.1:{tls_port}")])
            .arg("--tls-cert")
            .arg(d.join("cert.pem"))
            .arg("--tls-key")
            .arg(d.join("key.pem"))
            .arg("--password-file")
            .arg(d.join("password"))
            .args(["--home", &format!("{}/%u", home_root.display())])
            .args(["--mail-location", "maildir:%h/B"])
            .args(["--set", "mail_attribute_dict=file:%h/B-attributes"])
            .args(["--set", "auth_failure_delay=100ms"])
            // No replicator on this side.
            .args(["--set", "replicator_socket="])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .uid(uid)
            .gid(gid)
            .spawn()
            .expect("start homing server");
        for p in [port, tls_port] {
            let mut up = false;
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", p)).is_ok() {
                    up = true;
                    break;
                }
                if let Ok(Some(st)) = child.try_wait() {
                    panic!("homing server exited: {st}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(up, "homing server not listening on {p}");
        }
        PeerServer {
            child,
            tcp: format!("tcp:127.0.0.1:{port}"),
            tcps: format!("tcps:127.0.0.1:{tls_port}"),
            ca_file,
            _dir: dir,
        }
    }
}

fn homing_bin() -> &'static str {
    env!("CARGO_BIN_EXE_homing")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One scenario's replicas: `<home>/A` and `<home>/B` of one user.
struct Run<'a> {
    inst: &'a DovecotInstance,
    peer: Option<&'a PeerServer>,
    scenario: String,
    user: String,
    home: PathBuf,
    variant: Variant,
    last_state: String,
    lock_holder: Option<Child>,
    exits: Vec<(i32, i32)>,
    log: Vec<String>,
}

impl Run<'_> {
    fn loc(&self, side: &str) -> String {
        format!("maildir:{}/{side}", self.home.display())
    }
    fn attr_dict(&self, side: &str) -> String {
        format!("file:{}/{side}-attributes", self.home.display())
    }
    fn side_opts(&self, side: &str) -> Vec<String> {
        vec![
            "-o".into(),
            format!("mail_location={}", self.loc(side)),
            "-o".into(),
            format!("mail_attribute_dict={}", self.attr_dict(side)),
        ]
    }

    /// `doveadm [-f tab] -o ... CMD -u USER ARGS` on one replica.
    fn on(&self, side: &str, tab: bool, cmd: &[&str], args: &[&str]) -> Output {
        let mut c = self.inst.doveadm_command();
        if tab {
            c.args(["-f", "tab"]);
        }
        c.args(self.side_opts(side))
            .args(cmd)
            .args(["-u", &self.user])
            .args(args);
        c.output().expect("run doveadm")
    }

    fn on_ok(&self, side: &str, cmd: &[&str], args: &[&str]) -> Result<(), String> {
        let o = self.on(side, false, cmd, args);
        if o.status.success() {
            Ok(())
        } else {
            Err(format!("doveadm {cmd:?} {args:?} on {side}: {}", text(&o)))
        }
    }

    fn fixperm(&self) {
        let (uid, gid) = self.inst.vmail_ids();
        fn walk(p: &Path, uid: u32, gid: u32) {
            let _ = chown(p, Some(uid), Some(gid));
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        walk(&e.path(), uid, gid);
                    } else {
                        let _ = chown(e.path(), Some(uid), Some(gid));
                    }
                }
            }
        }
        walk(&self.home, uid, gid);
    }

    fn boxdir(&self, side: &str, mailbox: &str) -> PathBuf {
        let root = self.home.join(side);
        if mailbox == "INBOX" {
            root
        } else {
            root.join(format!(".{}", mailbox.replace('/', ".")))
        }
    }

    fn deliver(
        &self,
        side: &str,
        mailbox: &str,
        guid: &str,
        mid: &str,
        received: Option<i64>,
    ) -> Result<(), String> {
        let dir = self.boxdir(side, mailbox);
        if !dir.join("new").is_dir() {
            return Err(format!("deliver: no mailbox {side}:{mailbox}"));
        }
        let mut body = format!(
            "From: sender@example.com\nTo: {USER_IN_MAIL}@example.com\nSubject: {mid}\n\
             Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <{mid}@test>\n\nbody of {mid}\n"
        );
        // The recorded max-size scenario pads m2 to exceed the 2k limit.
        if self.scenario == "opt_max_size" && mid == "m2" {
            body.push_str(&"x".repeat(5000));
            body.push('\n');
        }
        let tmp = dir.join("tmp").join(guid);
        std::fs::write(&tmp, body).map_err(|e| e.to_string())?;
        if let Some(t) = received {
            let f = std::fs::File::options()
                .write(true)
                .open(&tmp)
                .map_err(|e| e.to_string())?;
            f.set_modified(UNIX_EPOCH + Duration::from_secs(t as u64))
                .map_err(|e| e.to_string())?;
        }
        std::fs::rename(&tmp, dir.join("new").join(guid)).map_err(|e| e.to_string())?;
        self.fixperm();
        self.on_ok(side, &["mailbox", "status"], &["messages", mailbox])
    }

    fn save(&self, side: &str, mailbox: &str, mid: &str) -> Result<(), String> {
        let mut c = self.inst.doveadm_command();
        c.args(self.side_opts(side))
            .args(["save", "-u", &self.user, "-m", mailbox])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|e| e.to_string())?;
        let msg = format!(
            "From: sender@example.com\nSubject: {mid}\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\
             Message-ID: <{mid}@test>\n\nbody of {mid}\n"
        );
        if let Some(mut i) = child.stdin.take() {
            i.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
        }
        let o = child.wait_with_output().map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!("save: {}", text(&o)))
        }
    }

    fn create(&self, side: &str, op: &str) -> Result<(), String> {
        let name = op.split(' ').nth(2).ok_or("create: no name")?;
        let _ = self.on(side, false, &["mailbox", "create"], &[name]);
        if op.contains("guid=") {
            let g = between(op, "guid=", " ");
            let uv = between(op, "uidvalidity=", ")");
            self.on_ok(
                side,
                &["mailbox", "update"],
                &["--mailbox-guid", g, "--uid-validity", uv, name],
            )?;
        }
        Ok(())
    }

    fn rotate_log(&self, side: &str) -> Result<(), String> {
        for _ in 0..3 {
            for op in ["add", "remove"] {
                let mut c = self.inst.doveadm_command();
                c.args(self.side_opts(side));
                for o in [
                    "mail_index_log_rotate_max_size=1",
                    "mail_index_log_rotate_min_size=1",
                    "mail_index_log_rotate_min_time=0",
                    "mail_index_log2_max_age=0",
                ] {
                    c.args(["-o", o]);
                }
                c.args([
                    "flags", op, "-u", &self.user, "\\Draft", "mailbox", "INBOX", "uid", "1",
                ]);
                let o = c.output().map_err(|e| e.to_string())?;
                if !o.status.success() {
                    return Err(format!("rotate: {}", text(&o)));
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, line: &str) -> Result<(), String> {
        if line.starts_with("(wait") {
            std::thread::sleep(Duration::from_millis(1100));
            return Ok(());
        }
        if line.starts_with("saved state string") {
            return Ok(());
        }
        if line.starts_with("another process holds") {
            let lock = self.home.join(".dovecot-sync.lock");
            let mut child = Command::new("python3")
                .args([
                    "-c",
                    "import fcntl,os,sys,time\nfd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT, 0o600)\nfcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(8)",
                ])
                .arg(&lock)
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("python3: {e}"))?;
            // Only once the holder says so is the lock held (a fixed wait
            // lost the race on a busy machine).
            let mut line = String::new();
            if let Some(out) = child.stdout.take() {
                use std::io::BufRead;
                let _ = std::io::BufReader::new(out).read_line(&mut line);
            }
            if line.trim() != "locked" {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the lock holder did not take the lock".into());
            }
            self.lock_holder = Some(child);
            return Ok(());
        }
        if line.starts_with("doveadm") {
            return self.sync(line);
        }
        let (side, op) = line.split_once(": ").ok_or("bad line")?;
        let side = side.to_string();
        let side = side.as_str();
        let words: Vec<&str> = op.split(' ').collect();
        match words[0] {
            "create" => self.create(side, op)?,
            "deliver" => {
                let mid = words[1];
                let guid = between(op, "guid=", ")");
                let mailbox = between(op, ") to ", " ");
                let received = op.find("received=").and_then(|i| parse_date(&op[i + 9..]));
                self.deliver(side, mailbox, guid, mid, received)?;
            }
            "save" => self.save(side, words[3], words[1])?,
            "flags" => {
                let flags = between(op, "'", "'");
                let uid = words.last().copied().unwrap_or("");
                let mailbox = between(op, "' on ", " uid");
                self.on_ok(
                    side,
                    &["flags", words[1]],
                    &[flags, "mailbox", mailbox, "uid", uid],
                )?;
            }
            "10" => {
                for _ in 0..5 {
                    for op in ["add", "remove"] {
                        self.on_ok(
                            side,
                            &["flags", op],
                            &["\\Draft", "mailbox", "INBOX", "uid", "1"],
                        )?;
                    }
                }
            }
            "200" => {
                for _ in 0..200 {
                    self.on_ok(side, &["mailbox", "subscribe"], &["INBOX"])?;
                    self.on_ok(side, &["mailbox", "unsubscribe"], &["INBOX"])?;
                }
            }
            "expunge" => self.on_ok(side, &["expunge"], &["mailbox", words[1], "uid", words[3]])?,
            "move" => self.on_ok(
                side,
                &["move"],
                &[words[5], "mailbox", words[1], "uid", words[3]],
            )?,
            "delete" => self.on_ok(side, &["mailbox", "delete"], &[words[2]])?,
            "rename" => self.on_ok(side, &["mailbox", "rename"], &[words[2], words[4]])?,
            "subscribe" => self.on_ok(side, &["mailbox", "subscribe"], &[words[1]])?,
            "unsubscribe" => self.on_ok(side, &["mailbox", "unsubscribe"], &[words[1]])?,
            "METADATA" => {
                let value = between(op, "'", "'");
                self.on_ok(
                    side,
                    &["mailbox", "metadata", "set"],
                    &[words[1], words[2], value],
                )?;
            }
            "force" => self.rotate_log(side)?,
            "set" => {
                let path = self.home.join(side).join("dovecot-uidlist");
                let t = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
                let t = t
                    .replace("\n1 :g01-m1", "\n1 Puidl-one O2 :g01-m1")
                    .replace("\n2 :g02-m2", "\n2 Puidl-two O1 :g02-m2");
                std::fs::write(&path, t).map_err(|e| e.to_string())?;
                self.fixperm();
            }
            "rm" => {
                let _ = std::fs::remove_dir_all(self.home.join(side));
                let _ = std::fs::remove_file(self.home.join(format!("{side}-attributes")));
            }
            other => return Err(format!("unknown operation {other}")),
        }
        Ok(())
    }

    fn sync(&mut self, line: &str) -> Result<(), String> {
        let (cmd, expect) = line.split_once(" => exit ").ok_or("no exit code")?;
        let expect: i32 = expect
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|x| x.parse().ok())
            .ok_or("exit code")?;
        let stream = " 'doveadm ... dsync-server' (B via stream protocol)";
        let remote = cmd.ends_with(stream);
        let expect = match STREAM_EXIT_CODES
            .iter()
            .find(|(n, local, _, _)| *n == self.scenario && *local == expect && !remote)
        {
            Some((_, _, over_stream, _)) if self.variant == Variant::HomingMaster => *over_stream,
            _ => expect,
        };
        let cmd = cmd
            .strip_suffix(stream)
            .map(|c| format!("{c} B"))
            .unwrap_or(cmd.to_string());
        let t: Vec<&str> = cmd.split(' ').collect();
        if t.len() < 3 || t[t.len() - 1] != "B" {
            return Err(format!("unparsed sync line {cmd}"));
        }
        let verb = t[1];
        let mut args: Vec<String> = Vec::new();
        let mut uses_state = false;
        let mut i = 2;
        while i < t.len() - 1 {
            if t[i] == "-s" {
                uses_state = true;
                let v = t.get(i + 1).copied().unwrap_or("");
                args.push("-s".into());
                args.push(if v.is_empty() {
                    String::new()
                } else {
                    self.last_state.clone()
                });
                i += 2;
                if v.is_empty() && t.get(i).copied() == Some("") {
                    i += 1;
                }
                continue;
            }
            if !t[i].is_empty() {
                args.push(t[i].to_string());
            }
            i += 1;
        }
        let out = match self.variant {
            Variant::DoveadmOracle => {
                let mut c = self.inst.doveadm_command();
                c.args(self.side_opts("A"))
                    .args([verb, "-u", &self.user])
                    .args(&args);
                if remote {
                    c.arg(self.dsync_server_cmd_string());
                } else {
                    c.arg(self.loc("B"));
                }
                c.output()
            }
            Variant::HomingMaster => {
                let mut c = Command::new(homing_bin());
                c.env_remove("HOMING_LOG")
                    .arg("-c")
                    .arg(self.inst.config_path())
                    .args(self.side_opts("A"))
                    .args([verb, "-u", &self.user])
                    .args(&args)
                    .args(["env", "-i", "PATH=/usr/bin:/bin", DOVEADM, "-c"])
                    .arg(self.inst.config_path())
                    .args(self.side_opts("B"))
                    .args(["dsync-server", "-u", &self.user]);
                c.output()
            }
            Variant::HomingSlave => {
                let mut c = self.inst.doveadm_command();
                c.args(self.side_opts("A"))
                    .args([verb, "-u", &self.user])
                    .args(&args);
                c.arg(format!(
                    "{} -o mail_location={} -o mail_attribute_dict={} dsync-server -u {}",
                    homing_bin(),
                    self.loc("B"),
                    self.attr_dict("B"),
                    self.user
                ));
                c.output()
            }
            Variant::HomingServerTcp | Variant::HomingServerTcps => {
                let peer = self.peer.ok_or("no homing server for this variant")?;
                let mut c = self.inst.doveadm_command();
                c.args(self.side_opts("A"));
                let dest = if self.variant == Variant::HomingServerTcps {
                    c.arg("-o")
                        .arg(format!("ssl_client_ca_file={}", peer.ca_file.display()));
                    &peer.tcps
                } else {
                    &peer.tcp
                };
                c.args([verb, "-u", &self.user]).args(&args).arg(dest);
                c.output()
            }
        }
        .map_err(|e| e.to_string())?;
        if let Some(mut l) = self.lock_holder.take() {
            let _ = l.kill();
            let _ = l.wait();
        }
        self.fixperm();
        let code = out.status.code().unwrap_or(-1);
        if uses_state {
            self.last_state = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
        }
        self.log
            .push(format!("{cmd} => {code}: {}", text(&out).trim()));
        self.exits.push((expect, code));
        Ok(())
    }

    fn dsync_server_cmd_string(&self) -> String {
        format!(
            "{DOVEADM} -c {} -o mail_location={} -o mail_attribute_dict={} dsync-server -u {}",
            self.inst.config_path().display(),
            self.loc("B"),
            self.attr_dict("B"),
            self.user
        )
    }

    /// Reads one replica back with doveadm.
    fn snapshot(&self, side: &str) -> Result<SideState, String> {
        let mut st = SideState::default();
        if !self.home.join(side).exists() {
            return Ok(st);
        }
        let o = self.on(
            side,
            true,
            &["mailbox", "status"],
            &["guid uidvalidity uidnext", "*"],
        );
        if !o.status.success() {
            return Err(format!("status {side}: {}", text(&o)));
        }
        let s = String::from_utf8_lossy(&o.stdout).to_string();
        let mut lines = s.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
        let col = |n: &str| header.iter().position(|h| *h == n);
        let (ci, cg, cv, cn) = (
            col("mailbox"),
            col("guid"),
            col("uidvalidity"),
            col("uidnext"),
        );
        for l in lines {
            let f: Vec<&str> = l.split('\t').collect();
            let get = |c: Option<usize>| c.and_then(|c| f.get(c)).copied().unwrap_or("");
            let name = get(ci).to_string();
            let mut mb = BoxState {
                guid: get(cg).to_string(),
                uidvalidity: get(cv).to_string(),
                uidnext: get(cn).to_string(),
                mails: Vec::new(),
            };
            let o = self.on(
                side,
                true,
                &["fetch"],
                &["uid guid hdr.message-id flags", "mailbox", &name, "all"],
            );
            let s = String::from_utf8_lossy(&o.stdout).to_string();
            for l in s.lines().skip(1) {
                let f: Vec<&str> = l.split('\t').collect();
                if f.len() < 4 {
                    continue;
                }
                let mid = f[2]
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .trim_end_matches("@test")
                    .to_string();
                let mut flags: Vec<String> = f[3]
                    .split(' ')
                    .filter(|x| !x.is_empty() && *x != "\\Recent")
                    .map(String::from)
                    .collect();
                flags.sort();
                mb.mails.push(MailEnd {
                    uid: f[0].parse().unwrap_or(0),
                    guid: f[1].to_string(),
                    mid,
                    flags,
                });
            }
            st.boxes.insert(name, mb);
        }
        let o = self.on(side, false, &["mailbox", "list"], &["-s"]);
        st.subs = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        Ok(st)
    }
}

/// Replaces the values Dovecot picks at random or from the clock (mailbox
/// GUIDs of auto-created mailboxes, time-based UIDVALIDITYs, GUIDs of
/// `doveadm save`d mails) by placeholders numbered in order of appearance,
/// so that only their equalities are compared.
fn normalize(a: &SideState, b: &SideState) -> (SideState, SideState) {
    let mut names: HashMap<String, String> = HashMap::new();
    let mut ph = |kind: &str, v: &str| -> String {
        let n = names.len();
        names
            .entry(format!("{kind}:{v}"))
            .or_insert_with(|| format!("<{kind}{n}>"))
            .clone()
    };
    let mut out = Vec::new();
    for s in [a, b] {
        let mut s = s.clone();
        for mb in s.boxes.values_mut() {
            if !mb.guid.starts_with("0000000000000000") {
                mb.guid = ph("mailbox-guid", &mb.guid);
            }
            if mb.uidvalidity.parse::<u64>().unwrap_or(0) > 1_000_000 {
                mb.uidvalidity = ph("uidvalidity", &mb.uidvalidity);
            }
            for m in &mut mb.mails {
                let hand_named = m.guid.starts_with('g') && m.guid.contains("-m");
                if !hand_named {
                    m.guid = ph("mail-guid", &m.guid);
                }
            }
        }
        out.push(s);
    }
    let b = out.pop().unwrap_or_default();
    let a = out.pop().unwrap_or_default();
    (a, b)
}

fn message_ids(s: &SideState) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for mb in s.boxes.values() {
        for x in &mb.mails {
            *m.entry(x.mid.clone()).or_insert(0) += 1;
        }
    }
    m
}

#[derive(Debug)]
enum Verdict {
    Pass,
    Known(String),
    Fail(String),
    Skipped(String),
}

fn run_scenario(
    inst: &DovecotInstance,
    peer: Option<&PeerServer>,
    user: &str,
    s: &Value,
    variant: Variant,
) -> Verdict {
    let name = s["name"].as_str().unwrap_or("?").to_string();
    let other_format = OTHER_FORMAT.iter().find(|(n, _)| *n == name);
    let known = KNOWN.iter().find(|(n, _)| *n == name);
    let ops: Vec<&str> = s["operations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str())
        .collect();
    if variant == Variant::DoveadmOracle && other_format.is_some() {
        return Verdict::Skipped("not a Maildir scenario".into());
    }
    if variant.homing_serves_b()
        && ops
            .iter()
            .any(|l| l.starts_with("doveadm backup") || l.starts_with("doveadm sync -1"))
    {
        return Verdict::Skipped("one-way operations".into());
    }
    let home = inst.home(user);
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::create_dir_all(&home);
    let mut run = Run {
        inst,
        peer,
        scenario: name.clone(),
        user: user.to_string(),
        home,
        variant,
        last_state: String::new(),
        lock_holder: None,
        exits: Vec::new(),
        log: Vec::new(),
    };
    run.fixperm();
    let setup: Vec<&str> = s["setup"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str())
        .collect();
    // The setup's own syncs are always Dovecot's (they only build the start state).
    let real_variant = variant;
    run.variant = Variant::DoveadmOracle;
    for l in &setup {
        if let Err(e) = run.step(l) {
            return Verdict::Fail(format!("setup `{l}`: {e}"));
        }
    }
    run.exits.clear();
    run.variant = real_variant;
    for l in &ops {
        if let Err(e) = run.step(l) {
            return Verdict::Fail(format!("operation `{l}`: {e}"));
        }
    }
    let (a, b) = match (run.snapshot("A"), run.snapshot("B")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Verdict::Fail(e),
    };
    let (ga, gb) = normalize(&a, &b);
    let (wa, wb) = normalize(&expected_side(&s["A"]), &expected_side(&s["B"]));
    let mut diffs = Vec::new();
    for (i, (want, got)) in run.exits.iter().enumerate() {
        // Exit 134 is Dovecot's own abort in the mbox scenario.
        if want != got && *want != 134 {
            diffs.push(format!("sync #{}: exit {got}, Dovecot {want}", i + 1));
        }
    }
    diffs.extend(diff_side("A", &wa, &ga));
    diffs.extend(diff_side("B", &wb, &gb));
    if diffs.is_empty() {
        return Verdict::Pass;
    }
    let detail = format!(
        "{}\n      log: {}",
        diffs.join("\n      "),
        run.log.join("\n           ")
    );
    let limit = REPLAY_LIMITS.iter().find(|(n, _)| *n == name);
    let reason = known.or(other_format).or(limit).map(|(_, r)| *r);
    match reason {
        Some(r)
            if variant != Variant::DoveadmOracle || other_format.is_some() || limit.is_some() =>
        {
            // Documented behaviour: every mail Dovecot kept still exists somewhere.
            let mut have = message_ids(&a);
            for (k, v) in message_ids(&b) {
                let e = have.entry(k).or_insert(0);
                *e = (*e).max(v);
            }
            let mut want = message_ids(&expected_side(&s["A"]));
            for (k, v) in message_ids(&expected_side(&s["B"])) {
                let e = want.entry(k).or_insert(0);
                *e = (*e).max(v);
            }
            let lost: Vec<&String> = want
                .keys()
                .filter(|k| !have.contains_key(*k))
                .filter(|k| !ALLOWED_ABSENT.iter().any(|(n, m, _)| *n == name && m == k))
                .collect();
            if lost.is_empty() {
                Verdict::Known(format!("{r}\n      {detail}"))
            } else {
                Verdict::Fail(format!("mail lost {lost:?} ({r})\n      {detail}"))
            }
        }
        _ => Verdict::Fail(detail),
    }
}

fn scenarios() -> Vec<Value> {
    let mut v = scenarios::load();
    if let Ok(only) = std::env::var("HOMING_SCENARIOS") {
        let only: BTreeSet<&str> = only.split(',').collect();
        v.retain(|s| only.contains(s["name"].as_str().unwrap_or("")));
    }
    v
}

/// Runs every scenario in `variant`, one private Dovecot per thread.
fn run_all(test: &str, variant: Variant) -> Option<Vec<(String, Verdict)>> {
    if !require_dovecot(test) {
        return None;
    }
    let all = scenarios();
    let threads = THREADS.min(all.len().max(1));
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for t in 0..threads {
            let all = &all;
            let results = &results;
            sc.spawn(move || {
                let mine: Vec<(usize, &Value)> = all
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % threads == t)
                    .collect();
                let users: Vec<String> = mine.iter().map(|(i, _)| format!("s{i}")).collect();
                let users_ref: Vec<&str> = users.iter().map(|s| s.as_str()).collect();
                let inst = DovecotInstance::start(InstanceOptions::new().users(&users_ref))
                    .expect("start a private Dovecot");
                let peer = matches!(
                    variant,
                    Variant::HomingServerTcp | Variant::HomingServerTcps
                )
                .then(|| PeerServer::start(&inst));
                for (i, s) in mine {
                    let name = s["name"].as_str().unwrap_or("?").to_string();
                    let started = SystemTime::now();
                    let v = run_scenario(&inst, peer.as_ref(), &format!("s{i}"), s, variant);
                    let secs = started.elapsed().map(|d| d.as_secs_f32()).unwrap_or(0.0);
                    eprintln!("[{}] {name}: {} ({secs:.1}s)", variant.label(), short(&v));
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((name, v));
                }
            });
        }
    });
    let mut r = results.into_inner().unwrap_or_else(|e| e.into_inner());
    r.sort_by(|a, b| a.0.cmp(&b.0));
    Some(r)
}

fn short(v: &Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Known(_) => "differs (known)",
        Verdict::Fail(_) => "FAIL",
        Verdict::Skipped(_) => "skipped",
    }
}

/// Prints the details and the summary line; returns the failures that are
/// not listed in [`OPEN_BUGS`] (and listed ones that pass).
fn report(variant: Variant, results: &[(String, Verdict)]) -> Vec<String> {
    let mut fails = Vec::new();
    let mut unexpected = Vec::new();
    let (mut pass, mut known, mut skipped) = (0, 0, 0);
    for (name, v) in results {
        match v {
            Verdict::Pass => pass += 1,
            Verdict::Known(d) => {
                known += 1;
                println!("KNOWN {name}: {d}");
            }
            Verdict::Skipped(why) => {
                skipped += 1;
                println!("SKIPPED {name}: {why}");
            }
            Verdict::Fail(d) => {
                let bug = OPEN_BUGS
                    .iter()
                    .find(|(v, n, _)| *v == variant && n == name);
                let timing = TIMING_DEPENDENT
                    .iter()
                    .find(|(v, n, _)| *v == variant && n == name);
                match (bug, timing) {
                    (Some((_, _, why)), _) => println!("FAIL (open bug: {why}) {name}: {d}"),
                    (None, Some((_, _, why))) => {
                        println!("FAIL (timing-dependent: {why}) {name}: {d}")
                    }
                    (None, None) => {
                        println!("FAIL {name}: {d}");
                        unexpected.push(name.clone());
                    }
                }
                fails.push(name.clone());
            }
        }
    }
    for (v, n, _) in OPEN_BUGS {
        if *v == variant
            && results
                .iter()
                .any(|(name, r)| name == n && !matches!(r, Verdict::Fail(_)))
        {
            println!("OPEN BUG LIST IS STALE: {n} no longer fails");
            unexpected.push(format!("{n} (listed as an open bug but passes)"));
        }
    }
    println!(
        "scenarios ({}): {pass} passed, {known} differ (known), {} failed{}",
        variant.label(),
        fails.len(),
        if skipped > 0 {
            format!(", {skipped} skipped")
        } else {
            String::new()
        }
    );
    unexpected
}

#[test]
fn scenarios_doveadm_oracle() {
    let Some(r) = run_all("scenarios_doveadm_oracle", Variant::DoveadmOracle) else {
        return;
    };
    let fails = report(Variant::DoveadmOracle, &r);
    assert!(
        fails.is_empty(),
        "the replay does not reproduce Dovecot's recording: {fails:?}"
    );
}

/// Whether this build of homing can open a Maildir location at all.
fn homing_has_maildir() -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = Command::new(homing_bin())
        .args([
            "-o",
            &format!("mail_location=maildir:{}/probe", dir.path().display()),
        ])
        .args(["sync", "-u", "probe", "true"])
        .output()
        .expect("run homing");
    !text(&o).contains("is not available in this build")
}

#[test]
fn scenarios_homing_master() {
    if !homing_has_maildir() {
        println!("SKIPPED: this build of homing cannot open a Maildir location");
        return;
    }
    let Some(r) = run_all("scenarios_homing_master", Variant::HomingMaster) else {
        return;
    };
    let fails = report(Variant::HomingMaster, &r);
    assert!(
        fails.is_empty(),
        "scenarios fail with homing as master: {fails:?}"
    );
}

#[test]
fn scenarios_homing_slave() {
    if !homing_has_maildir() {
        println!("SKIPPED: this build of homing cannot open a Maildir location");
        return;
    }
    let Some(r) = run_all("scenarios_homing_slave", Variant::HomingSlave) else {
        return;
    };
    let fails = report(Variant::HomingSlave, &r);
    assert!(
        fails.is_empty(),
        "scenarios fail with homing as slave: {fails:?}"
    );
}

#[test]
fn scenarios_homing_server_tcp() {
    scenarios_against_homing_server("scenarios_homing_server_tcp", Variant::HomingServerTcp);
}

#[test]
fn scenarios_homing_server_tcps() {
    scenarios_against_homing_server("scenarios_homing_server_tcps", Variant::HomingServerTcps);
}

fn scenarios_against_homing_server(test: &str, variant: Variant) {
    if !homing_has_maildir() {
        println!("SKIPPED: this build of homing cannot open a Maildir location");
        return;
    }
    let Some(r) = run_all(test, variant) else {
        return;
    };
    let fails = report(variant, &r);
    assert!(
        fails.is_empty(),
        "scenarios fail against homing server ({}): {fails:?}",
        variant.label()
    );
}

/// A small deterministic generator (xorshift64*), so that a failing case
/// can be replayed from its printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Random operation lines in the scenario format: deliveries, flag changes
/// and expunges on both replicas, interleaved with two-way syncs.
fn random_case(seed: u64) -> (Vec<String>, Vec<String>) {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let setup = vec![
        "A: create mailbox INBOX (guid=00000000000000000000000000000001 uidvalidity=1000)"
            .to_string(),
        "A: create mailbox Work (guid=000000000000000000000000000000a1 uidvalidity=2000)"
            .to_string(),
        "A: deliver m1 (guid=g01-m1) to INBOX".to_string(),
        "doveadm sync B => exit 0".to_string(),
    ];
    let mut ops = Vec::new();
    let mut n = 1;
    for _ in 0..3 {
        for _ in 0..2 + r.below(4) {
            let side = if r.below(2) == 0 { "A" } else { "B" };
            let mailbox = if r.below(3) == 0 { "Work" } else { "INBOX" };
            let uid = 1 + r.below(5);
            match r.below(6) {
                0..=2 => {
                    n += 1;
                    ops.push(format!(
                        "{side}: deliver m{n} (guid=g{n:02}-m{n}) to {mailbox}"
                    ));
                }
                3 => {
                    let flags =
                        ["\\Seen", "\\Flagged", "\\Answered $Work", "kw1"][r.below(4) as usize];
                    ops.push(format!(
                        "{side}: flags add '{flags}' on {mailbox} uid {uid}"
                    ));
                }
                4 => ops.push(format!(
                    "{side}: flags remove '\\Seen' on {mailbox} uid {uid}"
                )),
                _ => ops.push(format!("{side}: expunge {mailbox} uid {uid}")),
            }
        }
        let full = if r.below(2) == 0 { " -f" } else { "" };
        ops.push(format!("doveadm sync{full} B => exit 0"));
    }
    (setup, ops)
}

#[test]
fn random_operations_homing_vs_doveadm() {
    if !homing_has_maildir() {
        println!("SKIPPED: this build of homing cannot open a Maildir location");
        return;
    }
    if !require_dovecot("random_operations_homing_vs_doveadm") {
        return;
    }
    const CASES: u64 = 20;
    let users: Vec<String> = (0..CASES)
        .flat_map(|i| [format!("h{i}"), format!("d{i}")])
        .collect();
    let users_ref: Vec<&str> = users.iter().map(|s| s.as_str()).collect();
    let fails = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for t in 0..2u64 {
            let (fails, users_ref) = (&fails, &users_ref);
            sc.spawn(move || {
                let inst = DovecotInstance::start(InstanceOptions::new().users(users_ref))
                    .expect("start a private Dovecot");
                for case in (0..CASES).filter(|c| c % 2 == t) {
                    let (setup, ops) = random_case(case + 1);
                    let mut states = Vec::new();
                    let mut logs = Vec::new();
                    for (user, variant) in [
                        (format!("h{case}"), Variant::HomingMaster),
                        (format!("d{case}"), Variant::DoveadmOracle),
                    ] {
                        let home = inst.home(&user);
                        let _ = std::fs::remove_dir_all(&home);
                        let _ = std::fs::create_dir_all(&home);
                        let mut run = Run {
                            inst: &inst,
                            peer: None,
                            scenario: format!("random-{case}"),
                            user,
                            home,
                            variant: Variant::DoveadmOracle,
                            last_state: String::new(),
                            lock_holder: None,
                            exits: Vec::new(),
                            log: Vec::new(),
                        };
                        run.fixperm();
                        let mut err = None;
                        for l in &setup {
                            if let Err(e) = run.step(l) {
                                err = Some(format!("{l}: {e}"));
                            }
                        }
                        run.variant = variant;
                        // After each sync the replicas are read back, so a
                        // divergence is caught where it appears.
                        let mut snaps = Vec::new();
                        for l in &ops {
                            if let Err(e) = run.step(l) {
                                err = Some(format!("{l}: {e}"));
                            }
                            if l.starts_with("doveadm") {
                                snaps.push((run.snapshot("A"), run.snapshot("B")));
                            }
                        }
                        let codes: Vec<i32> = run.exits.iter().map(|e| e.1).collect();
                        states.push((snaps, codes, err));
                        logs.push(run.log.join("\n      "));
                    }
                    let (h, d) = (&states[0], &states[1]);
                    let mut problems = Vec::new();
                    if let Some(e) = h.2.as_ref().or(d.2.as_ref()) {
                        problems.push(e.clone());
                    }
                    if h.1 != d.1 {
                        problems.push(format!("exit codes: homing {:?}, doveadm {:?}", h.1, d.1));
                    }
                    for (i, (hs, ds)) in h.0.iter().zip(&d.0).enumerate() {
                        match (hs, ds) {
                            ((Ok(ha), Ok(hb)), (Ok(da), Ok(db))) => {
                                let mut dd = diff_side("A", da, ha);
                                dd.extend(diff_side("B", db, hb));
                                if !dd.is_empty() {
                                    problems.push(format!(
                                        "after sync #{}: {}",
                                        i + 1,
                                        dd.join("\n      ")
                                    ));
                                    break;
                                }
                            }
                            _ => problems.push(format!("after sync #{}: snapshot failed", i + 1)),
                        }
                    }
                    eprintln!(
                        "[random] case {case}: {}",
                        if problems.is_empty() {
                            "same as doveadm"
                        } else {
                            "DIFFERS"
                        }
                    );
                    if !problems.is_empty() {
                        fails
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!(
                            "case {case} (seed {}):\n    ops: {ops:?}\n    {}\n    homing log: {}",
                            case + 1,
                            problems.join("\n    "),
                            logs[0]
                        ));
                    }
                }
            });
        }
    });
    let fails = fails.into_inner().unwrap_or_else(|e| e.into_inner());
    // The open Maildir-store defect of OPEN_BUGS (RaiseStatus before the
    // renumbered saves of a UID conflict) shows up here too.
    let (known, other): (Vec<&String>, Vec<&String>) =
        fails.iter().partition(|f| f.contains("uids must increase"));
    for f in &known {
        println!("FAIL (open bug: Maildir store RaiseStatus before renumbered saves) {f}");
    }
    for f in &other {
        println!("FAIL {f}");
    }
    println!(
        "random operations: {} cases, {} same as doveadm, {} differ",
        CASES,
        CASES as usize - fails.len(),
        fails.len()
    );
    assert!(
        other.is_empty(),
        "{} random cases differ from doveadm for another reason than the open bug",
        other.len()
    );
}
