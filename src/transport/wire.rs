//! Sans-I/O parts of the doveadm-server protocol (client side): the handshake
//! lines, PLAIN authentication, the command line, the multiplexed output of the
//! server (frames of channel `0` = command output and `L` = log lines) and the
//! command reply (`field\t`… `\n` then `+` or `-CODE`).
//!
//! Nothing here performs I/O; the tokio code in [`super::tcp`] drives it.

use base64::Engine as _;

/// What the client sends first, before reading anything.
pub const CLIENT_VERSION_LINE: &[u8] = b"VERSION\tdoveadm-server\t1\t2\n";
/// The protocol major version both sides must share.
pub const PROTOCOL_MAJOR: u32 = 1;
/// The authentication id the server demands for PLAIN.
pub const DEFAULT_USERNAME: &str = "doveadm";
/// Multiplex channel of the command output (the dsync stream).
pub const CHANNEL_DATA: u8 = 0;
/// Multiplex channel of log lines.
pub const CHANNEL_LOG: u8 = b'L';
/// Longest handshake or reply line accepted; Dovecot's are a few dozen bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// Longest log line kept whole; longer ones are cut (the rest is dropped).
pub const MAX_LOG_LINE: usize = 64 * 1024;
/// Largest total size of the reply fields before the status line.
pub const MAX_REPLY_FIELDS: usize = 1024 * 1024;

/// A rule of the doveadm-server protocol that the peer broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("doveadm server sent invalid handshake: {0:?}")]
    InvalidHandshake(String),
    #[error("doveadm server not compatible with this client: {0:?}")]
    Incompatible(String),
    #[error("doveadm authentication failed (server answered `-` to PLAIN)")]
    AuthenticationFailed,
    #[error("doveadm server requires authentication but no doveadm_password is set")]
    PasswordRequired,
    #[error("handshake line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("command reply fields longer than {MAX_REPLY_FIELDS} bytes")]
    ReplyTooLong,
    #[error("invalid command reply status line: {0:?}")]
    InvalidReplyStatus(String),
}

/// Escapes one field of a TAB-separated line (0x01 is the escape byte).
pub fn escape_field(field: &[u8], out: &mut Vec<u8>) {
    for &b in field {
        match b {
            0x00 => out.extend_from_slice(b"\x010"),
            0x01 => out.extend_from_slice(b"\x011"),
            b'\t' => out.extend_from_slice(b"\x01t"),
            b'\r' => out.extend_from_slice(b"\x01r"),
            b'\n' => out.extend_from_slice(b"\x01n"),
            _ => out.push(b),
        }
    }
}

/// Reverses [`escape_field`]; `\x01` + another byte yields that byte, a lone
/// trailing `\x01` is dropped.
pub fn unescape_field(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut it = field.iter();
    while let Some(&b) = it.next() {
        if b != 0x01 {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b'0') => out.push(0),
            Some(b'1') => out.push(1),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(&other) => out.push(other),
            None => {}
        }
    }
    out
}

/// `PLAIN\t` + base64(`\0` username `\0` password) + LF.
pub fn plain_auth_line(username: &str, password: &str) -> Vec<u8> {
    let mut creds = Vec::with_capacity(2 + username.len() + password.len());
    creds.push(0);
    creds.extend_from_slice(username.as_bytes());
    creds.push(0);
    creds.extend_from_slice(password.as_bytes());
    let mut line = b"PLAIN\t".to_vec();
    line.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(creds)
            .as_bytes(),
    );
    line.push(b'\n');
    line
}

/// Command flags of a doveadm-server command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandFlags {
    /// `D`: debug (and verbose) logging on the server, sent on channel `L`.
    pub debug: bool,
    /// `v`: verbose logging.
    pub verbose: bool,
}

/// `FLAGS\tUSER\tWORD…\tARG…\n`, each field tab-escaped.
pub fn command_line(flags: CommandFlags, user: &str, args: &[&str]) -> Vec<u8> {
    let mut line = Vec::new();
    if flags.debug {
        line.push(b'D');
    }
    if flags.verbose {
        line.push(b'v');
    }
    line.push(b'\t');
    escape_field(user.as_bytes(), &mut line);
    for a in args {
        line.push(b'\t');
        escape_field(a.as_bytes(), &mut line);
    }
    line.push(b'\n');
    line
}

/// The command line that starts a dsync server for `user`, as `doveadm sync`
/// sends it: `dsync-server` and `-u` joined with the user, plus `-U` when the
/// remote should notify its replicator.
pub fn dsync_server_command(flags: CommandFlags, user: &str, replicator_notify: bool) -> Vec<u8> {
    let u = format!("-u{user}");
    let mut args = vec!["dsync-server", u.as_str()];
    if replicator_notify {
        args.push("-U");
    }
    command_line(flags, user, &args)
}

/// The client half of the doveadm-server handshake, as a state machine fed
/// with the server's lines (without the LF).
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    username: String,
    password: Option<String>,
    command: Vec<u8>,
    server_minor: Option<u32>,
    state: HandshakeState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandshakeState {
    /// Waiting for `+` / `-` (and VERSION, in either order).
    Greeting,
    /// PLAIN sent, waiting for `+` / `-`.
    AuthSent,
    /// Authenticated; waiting only for the VERSION line.
    AuthenticatedNoVersion,
    /// The command was sent.
    Done,
}

/// What to do after feeding a line to [`ClientHandshake::on_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeStep {
    /// Send these bytes and keep reading lines.
    Send(Vec<u8>),
    /// Keep reading lines.
    Continue,
    /// Send these bytes (the command line); from now on the server's output is
    /// multiplexed when `multiplexed` is true.
    Finished { send: Vec<u8>, multiplexed: bool },
}

impl ClientHandshake {
    /// `password` None means no `doveadm_password` is configured (then only a
    /// pre-authenticated server can be used). `command` is the complete command
    /// line (see [`command_line`]).
    pub fn new(username: &str, password: Option<&str>, command: Vec<u8>) -> ClientHandshake {
        ClientHandshake {
            username: username.to_string(),
            password: password.map(str::to_string),
            command,
            server_minor: None,
            state: HandshakeState::Greeting,
        }
    }

    /// The bytes to send right after connecting.
    pub fn start(&self) -> &'static [u8] {
        CLIENT_VERSION_LINE
    }

    /// The server's minor version, once its VERSION line was seen.
    pub fn server_minor(&self) -> Option<u32> {
        self.server_minor
    }

    fn finish(&mut self) -> HandshakeStep {
        self.state = HandshakeState::Done;
        HandshakeStep::Finished {
            send: std::mem::take(&mut self.command),
            multiplexed: self.server_minor.unwrap_or(0) >= 1,
        }
    }

    /// Feeds one line from the server (LF removed; a trailing CR is ignored).
    pub fn on_line(&mut self, line: &[u8]) -> Result<HandshakeStep, WireError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b"VERSION\t") {
            if self.server_minor.is_some() || self.state == HandshakeState::Done {
                return Err(invalid(line));
            }
            self.server_minor = Some(parse_version(line)?);
            return Ok(if self.state == HandshakeState::AuthenticatedNoVersion {
                self.finish()
            } else {
                HandshakeStep::Continue
            });
        }
        match (self.state, line) {
            (HandshakeState::Greeting, b"+") | (HandshakeState::AuthSent, b"+") => {
                if self.server_minor.is_some() {
                    Ok(self.finish())
                } else {
                    self.state = HandshakeState::AuthenticatedNoVersion;
                    Ok(HandshakeStep::Continue)
                }
            }
            (HandshakeState::Greeting, b"-") => {
                let Some(pw) = &self.password else {
                    return Err(WireError::PasswordRequired);
                };
                self.state = HandshakeState::AuthSent;
                Ok(HandshakeStep::Send(plain_auth_line(&self.username, pw)))
            }
            (HandshakeState::AuthSent, b"-") => Err(WireError::AuthenticationFailed),
            _ => Err(invalid(line)),
        }
    }
}

fn invalid(line: &[u8]) -> WireError {
    WireError::InvalidHandshake(String::from_utf8_lossy(line).into_owned())
}

/// Parses `VERSION\tdoveadm-client\t1\tMINOR` and returns MINOR.
fn parse_version(line: &[u8]) -> Result<u32, WireError> {
    let text = String::from_utf8_lossy(line);
    let parts: Vec<&str> = text.split('\t').collect();
    match parts.as_slice() {
        ["VERSION", "doveadm-client", major, minor] => {
            let major: u32 = major.parse().map_err(|_| invalid(line))?;
            let minor: u32 = minor.parse().map_err(|_| invalid(line))?;
            if major != PROTOCOL_MAJOR {
                return Err(WireError::Incompatible(text.into_owned()));
            }
            Ok(minor)
        }
        ["VERSION", ..] => Err(WireError::Incompatible(text.into_owned())),
        _ => Err(invalid(line)),
    }
}

/// Severity byte at the start of a log line on channel `L`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
    Fatal,
    Panic,
    /// A byte outside 1..=6 (kept, shown as is).
    Other(u8),
}

impl LogLevel {
    pub fn from_byte(b: u8) -> LogLevel {
        match b {
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warning,
            4 => LogLevel::Error,
            5 => LogLevel::Fatal,
            6 => LogLevel::Panic,
            other => LogLevel::Other(other),
        }
    }
    pub fn to_byte(self) -> u8 {
        match self {
            LogLevel::Debug => 1,
            LogLevel::Info => 2,
            LogLevel::Warning => 3,
            LogLevel::Error => 4,
            LogLevel::Fatal => 5,
            LogLevel::Panic => 6,
            LogLevel::Other(b) => b,
        }
    }
}

/// One thing found in the multiplexed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemuxEvent<'a> {
    /// Bytes of channel 0, borrowed from the input.
    Data(&'a [u8]),
    /// A complete log line of channel `L` (level byte removed, LF removed).
    Log { level: LogLevel, text: String },
}

/// Incremental parser of the server's multiplexed output: frames of
/// `channel (1 byte) | length (u32 BE) | payload`. Frame boundaries carry no
/// meaning; unknown channels are skipped.
#[derive(Debug, Clone, Default)]
pub struct Demuxer {
    header: [u8; 5],
    header_len: usize,
    channel: u8,
    remaining: u32,
    log_line: Vec<u8>,
    log_truncated: bool,
}

impl Demuxer {
    pub fn new() -> Demuxer {
        Demuxer::default()
    }

    /// True when the parser stands exactly between two frames.
    pub fn at_frame_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }

    /// Parses from `input` until one event is found or the input is used up.
    /// Returns how many bytes were consumed and the event, if any. Data events
    /// are at most `max_data` bytes long (so a caller with a small buffer can
    /// take them without copying twice); with `max_data` 0 no data is returned.
    pub fn next<'a>(
        &mut self,
        input: &'a [u8],
        max_data: usize,
    ) -> (usize, Option<DemuxEvent<'a>>) {
        let mut pos = 0;
        while pos < input.len() {
            if self.remaining == 0 {
                // Reading a frame header.
                let take = (5 - self.header_len).min(input.len() - pos);
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&input[pos..pos + take]);
                self.header_len += take;
                pos += take;
                if self.header_len == 5 {
                    self.header_len = 0;
                    self.channel = self.header[0];
                    self.remaining = u32::from_be_bytes([
                        self.header[1],
                        self.header[2],
                        self.header[3],
                        self.header[4],
                    ]);
                }
                continue;
            }
            let avail = (input.len() - pos).min(self.remaining as usize);
            match self.channel {
                CHANNEL_DATA => {
                    let n = avail.min(max_data);
                    if n == 0 {
                        return (pos, None);
                    }
                    self.remaining -= n as u32;
                    return (pos + n, Some(DemuxEvent::Data(&input[pos..pos + n])));
                }
                CHANNEL_LOG => {
                    let chunk = &input[pos..pos + avail];
                    if let Some(nl) = chunk.iter().position(|b| *b == b'\n') {
                        self.push_log(&chunk[..nl]);
                        self.remaining -= (nl + 1) as u32;
                        pos += nl + 1;
                        if let Some(ev) = self.take_log() {
                            return (pos, Some(ev));
                        }
                    } else {
                        self.push_log(chunk);
                        self.remaining -= avail as u32;
                        pos += avail;
                    }
                }
                _ => {
                    self.remaining -= avail as u32;
                    pos += avail;
                }
            }
        }
        (pos, None)
    }

    fn push_log(&mut self, bytes: &[u8]) {
        let room = MAX_LOG_LINE.saturating_sub(self.log_line.len());
        if bytes.len() > room {
            self.log_truncated = true;
        }
        self.log_line
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn take_log(&mut self) -> Option<DemuxEvent<'static>> {
        let line = std::mem::take(&mut self.log_line);
        let truncated = std::mem::replace(&mut self.log_truncated, false);
        let (&first, rest) = line.split_first()?;
        let mut text = String::from_utf8_lossy(rest).into_owned();
        if truncated {
            text.push_str(" [truncated]");
        }
        Some(DemuxEvent::Log {
            level: LogLevel::from_byte(first),
            text,
        })
    }
}

/// Appends one frame (split in several when the payload exceeds u32::MAX).
pub fn encode_frame(channel: u8, payload: &[u8], out: &mut Vec<u8>) {
    for chunk in payload.chunks(u32::MAX as usize) {
        out.push(channel);
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        out.extend_from_slice(chunk);
    }
}

/// Appends a log line frame on channel `L`.
pub fn encode_log(level: LogLevel, text: &str, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(text.len() + 2);
    payload.push(level.to_byte());
    payload.extend_from_slice(text.as_bytes());
    payload.push(b'\n');
    encode_frame(CHANNEL_LOG, &payload, out);
}

/// The status line that ends a command reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyStatus {
    /// `+`
    Success,
    /// `-` followed by a code (`NOUSER`, `TEMPFAIL`, …; empty for an unknown command).
    Failure(String),
}

/// A complete command reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The output fields, unescaped.
    pub fields: Vec<Vec<u8>>,
    pub status: ReplyStatus,
}

/// Incremental parser of a command reply on channel 0:
/// `field\t`… `\n` then `+\n` or `-CODE\n`.
#[derive(Debug, Clone, Default)]
pub struct ReplyParser {
    fields_part: Vec<u8>,
    fields_done: bool,
    status_line: Vec<u8>,
}

impl ReplyParser {
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Consumes channel-0 bytes. Returns the bytes consumed and the reply once
    /// complete; bytes after the reply (the dsync stream) are not consumed.
    pub fn push(&mut self, data: &[u8]) -> Result<(usize, Option<Reply>), WireError> {
        let mut pos = 0;
        if !self.fields_done {
            match data.iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    self.fields_part.extend_from_slice(&data[..nl]);
                    self.fields_done = true;
                    pos = nl + 1;
                }
                None => {
                    self.fields_part.extend_from_slice(data);
                    pos = data.len();
                }
            }
            if self.fields_part.len() > MAX_REPLY_FIELDS {
                return Err(WireError::ReplyTooLong);
            }
            if !self.fields_done {
                return Ok((pos, None));
            }
        }
        let rest = &data[pos..];
        match rest.iter().position(|b| *b == b'\n') {
            Some(nl) => {
                self.status_line.extend_from_slice(&rest[..nl]);
                pos += nl + 1;
            }
            None => {
                self.status_line.extend_from_slice(rest);
                if self.status_line.len() > MAX_LINE {
                    return Err(WireError::LineTooLong);
                }
                return Ok((data.len(), None));
            }
        }
        let status = match self.status_line.split_first() {
            Some((b'+', [])) => ReplyStatus::Success,
            Some((b'-', code)) => ReplyStatus::Failure(String::from_utf8_lossy(code).into_owned()),
            _ => {
                return Err(WireError::InvalidReplyStatus(
                    String::from_utf8_lossy(&self.status_line).into_owned(),
                ))
            }
        };
        // Each field ends with a TAB, so an empty field is a lone TAB
        // (`sync -s` prints an empty state that way).
        let mut parts: Vec<&[u8]> = self.fields_part.split(|b| *b == b'\t').collect();
        if parts.last().is_some_and(|p| p.is_empty()) {
            parts.pop();
        }
        let fields = parts.into_iter().map(unescape_field).collect();
        Ok((pos, Some(Reply { fields, status })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(name: &str) -> Vec<u8> {
        let p = format!("{}/fixtures/captures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    /// Splits the server's bytes into the plain handshake lines and the rest.
    fn drive_handshake(
        s2c: &[u8],
        password: Option<&str>,
        command: Vec<u8>,
    ) -> (Vec<u8>, Result<usize, WireError>, Option<bool>) {
        let mut hs = ClientHandshake::new(DEFAULT_USERNAME, password, command);
        let mut sent = hs.start().to_vec();
        let mut pos = 0;
        while let Some(nl) = s2c[pos..].iter().position(|b| *b == b'\n') {
            let line = &s2c[pos..pos + nl];
            pos += nl + 1;
            match hs.on_line(line) {
                Ok(HandshakeStep::Send(b)) => sent.extend(b),
                Ok(HandshakeStep::Continue) => {}
                Ok(HandshakeStep::Finished { send, multiplexed }) => {
                    sent.extend(send);
                    return (sent, Ok(pos), Some(multiplexed));
                }
                Err(e) => return (sent, Err(e), None),
            }
        }
        (sent, Ok(pos), None)
    }

    fn demux_all(data: &[u8], chunk: usize, max_data: usize) -> (Vec<u8>, Vec<u8>) {
        let mut d = Demuxer::new();
        let mut ch0 = Vec::new();
        let mut logs = Vec::new();
        for piece in data.chunks(chunk) {
            let mut off = 0;
            loop {
                let (used, ev) = d.next(&piece[off..], max_data);
                off += used;
                match ev {
                    Some(DemuxEvent::Data(b)) => ch0.extend_from_slice(b),
                    Some(DemuxEvent::Log { level, text }) => {
                        logs.push(level.to_byte());
                        logs.extend_from_slice(text.as_bytes());
                        logs.push(b'\n');
                    }
                    None => {
                        assert_eq!(off, piece.len(), "no event means input used up");
                        break;
                    }
                }
            }
        }
        assert!(d.at_frame_boundary());
        (ch0, logs)
    }

    #[test]
    fn handshake_of_12_tcp_matches_capture() {
        let s2c = capture("12-tcp.s2c");
        let c2s = capture("12-tcp.c2s");
        let cmd = dsync_server_command(CommandFlags::default(), "alice", false);
        let (sent, res, mux) = drive_handshake(&s2c, Some("s3cret"), cmd);
        let consumed = res.unwrap();
        assert_eq!(mux, Some(true));
        // Everything the client wrote before its first dsync byte.
        assert_eq!(sent, &c2s[..sent.len()]);
        assert!(c2s[sent.len()..].starts_with(b"VERSION\tdsync\t3\t5\n"));
        // The rest of the server's bytes demultiplex into the recorded channels.
        let want0 = capture("12-tcp.s2c.ch0");
        let wantl = capture("12-tcp.s2c.chL");
        for (chunk, max) in [(usize::MAX, usize::MAX), (1, 1), (7, 3), (4096, 100)] {
            let (ch0, logs) = demux_all(&s2c[consumed..], chunk.min(s2c.len()), max);
            assert_eq!(ch0, want0, "chunk {chunk} max {max}");
            assert_eq!(logs, wantl);
        }
        // Channel 0 starts with the command reply, then the dsync stream.
        let mut rp = ReplyParser::new();
        let (used, reply) = rp.push(&want0).unwrap();
        assert_eq!(
            reply,
            Some(Reply {
                fields: vec![],
                status: ReplyStatus::Success
            })
        );
        assert_eq!(used, 3);
        assert!(want0[used..].starts_with(b"VERSION\tdsync\t3\t5\n"));
    }

    #[test]
    fn debug_flag_and_log_channel_of_13_tcp_debug() {
        let s2c = capture("13-tcp-debug.s2c");
        let c2s = capture("13-tcp-debug.c2s");
        let flags = CommandFlags {
            debug: true,
            verbose: false,
        };
        let cmd = dsync_server_command(flags, "alice", false);
        let (sent, res, _) = drive_handshake(&s2c, Some("s3cret"), cmd);
        assert_eq!(sent, &c2s[..sent.len()]);
        let (ch0, logs) = demux_all(&s2c[res.unwrap()..], 1000, 512);
        assert_eq!(ch0, capture("13-tcp-debug.s2c.ch0"));
        let want_logs = capture("13-tcp-debug.s2c.chL");
        assert!(!want_logs.is_empty());
        assert_eq!(logs, want_logs);
        assert_eq!(logs[0], LogLevel::Debug.to_byte());
    }

    #[test]
    fn bad_password_of_14_is_an_authentication_failure() {
        let s2c = capture("14-tcp-badpass.s2c");
        let c2s = capture("14-tcp-badpass.c2s");
        let cmd = dsync_server_command(CommandFlags::default(), "alice", false);
        let (sent, res, _) = drive_handshake(&s2c, Some("wrong"), cmd);
        assert_eq!(res, Err(WireError::AuthenticationFailed));
        assert_eq!(sent, c2s, "the client sent only VERSION and PLAIN");
    }

    #[test]
    fn missing_password_is_reported_before_sending_credentials() {
        let s2c = capture("14-tcp-badpass.s2c");
        let (sent, res, _) = drive_handshake(&s2c, None, Vec::new());
        assert_eq!(res, Err(WireError::PasswordRequired));
        assert_eq!(sent, CLIENT_VERSION_LINE);
    }

    #[test]
    fn unknown_user_of_16_tcp_nouser() {
        let s2c = capture("16-tcp-nouser.s2c");
        let c2s = capture("16-tcp-nouser.c2s");
        let cmd = dsync_server_command(CommandFlags::default(), "nosuchuser", false);
        let (sent, res, _) = drive_handshake(&s2c, Some("s3cret"), cmd);
        assert_eq!(sent, c2s);
        let (ch0, logs) = demux_all(&s2c[res.unwrap()..], 3, 2);
        assert_eq!(
            logs,
            b"\x04doveadm(127.0.0.1,nosuchuser): User doesn't exist\n"
        );
        let (used, reply) = ReplyParser::new().push(&ch0).unwrap();
        assert_eq!(used, ch0.len());
        assert_eq!(reply.unwrap().status, ReplyStatus::Failure("NOUSER".into()));
    }

    #[test]
    fn preauthenticated_unix_socket_of_17() {
        let s2c = capture("17-unix-preauth.s2c");
        let c2s = capture("17-unix-preauth.c2s");
        let cmd = command_line(CommandFlags::default(), "alice", &["mailbox", "list"]);
        let (sent, res, mux) = drive_handshake(&s2c, None, cmd);
        assert_eq!(sent, c2s);
        assert_eq!(mux, Some(true));
        let (ch0, _) = demux_all(&s2c[res.unwrap()..], 5, 4);
        // Feed the reply parser in small pieces.
        let mut rp = ReplyParser::new();
        let mut reply = None;
        let mut off = 0;
        for piece in ch0.chunks(2) {
            let (used, r) = rp.push(piece).unwrap();
            off += used;
            if r.is_some() {
                reply = r;
                break;
            }
        }
        let reply = reply.unwrap();
        assert_eq!(off, ch0.len());
        assert_eq!(reply.status, ReplyStatus::Success);
        let names: Vec<&[u8]> = reply.fields.iter().map(|f| f.as_slice()).collect();
        assert_eq!(names, [&b"Old"[..], b"Old/Archive", b"Work", b"INBOX"]);
    }

    #[test]
    fn handshake_accepts_version_after_the_auth_line() {
        let mut hs = ClientHandshake::new("doveadm", Some("pw"), b"cmd\n".to_vec());
        assert!(matches!(hs.on_line(b"-"), Ok(HandshakeStep::Send(_))));
        assert_eq!(hs.on_line(b"+"), Ok(HandshakeStep::Continue));
        assert_eq!(
            hs.on_line(b"VERSION\tdoveadm-client\t1\t2"),
            Ok(HandshakeStep::Finished {
                send: b"cmd\n".to_vec(),
                multiplexed: true
            })
        );
    }

    #[test]
    fn handshake_rejects_wrong_versions_and_garbage() {
        let mut hs = ClientHandshake::new("doveadm", Some("pw"), Vec::new());
        assert!(matches!(
            hs.on_line(b"VERSION\tdoveadm-client\t2\t0"),
            Err(WireError::Incompatible(_))
        ));
        let mut hs = ClientHandshake::new("doveadm", Some("pw"), Vec::new());
        assert!(matches!(
            hs.on_line(b"VERSION\tsomething-else\t1\t0"),
            Err(WireError::Incompatible(_))
        ));
        let mut hs = ClientHandshake::new("doveadm", Some("pw"), Vec::new());
        assert!(matches!(
            hs.on_line(b"* OK IMAP ready"),
            Err(WireError::InvalidHandshake(_))
        ));
        let mut hs = ClientHandshake::new("doveadm", Some("pw"), Vec::new());
        assert!(matches!(
            hs.on_line(b"VERSION\tdoveadm-client\t1\tx"),
            Err(WireError::InvalidHandshake(_))
        ));
    }

    #[test]
    fn plain_line_matches_spec_example() {
        assert_eq!(
            plain_auth_line("doveadm", "s3cret"),
            b"PLAIN\tAGRvdmVhZG0AczNjcmV0\n"
        );
    }

    #[test]
    fn escaping_round_trips() {
        let raw = b"a\tb\nc\rd\x01e\x00f";
        let mut esc = Vec::new();
        escape_field(raw, &mut esc);
        assert!(!esc.contains(&b'\t') && !esc.contains(&b'\n'));
        assert_eq!(unescape_field(&esc), raw);
        assert_eq!(unescape_field(b"x\x01"), b"x");
        assert_eq!(unescape_field(b"\x01q"), b"q");
        let line = command_line(CommandFlags::default(), "a\tb", &["x"]);
        assert_eq!(line, b"\ta\x01tb\tx\n");
    }

    #[test]
    fn frames_encode_and_decode() {
        let mut out = Vec::new();
        encode_frame(CHANNEL_DATA, b"hello ", &mut out);
        encode_log(LogLevel::Warning, "careful", &mut out);
        encode_frame(b'Z', b"ignored", &mut out);
        encode_frame(CHANNEL_DATA, b"world", &mut out);
        encode_frame(CHANNEL_DATA, b"", &mut out);
        let (ch0, logs) = demux_all(&out, 2, 3);
        assert_eq!(ch0, b"hello world");
        assert_eq!(logs, b"\x03careful\n");
    }

    #[test]
    fn huge_log_lines_are_bounded() {
        let mut out = Vec::new();
        let big = "x".repeat(MAX_LOG_LINE * 2);
        encode_log(LogLevel::Error, &big, &mut out);
        let mut d = Demuxer::new();
        let mut found = None;
        let mut off = 0;
        while off < out.len() {
            let (used, ev) = d.next(&out[off..], usize::MAX);
            off += used;
            if let Some(DemuxEvent::Log { text, .. }) = ev {
                found = Some(text);
            }
        }
        let text = found.unwrap();
        assert!(text.len() < MAX_LOG_LINE + 20);
        assert!(text.ends_with("[truncated]"));
    }

    proptest::proptest! {
        /// Any frame sequence split anywhere demultiplexes to the same channel
        /// 0 bytes and log lines as the frames that were encoded.
        #[test]
        fn demux_is_split_independent(
            frames in proptest::collection::vec(
                (proptest::prop_oneof![proptest::strategy::Just(0u8), proptest::strategy::Just(b'L'), proptest::strategy::Just(b'Q')],
                 proptest::collection::vec(proptest::num::u8::ANY, 0..300)),
                0..20),
            chunk in 1usize..64,
            max in 1usize..64,
        ) {
            let mut wire = Vec::new();
            let mut want0 = Vec::new();
            let mut want_logs = Vec::new();
            for (ch, payload) in &frames {
                if *ch == b'L' {
                    // Log payloads are whole lines: level byte, text, LF.
                    let text: Vec<u8> = payload.iter().map(|b| if *b == b'\n' { b' ' } else { *b }).collect();
                    let text = String::from_utf8_lossy(&text).into_owned();
                    encode_log(LogLevel::Info, &text, &mut wire);
                    want_logs.push(2u8);
                    want_logs.extend_from_slice(text.as_bytes());
                    want_logs.push(b'\n');
                } else {
                    encode_frame(*ch, payload, &mut wire);
                    if *ch == 0 {
                        want0.extend_from_slice(payload);
                    }
                }
            }
            let (ch0, logs) = demux_all(&wire, chunk, max);
            proptest::prop_assert_eq!(ch0, want0);
            proptest::prop_assert_eq!(logs, want_logs);
        }

        /// Garbage never panics and every byte is accounted for.
        #[test]
        fn demux_survives_garbage(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
            let mut d = Demuxer::new();
            let mut off = 0;
            let mut guard = 0;
            while off < data.len() {
                let (used, ev) = d.next(&data[off..], 17);
                off += used;
                if ev.is_none() {
                    proptest::prop_assert_eq!(off, data.len());
                }
                guard += 1;
                proptest::prop_assert!(guard <= data.len() + 1);
            }
            let mut rp = ReplyParser::new();
            let _ = rp.push(&data);
            let mut hs = ClientHandshake::new("doveadm", Some("pw"), Vec::new());
            for line in data.split(|b| *b == b'\n') {
                if hs.on_line(line).is_err() {
                    break;
                }
            }
        }
    }

    #[test]
    fn reply_parser_rejects_bad_status_and_bounds_fields() {
        assert!(matches!(
            ReplyParser::new().push(b"\n?\n"),
            Err(WireError::InvalidReplyStatus(_))
        ));
        let mut rp = ReplyParser::new();
        let chunk = vec![b'a'; 64 * 1024];
        let mut err = None;
        for _ in 0..20 {
            if let Err(e) = rp.push(&chunk) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(WireError::ReplyTooLong));
        let (_, r) = ReplyParser::new().push(b"\t\n-\n").unwrap();
        let r = r.unwrap();
        assert_eq!(r.status, ReplyStatus::Failure(String::new()));
        assert_eq!(r.fields, [Vec::<u8>::new()], "one empty field");
        let (_, r) = ReplyParser::new().push(b"\n+\n").unwrap();
        assert!(r.unwrap().fields.is_empty());
        let (_, r) = ReplyParser::new()
            .push(b"a\x01tb\tc\t\n-UNKNOWN\n")
            .unwrap();
        assert_eq!(r.unwrap().fields, [b"a\tb".to_vec(), b"c".to_vec()]);
    }
}
