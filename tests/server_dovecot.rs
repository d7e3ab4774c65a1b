//! Real Dovecot 2.3 as the CLIENT of `homing server`: `doveadm sync/backup`
//! with `tcp:` and `tcps:` destinations (handshake, PLAIN, command line,
//! multiplexed reply, dsync through the built-in slave with a `memory:`
//! replica), a wrong password and an unknown user, with doveadm's own exit
//! codes and messages.

use std::sync::Arc;
use std::time::Duration;

use homing::server::{Server, ServerConfig, SlaveHandler, UserDbConfig};
use test_support::{dovecot_or_skip, InstanceOptions, TestCa};

struct Background {
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Arc<homing::server::ServerStats>>>,
    addr: std::net::SocketAddr,
    tls_addr: Option<std::net::SocketAddr>,
}

impl Background {
    fn start(cfg: ServerConfig) -> Background {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr, tls_addr, done) = rt.block_on(async move {
            let s = Server::new(cfg, Arc::new(SlaveHandler::default()))
                .unwrap()
                .bind()
                .await
                .unwrap();
            let addr = s.local_addrs()[0];
            let tls = s.tls_local_addrs().first().copied();
            let done = tokio::spawn(s.run(async {
                let _ = rx.await;
            }));
            (addr, tls, done)
        });
        Background {
            rt,
            stop: Some(tx),
            done: Some(done),
            addr,
            tls_addr,
        }
    }

    fn stop(mut self) -> Arc<homing::server::ServerStats> {
        let _ = self.stop.take().unwrap().send(());
        let done = self.done.take().unwrap();
        self.rt.block_on(done).unwrap()
    }
}

fn config(dir: &std::path::Path) -> ServerConfig {
    std::fs::write(dir.join("passwd"), "alice:x::::::\nbob:x::::::\n").unwrap();
    ServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        password: Some("s3cret".into()),
        userdb: UserDbConfig::PasswdFile(dir.join("passwd")),
        home_template: format!("{}/home/%u", dir.display()),
        mail_location: "memory:".into(),
        auth_failure_delay: Duration::from_millis(200),
        hostname: "homing-peer".into(),
        ..ServerConfig::default()
    }
}

#[test]
fn doveadm_sync_over_tcp_and_tcps_against_homing_server() {
    let ca = Arc::new(TestCa::generate("homing test CA").unwrap());
    let client = dovecot_or_skip!(InstanceOptions::new().users(&["alice", "nosuchuser"]));
    for (i, mbox) in ["INBOX", "INBOX", "Work"].iter().enumerate() {
        let msg = format!(
            "From: a@example.org\r\nTo: b@example.org\r\nSubject: m{i}\r\nMessage-ID: <m{i}@example.org>\r\n\r\nbody {i}\r\n"
        );
        client.save_message("alice", mbox, msg.as_bytes()).unwrap();
    }
    let before = client.snapshot("alice").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    let issued = ca.issue_server_cert(&["127.0.0.1", "localhost"]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &issued.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &issued.key_pem).unwrap();
    cfg.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.tls_cert = Some(dir.path().join("cert.pem"));
    cfg.tls_key = Some(dir.path().join("key.pem"));
    let ca_file = dir.path().join("ca.pem");
    ca.write_cert(&ca_file).unwrap();
    let server = Background::start(cfg);
    let tcp = format!("tcp:{}", server.addr);
    let tcps = format!("tcps:{}", server.tls_addr.unwrap());
    let pw = "doveadm_password=s3cret";
    let ca_opt = format!("ssl_client_ca_file={}", ca_file.display());

    // Two-way sync into an empty (memory) replica: alice's side is unchanged.
    let out = client
        .doveadm(["-o", pw, "sync", "-u", "alice", &tcp])
        .unwrap();
    assert_eq!(out.code(), Some(0), "sync tcp: {}", out.stderr_str());
    let out = client
        .doveadm(["-o", pw, "sync", "-1", "-u", "alice", &tcp])
        .unwrap();
    assert_eq!(out.code(), Some(0), "sync -1 tcp: {}", out.stderr_str());
    let out = client
        .doveadm(["-o", pw, "backup", "-u", "alice", &tcp])
        .unwrap();
    assert_eq!(out.code(), Some(0), "backup tcp: {}", out.stderr_str());
    let out = client
        .doveadm(["-o", pw, "-o", &ca_opt, "sync", "-u", "alice", &tcps])
        .unwrap();
    assert_eq!(out.code(), Some(0), "sync tcps: {}", out.stderr_str());
    before.assert_same(
        &client.snapshot("alice").unwrap(),
        "after syncs with homing server",
    );

    // Wrong password: doveadm's own message and exit code, as against Dovecot.
    let out = client
        .doveadm(["-o", "doveadm_password=wrong", "sync", "-u", "alice", &tcp])
        .unwrap();
    assert_eq!(out.code(), Some(75), "{}", out.stderr_str());
    assert!(
        out.stderr_str().contains("doveadm authentication failed"),
        "{}",
        out.stderr_str()
    );

    // A user the server does not know: the relayed log line and exit 67.
    let out = client
        .doveadm(["-o", pw, "sync", "-u", "nosuchuser", &tcp])
        .unwrap();
    assert_eq!(out.code(), Some(67), "{}", out.stderr_str());
    let err = out.stderr_str();
    assert!(err.contains("Unknown user in remote"), "{err}");
    assert!(err.contains("User doesn't exist"), "{err}");

    // tcps with a CA the certificate does not chain to: refused by doveadm.
    let other = TestCa::generate("other CA").unwrap();
    let other_file = dir.path().join("other.pem");
    other.write_cert(&other_file).unwrap();
    let bad_ca = format!("ssl_client_ca_file={}", other_file.display());
    let out = client
        .doveadm(["-o", pw, "-o", &bad_ca, "sync", "-u", "alice", &tcps])
        .unwrap();
    assert_ne!(out.code(), Some(0), "untrusted certificate accepted");

    let stats = server.stop();
    assert_eq!(
        stats.sessions_ok.load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    assert!(
        stats
            .auth_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

/// Full syncs through `homing server` onto a Maildir that Dovecot then reads:
/// the client's user `bob` is served from `alice`'s Maildir of the same
/// instance, so both ends can be compared with doveadm.
#[test]
fn doveadm_sync_and_backup_over_tcp_reach_the_same_maildir_state() {
    let inst = dovecot_or_skip!(InstanceOptions::new().users(&["bob", "alice"]));
    for (i, mbox) in ["INBOX", "INBOX", "Work", "Work/Reports"]
        .iter()
        .enumerate()
    {
        let msg = format!(
            "From: a@example.org\r\nSubject: s{i}\r\nMessage-ID: <s{i}@example.org>\r\n\r\nbody {i}\r\n"
        );
        inst.save_message("bob", mbox, msg.as_bytes()).unwrap();
    }
    // alice's mail root, owned by the mail user so Dovecot can read it.
    let root = inst.mail_dir("alice");
    std::fs::create_dir_all(&root).unwrap();
    let (uid, gid) = inst.vmail_ids();
    let mut p = root.as_path();
    while p.starts_with(inst.home("alice")) {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        match p.parent() {
            Some(q) => p = q,
            None => break,
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    std::fs::write(
        dir.path().join("passwd"),
        format!("bob:x::::::userdb_mail=maildir:{}\n", root.display()),
    )
    .unwrap();
    cfg.home_template = inst.home("alice").display().to_string();
    let server = Background::start(cfg);
    let tcp = format!("tcp:{}", server.addr);
    let pw = "doveadm_password=s3cret";

    let out = inst.doveadm(["-o", pw, "sync", "-u", "bob", &tcp]).unwrap();
    assert_eq!(
        out.code(),
        Some(0),
        "sync: {}\n{}",
        out.stderr_str(),
        inst.log()
    );
    inst.snapshot("alice").unwrap().assert_same(
        &inst.snapshot("bob").unwrap(),
        "after two-way sync through homing server",
    );

    // A change on the client side, then a backup (one-way, client wins).
    inst.save_message(
        "bob",
        "INBOX",
        b"Subject: later\r\nMessage-ID: <later@example.org>\r\n\r\nx\r\n",
    )
    .unwrap();
    let out = inst
        .doveadm(["-o", pw, "backup", "-u", "bob", &tcp])
        .unwrap();
    assert_eq!(
        out.code(),
        Some(0),
        "backup: {}\n{}",
        out.stderr_str(),
        inst.log()
    );
    inst.snapshot("alice").unwrap().assert_same(
        &inst.snapshot("bob").unwrap(),
        "after backup through homing server",
    );

    // One-way merge (`-1`) of a new client mail.
    inst.save_message(
        "bob",
        "Work",
        b"Subject: oneway\r\nMessage-ID: <oneway@example.org>\r\n\r\ny\r\n",
    )
    .unwrap();
    let out = inst
        .doveadm(["-o", pw, "sync", "-1", "-u", "bob", &tcp])
        .unwrap();
    assert_eq!(
        out.code(),
        Some(0),
        "sync -1: {}\n{}",
        out.stderr_str(),
        inst.log()
    );
    inst.snapshot("alice").unwrap().assert_same(
        &inst.snapshot("bob").unwrap(),
        "after sync -1 through homing server",
    );

    // A change on the server's store, then a reverse backup (server wins).
    inst.save_message(
        "alice",
        "INBOX",
        b"Subject: remote\r\nMessage-ID: <remote@example.org>\r\n\r\nz\r\n",
    )
    .unwrap();
    let out = inst
        .doveadm(["-o", pw, "backup", "-R", "-u", "bob", &tcp])
        .unwrap();
    assert_eq!(
        out.code(),
        Some(0),
        "backup -R: {}\n{}",
        out.stderr_str(),
        inst.log()
    );
    let a = inst.snapshot("alice").unwrap();
    a.assert_same(
        &inst.snapshot("bob").unwrap(),
        "after backup -R through homing server",
    );
    assert_eq!(a.message_count(), 7);
    let stats = server.stop();
    assert_eq!(
        stats.sessions_ok.load(std::sync::atomic::Ordering::Relaxed),
        4
    );
}
