//! Transports against real Dovecot: a `doveadm dsync-server` child over stdio,
//! `remote:` through a `dsync_remote_cmd` template, the doveadm TCP listener
//! plain and with TLS. Each session replays the client side of the captured
//! first sync (`01-first-sync.c2s`, made against an empty remote store) into a
//! fresh user, so the server runs a complete dsync session through our stream
//! and the resulting mailboxes can be checked with doveadm.

use std::time::Duration;

use homing::transport::{
    self, connect_dsync, spawn_command, CommandOptions, Destination, OpenOptions, TcpOptions,
    TlsOptions, TransportError,
};
use test_support::{dovecot_or_skip, DovecotInstance, InstanceOptions, TestCa};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn capture(name: &str) -> Vec<u8> {
    let p = format!("{}/fixtures/captures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The client's dsync bytes of the first-sync capture (a pipe session, so the
/// whole file is dsync stream).
fn first_sync_client_stream() -> Vec<u8> {
    let c2s = capture("01-first-sync.c2s");
    assert!(c2s.starts_with(b"VERSION\tdsync\t3\t5\n"));
    c2s
}

/// Checks the start of a dsync server's output: VERSION, the table
/// definitions of every item type, the end of the tables, then the `H` item.
fn check_server_handshake(out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    let mut lines = text.split('\n');
    assert_eq!(
        lines.next(),
        Some("VERSION\tdsync\t3\t5"),
        "output: {text:.200}"
    );
    let mut tables = Vec::new();
    for line in lines.by_ref() {
        if line == "." {
            break;
        }
        tables.push(line.chars().next().unwrap());
        assert!(line.contains('\t') || line.len() > 1, "table line {line:?}");
    }
    for item in ['H', 'S', 'N', 'D', 'B', 'A', 'C', 'R', 'M', 'F', 'c'] {
        assert!(
            tables.contains(&item),
            "table of {item} missing: {tables:?}"
        );
    }
    let h = lines.next().unwrap_or_default();
    assert!(
        h.starts_with('H'),
        "H item expected after the tables, got {h:?}"
    );
}

/// Replays the captured client side and reads the server's whole output.
async fn replay(stream: transport::DsyncStream) -> (Vec<u8>, Result<(), TransportError>) {
    let (mut reader, mut writer, finisher) = stream.into_parts();
    let data = first_sync_client_stream();
    // Both directions at once, as dsync requires.
    let w = tokio::spawn(async move {
        writer.write_all(&data).await.unwrap();
        writer.flush().await.unwrap();
        writer
    });
    let mut out = Vec::new();
    let read = reader.read_to_end(&mut out).await;
    let mut writer = w.await.unwrap();
    read.unwrap_or_else(|e| panic!("reading the server's stream failed: {e}"));
    let _ = writer.shutdown().await;
    drop(writer);
    drop(reader);
    (out, finisher.finish().await)
}

/// The mail of `00-initial.listing` arrived in `user`'s store.
fn check_replica(inst: &DovecotInstance, user: &str) {
    let snap = inst.snapshot(user).unwrap();
    let names: Vec<&str> = snap.mailboxes.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["INBOX", "Work", "Work/Reports"], "{snap}");
    assert_eq!(snap.message_count(), 5, "{snap}");
    let inbox: Vec<_> = snap.mails_in("INBOX").collect();
    assert_eq!(inbox.len(), 3);
    assert_eq!(inbox[1].flags, ["\\Flagged", "\\Seen"]);
    assert_eq!(inbox[1].keywords, ["$Important"]);
    assert!(snap.mailbox("Work").unwrap().subscribed);
    // Mailbox GUIDs travel with dsync.
    assert_eq!(
        snap.mailbox("INBOX").unwrap().guid,
        "1ba080387b140b6b5f7e000083ecc375"
    );
}

fn check_full_session(out: &[u8]) {
    check_server_handshake(out);
    // The whole server stream decodes with the dsync codec: VERSION, tables,
    // H, …, F, X.
    use homing::protocol::{decode_all, DecoderConfig, Item, OwnedEvent};
    let events = decode_all(out, DecoderConfig::default()).expect("server stream decodes");
    assert!(matches!(events.first(), Some(OwnedEvent::Version(_))));
    assert!(matches!(events.get(1), Some(OwnedEvent::Tables(_))));
    assert!(matches!(
        events.get(2),
        Some(OwnedEvent::Item(Item::Handshake(_)))
    ));
    let n = events.len();
    assert!(n > 4);
    assert!(matches!(&events[n - 2], OwnedEvent::Item(Item::Finish(_))));
    assert!(matches!(&events[n - 1], OwnedEvent::Item(Item::Done)));
    assert!(
        out.ends_with(b"F\nX\n"),
        "session must end with F and X: {:?}",
        String::from_utf8_lossy(&out[out.len().saturating_sub(80)..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_stdio_session_with_dsync_server() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    let argv = inst.dsync_server_argv("bob");
    let stream = spawn_command(&argv, &CommandOptions::default())
        .await
        .unwrap();
    assert!(stream.peer.contains("dsync-server"));
    let (out, outcome) = replay(stream).await;
    check_full_session(&out);
    outcome.expect("dsync-server exits 0 after a complete session");
    check_replica(&inst, "bob");
    inst.assert_log_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_destination_through_a_remote_cmd_template() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    // The `remote:` form with a dsync_remote_cmd that runs doveadm locally;
    // `-l%{login}` vanishes without a login, `%u` becomes the -u user.
    let template = format!(
        "{} -c {} -l%{{login}} dsync-server -u%u",
        test_support::DOVEADM,
        inst.config_path().display()
    );
    let dest = Destination::parse(&["remote:localhost".to_string()]).unwrap();
    let opts = OpenOptions {
        user: Some("carol".into()),
        remote_cmd: template,
        ..OpenOptions::default()
    };
    let stream = transport::open(&dest, &opts).await.unwrap();
    let (out, outcome) = replay(stream).await;
    check_full_session(&out);
    outcome.unwrap();
    check_replica(&inst, "carol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_environment_is_clean() {
    // A parent doveadm exports DOVECONF_* settings; the child must not see them.
    let stream = spawn_command(&["/usr/bin/env".to_string()], &CommandOptions::default())
        .await
        .unwrap();
    let (mut r, w, fin) = stream.into_parts();
    drop(w);
    let mut out = String::new();
    r.read_to_string(&mut out).await.unwrap();
    drop(r);
    fin.finish().await.unwrap();
    for line in out.lines() {
        let key = line.split('=').next().unwrap();
        assert!(
            transport::child::ENV_PASSTHROUGH.contains(&key),
            "unexpected variable {key} in the child's environment"
        );
    }
    assert!(out.contains("PATH="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_command_reports_its_exit_status() {
    let argv: Vec<String> = ["/bin/sh", "-c", "echo broken >&2; exit 3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let stream = spawn_command(&argv, &CommandOptions::default())
        .await
        .unwrap();
    let err = stream.finish().await.unwrap_err();
    match &err {
        TransportError::RemoteCommandFailed {
            status,
            stderr_tail,
            ..
        } => {
            assert_eq!(*status, 3);
            assert_eq!(stderr_tail.as_deref(), Some("broken"));
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(err.exit_code(), 75);
    let missing = spawn_command(
        &["/nonexistent/doveadm".to_string()],
        &CommandOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(missing, TransportError::Spawn { .. }), "{missing}");
}

fn tcp_opts(inst: &DovecotInstance) -> TcpOptions {
    let mut o = TcpOptions::new("127.0.0.1", inst.port().unwrap());
    o.doveadm_password = Some(inst.doveadm_password().to_string());
    o.io_timeout = Some(Duration::from_secs(60));
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_session_with_doveadm_listener() {
    let inst = dovecot_or_skip!(InstanceOptions::new().doveadm_tcp(true));
    let stream = connect_dsync(&tcp_opts(&inst), "bob", false).await.unwrap();
    assert_eq!(stream.peer, format!("127.0.0.1:{}", inst.port().unwrap()));
    let (out, outcome) = replay(stream).await;
    check_full_session(&out);
    outcome.unwrap();
    check_replica(&inst, "bob");
    inst.assert_log_clean();

    // An ordinary command through the same protocol: its reply fields.
    let reply = transport::run_command(&tcp_opts(&inst), "bob", &["mailbox", "list"])
        .await
        .unwrap();
    let mut names: Vec<String> = reply
        .fields
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["INBOX", "Work", "Work/Reports"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcps_session_verified_with_the_test_ca() {
    let inst = dovecot_or_skip!(InstanceOptions::new().tls(true));
    let mut opts = tcp_opts(&inst);
    opts.port = inst.tls_port().unwrap();
    opts.tls = Some(TlsOptions {
        ca_path: inst.ca_path().unwrap(),
        server_name: None,
    });
    let stream = connect_dsync(&opts, "dave", false).await.unwrap();
    let (out, outcome) = replay(stream).await;
    check_full_session(&out);
    outcome.unwrap();
    check_replica(&inst, "dave");

    // The server name comes from the destination: `localhost` is in the
    // certificate too, and a CA directory works like a CA file.
    let ca_dir = tempfile::tempdir().unwrap();
    std::fs::copy(inst.ca_path().unwrap(), ca_dir.path().join("ca.pem")).unwrap();
    let dest =
        Destination::parse(&[format!("tcps:localhost:{}", inst.tls_port().unwrap())]).unwrap();
    let open = OpenOptions {
        user: Some("alice".into()),
        doveadm_password: Some(inst.doveadm_password().into()),
        ca_path: Some(ca_dir.path().to_path_buf()),
        ..OpenOptions::default()
    };
    let stream = transport::open(&dest, &open).await.unwrap();
    let (mut r, w, fin) = stream.into_parts();
    let mut first = String::new();
    BufReader::new(&mut r).read_line(&mut first).await.unwrap();
    assert_eq!(first, "VERSION\tdsync\t3\t5\n");
    drop((r, w));
    fin.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_an_unknown_ca_is_refused() {
    let inst = dovecot_or_skip!(InstanceOptions::new().tls(true));
    let other = TestCa::generate("some other CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("other.pem");
    other.write_cert(&ca).unwrap();
    let mut opts = tcp_opts(&inst);
    opts.port = inst.tls_port().unwrap();
    opts.tls = Some(TlsOptions {
        ca_path: ca,
        server_name: None,
    });
    let err = connect_dsync(&opts, "bob", false).await.unwrap_err();
    assert!(
        matches!(err, TransportError::TlsVerification { .. }),
        "expected a verification failure, got: {err}"
    );
    assert!(err.to_string().contains(&opts.peer()), "{err}");
    assert_eq!(err.exit_code(), 75);

    // A name the certificate does not carry is refused as well.
    let mut opts2 = tcp_opts(&inst);
    opts2.port = inst.tls_port().unwrap();
    opts2.tls = Some(TlsOptions {
        ca_path: inst.ca_path().unwrap(),
        server_name: Some("mail.example.org".into()),
    });
    let err = connect_dsync(&opts2, "bob", false).await.unwrap_err();
    assert!(
        matches!(err, TransportError::TlsVerification { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_an_authentication_error() {
    let inst = dovecot_or_skip!(InstanceOptions::new().doveadm_tcp(true));
    let mut opts = tcp_opts(&inst);
    opts.doveadm_password = Some("wrong".into());
    let err = connect_dsync(&opts, "bob", false).await.unwrap_err();
    assert!(
        matches!(err, TransportError::AuthenticationFailed { .. }),
        "{err}"
    );
    assert_eq!(
        err.exit_code(),
        75,
        "doveadm sync exits 75 (14-tcp-badpass)"
    );
    assert_eq!(
        capture("14-tcp-badpass.exitcode").trim_ascii(),
        b"75",
        "the capture agrees"
    );
    assert!(err.to_string().contains("authentication"), "{err}");
    let mut none = tcp_opts(&inst);
    none.doveadm_password = None;
    let err = connect_dsync(&none, "bob", false).await.unwrap_err();
    assert!(
        matches!(err, TransportError::PasswordRequired { .. }),
        "{err}"
    );
    inst.assert_log_clean_except(&["wrong password", "disconnected before"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_is_reported_with_the_remote_log_line() {
    let inst = dovecot_or_skip!(InstanceOptions::new().doveadm_tcp(true));
    let err = connect_dsync(&tcp_opts(&inst), "nosuchuser", false)
        .await
        .unwrap_err();
    match &err {
        TransportError::UnknownUser { user, detail, .. } => {
            assert_eq!(user, "nosuchuser");
            assert!(
                detail
                    .as_deref()
                    .unwrap_or("")
                    .contains("User doesn't exist"),
                "{detail:?}"
            );
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(err.exit_code(), 67);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_names_the_address() {
    let port = test_support::free_port().unwrap();
    let err = connect_dsync(&TcpOptions::new("127.0.0.1", port), "bob", false)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Connect { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(err.exit_code(), 75);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_peers_hit_the_idle_timeout() {
    // A TCP peer that accepts and then says nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(s);
    });
    let mut opts = TcpOptions::new("127.0.0.1", port);
    opts.io_timeout = Some(Duration::from_millis(500));
    let start = std::time::Instant::now();
    let err = connect_dsync(&opts, "bob", false).await.unwrap_err();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    hold.abort();

    // A child that never writes.
    let opts = CommandOptions {
        io_timeout: Some(Duration::from_millis(300)),
        exit_timeout: Duration::from_millis(300),
        prefix_user: None,
    };
    let stream = spawn_command(&["sleep".to_string(), "30".to_string()], &opts)
        .await
        .unwrap();
    let (mut r, w, fin) = stream.into_parts();
    let mut buf = [0u8; 16];
    let e = r.read(&mut buf).await.unwrap_err();
    let e = TransportError::from_io("sleep", e);
    assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
    drop((r, w));
    // It does not exit on its own: killed after the exit timeout.
    let outcome = fin.finish().await.unwrap_err();
    assert!(
        matches!(
            outcome,
            TransportError::RemoteCommandKilled { signal: 9, .. }
        ),
        "{outcome}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remoteprefix_sends_the_user_line_first() {
    let inst = dovecot_or_skip!(InstanceOptions::new());
    // A trusted wrapper that reads the user name, then becomes the server.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nread u\nexec {} -c {} dsync-server -u \"$u\"\n",
            test_support::DOVEADM,
            inst.config_path().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dest = Destination::parse(&["remoteprefix:somehost".to_string()]).unwrap();
    let opts = OpenOptions {
        user: Some("dave".into()),
        remote_cmd: format!("{} %{{host}}", wrapper.display()),
        ..OpenOptions::default()
    };
    let stream = transport::open(&dest, &opts).await.unwrap();
    let (out, outcome) = replay(stream).await;
    check_full_session(&out);
    outcome.unwrap();
    check_replica(&inst, "dave");
}
