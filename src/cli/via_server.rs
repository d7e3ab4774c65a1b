//! `homing sync -S` / `homing backup -S`: the command runs on a doveadm
//! server (Dovecot's `<base_dir>/doveadm-server` socket or its doveadm TCP
//! listener) instead of here, as with `doveadm sync -S`.
//!
//! What goes over the wire is what `doveadm -S` sends: the handshake of the
//! doveadm-server protocol, then one command line per user,
//! `FLAGS\tUSER\tsync\t-u\tUSER\t<options>\t--\t<destination words>`, the
//! options in doveadm's own order whatever order they were given in.
//! The server's log lines are printed to stderr, its output fields (the
//! `-s` state) to stdout, and its reply code becomes the exit code.

use std::io::Write;
use std::path::PathBuf;

use super::options::{self, int_or_ignore};
use super::sync::{combine_exit_codes, Globals, Mode};
use super::{SyncArgs, EX_USAGE};
use crate::transport::wire::{self, CommandFlags, LogLevel, ReplyStatus};
use crate::transport::{
    reply_exit_code, run_command_line, split_host_port, TcpOptions, TransportError, EX_NOUSER,
    EX_TEMPFAIL,
};

/// Where the doveadm server listens, from `-S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTarget {
    /// A value with a `/` is a unix socket path.
    Unix(PathBuf),
    /// `host`, `host:port`, `[v6]:port`; no port means `doveadm_port`.
    Tcp { host: String, port: Option<u16> },
}

impl ServerTarget {
    /// Reads `-S` as doveadm does: a path when it contains `/`, else a host.
    pub fn parse(value: &str) -> Result<ServerTarget, String> {
        if value.contains('/') {
            return Ok(ServerTarget::Unix(PathBuf::from(value)));
        }
        let (host, port) = split_host_port(value)?;
        Ok(ServerTarget::Tcp { host, port })
    }
}

/// The words after the user in the command line for a sync/backup run on a
/// server: the command name, the options that were given in doveadm's
/// order (`-u` only with `with_user`), `--`, then the destination words.
/// `-S` is not sent, nor are `-A`/`-F` (the users are iterated here, one
/// command each). Integer options are sent as numbers; a non-numeric one is
/// dropped, as doveadm ignores it.
pub fn command_args(mode: Mode, a: &SyncArgs, with_user: Option<&str>) -> Vec<String> {
    let mut w: Vec<String> = vec![match mode {
        Mode::Backup => "backup".into(),
        Mode::Sync { .. } => "sync".into(),
    }];
    let opt = |w: &mut Vec<String>, letter: &str, value: Option<&str>| {
        w.push(letter.to_string());
        if let Some(v) = value {
            w.push(v.to_string());
        }
    };
    if let Some(u) = with_user {
        opt(&mut w, "-u", Some(u));
    }
    for (on, letter) in [
        (a.full, "-f"),
        (a.purge_remote, "-P"),
        (a.reverse, "-R"),
        (a.replicator_notify, "-U"),
    ] {
        if on {
            opt(&mut w, letter, None);
        }
    }
    if let Some(n) = int_or_ignore(a.lock_timeout.as_deref()) {
        opt(&mut w, "-l", Some(&n.to_string()));
    }
    if let Some(r) = &a.rawlog {
        opt(&mut w, "-r", Some(&r.display().to_string()));
    }
    if let Some(m) = &a.mailbox {
        opt(&mut w, "-m", Some(m));
    }
    if let Some(g) = &a.mailbox_guid {
        opt(&mut w, "-g", Some(g));
    }
    for n in &a.namespace {
        opt(&mut w, "-n", Some(n));
    }
    if a.all_namespaces {
        opt(&mut w, "-N", None);
    }
    for x in &a.exclude {
        opt(&mut w, "-x", Some(x));
    }
    for (letter, v) in [
        ("-a", &a.all_mailbox),
        ("-s", &a.state),
        ("-t", &a.since),
        ("-e", &a.until),
    ] {
        if let Some(v) = v {
            opt(&mut w, letter, Some(v));
        }
    }
    // A single-valued option: the last one given counts.
    if let Some(f) = a.sync_flag.last() {
        opt(&mut w, "-O", Some(f));
    }
    if let Some(i) = &a.max_size {
        opt(&mut w, "-I", Some(i));
    }
    if let Some(n) = int_or_ignore(a.timeout.as_deref()) {
        opt(&mut w, "-T", Some(&n.to_string()));
    }
    if a.default_destination {
        opt(&mut w, "-d", None);
    }
    if mode == (Mode::Sync { oneway: true }) {
        opt(&mut w, "-1", None);
    }
    w.push("--".into());
    w.extend(a.destination.iter().cloned());
    w
}

/// The checks doveadm makes here before sending anything: a destination
/// (or `-d`), and the values it parses itself (`-g`, `-O`, `-t`, `-e`,
/// `-I`). The rest (namespaces, the destination itself, the date order)
/// is the server's business.
pub(crate) fn check_locally(mode: Mode, a: &SyncArgs) -> Result<(), (i32, String)> {
    if a.json {
        return Err((
            EX_USAGE,
            "Fatal: --json is not available with -S (the sync runs on the server)".into(),
        ));
    }
    if !a.default_destination && a.destination.is_empty() {
        let usage = super::sync::usage_line(mode);
        return Err((EX_USAGE, format!("doveadm: Usage: {usage}")));
    }
    let opt_err = |e: options::OptionError| (EX_TEMPFAIL, format!("Fatal: {e}"));
    if let Some(g) = &a.mailbox_guid {
        options::mailbox_guid(g).map_err(opt_err)?;
    }
    if let Some(f) = a.sync_flag.last() {
        options::sync_flag(std::slice::from_ref(f)).map_err(opt_err)?;
    }
    let now = crate::session::now();
    if let Some(t) = &a.since {
        options::date('t', t, now).map_err(opt_err)?;
    }
    if let Some(e) = &a.until {
        options::date('e', e, now).map_err(opt_err)?;
    }
    if let Some(i) = &a.max_size {
        options::size(i).map_err(opt_err)?;
    }
    if a.default_destination && !a.destination.is_empty() {
        // As doveadm: said, and both are sent.
        eprintln!("Error: Don't give mail location with -d parameter");
    }
    Ok(())
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "Debug",
        LogLevel::Info => "Info",
        LogLevel::Warning => "Warning",
        LogLevel::Error | LogLevel::Other(_) => "Error",
        LogLevel::Fatal => "Fatal",
        LogLevel::Panic => "Panic",
    }
}

/// Whether a failure means the server cannot be used at all (so the
/// remaining users are not tried).
fn server_unusable(e: &TransportError) -> bool {
    matches!(
        e,
        TransportError::Resolve { .. }
            | TransportError::Connect { .. }
            | TransportError::ConnectTimeout { .. }
            | TransportError::AuthenticationFailed { .. }
            | TransportError::PasswordRequired { .. }
            | TransportError::BadDestination { .. }
    )
}

/// Runs `sync`/`backup` on the doveadm server named by `-S` (after
/// [`check_locally`]); returns the exit code. `users`: the one user (`-u`,
/// else `$USER`) or, with `many`, the users of `-A`/`-F`/a mask, one
/// command each.
pub async fn run(
    globals: &Globals,
    mode: Mode,
    a: &SyncArgs,
    socket: &str,
    users: &[String],
    many: bool,
) -> i32 {
    let cfg = &globals.settings;
    let mut opts = match ServerTarget::parse(socket) {
        Ok(ServerTarget::Unix(path)) => TcpOptions::unix(path),
        Ok(ServerTarget::Tcp { host, port }) => {
            let Some(port) = port.or_else(|| cfg.get("doveadm_port").and_then(|p| p.parse().ok()))
            else {
                eprintln!("Fatal: -S {socket}: no port given and doveadm_port is not set");
                return EX_TEMPFAIL;
            };
            TcpOptions::new(host, port)
        }
        Err(why) => {
            eprintln!("Fatal: -S {socket}: {why}");
            return EX_USAGE;
        }
    };
    opts.doveadm_password = cfg
        .get("doveadm_password")
        .filter(|p| !p.is_empty())
        .map(String::from);
    opts.flags = CommandFlags {
        debug: globals.debug,
        verbose: globals.verbose,
    };
    // The server applies -T to its own dsync I/O; here the reply comes only
    // when the whole sync is done, however long that takes.
    opts.io_timeout = None;
    let peer = opts.peer();
    let mut code = 0;
    for user in users {
        // doveadm sends `-u` only when it was given.
        let with_user = if many { None } else { a.user.as_deref() };
        let args = command_args(mode, a, with_user);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = wire::command_line(opts.flags, user, &refs);
        let prefix = format!("doveadm({user})");
        let log_prefix = format!("{prefix}: {{}}: remote({peer}): ");
        let sink: crate::transport::LogSink = Box::new(move |level, text| {
            eprintln!("{}{text}", log_prefix.replacen("{}", level_name(level), 1));
        });
        let user_code = match run_command_line(&opts, line, Some(sink)).await {
            Ok(reply) => {
                let mut out = std::io::stdout().lock();
                for f in &reply.fields {
                    let f = String::from_utf8_lossy(f);
                    let _ = if many {
                        writeln!(out, "{f} {user}")
                    } else {
                        writeln!(out, "{f}")
                    };
                }
                match reply.status {
                    ReplyStatus::Success => 0,
                    ReplyStatus::Failure(c) => {
                        let exit = reply_exit_code(&c);
                        if exit == EX_NOUSER {
                            eprintln!("{prefix}: Error: {peer}: No such user: {user}");
                        }
                        exit
                    }
                }
            }
            Err(e) => {
                eprintln!(
                    "{prefix}: Error: {peer}: Command {} failed for {user}: {e}",
                    args[0]
                );
                if server_unusable(&e) {
                    return combine_exit_codes(code, e.exit_code());
                }
                e.exit_code()
            }
        };
        code = combine_exit_codes(code, user_code);
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(words: &[&str]) -> (Mode, SyncArgs) {
        let cli = super::super::Cli::try_parse_from(
            std::iter::once("homing").chain(words.iter().copied()),
        )
        .unwrap();
        match cli.command {
            super::super::Command::Sync { oneway, args } => (Mode::Sync { oneway }, args),
            super::super::Command::Backup { args } => (Mode::Backup, args),
            _ => unreachable!(),
        }
    }

    fn line(words: &[&str]) -> Vec<u8> {
        let (mode, a) = parse(words);
        let user = a.user.clone().unwrap();
        let args = command_args(mode, &a, Some(&user));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        wire::command_line(CommandFlags::default(), &user, &refs)
    }

    #[test]
    fn command_lines_match_doveadm_s() {
        // Each expected line was captured from `doveadm sync -S SOCKET ...`
        // (Dovecot 2.3.19.1) with the same arguments.
        assert_eq!(
            line(&[
                "sync",
                "-S",
                "/s",
                "-u",
                "alice",
                "-f",
                "-l",
                "30",
                "tcp:otherhost:1234"
            ]),
            b"\talice\tsync\t-u\talice\t-f\t-l\t30\t--\ttcp:otherhost:1234\n"
        );
        assert_eq!(
            line(&[
                "sync", "-S", "/s", "-u", "alice", "-x", "Trash", "-R", "-1", "-x", "Junk", "-T",
                "5", "-s", "", "-m", "INBOX", "-n", "", "-O", "\\Seen", "maildir:/tmp/x",
            ]),
            &b"\talice\tsync\t-u\talice\t-R\t-m\tINBOX\t-n\t\t-x\tTrash\t-x\tJunk\t-s\t\t-O\t\\Seen\t-T\t5\t-1\t--\tmaildir:/tmp/x\n"[..]
        );
        assert_eq!(
            line(&[
                "sync", "-S", "/s", "-u", "alice", "-1", "-f", "-P", "-R", "-U", "-l", "007",
                "-r", "/tmp/raw", "-m", "M", "-g", "0123456789abcdef0123456789abcdef", "-n",
                "ns1", "-n", "ns2", "-N", "-x", "X1", "-a", "All", "-s", "st", "-t", "2020-01-01",
                "-e", "2021-01-01", "-O", "Flag", "-I", "10M", "-T", "5", "-d",
            ]),
            &b"\talice\tsync\t-u\talice\t-f\t-P\t-R\t-U\t-l\t7\t-r\t/tmp/raw\t-m\tM\t-g\t0123456789abcdef0123456789abcdef\t-n\tns1\t-n\tns2\t-N\t-x\tX1\t-a\tAll\t-s\tst\t-t\t2020-01-01\t-e\t2021-01-01\t-O\tFlag\t-I\t10M\t-T\t5\t-d\t-1\t--\n"[..]
        );
        // Non-numeric integers are dropped; a multi-word destination stays
        // several words.
        assert_eq!(
            line(&[
                "backup", "-S", "/s", "-u", "alice", "-l", "abc", "-T", "xyz", "-f", "a", "b", "c"
            ]),
            b"\talice\tbackup\t-u\talice\t-f\t--\ta\tb\tc\n"
        );
        assert_eq!(
            line(&[
                "sync", "-S", "/s", "-u", "alice", "-O", "a", "-O", "b", "-l", "abc", "-T", "0",
                "m:/x"
            ]),
            b"\talice\tsync\t-u\talice\t-O\tb\t-T\t0\t--\tm:/x\n"
        );
    }

    #[test]
    fn without_u_the_user_is_only_the_user_field() {
        let (mode, a) = parse(&["sync", "-S", "/s", "maildir:/x"]);
        let args = command_args(mode, &a, None);
        assert_eq!(args, ["sync", "--", "maildir:/x"]);
    }

    #[test]
    fn targets() {
        assert_eq!(
            ServerTarget::parse("/run/dovecot/doveadm-server"),
            Ok(ServerTarget::Unix("/run/dovecot/doveadm-server".into()))
        );
        assert_eq!(
            ServerTarget::parse("./sock"),
            Ok(ServerTarget::Unix("./sock".into()))
        );
        assert_eq!(
            ServerTarget::parse("127.0.0.1:24245"),
            Ok(ServerTarget::Tcp {
                host: "127.0.0.1".into(),
                port: Some(24245)
            })
        );
        assert_eq!(
            ServerTarget::parse("[::1]:1"),
            Ok(ServerTarget::Tcp {
                host: "::1".into(),
                port: Some(1)
            })
        );
        assert_eq!(
            ServerTarget::parse("peer"),
            Ok(ServerTarget::Tcp {
                host: "peer".into(),
                port: None
            })
        );
        assert!(ServerTarget::parse("peer:x").is_err());
    }
}
