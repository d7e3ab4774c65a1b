//! `homing sync -S` against a scripted doveadm server: the exact bytes
//! sent (the same as `doveadm -S`, captured from Dovecot 2.3.19.1), the
//! server's log lines on stderr, its output fields on stdout and its reply
//! code as the exit code.

mod common;
use common::show;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::thread::JoinHandle;

fn homing() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_homing"));
    c.env_remove("HOMING_LOG")
        .env("HOMING_NO_PROGRESS", "1")
        .args(["-o", "mail_location=memory:"]);
    c
}

fn frame(channel: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![channel];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Serves one connection: answers the handshake (asking for PLAIN when
/// `password` is set), then answers each command line with an error log
/// line and `reply` on channel 0. Returns every line the client sent.
fn serve<S: std::io::Read + std::io::Write>(
    stream: S,
    password: bool,
    reply: &'static [u8],
) -> Vec<String> {
    let mut r = BufReader::new(stream);
    let mut seen = Vec::new();
    let read_line = |r: &mut BufReader<S>| -> Option<String> {
        let mut l = String::new();
        match r.read_line(&mut l) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(l),
        }
    };
    let Some(v) = read_line(&mut r) else {
        return seen;
    };
    seen.push(v);
    let greet: &[u8] = if password {
        b"VERSION\tdoveadm-client\t1\t2\n-\n"
    } else {
        b"VERSION\tdoveadm-client\t1\t2\n+\n"
    };
    r.get_mut().write_all(greet).unwrap();
    if password {
        let Some(p) = read_line(&mut r) else {
            return seen;
        };
        seen.push(p);
        r.get_mut().write_all(b"+\n").unwrap();
    }
    while let Some(cmd) = read_line(&mut r) {
        seen.push(cmd);
        let mut out = frame(b'L', b"\x04doveadm(alice): scripted error\n");
        out.extend(frame(0, reply));
        r.get_mut().write_all(&out).unwrap();
    }
    seen
}

fn unix_server(dir: &std::path::Path, reply: &'static [u8]) -> (String, JoinHandle<Vec<String>>) {
    let path = dir.join("doveadm-server");
    let l = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        serve(s, false, reply)
    });
    (path.display().to_string(), t)
}

#[test]
fn unix_socket_bytes_output_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, t) = unix_server(dir.path(), b"STATE\x01t1\t\n+\n");
    let out = homing()
        .args([
            "-D", "sync", "-S", &sock, "-u", "alice", "-f", "-l", "30", "-s", "",
        ])
        .arg("tcp:otherhost:1234")
        .output()
        .unwrap();
    let seen = t.join().unwrap();
    assert_eq!(
        seen,
        [
            "VERSION\tdoveadm-server\t1\t2\n",
            "D\talice\tsync\t-u\talice\t-f\t-l\t30\t-s\t\t--\ttcp:otherhost:1234\n",
        ],
        "{}",
        show(&out)
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    // The output field, unescaped, on its own line.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "STATE\t1\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "doveadm(alice): Error: remote({sock}): doveadm(alice): scripted error"
        )),
        "{}",
        show(&out)
    );
}

#[test]
fn reply_codes_become_doveadms_exit_codes() {
    // (reply, exit status as doveadm -S gives it)
    for (reply, code) in [
        (&b"\n-NOUSER\n"[..], 67),
        (b"\n-NOREPLICATE\n", 233),
        (b"\n-NOTFOUND\n", 68),
        (b"\t\n-UNKNOWN\n", 75),
        (b"\n-\n", 75),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (sock, t) = unix_server(dir.path(), reply);
        let out = homing()
            .args(["backup", "-S", &sock, "-u", "alice", "-d"])
            .output()
            .unwrap();
        let seen = t.join().unwrap();
        assert_eq!(seen[1], "\talice\tbackup\t-u\talice\t-d\t--\n");
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}: {}",
            String::from_utf8_lossy(reply),
            show(&out)
        );
    }
}

#[test]
fn tcp_authenticates_with_doveadm_password() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        serve(s, true, b"\n+\n")
    });
    let out = homing()
        .args(["-o", "doveadm_password=s3cret", "-v"])
        .args(["sync", "-1", "-S", &addr, "maildir:/x"])
        .env("USER", "carol")
        .output()
        .unwrap();
    let seen = t.join().unwrap();
    // Without -u the user comes from $USER and only fills the user field.
    assert_eq!(
        seen,
        [
            "VERSION\tdoveadm-server\t1\t2\n",
            "PLAIN\tAGRvdmVhZG0AczNjcmV0\n",
            "v\tcarol\tsync\t-1\t--\tmaildir:/x\n",
        ],
        "{}",
        show(&out)
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
}

#[test]
fn values_doveadm_checks_itself_are_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: a refusal must come before any connect.
    let sock = dir.path().join("none").display().to_string();
    for (args, code, msg) in [
        (&["-g", "bad", "m:/x"][..], 75, "Invalid -g parameter: bad"),
        (&["-O", "a b", "m:/x"], 75, "doesn't support multiple flags"),
        (&["-t", "garbage", "m:/x"], 75, "Invalid -t parameter"),
        (&["-I", "10Q", "m:/x"], 75, "Invalid -I parameter"),
        (&[], 64, "Usage"),
        (&["-Z", "m:/x"], 64, "invalid option -- 'Z'"),
    ] {
        let out = homing()
            .args(["sync", "-S", &sock, "-u", "alice"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(msg),
            "{args:?}: {}",
            show(&out)
        );
    }
}
