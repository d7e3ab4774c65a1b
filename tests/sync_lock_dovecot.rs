//! The per-user sync lock (`-l SECS`, `<home>/.dovecot-sync.lock`) between
//! homing and a real Dovecot 2.3: whichever holds it, the other's
//! `sync -l 2` waits two seconds and fails with exit code 75, and the lock
//! file is gone afterwards.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::{dovecot_or_skip, DovecotInstance, InstanceOptions, DOVEADM};

const USER: &str = "alice";

fn homing_bin() -> &'static str {
    env!("CARGO_BIN_EXE_homing")
}

struct Setup {
    inst: DovecotInstance,
    home: PathBuf,
}

impl Setup {
    fn loc(&self, side: &str) -> String {
        format!("mail_location=maildir:{}/{side}", self.home.display())
    }

    /// The remote command serving replica B; `slow`: it reads nothing for
    /// four seconds after its handshake, so the master holds the lock
    /// that long.
    fn remote(&self, slow: bool) -> Vec<String> {
        let server = format!(
            "{DOVEADM} -c {} -o {} dsync-server -u {USER}",
            self.inst.config_path().display(),
            self.loc("B")
        );
        let script = if slow {
            format!("(sleep 4; cat) | {server}")
        } else {
            server
        };
        vec![
            "env".into(),
            "-i".into(),
            "PATH=/usr/bin:/bin".into(),
            "sh".into(),
            "-c".into(),
            script,
        ]
    }

    /// `-o <A> sync -l SECS -u USER <remote>`: the arguments both sync
    /// commands take.
    fn sync_args(&self, lock_secs: u32, slow: bool) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "-o".into(),
            self.loc("A"),
            "sync".into(),
            "-l".into(),
            lock_secs.to_string(),
            "-u".into(),
            USER.into(),
        ];
        v.extend(self.remote(slow));
        v
    }

    fn doveadm_sync(&self, lock_secs: u32, slow: bool) -> Command {
        let mut c = self.inst.doveadm_command();
        c.args(self.sync_args(lock_secs, slow));
        c
    }

    fn homing_sync(&self, lock_secs: u32, slow: bool) -> Command {
        let mut c = Command::new(homing_bin());
        c.env_remove("HOMING_LOG")
            .arg("-c")
            .arg(self.inst.config_path())
            .args(self.sync_args(lock_secs, slow));
        c
    }
}

/// The instance with one mail in replica A.
fn setup(inst: DovecotInstance) -> Setup {
    let home = inst.home(USER);
    let s = Setup { inst, home };
    let out = s
        .inst
        .doveadm_with_input(
            ["-o", &s.loc("A"), "save", "-u", USER, "-m", "INBOX"],
            Some(b"Subject: lock test\n\nbody\n"),
        )
        .expect("run doveadm save")
        .ok();
    assert!(out.is_ok(), "doveadm save: {out:?}");
    s
}

fn spawn(mut c: Command) -> Child {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sync")
}

/// Waits until the lock file appears (the holder has taken the lock).
fn wait_for_lock(lock: &Path, holder: &mut Child) {
    let start = Instant::now();
    while !lock.exists() {
        if let Ok(Some(st)) = holder.try_wait() {
            panic!("the lock holder exited early: {st}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{lock:?} never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The waiting sync (`-l 2`) failed with exit code 75 after about 2 s.
fn assert_gave_up_after_2_s(who: &str, w: &Output, took: Duration) {
    assert_eq!(w.status.code(), Some(75), "{who}: {}", text(w));
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{who} gave up after {took:?}"
    );
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `waiter` while `holder` holds the lock; returns the waiter's
/// output, how long it ran, and the holder's output.
fn contend(s: &Setup, holder: Command, mut waiter: Command) -> (Output, Duration, Output) {
    let lock = s.home.join(".dovecot-sync.lock");
    let mut h = spawn(holder);
    wait_for_lock(&lock, &mut h);
    let t = Instant::now();
    let w = waiter.output().expect("run waiting sync");
    let took = t.elapsed();
    let h = h.wait_with_output().expect("wait for the holder");
    assert!(!lock.exists(), "lock file left behind");
    (w, took, h)
}

#[test]
fn dovecot_holds_the_lock_homing_waits_and_fails() {
    let s = setup(dovecot_or_skip!(InstanceOptions::new()));
    let (w, took, h) = contend(&s, s.doveadm_sync(30, true), s.homing_sync(2, false));
    assert_gave_up_after_2_s("homing", &w, took);
    assert!(text(&w).contains("Couldn't lock"), "{}", text(&w));
    assert_eq!(h.status.code(), Some(0), "doveadm holder: {}", text(&h));
    // Without contention homing takes and releases the lock.
    let o = s.homing_sync(2, false).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!s.home.join(".dovecot-sync.lock").exists());
    s.inst.assert_log_clean();
}

#[test]
fn homing_holds_the_lock_dovecot_waits_and_fails() {
    let s = setup(dovecot_or_skip!(InstanceOptions::new()));
    let (w, took, h) = contend(&s, s.homing_sync(30, true), s.doveadm_sync(2, false));
    assert_gave_up_after_2_s("doveadm", &w, took);
    // Dovecot waited on the lock (a file it cannot open fails at once).
    assert!(
        text(&w).contains("Timed out after 2 seconds"),
        "{}",
        text(&w)
    );
    assert_eq!(h.status.code(), Some(0), "homing holder: {}", text(&h));
}
