//! `homing replicator` against real Dovecot 2.3.19.1: the same requests go to
//! a private Dovecot replicator (with `replication_max_conns = 0`) and to
//! homing's daemon, and the stock `doveadm replicator ...` client must print
//! the same bytes for both (rows compared as sets, since both servers list
//! users in hash order; elapsed times masked).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use homing::replicator::client::{self, ClientCommand};
use homing::replicator::format::Formatter;
use homing::replicator::runner::RecordingRunner;
use homing::replicator::{Daemon, ReplicatorConfig, SyncOutcome, SystemClock};
use test_support::{dovecot_or_skip, DovecotInstance, InstanceOptions};

const PASSWD_USERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

/// Replicator and aggregator services of a private Dovecot that never
/// syncs (`replication_max_conns = 0`), so its queue can be compared.
const REPLICATOR_CONF: &str = "replication_max_conns = 0\n\
     service replicator {\n  process_min_avail = 1\n  unix_listener replicator-doveadm {\n    mode = 0600\n  }\n}\n\
     service aggregator {\n  fifo_listener replication-notify-fifo {\n    mode = 0600\n  }\n  unix_listener replication-notify {\n    mode = 0600\n  }\n}\n";

/// Waits until the instance's replicator answers (it starts at once with
/// `process_min_avail = 1` and lists the users first).
fn wait_replicator(inst: &DovecotInstance) {
    let sock = inst.run_dir().join("replicator-doveadm");
    for _ in 0..100 {
        if sock.exists() {
            let out = doveadm(inst, &["replicator", "status", "-a"], Some(&sock));
            if out.2 == 0 && out.0.contains("Total number of known users") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("real replicator did not come up");
}

/// Runs the stock `doveadm` of `inst` (clean environment). The socket given is
/// appended after the arguments as `-a <socket>` when `sock` is set and the
/// last argument is `-a`.
fn doveadm(inst: &DovecotInstance, args: &[&str], sock: Option<&Path>) -> (String, String, i32) {
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if let Some(s) = sock {
        if args.last().map(String::as_str) == Some("-a") {
            args.push(s.display().to_string());
        }
    }
    let out = inst.doveadm(&args).unwrap();
    (out.stdout_str(), out.stderr_str(), out.code().unwrap_or(-1))
}

/// The words with `SOCK` replaced by `sock`.
fn with_sock<'a>(words: &[&'a str], sock: &'a str) -> Vec<&'a str> {
    words
        .iter()
        .map(|w| if *w == "SOCK" { sock } else { w })
        .collect()
}

/// Replaces elapsed times `H..H:MM:SS` with `T:T:T` (they differ by a
/// second or so between the two servers).
fn mask_times(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let rest = &s[i..];
            let rb = rest.as_bytes();
            if rb.len() >= 6
                && rb[0] == b':'
                && rb[1].is_ascii_digit()
                && rb[2].is_ascii_digit()
                && rb[3] == b':'
                && rb[4].is_ascii_digit()
                && rb[5].is_ascii_digit()
            {
                // Keep the width (it affects table layout) but not the digits.
                out.push_str(&"T".repeat(i - start));
                out.push_str(":TT:TT");
                i += 6;
            } else {
                out.push_str(&s[start..i]);
            }
        } else {
            let c = s[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Output with rows in a canonical order: table/flow/tab rows sorted (a
/// title row stays first), pager records sorted, JSON objects sorted.
fn canonical(s: &str) -> String {
    let s = mask_times(s);
    if s.starts_with('[') {
        let inner = s.trim_start_matches('[').trim_end_matches(']');
        let mut objs: Vec<String> = inner
            .split("},{")
            .map(|o| o.trim_matches(|c| c == '{' || c == '}').to_string())
            .collect();
        objs.sort();
        return objs.join("|");
    }
    if s.contains('\u{c}') {
        let mut recs: Vec<&str> = s
            .split("\u{c}\n")
            .map(|r| r.trim_end_matches('\n'))
            .collect();
        recs.sort();
        return recs.join("\n--\n");
    }
    let mut lines: Vec<&str> = s.lines().collect();
    let head = if lines.first().is_some_and(|l| {
        !l.contains('=')
            && (l.starts_with("username") || l.starts_with("field") || l.starts_with("result"))
    }) {
        Some(lines.remove(0))
    } else {
        None
    };
    lines.sort();
    let mut out = String::new();
    if let Some(h) = head {
        out.push_str(h);
        out.push_str("\n#\n");
    }
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Raw exchange on a replicator-doveadm socket: sends `lines`, returns all
/// bytes read until the server closes or goes quiet.
fn raw(sock: &Path, lines: &[&str]) -> String {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    for l in lines {
        // The server may hang up early (that is what some cases test).
        if s.write_all(format!("{l}\n").as_bytes()).is_err() {
            break;
        }
        // Dovecot 2.3.19.1 leaves pipelined lines unread after a `-` reply
        // until more input arrives; send one request at a time.
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn write_fifo(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(line.as_bytes()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doveadm_replicator_output_matches_real_dovecot() {
    let mut real = dovecot_or_skip!(InstanceOptions::new()
        .users(&PASSWD_USERS)
        .user_password("pw")
        .extra_conf(REPLICATOR_CONF));
    let tmp = tempfile::tempdir().unwrap();
    let passwd = real.root().join("passwd");
    // Both start with the same old database record (spec 7.1.8: huge
    // time-ago values widen the table). The replicator reads it at start.
    let olddb = "olduser\t2\t100\t200\t300\t0\tSTATE\n";
    let real_dir = real.root().to_path_buf();
    tokio::task::block_in_place(|| {
        real.stop();
        std::fs::write(real_dir.join("state/replicator.db"), olddb).unwrap();
        real.restart().unwrap();
        wait_replicator(&real);
    });

    let hdir = tmp.path().join("homing");
    std::fs::create_dir_all(hdir.join("run")).unwrap();
    std::fs::create_dir_all(hdir.join("state")).unwrap();
    std::fs::write(hdir.join("state/replicator.db"), olddb).unwrap();
    let mut config = ReplicatorConfig::with_dirs(&hdir.join("run"), &hdir.join("state"));
    config.max_conns = 0;
    config.userdb_passwd_file = Some(passwd.clone());
    config.doveadm_server_socket = None;
    let runner = RecordingRunner::new(
        SyncOutcome::Failed {
            reason: "unused".into(),
        },
        Duration::ZERO,
    );
    let daemon = Daemon::start(config, Arc::new(runner.clone()), Arc::new(SystemClock))
        .await
        .unwrap();

    let real_sock = real.run_dir().join("replicator-doveadm");
    let homing_sock = hdir.join("run/replicator-doveadm");

    // Same notifications through each side's FIFO (spec 7.2.1, 7.2.2).
    for line in [
        "alice\thigh\n",
        "bob\tlow\n",
        "newuser\thigh\n",
        "carol\tbogus\n",
        "carol\n",
        "erin\tlow\textra\n",
        // Wider than the terminal: the table shrinks columns from the end.
        "a-very-long-username-that-makes-the-status-table-wider-than-eighty\tlow\n",
    ] {
        write_fifo(&real.run_dir().join("replication-notify-fifo"), line);
        write_fifo(&hdir.join("run/replication-notify-fifo"), line);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for line in ["bob\thigh\n", "alice\tlow\n"] {
        write_fifo(&real.run_dir().join("replication-notify-fifo"), line);
        write_fifo(&hdir.join("run/replication-notify-fifo"), line);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Under load a replicator may still be reading its FIFO: both must
    // know every user notified before their answers are compared.
    let known = |sock: &Path| {
        let s = sock.display().to_string();
        let out = tokio::task::block_in_place(|| {
            doveadm(&real, &["replicator", "status", "-a", &s, "*"], None)
        });
        out.0.lines().count()
    };
    // 9 lines: the header and the 8 users both know once every notification is read.
    for _ in 0..100 {
        if known(&real_sock) == 9 && known(&homing_sock) == 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Raw protocol exchanges (spec 7.1.1, 7.1.2) must give the same bytes.
    let raw_cases: [&[&str]; 9] = [
        &["VERSION\treplicator-doveadm-client\t1\t0", "STATUS-DSYNC"],
        &["STATUS"],
        &["VERSION\treplicator-doveadm-client\t2\t0", "STATUS"],
        &["VERSION\treplicator-doveadm-client\t1\t0", "", "STATUS"],
        &["VERSION\treplicator-doveadm-client\t1\t0", "FOO", "STATUS"],
        &[
            "VERSION\treplicator-doveadm-client\t1\t0",
            "REPLICATE\tlow\talice",
            "STATUS",
        ],
        &[
            "VERSION\treplicator-doveadm-client\t1\t0",
            "REPLICATE\tbogus\t\talice",
            "REMOVE\tnobody",
            "STATUS\tnobody*",
        ],
        // NOTIFY from a peer (spec 2.6): times set, state stored, prio kept.
        &[
            "VERSION\treplicator-doveadm-client\t1\t0",
            "NOTIFY\tcarol\tf\tSTATE1",
        ],
        &[
            "VERSION\treplicator-doveadm-client\t1\t0",
            "NOTIFY\tbob\t\tSTATE2",
            "NOTIFY\tbob",
        ],
    ];
    for case in raw_cases {
        let (r, h) =
            tokio::task::block_in_place(|| (raw(&real_sock, case), raw(&homing_sock, case)));
        assert_eq!(h, r, "raw exchange {case:?}");
    }

    // The same doveadm commands against both servers.
    // Each command's words, split at spaces; SOCK stands for the socket.
    let cmds: Vec<Vec<&str>> = [
        "replicator status -a",
        "replicator status -a SOCK *",
        "replicator status -a SOCK b*",
        "replicator dsync-status -a",
        "-f flow replicator status -a",
        "-f tab replicator status -a",
        "-f json replicator status -a",
        "-f pager replicator status -a",
        "-f flow replicator status -a SOCK *",
        "-f json replicator status -a SOCK *",
        "-f pager replicator status -a SOCK *",
        "-f json replicator dsync-status -a",
        "replicator replicate -a SOCK alice",
        "replicator replicate -a SOCK -p high c*",
        "replicator replicate -a SOCK -f -p low *",
        "replicator replicate -a SOCK zed",
        "-f json replicator replicate -a SOCK bob",
        "-f table replicator replicate -a SOCK bob",
        "replicator replicate -a SOCK -p urgent alice",
        "replicator replicate -a SOCK -p none alice",
        "replicator add -a SOCK newbie",
        "replicator add -a SOCK c*",
        "replicator remove -a SOCK newbie",
        "replicator remove -a SOCK newbie",
        "replicator status -a",
        "replicator status -a SOCK *",
    ]
    .iter()
    .map(|c| c.split(' ').collect())
    .collect();
    for c in &cmds {
        let (rs, hs) = (
            real_sock.display().to_string(),
            homing_sock.display().to_string(),
        );
        let (ra, ha) = (with_sock(c, &rs), with_sock(c, &hs));
        let (r, h) = tokio::task::block_in_place(|| {
            (
                doveadm(&real, &ra, Some(&real_sock)),
                doveadm(&real, &ha, Some(&homing_sock)),
            )
        });
        assert_eq!(
            (canonical(&h.0), h.1.clone(), h.2),
            (canonical(&r.0), r.1.clone(), r.2),
            "doveadm {c:?}\nreal stdout:\n{}\nhoming stdout:\n{}",
            r.0,
            h.0
        );

        // homing's own client against homing prints what doveadm prints
        // against real Dovecot.
        let fmt = match c.first().copied() {
            Some("-f") => Formatter::from_name(c[1]),
            _ => None,
        };
        let words: Vec<&str> = c
            .iter()
            .copied()
            .skip_while(|w| *w != "replicator")
            .skip(1)
            .collect();
        let rest: Vec<&str> = words[1..]
            .iter()
            .copied()
            .filter(|w| *w != "-a" && *w != "SOCK")
            .collect();
        let cmd = match words[0] {
            "status" => Some(ClientCommand::Status {
                mask: rest.first().map(|s| s.to_string()),
            }),
            "dsync-status" => Some(ClientCommand::DsyncStatus),
            // Mutating commands are compared in the second round below.
            _ => None,
        };
        if let Some(cmd) = cmd {
            let ours = client::run(&homing_sock, &cmd, fmt, 80).await;
            assert_client_prints(&ours, &r, &format!("{c:?}"));
        }
    }

    // Mutating commands: homing's client against homing, doveadm against
    // real Dovecot.
    let second: Vec<(Vec<&str>, ClientCommand)> = [
        (
            "replicator replicate -a SOCK -p high b*",
            replicate_cmd("high", false, "b*"),
        ),
        (
            "replicator replicate -a SOCK -f zed2",
            replicate_cmd("low", true, "zed2"),
        ),
        (
            "replicator replicate -a SOCK -p urgent zed2",
            replicate_cmd("urgent", false, "zed2"),
        ),
        (
            "replicator remove -a SOCK zed2",
            ClientCommand::Remove {
                user: "zed2".into(),
            },
        ),
        (
            "replicator remove -a SOCK zed2",
            ClientCommand::Remove {
                user: "zed2".into(),
            },
        ),
        (
            "replicator add -a SOCK newbie2",
            ClientCommand::Add {
                mask: "newbie2".into(),
            },
        ),
        ("replicator status -a SOCK *", status_cmd(Some("*"))),
    ]
    .into_iter()
    .map(|(c, cmd)| (c.split(' ').collect(), cmd))
    .collect();
    for (args, cmd) in &second {
        let s = real_sock.display().to_string();
        let ra = with_sock(args, &s);
        let r = tokio::task::block_in_place(|| doveadm(&real, &ra, Some(&real_sock)));
        let ours = client::run(&homing_sock, cmd, None, 80).await;
        assert_client_prints(&ours, &r, &format!("{args:?}"));
    }

    // Missing socket (spec 7.1.7).
    let missing = tmp.path().join("nonexistent");
    let r = doveadm(&real, &["replicator", "status", "-a"], Some(&missing));
    let ours = client::run(&missing, &status_cmd(None), None, 80).await;
    assert_eq!((ours.stderr, i32::from(ours.exit_code)), (r.1, r.2));

    // Nothing ran: max_conns = 0.
    assert!(runner.calls().is_empty());

    // Clean stop: both databases hold the same records (times masked).
    daemon.shutdown().await.unwrap();
    tokio::task::block_in_place(|| real.stop());
    let read_db = |p: PathBuf| -> Vec<String> {
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let mut v: Vec<String> = text
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                assert_eq!(f.len(), 8, "8 fields: {l:?}");
                // user, priority, failed, state exact; nonzero times masked.
                let t = |s: &str| if s == "0" { "0" } else { "T" };
                format!(
                    "{} {} {} {} {} {} {} {}",
                    f[0],
                    f[1],
                    t(f[2]),
                    t(f[3]),
                    t(f[4]),
                    f[5],
                    f[6],
                    t(f[7])
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        read_db(hdir.join("state/replicator.db")),
        read_db(real_dir.join("state/replicator.db"))
    );
}

/// A temporary directory (mode 0755) that the mail user can enter.
fn tempdir_for_mail_user() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// homing's client asks the replicator below `run` (its `run/` directory)
/// for the status of `mask` (or the overview), tab-separated.
async fn tab_status(run: &Path, mask: Option<&str>) -> client::ClientOutput {
    client::run(
        &run.join("replicator-doveadm"),
        &status_cmd(mask),
        Some(Formatter::Tab),
        80,
    )
    .await
}

/// homing's client printed what doveadm printed (`real`: stdout, stderr,
/// exit code), rows compared in canonical order.
fn assert_client_prints(ours: &client::ClientOutput, real: &(String, String, i32), what: &str) {
    assert_eq!(
        (
            canonical(&ours.stdout),
            ours.stderr.clone(),
            i32::from(ours.exit_code)
        ),
        (canonical(&real.0), real.1.clone(), real.2),
        "homing client for {what}"
    );
}

/// A replicator configuration with its `run/` and `state/` directories
/// created below `dir`.
fn config_in(dir: &Path) -> ReplicatorConfig {
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    ReplicatorConfig::with_dirs(&dir.join("run"), &dir.join("state"))
}

/// A runner whose every sync succeeds with `state` after `delay`.
fn runner_ok(state: &str, delay: Duration) -> RecordingRunner {
    RecordingRunner::new(
        SyncOutcome::Ok {
            state: state.into(),
        },
        delay,
    )
}

fn status_cmd(mask: Option<&str>) -> ClientCommand {
    ClientCommand::Status {
        mask: mask.map(str::to_string),
    }
}

fn replicate_cmd(priority: &str, full: bool, mask: &str) -> ClientCommand {
    ClientCommand::Replicate {
        priority: priority.into(),
        full,
        mask: mask.into(),
    }
}

async fn homing_daemon(
    dir: &Path,
    max_conns: usize,
    runner: RecordingRunner,
    sync_timeout: u64,
) -> Daemon {
    let mut config = config_in(dir);
    config.max_conns = max_conns;
    config.queue.sync_timeout = sync_timeout;
    config.doveadm_server_socket = None;
    config.metrics_listen = Some("127.0.0.1:0".into());
    let passwd = dir.join("passwd");
    std::fs::write(
        &passwd,
        "alice:x::::::\nbob:x::::::\ndave:x::::::userdb_noreplicate=y\nerin:x::::::userdb_mail_replica=tcp:peer:1\n",
    )
    .unwrap();
    config.userdb_passwd_file = Some(passwd);
    Daemon::start(config, Arc::new(runner), Arc::new(SystemClock))
        .await
        .unwrap()
}

/// Sends lines on a unix socket and reads until `want` bytes arrived or 5 s passed.
async fn exchange(sock: &Path, send: &str, until: impl Fn(&str) -> bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
    s.write_all(send.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !until(&String::from_utf8_lossy(&buf)) {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_run_and_sync_requests_are_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let runner = runner_ok("AQAAAHm4+Jk=", Duration::from_millis(300));
    let daemon = homing_daemon(tmp.path(), 2, runner.clone(), 10).await;
    let run = tmp.path().join("run");

    // Startup discovery: alice, bob, erin (dave is noreplicate) get full syncs.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dsync = client::run(
        &run.join("replicator-doveadm"),
        &ClientCommand::DsyncStatus,
        None,
        80,
    )
    .await;
    assert_eq!(
        dsync.stdout.lines().count(),
        3,
        "title + 2 busy slots:\n{}",
        dsync.stdout
    );
    assert!(
        dsync.stdout.contains(" full Waiting for dsync to finish"),
        "{}",
        dsync.stdout
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let calls = runner.calls();
    let mut users: Vec<&str> = calls.iter().map(|c| c.username.as_str()).collect();
    users.sort();
    assert_eq!(users, ["alice", "bob", "erin"]);
    assert!(calls.iter().all(|c| c.full && c.state.is_none()));
    let erin = calls.iter().find(|c| c.username == "erin").unwrap();
    assert_eq!(erin.mail_replica.as_deref(), Some("tcp:peer:1"));

    // Aggregator protocol with a sync id: answered after the sync.
    let out = exchange(
        &run.join("replicator"),
        "VERSION\treplicator-notify\t1\t0\nU\talice\tsync\t1\n",
        |s| s.contains('\n'),
    )
    .await;
    assert_eq!(out, "+\t1\n");
    let last = runner.calls().last().cloned().unwrap();
    assert_eq!(last.username, "alice");
    assert!(!last.full, "incremental after a successful full sync");
    assert_eq!(last.state.as_deref(), Some("AQAAAHm4+Jk="));

    // Mail-process socket in sync mode.
    let out = exchange(&run.join("replication-notify"), "bob\tsync\n", |s| {
        s.contains('\n')
    })
    .await;
    assert_eq!(out, "+\n");
    // A noreplicate user's sync request is answered at once, nothing runs.
    let n = runner.calls().len();
    let out = exchange(&run.join("replication-notify"), "dave\tsync\n", |s| {
        s.contains('\n')
    })
    .await;
    assert_eq!(out, "+\n");
    assert_eq!(runner.calls().len(), n);

    // A failing sync answers '-' and shows as failed.
    runner.set_outcome(SyncOutcome::Failed {
        reason: "peer down".into(),
    });
    let out = exchange(
        &run.join("replicator"),
        "VERSION\treplicator-notify\t1\t0\nU\terin\tsync\t7\n",
        |s| s.contains('\n'),
    )
    .await;
    assert_eq!(out, "-\t7\n");
    let st = tab_status(&run, Some("erin")).await;
    let row: Vec<&str> = st.stdout.lines().nth(1).unwrap().split('\t').collect();
    assert_eq!((row[0], row[1], row[5]), ("erin", "none", "y"));
    let ov = tab_status(&run, None).await;
    assert!(
        ov.stdout.contains("Waiting 'failed' requests\t1\n"),
        "{}",
        ov.stdout
    );

    // NOTIFY from a peer: no sync is started for it.
    let n = runner.calls().len();
    let out = exchange(
        &run.join("replicator-doveadm"),
        "VERSION\treplicator-doveadm-client\t1\t0\nNOTIFY\tbob\tf\tNEWSTATE\n",
        |s| s.ends_with("+\n"),
    )
    .await;
    assert!(out.ends_with("+\n"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(runner.calls().len(), n);

    // replicate -f runs a full sync.
    runner.set_outcome(SyncOutcome::Ok { state: "S2".into() });
    let r = client::run(
        &run.join("replicator-doveadm"),
        &replicate_cmd("high", true, "bob"),
        None,
        80,
    )
    .await;
    assert_eq!(r.stdout, "1 users updated\n");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let last = runner.calls().last().cloned().unwrap();
    assert_eq!((last.username.as_str(), last.full), ("bob", true));
    assert_eq!(last.state.as_deref(), Some("NEWSTATE"), "state from NOTIFY");

    // Metrics.
    let addr = daemon.metrics_addr.unwrap();
    let body = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).await.unwrap();
        String::from_utf8(v).unwrap()
    };
    assert!(body.starts_with("HTTP/1.1 200 OK\r\n"), "{body}");
    assert!(body.contains("Content-Type: application/openmetrics-text"));
    assert!(body.contains("homing_replicator_users 3\n"), "{body}");
    assert!(
        body.contains("homing_replicator_syncs_total{result=\"failed\"} 1\n"),
        "{body}"
    );
    let ok: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("homing_replicator_syncs_total{result=\"ok\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ok as usize, runner.calls().len() - 1);
    assert!(body.contains("homing_replicator_queue_requests{priority=\"waiting_failed\"} 1\n"));
    assert!(body.contains("homing_replicator_user_lag_seconds{user=\"alice\"} "));
    assert!(
        body.contains("homing_replicator_user_lag_seconds{user=\"erin\"} "),
        "erin succeeded at startup"
    );
    assert!(body.contains(&format!(
        "homing_replicator_sync_duration_seconds_count {}\n",
        runner.calls().len()
    )));
    assert!(body.ends_with("# EOF\n"));

    daemon.shutdown().await.unwrap();
    let db = std::fs::read_to_string(tmp.path().join("state/replicator.db")).unwrap();
    assert!(
        db.contains("\t1\t\t0\n")
            || db
                .lines()
                .any(|l| l.starts_with("erin\t0\t") && l.split('\t').nth(5) == Some("1")),
        "{db}"
    );
    assert!(
        db.lines()
            .any(|l| l.starts_with("bob\t0\t") && l.split('\t').nth(6) == Some("S2")),
        "{db}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_request_times_out_when_nothing_can_run() {
    let tmp = tempfile::tempdir().unwrap();
    let runner = runner_ok("", Duration::ZERO);
    let daemon = homing_daemon(tmp.path(), 0, runner.clone(), 1).await;
    let run = tmp.path().join("run");
    let t = std::time::Instant::now();
    let out = exchange(&run.join("replication-notify"), "alice\tsync\n", |s| {
        s.contains('\n')
    })
    .await;
    assert_eq!(out, "-\n");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // Still queued as sync (the daemon did not crash, unlike Dovecot 2.3.19.1).
    let st = tab_status(&run, None).await;
    assert!(
        st.stdout.contains("Queued 'sync' requests\t1\n"),
        "{}",
        st.stdout
    );
    assert!(runner.calls().is_empty());
    daemon.shutdown().await.unwrap();
}

/// Spec 5.3 and 7.3.11: a stock Dovecot with `mail_plugins = notify
/// replication` and its own aggregator feeds homing's `replicator` socket.
/// Saving mail with `replication_sync_timeout` set goes through the `sync`
/// path (answered after homing's sync finished); without it, `high` arrives
/// asynchronously through the FIFO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_mail_processes_and_aggregator_feed_homing() {
    if !test_support::require_dovecot("real_mail_processes_and_aggregator_feed_homing") {
        return;
    }
    let tmp = tempdir_for_mail_user();

    // homing first: the aggregator connects to its socket lazily.
    let hdir = tmp.path().join("homing");
    let mut config = config_in(&hdir);
    config.max_conns = 1;
    config.doveadm_server_socket = None;
    config.aggregator_fifo = None;
    config.aggregator_socket = None;
    let runner = runner_ok("AQAAAHm4+Jk=", Duration::from_millis(200));
    let daemon = Daemon::start(config, Arc::new(runner.clone()), Arc::new(SystemClock))
        .await
        .unwrap();

    let extra = format!(
        "mail_plugins = $mail_plugins notify replication\n\
         plugin {{\n  mail_replica = tcp:127.0.0.1:1\n  replication_sync_timeout = 3\n}}\n\
         replicator_host = {h}/run/replicator\n\
         service aggregator {{\n  chroot =\n  fifo_listener replication-notify-fifo {{\n    mode = 0666\n  }}\n  unix_listener replication-notify {{\n    mode = 0666\n  }}\n}}\n",
        h = hdir.display()
    );
    let mut real = tokio::task::block_in_place(|| {
        DovecotInstance::start(
            InstanceOptions::new()
                .users(&PASSWD_USERS)
                .user_password("pw")
                .extra_conf(extra),
        )
    })
    .expect("private Dovecot instance");

    let save = |user: &str, extra: &[&str]| -> (i32, Duration) {
        use std::process::Stdio;
        let t = std::time::Instant::now();
        let mut cmd = Command::new("doveadm");
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .arg("-c")
            .arg(real.config_path())
            .args(extra)
            .args(["save", "-u", user])
            .stdin(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n")
            .unwrap();
        let st = child.wait().unwrap();
        (st.code().unwrap_or(-1), t.elapsed())
    };

    // Sync path: the save waits for homing's sync of bob, then returns.
    let (code, took) = tokio::task::block_in_place(|| save("bob", &[]));
    assert_eq!(code, 0);
    let calls = runner.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].username, "bob");
    assert!(
        took < Duration::from_millis(2900),
        "answered before the plugin's timeout: {took:?}"
    );
    let log = real.log();
    assert!(!log.contains("Sync failure"), "{log}");

    // Asynchronous path: high through the FIFO and the aggregator.
    let (code, _) =
        tokio::task::block_in_place(|| save("alice", &["-o", "plugin/replication_sync_timeout=0"]));
    assert_eq!(code, 0);
    let mut seen = false;
    for _ in 0..50 {
        if runner.calls().iter().any(|c| c.username == "alice") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "alice's high notification reached homing");
    let st = tab_status(&hdir.join("run"), Some("*")).await;
    let users: Vec<&str> = st
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap_or(""))
        .collect();
    let mut users = users;
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    tokio::task::block_in_place(|| real.stop());
    daemon.shutdown().await.unwrap();
}

/// homing's scheduler running real syncs through a real Dovecot
/// `doveadm-server` socket (`DoveadmServerRunner`, the same command line as
/// Dovecot's replicator), with a local `mail_replica`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_through_real_doveadm_server() {
    if !test_support::require_dovecot("syncs_through_real_doveadm_server") {
        return;
    }
    let tmp = tempdir_for_mail_user();
    let replica_dir = tmp.path().join("replica");
    std::fs::create_dir_all(&replica_dir).unwrap();
    let mut real = tokio::task::block_in_place(|| {
        DovecotInstance::start(InstanceOptions::new().users(&["bob"]).extra_conf(format!(
            // `doveadm sync -d` takes mail_replica unexpanded (a `%u` stays
            // literal), so name bob's replica directly.
            "plugin {{\n  mail_replica = maildir:{}/bob\n}}\n",
            replica_dir.display()
        )))
    })
    .expect("private Dovecot instance");
    let (uid, gid) = real.vmail_ids();
    std::os::unix::fs::chown(&replica_dir, Some(uid), Some(gid)).unwrap();
    let passwd = real.root().join("passwd");
    // One message for bob.
    tokio::task::block_in_place(|| {
        real.save_message(
            "bob",
            "INBOX",
            b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n",
        )
        .unwrap()
    });

    let hdir = tmp.path().join("homing");
    let mut config = config_in(&hdir);
    config.max_conns = 2;
    config.userdb_passwd_file = Some(passwd.clone());
    // A local replica, so no -N (that needs a remote).
    let runner = homing::replicator::runner::DoveadmServerRunner::new(
        real.run_dir().join("doveadm-server"),
        "-d -l 30 -U",
    );
    let daemon = Daemon::start(config, Arc::new(runner), Arc::new(SystemClock))
        .await
        .unwrap();
    let sock = hdir.join("run/replicator-doveadm");
    // zed is unknown to the userdb: its sync answers NOUSER and it is dropped.
    client::run(&sock, &replicate_cmd("high", false, "zed"), None, 80).await;
    let mut bob_state = None;
    for _ in 0..100 {
        let recs = daemon.records();
        let bob = recs.iter().find(|r| r.username == "bob").cloned();
        let zed_gone = !recs.iter().any(|r| r.username == "zed");
        if let Some(b) = bob.filter(|b| b.last_successful_sync != 0) {
            if zed_gone {
                bob_state = Some(b);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bob = bob_state.expect("bob synced and zed removed");
    assert!(!bob.last_sync_failed);
    let state = bob.state.expect("a dsync state came back");
    assert!(state.starts_with("AQAAA"), "{state}");
    // The replica received the message.
    let replica_new = replica_dir.join("bob");
    let count = walk_files(&replica_new)
        .iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            (s.contains("/cur/") || s.contains("/new/")) && !s.contains("dovecot")
        })
        .count();
    assert_eq!(count, 1, "one message in the replica");

    daemon.shutdown().await.unwrap();
    tokio::task::block_in_place(|| real.stop());
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_is_dumped_periodically_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config_in(tmp.path());
    config.max_conns = 0;
    config.dump_interval = 1;
    config.doveadm_server_socket = None;
    config.socket_owner = Some((5000, 5000));
    config.socket_mode = 0o660;
    let runner = runner_ok("", Duration::ZERO);
    let daemon = Daemon::start(config, Arc::new(runner), Arc::new(SystemClock))
        .await
        .unwrap();
    let r = client::run(
        &tmp.path().join("run/replicator-doveadm"),
        &replicate_cmd("high", false, "bob"),
        None,
        80,
    )
    .await;
    assert_eq!(r.stdout, "1 users updated\n");
    {
        use std::os::unix::fs::MetadataExt;
        for name in [
            "replicator-doveadm",
            "replicator",
            "replication-notify",
            "replication-notify-fifo",
        ] {
            let m = std::fs::metadata(tmp.path().join("run").join(name)).unwrap();
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o777),
                (5000, 5000, 0o660),
                "{name}"
            );
        }
    }
    let db = tmp.path().join("state/replicator.db");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = std::fs::read_to_string(&db).expect("dumped without a shutdown");
    assert!(text.starts_with("bob\t2\t"), "{text}");
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o600
    );
    daemon.shutdown().await.unwrap();
    // The sockets are gone after a clean stop.
    assert!(!tmp.path().join("run/replicator-doveadm").exists());
}

/// A peer's `dsync-server -U` writes `VERSION` and `NOTIFY` in one go and
/// closes without reading the greeting: every such `NOTIFY` must still be
/// applied (spec 2.6), whatever happens to the greeting's write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_from_a_client_that_closes_at_once_is_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let runner = runner_ok("", Duration::ZERO);
    let daemon = homing_daemon(tmp.path(), 0, runner, 10).await;
    let sock = tmp.path().join("run/replicator-doveadm");
    const N: usize = 40;
    for i in 0..N {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.write_all(
            format!("VERSION\treplicator-doveadm-client\t1\t0\nNOTIFY\tpeer{i}\tf\tSTATE{i}\n")
                .as_bytes(),
        )
        .unwrap();
        drop(s);
    }
    let start = std::time::Instant::now();
    loop {
        let recs = daemon.records();
        let applied = (0..N)
            .filter(|i| {
                recs.iter().any(|r| {
                    r.username == format!("peer{i}")
                        && r.state.as_deref() == Some(format!("STATE{i}").as_str())
                        && r.last_full_sync > 0
                })
            })
            .count();
        if applied == N {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{applied} of {N} NOTIFYs applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.shutdown().await.unwrap();
}

/// With no passwd-file or command configured, the users come from the
/// running Dovecot's auth-userdb socket (`LIST`), as Dovecot's replicator
/// gets them; an unreachable socket leaves the queue empty, logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_listed_through_dovecots_auth_userdb_socket() {
    let inst = dovecot_or_skip!(InstanceOptions::new()
        .users(&PASSWD_USERS)
        .user_password("pw"));
    let tmp = tempfile::tempdir().unwrap();
    let start = |auth: PathBuf, name: &str| {
        let dir = tmp.path().join(name);
        let mut config = config_in(&dir);
        config.max_conns = 0;
        config.doveadm_server_socket = None;
        config.auth_socket_path = Some(auth);
        let runner = RecordingRunner::new(
            SyncOutcome::Failed {
                reason: "unused".into(),
            },
            Duration::ZERO,
        );
        Daemon::start(config, Arc::new(runner), Arc::new(SystemClock))
    };
    let d = start(inst.run_dir().join("auth-userdb"), "listed")
        .await
        .unwrap();
    let mut users: Vec<String> = d.records().into_iter().map(|r| r.username).collect();
    users.sort();
    assert_eq!(users, PASSWD_USERS);
    d.shutdown().await.unwrap();

    let d = start(tmp.path().join("no-such-socket"), "unreachable")
        .await
        .unwrap();
    assert!(d.records().is_empty());
    d.shutdown().await.unwrap();
}
