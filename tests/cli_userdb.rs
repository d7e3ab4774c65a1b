//! The command line with a real Dovecot's configuration and userdb: user
//! lookups through the auth-userdb socket and a passwd-file, `~` mail
//! locations, files owned by the user, unknown users, `-A` and `-F`.
//! Skipped when Dovecot is not installed.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use homing::cli::options::Settings;
use test_support::{dovecot_or_skip, small_message, DovecotInstance, InstanceOptions};

fn homing() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_homing"));
    c.env_remove("HOMING_LOG").env("HOMING_NO_PROGRESS", "1");
    c
}

fn run(c: &mut Command) -> (i32, String, String) {
    let out = c.output().expect("run homing");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scratch directory the mail user (vmail) may write in, as doveadm
/// runs as that user.
fn scratch(inst: &DovecotInstance) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let (uid, gid) = inst.vmail_ids();
    std::os::unix::fs::chown(t.path(), Some(uid), Some(gid)).unwrap();
    t
}

/// `doveadm save`s `small_message(id)` for `user` into the Maildir at `dir`
/// (not the user's own mail location).
fn save_into(inst: &DovecotInstance, dir: &Path, user: &str, id: &str) {
    inst.doveadm_with_input(
        [
            "-o",
            &format!("mail_location=maildir:{}", dir.display()),
            "save",
            "-u",
            user,
        ],
        Some(&small_message(id)[..]),
    )
    .unwrap()
    .ok()
    .unwrap();
}

/// Every file and directory below `dir` whose owner is not `uid`.
fn not_owned_by(dir: &Path, uid: u32) -> Vec<String> {
    let mut bad = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.uid() != uid {
                bad.push(format!("{} (uid {})", p.display(), md.uid()));
            }
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    bad
}

fn message_ids(inst: &DovecotInstance, user: &str) -> Vec<String> {
    let out = inst
        .doveadm_user(user, &["fetch", "hdr.message-id", "mailbox", "*"])
        .unwrap_or_default();
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        .filter(|v| v.starts_with('<'))
        .collect();
    v.sort();
    v
}

#[test]
fn lookup_and_listing_through_the_auth_socket() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&["alice", "bob"]));
    let settings = Settings::load(Some(inst.config_path()), &[]).unwrap();
    let db = settings.userdb().expect("a configuration names a userdb");
    let (uid, gid) = inst.vmail_ids();
    let a = db.lookup("alice").unwrap().expect("alice exists");
    assert_eq!(a.user, "alice");
    assert_eq!((a.uid, a.gid), (Some(uid), Some(gid)));
    assert_eq!(
        a.home.as_deref(),
        Some(inst.home("alice").to_str().unwrap())
    );
    assert!(db.lookup("nobody-here").unwrap().is_none());
    let mut users: Vec<String> = db.list().unwrap().map(Result::unwrap).collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);

    // The same answers from the passwd-file when the socket is gone.
    let mut direct = db.clone();
    direct.socket = Some(inst.root().join("no-such-socket"));
    let a2 = direct
        .lookup("alice")
        .unwrap()
        .expect("alice in the passwd-file");
    assert_eq!((a2.uid, a2.home.clone()), (a.uid, a.home.clone()));
    assert!(direct.lookup("nobody-here").unwrap().is_none());
    assert_eq!(direct.list().unwrap().count(), 2);
}

#[test]
fn home_relative_location_and_files_owned_by_the_user() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&["alice"]));
    inst.save_message("alice", "INBOX", &small_message("a1"))
        .unwrap();
    let tmp = scratch(&inst);
    // A copy of alice's mail, then b1 saved there by Dovecot: the two-way
    // sync writes b1 into alice's `~/Maildir` (the config's mail_location).
    let side = tmp.path().join("side");
    let (c, _, err) = run(homing()
        .arg("-c")
        .arg(inst.config_path())
        .args(["backup", "-u", "alice"])
        .arg(format!("maildir:{}", side.display())));
    assert_eq!(c, 0, "{err}");
    save_into(&inst, &side, "alice", "b1");
    let (c, _, err) = run(homing()
        .arg("-c")
        .arg(inst.config_path())
        .args(["sync", "-u", "alice"])
        .arg(format!("maildir:{}", side.display())));
    assert_eq!(c, 0, "{err}");
    assert_eq!(message_ids(&inst, "alice"), ["<a1@test>", "<b1@test>"]);
    let (uid, _) = inst.vmail_ids();
    let bad = not_owned_by(&inst.home("alice"), uid);
    assert!(bad.is_empty(), "files not owned by the mail user: {bad:?}");
    inst.assert_log_clean();
}

#[test]
fn new_user_home_is_created_as_the_user() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&["carol"]));
    // A home that does not exist yet: created on the way, as the user.
    std::fs::remove_dir_all(inst.home("carol")).unwrap();
    let tmp = scratch(&inst);
    let src = tmp.path().join("src");
    save_into(&inst, &src, "carol", "c1");
    let (c, _, err) = run(homing()
        .arg("-c")
        .arg(inst.config_path())
        .args(["backup", "-R", "-u", "carol"])
        .arg(format!("maildir:{}", src.display())));
    assert_eq!(c, 0, "{err}");
    let (uid, gid) = inst.vmail_ids();
    let md = std::fs::metadata(inst.home("carol")).unwrap();
    assert_eq!((md.uid(), md.gid()), (uid, gid));
    assert!(not_owned_by(&inst.home("carol"), uid).is_empty());
    assert_eq!(message_ids(&inst, "carol"), ["<c1@test>"]);
}

#[test]
fn unknown_user_and_unreachable_userdb() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&["alice"]));
    let (c, _, err) = run(homing().arg("-c").arg(inst.config_path()).args([
        "sync",
        "-u",
        "nobody-here",
        "memory:",
    ]));
    assert_eq!(c, 67, "{err}");
    assert!(
        err.contains("doveadm(nobody-here): Error: User doesn't exist"),
        "{err}"
    );
    let real = inst
        .doveadm(["sync", "-u", "nobody-here", "maildir:/nonexistent/x"])
        .unwrap();
    assert_eq!(real.code(), Some(67));

    // dsync-server looks the user up too.
    let (c, _, err) =
        run(homing()
            .arg("-c")
            .arg(inst.config_path())
            .args(["dsync-server", "-u", "nobody-here"]));
    assert_eq!(c, 67, "{err}");

    // A config naming a userdb that cannot be reached and no passwd-file:
    // the lookup fails as doveadm's does (75).
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            "base_dir = {}\nmail_location = maildir:~/Maildir\nuserdb {{\n  driver = static\n}}\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    let (c, _, err) = run(homing()
        .arg("-c")
        .arg(&conf)
        .args(["sync", "-u", "alice", "memory:"]));
    assert_eq!(c, 75, "{err}");
    assert!(err.contains("User lookup failed"), "{err}");
    // ... unless the mail location is given: then no userdb is needed.
    let (c, _, err) = run(homing()
        .arg("-c")
        .arg(&conf)
        .arg("-o")
        .arg(format!("mail_location=maildir:{}/m", tmp.path().display()))
        .args(["sync", "-u", "alice", "memory:"]));
    assert_eq!(c, 0, "{err}");
}

#[test]
fn all_users_and_user_file_sync_one_after_another() {
    let a = dovecot_or_skip!(InstanceOptions::new().users(&["alice", "bob"]));
    let b = dovecot_or_skip!(InstanceOptions::new().users(&["alice", "bob"]));
    a.save_message("alice", "INBOX", &small_message("al1"))
        .unwrap();
    a.save_message("bob", "INBOX", &small_message("bo1"))
        .unwrap();
    let remote_cmd = format!(
        "env -i PATH=/usr/bin:/bin /usr/bin/doveadm -c {} dsync-server -u%u",
        b.config_path().display()
    );
    let (c, out, err) = run(homing()
        .arg("-c")
        .arg(a.config_path())
        .arg("-o")
        .arg(format!("dsync_remote_cmd={remote_cmd}"))
        .args(["backup", "-A", "-s", "", "remote:peer"]));
    assert_eq!(c, 0, "{err}");
    assert_eq!(message_ids(&b, "alice"), ["<al1@test>"]);
    assert_eq!(message_ids(&b, "bob"), ["<bo1@test>"]);
    // One state per user, each with its own user's name.
    let users: Vec<&str> = out.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    assert_eq!(users.len(), 2, "{out}");
    assert!(users.contains(&"alice") && users.contains(&"bob"), "{out}");

    // -F: a user that no longer exists is skipped, the others synced.
    a.save_message("bob", "INBOX", &small_message("bo2"))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("users");
    std::fs::write(&list, "ghost\nbob\n").unwrap();
    let (c, _, err) = run(homing()
        .arg("-c")
        .arg(a.config_path())
        .arg("-o")
        .arg(format!("dsync_remote_cmd={remote_cmd}"))
        .args(["backup", "-F"])
        .arg(&list)
        .arg("remote:peer"));
    assert_eq!(c, 0, "{err}");
    assert!(
        err.contains("doveadm(ghost): Info: User no longer exists, skipping"),
        "{err}"
    );
    assert_eq!(message_ids(&b, "bob"), ["<bo1@test>", "<bo2@test>"]);

    // A user mask selects from the listing (case-insensitive).
    a.save_message("alice", "INBOX", &small_message("al2"))
        .unwrap();
    let (c, _, err) = run(homing()
        .arg("-c")
        .arg(a.config_path())
        .arg("-o")
        .arg(format!("dsync_remote_cmd={remote_cmd}"))
        .args(["backup", "-u", "AL*", "remote:peer"]));
    assert_eq!(c, 0, "{err}");
    assert_eq!(message_ids(&b, "alice"), ["<al1@test>", "<al2@test>"]);

    // -S with -A: the users are listed here, each sent to the server; with
    // no server at the socket the run stops at the first user.
    let (c, _, err) = run(homing().arg("-c").arg(a.config_path()).args([
        "sync",
        "-A",
        "-S",
        "/nonexistent/doveadm-server",
        "remote:peer",
    ]));
    assert_eq!(c, 75);
    assert!(
        err.contains("connect(/nonexistent/doveadm-server)"),
        "{err}"
    );
    assert_eq!(err.matches("Command sync failed").count(), 1, "{err}");
    a.assert_log_clean();
    b.assert_log_clean();
}

#[test]
fn no_progress_bar_when_stderr_is_not_a_terminal() {
    let mut c = Command::new(env!("CARGO_BIN_EXE_homing"));
    c.env_remove("HOMING_LOG").env_remove("HOMING_NO_PROGRESS");
    let (code, _, err) =
        run(c.args(["-o", "mail_location=memory:", "sync", "-u", "a", "memory:b"]));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("mailboxes"), "{err}");
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
}

/// A master that stops in the middle of a session: `homing dsync-server`
/// fails with 75, as `doveadm dsync-server` does on the same input.
#[test]
fn dsync_server_fails_like_doveadm_when_the_master_stops_mid_session() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&["alice"]));
    let capture = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/captures/01-first-sync.c2s"
    ))
    .unwrap();
    // Past the handshake and the mailbox tree, inside a mail body.
    let cut = &capture[..3000];
    let tmp = scratch(&inst);
    let real = inst
        .doveadm_with_input(
            [
                "-o",
                &format!("mail_location=maildir:{}/d", tmp.path().display()),
                "-o",
                &format!("mail_attribute_dict=file:{}/attrs", tmp.path().display()),
                "dsync-server",
                "-u",
                "alice",
            ],
            Some(cut),
        )
        .unwrap();
    let mut child = homing()
        .arg("-o")
        .arg(format!("mail_location=maildir:{}/h", tmp.path().display()))
        .args(["dsync-server", "-u", "alice"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(cut);
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(real.code(), Some(75), "{}", real.stderr_str());
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(err.contains("dsync-remote(alice): Error:"), "{err}");
}

/// Debian's stock configuration tree, copied and edited as an admin would
/// (passwd-file auth, a Maildir location, a local.conf): homing finds the
/// same settings as `doveconf`, and syncs a user from its passwd-file.
#[test]
fn debian_default_configuration_tree() {
    let stock = Path::new("/etc/dovecot");
    if !test_support::require_dovecot("debian_default_configuration_tree") {
        return;
    }
    if !stock.join("conf.d/10-mail.conf").exists() {
        eprintln!("skipped: no stock /etc/dovecot tree");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    let st = Command::new("cp")
        .arg("-r")
        .arg(stock)
        .arg(&etc)
        .status()
        .unwrap();
    assert!(st.success());
    let edit = |file: &str, from: &str, to: &str| {
        let p = etc.join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{file} has no '{from}'");
        std::fs::write(&p, text.replace(from, to)).unwrap();
    };
    edit(
        "conf.d/10-auth.conf",
        "!include auth-system.conf.ext",
        "#!include auth-system.conf.ext\n!include auth-passwdfile.conf.ext",
    );
    let users = tmp.path().join("users");
    edit(
        "conf.d/auth-passwdfile.conf.ext",
        "/etc/dovecot/users",
        users.to_str().unwrap(),
    );
    edit(
        "conf.d/10-mail.conf",
        "mail_location = mbox:~/mail:INBOX=/var/mail/%u",
        "mail_location = maildir:~/Maildir",
    );
    let run_dir = tmp.path().join("run");
    std::fs::write(
        etc.join("local.conf"),
        format!(
            "base_dir = {}\ndoveadm_password = s3cret\nplugin {{\n  mail_replica = tcp:peer:12345\n}}\n",
            run_dir.display()
        ),
    )
    .unwrap();
    let home = tmp.path().join("home/alice");
    std::fs::write(
        &users,
        format!(
            "alice:{{PLAIN}}x:0:0::{}::userdb_quota_rule=*:storage=1G\n",
            home.display()
        ),
    )
    .unwrap();
    let conf = etc.join("dovecot.conf");
    let settings = Settings::load(Some(&conf), &[]).unwrap();
    let doveconf = |key: &str| {
        let out = Command::new("doveconf")
            .arg("-c")
            .arg(&conf)
            .args(["-h", key])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    for key in ["mail_location", "base_dir", "doveadm_password"] {
        assert_eq!(settings.get(key).unwrap_or(""), doveconf(key), "{key}");
    }
    assert_eq!(settings.get("mail_replica"), Some("tcp:peer:12345"));
    assert_eq!(settings.userdbs.len(), 1, "{:?}", settings.userdbs);
    assert_eq!(settings.userdbs[0].driver, "passwd-file");
    // No Dovecot runs with this base_dir: the passwd-file answers.
    let (c, _, err) = run(homing()
        .arg("-c")
        .arg(&conf)
        .args(["sync", "-u", "alice", "memory:"]));
    assert_eq!(c, 0, "{err}");
    assert!(home.join("Maildir").is_dir());
    let (c, _, err) = run(homing()
        .arg("-c")
        .arg(&conf)
        .args(["sync", "-u", "bob", "memory:"]));
    assert_eq!(c, 67, "{err}");
}
