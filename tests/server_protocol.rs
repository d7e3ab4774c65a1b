//! `homing server` at the protocol level: the captured clients' bytes are
//! replayed against an in-process server and its answers compared with what
//! real Dovecot answered (`fixtures/captures/1[2-7]-*`), plus the security
//! rules (nothing before authentication, slowed failures, name validation,
//! limits), per-user locking, the session bound and shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use homing::server::{
    MailUser, Server, ServerConfig, SessionFuture, SessionHandler, SessionIo, SessionOutcome,
    SessionRequest, SlaveHandler, UserDbConfig,
};
use homing::transport::wire::{DemuxEvent, Demuxer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

fn capture(name: &str) -> Vec<u8> {
    let p = format!("{}/fixtures/captures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Splits a client's bytes after the n-th LF.
fn after_lines(data: &[u8], n: usize) -> usize {
    let mut pos = 0;
    for _ in 0..n {
        pos += data[pos..].iter().position(|b| *b == b'\n').unwrap() + 1;
    }
    pos
}

fn demux(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut d = Demuxer::new();
    let (mut ch0, mut logs) = (Vec::new(), Vec::new());
    let mut off = 0;
    while off < data.len() {
        let (used, ev) = d.next(&data[off..], usize::MAX);
        off += used;
        match ev {
            Some(DemuxEvent::Data(b)) => ch0.extend_from_slice(b),
            Some(DemuxEvent::Log { level, text }) => {
                logs.push(level.to_byte());
                logs.extend_from_slice(text.as_bytes());
                logs.push(b'\n');
            }
            None => break,
        }
    }
    (ch0, logs)
}

/// A handler that writes a fixed dsync stream while reading the client's to
/// its end, and records what it was asked.
#[derive(Clone, Default)]
struct Replay {
    output: Arc<Vec<u8>>,
    calls: Arc<std::sync::Mutex<Vec<(String, bool)>>>,
    received: Arc<std::sync::Mutex<Vec<u8>>>,
    /// Sessions wait for this many permits of the gate before ending.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    running: Arc<AtomicUsize>,
    max_running: Arc<AtomicUsize>,
}

impl SessionHandler for Replay {
    fn run(&self, req: SessionRequest, io: SessionIo) -> SessionFuture {
        let me = self.clone();
        Box::pin(async move {
            me.calls
                .lock()
                .unwrap()
                .push((req.user.name.clone(), req.args.replicator_notify));
            let now = me.running.fetch_add(1, Ordering::SeqCst) + 1;
            me.max_running.fetch_max(now, Ordering::SeqCst);
            let SessionIo {
                mut reader,
                mut writer,
                ..
            } = io;
            let out = me.output.clone();
            let w = async move {
                writer.write_all(&out).await?;
                writer.shutdown().await
            };
            let r = async {
                let mut got = Vec::new();
                // The client keeps its side open; stop at its final `X`.
                let mut buf = [0u8; 4096];
                loop {
                    let n = reader.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if got.ends_with(b"\nX\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(got)
            };
            let (wr, rr) = tokio::join!(w, r);
            if let Some(g) = &me.gate {
                let _ = g.acquire().await.map(|p| p.forget());
            }
            me.running.fetch_sub(1, Ordering::SeqCst);
            me.received.lock().unwrap().extend(rr.unwrap_or_default());
            match wr {
                Ok(()) => SessionOutcome::success(),
                Err(e) => SessionOutcome::failed(75, e.to_string()),
            }
        })
    }
}

struct Running {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Arc<homing::server::ServerStats>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn stop(mut self) -> Arc<homing::server::ServerStats> {
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap()
    }
}

fn base_config(dir: &std::path::Path) -> ServerConfig {
    let passwd = dir.join("passwd");
    std::fs::write(
        &passwd,
        "alice:x:::::: \nbob:x::::::\ndave:x:::::: userdb_noreplicate=y\n",
    )
    .unwrap();
    let mut c = ServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        password: Some("s3cret".into()),
        userdb: UserDbConfig::PasswdFile(passwd),
        home_template: format!("{}/home/%u", dir.display()),
        mail_location: "memory:".into(),
        auth_failure_delay: Duration::from_millis(300),
        lock_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    c.hostname = "homing-test".into();
    c
}

async fn start(handler: Arc<dyn SessionHandler>, tweak: impl FnOnce(&mut ServerConfig)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(dir.path());
    tweak(&mut cfg);
    let server = Server::new(cfg, handler).unwrap().bind().await.unwrap();
    let addr = server.local_addrs()[0];
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        done,
        _dir: dir,
    }
}

/// Sends `data`, then reads until the server closes (or `limit` elapses).
async fn exchange(addr: std::net::SocketAddr, data: &[u8], limit: Duration) -> (Vec<u8>, bool) {
    exchange_with(addr, data, limit, false).await
}

/// Like [`exchange`]; `half_close` ends the client's side after `data` (the
/// recorded client streams stop before their final items).
async fn exchange_with(
    addr: std::net::SocketAddr,
    data: &[u8],
    limit: Duration,
    half_close: bool,
) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(data).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, s.read_to_end(&mut out))
        .await
        .is_ok();
    (out, closed)
}

fn replay_12() -> Replay {
    let ch0 = capture("12-tcp.s2c.ch0");
    assert!(ch0.starts_with(b"\n+\n"));
    Replay {
        output: Arc::new(ch0[3..].to_vec()),
        ..Replay::default()
    }
}

#[tokio::test]
async fn capture_12_tcp_framing_and_status_match_dovecot() {
    let h = replay_12();
    let srv = start(Arc::new(h.clone()), |_| {}).await;
    let c2s = capture("12-tcp.c2s");
    let (out, closed) = exchange_with(srv.addr, &c2s, Duration::from_secs(10), true).await;
    assert!(closed, "server closes after the dsync stream");
    let s2c = capture("12-tcp.s2c");
    // Plain part: VERSION, `-`, `+` exactly as Dovecot sent them.
    let plain = after_lines(&s2c, 3);
    assert_eq!(&out[..plain], &s2c[..plain]);
    // Multiplexed part: same channel-0 bytes, no log lines (Dovecot sent none either).
    let (ch0, logs) = demux(&out[plain..]);
    assert_eq!(ch0, capture("12-tcp.s2c.ch0"));
    assert_eq!(logs, capture("12-tcp.s2c.chL"));
    // The handler saw the user and exactly the client's dsync bytes.
    assert_eq!(
        h.calls.lock().unwrap().as_slice(),
        &[("alice".to_string(), false)]
    );
    assert_eq!(*h.received.lock().unwrap(), c2s[after_lines(&c2s, 3)..]);
    let stats = srv.stop().await;
    assert_eq!(stats.sessions_ok.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn capture_13_debug_flag_reaches_the_handler() {
    let h = replay_12();
    let seen = Arc::new(std::sync::Mutex::new(None));
    let seen2 = seen.clone();
    let inner = h.clone();
    let handler = move |req: SessionRequest, io: SessionIo| -> SessionFuture {
        *seen2.lock().unwrap() = Some((req.flags.debug, io.log.debug_enabled()));
        io.log.debug("brain S: hello");
        inner.run(req, io)
    };
    let srv = start(Arc::new(handler), |_| {}).await;
    let (out, _) = exchange_with(
        srv.addr,
        &capture("13-tcp-debug.c2s"),
        Duration::from_secs(10),
        true,
    )
    .await;
    let s2c = capture("13-tcp-debug.s2c");
    let plain = after_lines(&s2c, 3);
    assert_eq!(&out[..plain], &s2c[..plain]);
    let (_, logs) = demux(&out[plain..]);
    assert_eq!(logs, b"\x01doveadm(alice): brain S: hello\n");
    assert_eq!(*seen.lock().unwrap(), Some((true, true)));
    srv.stop().await;
}

#[tokio::test]
async fn capture_14_bad_password_is_refused_slowly_and_exactly() {
    let h = Replay::default();
    let srv = start(Arc::new(h.clone()), |_| {}).await;
    let t = Instant::now();
    let (out, closed) = exchange(
        srv.addr,
        &capture("14-tcp-badpass.c2s"),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "failure is delayed"
    );
    assert!(closed);
    assert_eq!(out, capture("14-tcp-badpass.s2c"));
    // Whatever follows a refused login is never read as a command.
    let mut with_cmd = capture("14-tcp-badpass.c2s");
    with_cmd.extend_from_slice(b"\talice\tdsync-server\t-ualice\n");
    let (out, _) = exchange(srv.addr, &with_cmd, Duration::from_secs(10)).await;
    assert_eq!(out, capture("14-tcp-badpass.s2c"));
    assert!(h.calls.lock().unwrap().is_empty());
    let stats = srv.stop().await;
    assert_eq!(stats.auth_failures.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn capture_16_unknown_user_is_nouser_after_the_log_line() {
    let h = Replay::default();
    let srv = start(Arc::new(h.clone()), |_| {}).await;
    let (out, closed) = exchange(
        srv.addr,
        &capture("16-tcp-nouser.c2s"),
        Duration::from_millis(500),
    )
    .await;
    // Byte for byte what Dovecot sent; the connection stays open for more commands.
    assert_eq!(out, capture("16-tcp-nouser.s2c"));
    assert!(!closed);
    assert!(h.calls.lock().unwrap().is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn capture_17_other_commands_are_unknown_and_the_connection_stays() {
    let h = replay_12();
    let srv = start(Arc::new(h.clone()), |_| {}).await;
    // 17's command on an authenticated TCP connection, then a dsync-server.
    let c12 = capture("12-tcp.c2s");
    let auth = after_lines(&c12, 2);
    let mut data = c12[..auth].to_vec();
    data.extend_from_slice(
        &capture("17-unix-preauth.c2s")[after_lines(&capture("17-unix-preauth.c2s"), 1)..],
    );
    data.extend_from_slice(b"\talice\tfrobnicate\n");
    data.extend_from_slice(&c12[auth..]);
    let (out, closed) = exchange_with(srv.addr, &data, Duration::from_secs(10), true).await;
    assert!(closed);
    let plain = after_lines(&capture("12-tcp.s2c"), 3);
    let (ch0, _) = demux(&out[plain..]);
    let mut want = b"\n-\n\n-\n".to_vec();
    want.extend_from_slice(&capture("12-tcp.s2c.ch0"));
    assert_eq!(ch0, want);
    assert_eq!(h.calls.lock().unwrap().len(), 1);
    srv.stop().await;
}

#[tokio::test]
async fn nothing_but_the_handshake_before_authentication() {
    let h = Replay::default();
    let srv = start(Arc::new(h.clone()), |_| {}).await;
    let cases: [&[u8]; 4] = [
        // A command line instead of PLAIN.
        b"VERSION\tdoveadm-server\t1\t2\n\talice\tdsync-server\t-ualice\n",
        // No VERSION at all.
        b"\talice\tdsync-server\t-ualice\n",
        // STARTTLS is not offered.
        b"VERSION\tdoveadm-server\t1\t2\nSTARTTLS\n",
        // Authentication id other than `doveadm` (root / s3cret).
        b"VERSION\tdoveadm-server\t1\t2\nPLAIN\tAHJvb3QAczNjcmV0\n",
    ];
    for data in cases {
        let (out, closed) = exchange(srv.addr, data, Duration::from_secs(5)).await;
        assert!(closed, "{data:?}");
        assert!(!out.ends_with(b"+\n"), "{data:?} got {out:?}");
        assert!(!out.windows(3).any(|w| w == b"\n+\n"));
    }
    assert!(h.calls.lock().unwrap().is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn password_disabled_when_not_configured() {
    let srv = start(Arc::new(Replay::default()), |c| c.password = None).await;
    let (out, closed) = exchange(srv.addr, &capture("12-tcp.c2s"), Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(out, b"VERSION\tdoveadm-client\t1\t2\n-\n-\n");
    srv.stop().await;
}

fn login() -> Vec<u8> {
    let c12 = capture("12-tcp.c2s");
    c12[..after_lines(&c12, 2)].to_vec()
}

#[tokio::test]
async fn peer_user_names_cannot_leave_the_mail_root() {
    let h = Replay::default();
    let srv = start(Arc::new(h.clone()), |c| c.userdb = UserDbConfig::Static).await;
    let long = "a".repeat(300);
    let names = [
        "..".to_string(),
        "../alice".into(),
        "/etc".into(),
        "a\x010b".into(), // escaped NUL
        "a\x01nb".into(), // escaped LF
        "~root".into(),
        long,
    ];
    for n in &names {
        let mut data = login();
        data.extend_from_slice(format!("\t{n}\tdsync-server\t-u{n}\n").as_bytes());
        let (out, _) = exchange(srv.addr, &data, Duration::from_millis(400)).await;
        let (ch0, logs) = demux(&out[after_lines(&out, 3)..]);
        assert_eq!(ch0, b"\n-NOUSER\n", "{n:?}");
        assert!(
            !logs.contains(&0) && logs.iter().filter(|b| **b == b'\n').count() == 1,
            "{logs:?}"
        );
    }
    assert!(h.calls.lock().unwrap().is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn limits_on_lines_and_fields() {
    let srv = start(Arc::new(Replay::default()), |c| {
        c.max_line = 1024;
        c.max_command_fields = 8;
    })
    .await;
    // An endless first line: cut off, connection closed, nothing answered.
    let (out, closed) = exchange(srv.addr, &vec![b'A'; 200_000], Duration::from_secs(5)).await;
    assert!(closed);
    assert!(out.is_empty());
    // Too many fields on a command line: answered as an unusable command.
    let mut data = login();
    data.extend_from_slice(b"\talice\tdsync-server");
    for _ in 0..20 {
        data.extend_from_slice(b"\t-U");
    }
    data.push(b'\n');
    let (out, _) = exchange(srv.addr, &data, Duration::from_millis(400)).await;
    let (ch0, _) = demux(&out[after_lines(&out, 3)..]);
    assert_eq!(ch0, b"\n-\n");
    // An unknown command flag disconnects.
    let mut data = login();
    data.extend_from_slice(b"X\talice\tdsync-server\t-ualice\n");
    let (_, closed) = exchange(srv.addr, &data, Duration::from_secs(5)).await;
    assert!(closed);
    srv.stop().await;
}

#[tokio::test]
async fn usage_noreplicate_and_minor_0() {
    let h = Replay::default();
    let srv = start(Arc::new(h.clone()), |_| {}).await;
    let mut data = login();
    data.extend_from_slice(b"\talice\tdsync-server\t-Z\n");
    data.extend_from_slice(b"\tdave\tdsync-server\t-udave\t-U\n");
    let (out, _) = exchange(srv.addr, &data, Duration::from_millis(400)).await;
    let (ch0, _) = demux(&out[after_lines(&out, 3)..]);
    assert_eq!(ch0, b"\n-USAGE\n\n-NOREPLICATE\n");
    // Minor 0 (the replicator's dialect): no VERSION answer, no framing.
    let mut data = b"VERSION\tdoveadm-server\t1\t0\n".to_vec();
    data.extend_from_slice(&login()[after_lines(&login(), 1)..]);
    data.extend_from_slice(b"\tnosuchuser\tdsync-server\t-unosuchuser\n");
    let (out, _) = exchange(srv.addr, &data, Duration::from_millis(400)).await;
    assert_eq!(out, b"-\n+\n\n-NOUSER\n");
    assert!(h.calls.lock().unwrap().is_empty());
    srv.stop().await;
}

async fn start_session(addr: std::net::SocketAddr, user: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut data = login();
    data.extend_from_slice(format!("\t{user}\tdsync-server\t-u{user}\n").as_bytes());
    s.write_all(&data).await.unwrap();
    s
}

async fn read_ch0(s: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let plain = after_lines_opt(&raw, 3);
        if let Some(p) = plain {
            let (ch0, _) = demux(&raw[p..]);
            if ch0.len() >= want {
                return ch0;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            let p = after_lines_opt(&raw, 3).unwrap_or(raw.len());
            return demux(&raw[p..]).0;
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

fn after_lines_opt(data: &[u8], n: usize) -> Option<usize> {
    let mut pos = 0;
    for _ in 0..n {
        pos += data[pos..].iter().position(|b| *b == b'\n')? + 1;
    }
    Some(pos)
}

/// A session handler that writes a VERSION line; each session waits for
/// one permit of the returned gate before it ends.
fn gated_version_replay() -> (Arc<tokio::sync::Semaphore>, Replay) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let h = Replay {
        output: Arc::new(b"VERSION\tdsync\t3\t5\n".to_vec()),
        gate: Some(gate.clone()),
        ..Replay::default()
    };
    (gate, h)
}

#[tokio::test]
async fn second_session_of_a_user_waits_for_the_lock_then_fails_tempfail() {
    let (gate, h) = gated_version_replay();
    let srv = start(Arc::new(h.clone()), |c| {
        c.lock_timeout = Duration::from_millis(400)
    })
    .await;
    let mut first = start_session(srv.addr, "alice").await;
    assert_eq!(read_ch0(&mut first, 3).await[..3], *b"\n+\n");
    first.write_all(b"\nX\n").await.unwrap();
    // Same user: waits the lock timeout, then TEMPFAIL with a log line.
    let t = Instant::now();
    let mut second = start_session(srv.addr, "alice").await;
    let ch0 = read_ch0(&mut second, 11).await;
    assert_eq!(ch0, b"\n-TEMPFAIL\n");
    assert!(t.elapsed() >= Duration::from_millis(400));
    // Another user is not blocked.
    let mut other = start_session(srv.addr, "bob").await;
    assert_eq!(read_ch0(&mut other, 3).await[..3], *b"\n+\n");
    other.write_all(b"\nX\n").await.unwrap();
    // Released within the timeout: the waiting session runs.
    let mut third = start_session(srv.addr, "alice").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.add_permits(2);
    assert_eq!(read_ch0(&mut third, 3).await[..3], *b"\n+\n");
    third.write_all(b"\nX\n").await.unwrap();
    gate.add_permits(1);
    let stats = srv.stop().await;
    assert_eq!(stats.lock_timeouts.load(Ordering::Relaxed), 1);
    assert_eq!(stats.sessions_ok.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn sessions_are_bounded_and_shutdown_waits_then_aborts() {
    let (_gate, h) = gated_version_replay(); // never opened: sessions end by shutdown
    let srv = start(Arc::new(h.clone()), |c| {
        c.max_sessions = 2;
        c.lock_timeout = Duration::from_secs(5);
        c.shutdown_grace = Duration::from_millis(500);
    })
    .await;
    let mut conns = Vec::new();
    for u in ["alice", "bob", "carol", "erin"] {
        let mut s = start_session(srv.addr, u).await;
        s.write_all(b"\nX\n").await.unwrap();
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // carol/erin are unknown users; alice and bob run, within the bound.
    assert_eq!(h.max_running.load(Ordering::SeqCst), 2);
    // Shutdown: sessions are still blocked, so after the grace they are aborted.
    let t = Instant::now();
    let stats = srv.stop().await;
    assert!(t.elapsed() >= Duration::from_millis(500));
    assert_eq!(stats.aborted.load(Ordering::Relaxed), 2);
    // The clients see the connection closed.
    for mut s in conns {
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
        assert!(r.is_ok());
    }
}

#[tokio::test]
async fn more_sessions_than_slots_wait_for_a_slot() {
    let h = Replay {
        output: Arc::new(b"VERSION\tdsync\t3\t5\n".to_vec()),
        ..Replay::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
    let passwd: String = users.iter().map(|u| format!("{u}:x::::::\n")).collect();
    std::fs::write(dir.path().join("pw"), passwd).unwrap();
    let pw = dir.path().join("pw");
    let srv = start(Arc::new(h.clone()), move |c| {
        c.max_sessions = 3;
        c.userdb = UserDbConfig::PasswdFile(pw);
    })
    .await;
    let mut tasks = Vec::new();
    for u in users {
        let addr = srv.addr;
        tasks.push(tokio::spawn(async move {
            let mut s = start_session(addr, &u).await;
            s.write_all(b"\nX\n").await.unwrap();
            read_ch0(&mut s, 1000).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), b"\n+\nVERSION\tdsync\t3\t5\n");
    }
    assert!(h.max_running.load(Ordering::SeqCst) <= 3);
    let stats = srv.stop().await;
    assert_eq!(stats.sessions_ok.load(Ordering::Relaxed), 12);
}

/// The built-in slave (session driver, `memory:` replica) answers the
/// captured first-sync client: same item sequence as Dovecot's slave
/// answered with an empty store (GUIDs, timestamps and `R` order aside).
#[tokio::test]
async fn built_in_slave_answers_the_first_sync_client() {
    let srv = start(Arc::new(SlaveHandler::default()), |_| {}).await;
    let mut data = login();
    data.extend_from_slice(b"\tbob\tdsync-server\t-ubob\n");
    data.extend_from_slice(&capture("01-first-sync.c2s"));
    let (out, closed) = exchange(srv.addr, &data, Duration::from_secs(30)).await;
    assert!(closed, "the server ends the session");
    let (ch0, _) = demux(&out[after_lines(&out, 3)..]);
    assert!(
        ch0.starts_with(b"\n+\nVERSION\tdsync\t3\t5\n"),
        "{:?}",
        String::from_utf8_lossy(&ch0[..ch0.len().min(200)])
    );
    let kinds = |stream: &[u8]| -> Vec<String> {
        let evs = dsync_protocol::decode_all(
            stream,
            dsync_protocol::DecoderConfig {
                validate_order: false,
                ..Default::default()
            },
        )
        .unwrap();
        let mut v: Vec<String> = evs
            .iter()
            .map(|e| {
                format!("{e:?}")
                    .chars()
                    .take_while(|c| c.is_alphanumeric())
                    .collect()
            })
            .collect();
        v.dedup();
        v
    };
    let ours = kinds(&ch0[3..]);
    let dovecot = kinds(&capture("01-first-sync.s2c"));
    assert_eq!(ours.first(), dovecot.first());
    assert_eq!(ours.last(), dovecot.last());
    let stats = srv.stop().await;
    assert_eq!(stats.sessions_ok.load(Ordering::Relaxed), 1, "{ours:?}");
}

#[test]
fn user_lookup_is_what_the_server_uses() {
    let dir = tempfile::tempdir().unwrap();
    let c = base_config(dir.path());
    let u: MailUser = c.lookup_user("alice").unwrap().unwrap();
    assert_eq!(u.mail_location, "memory:");
    assert!(c.lookup_user("nosuchuser").unwrap().is_none());
}
