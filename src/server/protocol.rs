//! Sans-I/O server side of the doveadm-server protocol: the client's VERSION
//! line, PLAIN authentication, the command line, `dsync-server` arguments and
//! the reply status lines. The client side lives in
//! [`crate::transport::wire`]; escaping and framing are shared with it.

use std::time::Duration;

use base64::Engine as _;

use crate::transport::wire::{unescape_field, CommandFlags, DEFAULT_USERNAME, PROTOCOL_MAJOR};

/// The server's VERSION line, sent to clients announcing minor ≥ 1.
pub const SERVER_VERSION_LINE: &[u8] = b"VERSION\tdoveadm-client\t1\t2\n";
/// The highest minor version this server speaks.
pub const SERVER_MINOR: u32 = 2;
/// The authentication request sent after the VERSION exchange.
pub const AUTH_REQUIRED_LINE: &[u8] = b"-\n";
/// Answer to a successful PLAIN (and to a failed one, `-`).
pub const AUTH_OK_LINE: &[u8] = b"+\n";
pub const AUTH_FAILED_LINE: &[u8] = b"-\n";
/// What `dsync-server` answers before its dsync stream.
pub const DSYNC_START_REPLY: &[u8] = b"\n+\n";

/// A rule of the doveadm-server protocol that a client broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerProtocolError {
    #[error("client did not start with `VERSION\\tdoveadm-server\\t1\\t<minor>`: {0:?}")]
    NotVersion(String),
    #[error("client speaks doveadm-server major version {0}, this server speaks 1")]
    Major(String),
    #[error("client attempted non-PLAIN authentication: {0:?}")]
    NonPlain(String),
    #[error("PLAIN credentials are not valid base64 of `authz\\0authn\\0password`")]
    BadPlain,
    #[error("doveadm client: Unknown flag: {0}")]
    UnknownFlag(char),
    #[error("command line has no user field")]
    MissingUser,
    #[error("command line has no command")]
    MissingCommand,
    #[error("command line field is not UTF-8")]
    NotUtf8,
}

fn lossy(line: &[u8]) -> String {
    let shown = &line[..line.len().min(200)];
    String::from_utf8_lossy(shown).into_owned()
}

/// Parses the client's first line and returns its minor version.
pub fn parse_client_version(line: &[u8]) -> Result<u32, ServerProtocolError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut f = line.split(|b| *b == b'\t');
    if f.next() != Some(b"VERSION") || f.next() != Some(b"doveadm-server") {
        return Err(ServerProtocolError::NotVersion(lossy(line)));
    }
    let num = |v: Option<&[u8]>| -> Option<u32> { std::str::from_utf8(v?).ok()?.parse().ok() };
    let major = f.next();
    match num(major) {
        Some(PROTOCOL_MAJOR) => {}
        Some(_) => return Err(ServerProtocolError::Major(lossy(major.unwrap_or_default()))),
        None => return Err(ServerProtocolError::NotVersion(lossy(line))),
    }
    num(f.next()).ok_or_else(|| ServerProtocolError::NotVersion(lossy(line)))
}

/// A line the client may send while unauthenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// `PLAIN\t<base64>`.
    Plain {
        authz: Vec<u8>,
        authn: Vec<u8>,
        password: Vec<u8>,
    },
    /// `STARTTLS` (not offered by this server).
    StartTls,
}

/// Parses an authentication line. Anything but `PLAIN` or `STARTTLS` is an
/// error: nothing else is accepted before authentication.
pub fn parse_auth_line(line: &[u8]) -> Result<AuthRequest, ServerProtocolError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line == b"STARTTLS" {
        return Ok(AuthRequest::StartTls);
    }
    let Some(b64) = line.strip_prefix(b"PLAIN\t") else {
        // Never echo what could be a password in a log: only the mechanism word.
        let word = line.split(|b| *b == b'\t').next().unwrap_or_default();
        return Err(ServerProtocolError::NonPlain(lossy(word)));
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| ServerProtocolError::BadPlain)?;
    let mut parts = raw.splitn(3, |b| *b == 0);
    let (Some(authz), Some(authn), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ServerProtocolError::BadPlain);
    };
    Ok(AuthRequest::Plain {
        authz: authz.to_vec(),
        authn: authn.to_vec(),
        password: password.to_vec(),
    })
}

/// Compares two secrets in time that depends only on their lengths' maximum,
/// never on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Why a PLAIN login was refused (for the server log; the client only sees `-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// The authentication id was not `doveadm`.
    WrongUsername,
    WrongPassword,
    /// No password configured: remote authentication is disabled.
    Disabled,
}

impl AuthFailure {
    pub fn log_text(self) -> &'static str {
        match self {
            AuthFailure::WrongUsername => "doveadm client didn't authenticate as 'doveadm'",
            AuthFailure::WrongPassword => "doveadm client authenticated with wrong password",
            AuthFailure::Disabled => "doveadm_password not set, remote authentication disabled",
        }
    }
}

/// Checks PLAIN credentials against the configured password. The password
/// comparison runs even when the user name is wrong, so timing tells nothing.
pub fn check_plain(
    authn: &[u8],
    password: &[u8],
    expected: Option<&[u8]>,
) -> Result<(), AuthFailure> {
    let Some(expected) = expected else {
        return Err(AuthFailure::Disabled);
    };
    let pw_ok = constant_time_eq(password, expected);
    let user_ok = constant_time_eq(authn, DEFAULT_USERNAME.as_bytes());
    match (user_ok, pw_ok) {
        (false, _) => Err(AuthFailure::WrongUsername),
        (true, false) => Err(AuthFailure::WrongPassword),
        (true, true) => Ok(()),
    }
}

/// A parsed command line: `FLAGS\tUSER\tWORDS…\tARGS…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub flags: CommandFlags,
    /// The user field, unescaped (may be empty).
    pub user: String,
    /// Command words and arguments, unescaped.
    pub args: Vec<String>,
}

/// Parses a command line (without LF). At most `max_fields` fields are accepted.
pub fn parse_command_line(
    line: &[u8],
    max_fields: usize,
) -> Result<CommandLine, ServerProtocolError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut fields = line.split(|b| *b == b'\t');
    let flag_field = fields.next().unwrap_or_default();
    let mut flags = CommandFlags::default();
    for &c in flag_field {
        match c {
            b'D' => {
                flags.debug = true;
                flags.verbose = true;
            }
            b'v' => flags.verbose = true,
            other => return Err(ServerProtocolError::UnknownFlag(char::from(other))),
        }
    }
    let text =
        |f: &[u8]| String::from_utf8(unescape_field(f)).map_err(|_| ServerProtocolError::NotUtf8);
    let user = text(fields.next().ok_or(ServerProtocolError::MissingUser)?)?;
    let mut args = Vec::new();
    for f in fields {
        if args.len() >= max_fields {
            return Err(ServerProtocolError::MissingCommand);
        }
        args.push(text(f)?);
    }
    if args.first().is_none_or(|a| a.is_empty()) {
        return Err(ServerProtocolError::MissingCommand);
    }
    Ok(CommandLine { flags, user, args })
}

/// The arguments of `dsync-server` (after the command word).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DsyncServerArgs {
    /// `-u USER` / `-uUSER`.
    pub user: Option<String>,
    /// `-U`: notify the local replicator after a successful session.
    pub replicator_notify: bool,
    /// `-T SECS`: idle I/O timeout asked by the client (0 = none).
    pub io_timeout: Option<Duration>,
    /// `-E`: legacy dsync invocation.
    pub legacy: bool,
    /// `-r PATH` was given (ignored: a peer must not choose server paths).
    pub rawlog_ignored: bool,
}

/// A `dsync-server` usage error, answered with `-USAGE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("dsync-server: unknown option -{0}")]
    UnknownOption(char),
    #[error("dsync-server: option -{0} needs a value")]
    MissingValue(char),
    #[error("dsync-server: unexpected arguments {0:?}")]
    ExtraArguments(Vec<String>),
}

/// Parses `dsync-server` options getopt-style (`-ualice`, `-u alice`, `-EU`).
/// One trailing positional word is ignored, as old setups repeated the
/// command name.
pub fn parse_dsync_server_args(args: &[String]) -> Result<DsyncServerArgs, UsageError> {
    let mut out = DsyncServerArgs::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            i += 1;
            break;
        }
        let Some(opts) = a.strip_prefix('-').filter(|o| !o.is_empty()) else {
            break;
        };
        for (pos, c) in opts.char_indices() {
            match c {
                'U' => out.replicator_notify = true,
                'E' => out.legacy = true,
                'u' | 'T' | 'r' => {
                    let rest = &opts[pos + c.len_utf8()..];
                    let value = if !rest.is_empty() {
                        rest.to_string()
                    } else {
                        i += 1;
                        args.get(i).cloned().ok_or(UsageError::MissingValue(c))?
                    };
                    match c {
                        'u' => out.user = Some(value),
                        'T' => {
                            // Dovecot ignores an unparsable -T; so do we.
                            if let Ok(secs) = value.parse::<u64>() {
                                out.io_timeout = (secs > 0).then(|| Duration::from_secs(secs));
                            }
                        }
                        _ => out.rawlog_ignored = true,
                    }
                    break;
                }
                other => return Err(UsageError::UnknownOption(other)),
            }
        }
        i += 1;
    }
    let rest = &args[i.min(args.len())..];
    if rest.len() > 1 {
        return Err(UsageError::ExtraArguments(rest.to_vec()));
    }
    Ok(out)
}

/// doveadm exit codes (sysexits) that have their own reply code.
pub const EX_OK: i32 = 0;
pub const EX_USAGE: i32 = 64;
pub const EX_DATAERR: i32 = 65;
pub const EX_NOUSER: i32 = 67;
pub const EX_NOTFOUND: i32 = 68;
pub const EX_TEMPFAIL: i32 = 75;
pub const EX_PROTOCOL: i32 = 76;
pub const EX_NOPERM: i32 = 77;
pub const EX_NOREPLICATE: i32 = 1001;

/// The reply code of an exit code (`+` is success; other unknown codes are
/// `UNKNOWN`, the desync code 2 included).
pub fn reply_code(exit_code: i32) -> &'static str {
    match exit_code {
        EX_TEMPFAIL => "TEMPFAIL",
        EX_USAGE => "USAGE",
        EX_NOUSER => "NOUSER",
        EX_NOPERM => "NOPERM",
        EX_PROTOCOL => "PROTOCOL",
        EX_DATAERR => "DATAERR",
        EX_NOREPLICATE => "NOREPLICATE",
        EX_NOTFOUND => "NOTFOUND",
        _ => "UNKNOWN",
    }
}

/// The end of a command reply with no output fields: `\n+\n` or `\n-CODE\n`.
pub fn status_reply(exit_code: i32) -> Vec<u8> {
    if exit_code == EX_OK {
        return DSYNC_START_REPLY.to_vec();
    }
    format!("\n-{}\n", reply_code(exit_code)).into_bytes()
}

/// The reply to a command this server does not know.
pub const UNKNOWN_COMMAND_REPLY: &[u8] = b"\n-\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::wire::{command_line, dsync_server_command, plain_auth_line};

    #[test]
    fn version_lines() {
        assert_eq!(
            parse_client_version(b"VERSION\tdoveadm-server\t1\t2"),
            Ok(2)
        );
        assert_eq!(
            parse_client_version(b"VERSION\tdoveadm-server\t1\t0\r"),
            Ok(0)
        );
        assert!(matches!(
            parse_client_version(b"VERSION\tdoveadm-server\t2\t0"),
            Err(ServerProtocolError::Major(_))
        ));
        for bad in [
            &b"PLAIN\tAAAA"[..],
            b"VERSION\tdsync\t3\t5",
            b"VERSION\tdoveadm-server\t1",
            b"",
        ] {
            assert!(
                matches!(
                    parse_client_version(bad),
                    Err(ServerProtocolError::NotVersion(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn plain_round_trip_and_check() {
        let line = plain_auth_line("doveadm", "s3cret");
        let req = parse_auth_line(line.strip_suffix(b"\n").unwrap()).unwrap();
        let AuthRequest::Plain {
            authz,
            authn,
            password,
        } = req
        else {
            panic!("{req:?}")
        };
        assert!(authz.is_empty());
        assert_eq!(check_plain(&authn, &password, Some(b"s3cret")), Ok(()));
        assert_eq!(
            check_plain(&authn, &password, Some(b"s3cret!")),
            Err(AuthFailure::WrongPassword)
        );
        assert_eq!(
            check_plain(&authn, &password, Some(b"s3cre")),
            Err(AuthFailure::WrongPassword)
        );
        assert_eq!(
            check_plain(b"root", &password, Some(b"s3cret")),
            Err(AuthFailure::WrongUsername)
        );
        assert_eq!(
            check_plain(&authn, &password, None),
            Err(AuthFailure::Disabled)
        );
        // Passwords may contain NUL after the second separator.
        let req = parse_auth_line(b"PLAIN\tAGRvdmVhZG0AYQBi").unwrap();
        assert!(matches!(req, AuthRequest::Plain { password, .. } if password == b"a\0b"));
    }

    #[test]
    fn anything_but_plain_is_refused_before_authentication() {
        assert_eq!(parse_auth_line(b"STARTTLS"), Ok(AuthRequest::StartTls));
        for line in [
            &b"\talice\tdsync-server\t-ualice"[..],
            b"LOGIN\tx",
            b"PLAIN",
            b"VERSION\tdoveadm-server\t1\t2",
        ] {
            assert!(
                matches!(parse_auth_line(line), Err(ServerProtocolError::NonPlain(_))),
                "{line:?}"
            );
        }
        assert_eq!(
            parse_auth_line(b"PLAIN\t!!!"),
            Err(ServerProtocolError::BadPlain)
        );
        // base64 of "doveadm\0pw": only one separator.
        assert_eq!(
            parse_auth_line(b"PLAIN\tZG92ZWFkbQBwdw=="),
            Err(ServerProtocolError::BadPlain)
        );
        // The error never carries the credentials.
        let e = parse_auth_line(b"LOGIN\tsecretpw").unwrap_err();
        assert!(!e.to_string().contains("secretpw"), "{e}");
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abc\0"));
        assert!(!constant_time_eq(b"", b"\0"));
    }

    #[test]
    fn command_lines_of_the_client() {
        let flags = CommandFlags {
            debug: true,
            verbose: false,
        };
        let line = dsync_server_command(flags, "al\tice", true);
        let cl = parse_command_line(line.strip_suffix(b"\n").unwrap(), 64).unwrap();
        assert!(cl.flags.debug && cl.flags.verbose);
        assert_eq!(cl.user, "al\tice");
        assert_eq!(cl.args, ["dsync-server", "-ual\tice", "-U"]);
        let line = command_line(CommandFlags::default(), "alice", &["mailbox", "list"]);
        let cl = parse_command_line(line.strip_suffix(b"\n").unwrap(), 64).unwrap();
        assert_eq!(cl.args, ["mailbox", "list"]);
        assert_eq!(
            parse_command_line(b"X\talice\tdsync-server", 64),
            Err(ServerProtocolError::UnknownFlag('X'))
        );
        assert_eq!(
            parse_command_line(b"", 64),
            Err(ServerProtocolError::MissingUser)
        );
        assert_eq!(
            parse_command_line(b"\talice", 64),
            Err(ServerProtocolError::MissingCommand)
        );
        assert_eq!(
            parse_command_line(b"\talice\ta\tb\tc", 2),
            Err(ServerProtocolError::MissingCommand)
        );
        assert_eq!(
            parse_command_line(b"\talice\t\xff", 64),
            Err(ServerProtocolError::NotUtf8)
        );
    }

    #[test]
    fn dsync_server_options() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let a = parse_dsync_server_args(&s(&["-ualice", "-U"])).unwrap();
        assert_eq!(a.user.as_deref(), Some("alice"));
        assert!(a.replicator_notify);
        let a = parse_dsync_server_args(&s(&[
            "-EU",
            "-u",
            "bob",
            "-T",
            "30",
            "-r",
            "/tmp/x",
            "dsync-server",
        ]))
        .unwrap();
        assert!(a.legacy && a.replicator_notify && a.rawlog_ignored);
        assert_eq!(a.user.as_deref(), Some("bob"));
        assert_eq!(a.io_timeout, Some(Duration::from_secs(30)));
        assert_eq!(
            parse_dsync_server_args(&s(&["-Z"])),
            Err(UsageError::UnknownOption('Z'))
        );
        assert_eq!(
            parse_dsync_server_args(&s(&["-u"])),
            Err(UsageError::MissingValue('u'))
        );
        assert!(matches!(
            parse_dsync_server_args(&s(&["a", "b"])),
            Err(UsageError::ExtraArguments(_))
        ));
        assert_eq!(
            parse_dsync_server_args(&s(&["-Tabc"])).unwrap().io_timeout,
            None
        );
    }

    #[test]
    fn status_lines_follow_the_code_map() {
        assert_eq!(status_reply(0), b"\n+\n");
        assert_eq!(status_reply(EX_NOUSER), b"\n-NOUSER\n");
        assert_eq!(status_reply(EX_NOREPLICATE), b"\n-NOREPLICATE\n");
        assert_eq!(status_reply(2), b"\n-UNKNOWN\n");
        assert_eq!(status_reply(73), b"\n-UNKNOWN\n");
        assert_eq!(status_reply(EX_TEMPFAIL), b"\n-TEMPFAIL\n");
    }
}
