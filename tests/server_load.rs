//! Load: 50 concurrent dsync sessions for 50 different users against the
//! `homing server` binary (built-in slave, `memory:` replicas). Each client
//! authenticates with the project's own `tcp:` client and replays the
//! captured first-sync master stream. Prints throughput and the server's
//! peak RSS; then SIGTERM must stop the server cleanly.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use homing::transport::{connect_dsync, TcpOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SESSIONS: usize = 50;

fn capture(name: &str) -> Vec<u8> {
    let p = format!("{}/fixtures/captures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Files in the `cur`/`new` directories below `root`.
fn count_mail_files(root: &std::path::Path) -> usize {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if matches!(p.file_name().and_then(|f| f.to_str()), Some("cur" | "new")) {
                n += std::fs::read_dir(&p).map(|d| d.count()).unwrap_or(0);
            } else {
                n += count_mail_files(&p);
            }
        }
    }
    n
}

#[test]
fn fifty_concurrent_sessions_against_the_server_binary() {
    run_load("memory:");
}

/// The same onto 50 fresh Maildirs (every session saves the captured mails).
#[test]
fn fifty_concurrent_sessions_onto_maildirs() {
    run_load("maildir:%h/Maildir");
}

fn run_load(mail_location: &str) {
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<String> = (0..SESSIONS).map(|i| format!("user{i:02}")).collect();
    let passwd: String = users.iter().map(|u| format!("{u}:x::::::\n")).collect();
    std::fs::write(dir.path().join("passwd"), passwd).unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    let port = test_support::free_port().unwrap();
    let conf = dir.path().join("server.conf");
    let mut f = std::fs::File::create(&conf).unwrap();
    writeln!(
        f,
        "listen = 127.0.0.1:{port}\ndoveadm_password_file = {}\nuserdb = passwd-file:{}\n\
         home = {}/%u\nmail_location = {mail_location}\nmax_sessions = {SESSIONS}\nshutdown_grace = 5s",
        dir.path().join("pw").display(),
        dir.path().join("passwd").display(),
        dir.path().display()
    )
    .unwrap();
    drop(f);
    let mut child = Command::new(env!("CARGO_BIN_EXE_homing"))
        .args(["server", "-c"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stream = capture("01-first-sync.c2s");
    let (elapsed, bytes_in, ok) = rt.block_on(async {
        // Wait for the listener.
        let t0 = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let start = Instant::now();
        let mut tasks = Vec::new();
        for u in users.clone() {
            let data = stream.clone();
            tasks.push(tokio::spawn(async move {
                let mut o = TcpOptions::new("127.0.0.1", port);
                o.doveadm_password = Some("s3cret".into());
                let s = connect_dsync(&o, &u, false).await.unwrap();
                let (mut r, mut w, _) = s.into_parts();
                let writer = tokio::spawn(async move {
                    w.write_all(&data).await.unwrap();
                    // The master's stream is complete: close our side, as
                    // doveadm does once its brain is done.
                    w.shutdown().await.unwrap();
                });
                let mut out = Vec::new();
                r.read_to_end(&mut out).await.unwrap();
                writer.await.unwrap();
                out
            }));
        }
        let mut bytes = 0usize;
        let mut ok = 0usize;
        for t in tasks {
            let out = t.await.unwrap();
            bytes += out.len();
            if out.starts_with(b"VERSION\tdsync\t3\t5\n") && out.ends_with(b"X\n") {
                ok += 1;
            }
        }
        (start.elapsed(), bytes, ok)
    });
    let rss = peak_rss_kib(pid);
    let bytes_out = stream.len() * SESSIONS;
    println!(
        "load ({mail_location}): {SESSIONS} concurrent sessions in {:.3}s = {:.1} sessions/s; client->server {} KiB, server->client {} KiB; server peak RSS {} KiB",
        elapsed.as_secs_f64(),
        SESSIONS as f64 / elapsed.as_secs_f64(),
        bytes_out / 1024,
        bytes_in / 1024,
        rss.map(|r| r.to_string()).unwrap_or_else(|| "?".into())
    );
    assert_eq!(ok, SESSIONS, "every session ran to the slave's final X");
    if mail_location.starts_with("maildir:") {
        // The first-sync master sends 5 mails (INBOX 3, Work 1, Work/Reports 1).
        for u in &users {
            let n = count_mail_files(&dir.path().join(u).join("Maildir"));
            assert_eq!(n, 5, "{u}");
        }
    }
    // SIGTERM: stops accepting and exits cleanly.
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "server exit {status:?}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "server ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
