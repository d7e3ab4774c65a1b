use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::wire::WireError;

/// doveadm's exit code for temporary failures (EX_TEMPFAIL).
pub const EX_TEMPFAIL: i32 = 75;
/// Bad parameters (EX_USAGE).
pub const EX_USAGE: i32 = 64;
/// Bad data (EX_DATAERR).
pub const EX_DATAERR: i32 = 65;
/// Unknown user (EX_NOUSER).
pub const EX_NOUSER: i32 = 67;
/// Not found (EX_NOHOST).
pub const EX_NOHOST: i32 = 68;
/// Protocol mismatch (EX_PROTOCOL).
pub const EX_PROTOCOL: i32 = 76;
/// Permission denied (EX_NOPERM).
pub const EX_NOPERM: i32 = 77;
/// The user is excluded from replication: Dovecot's internal code, sent as
/// `-NOREPLICATE` on the doveadm wire; callers skip the user. As a process
/// exit status it is its low byte, 233.
pub const EX_NOREPLICATE: i32 = 1001;

/// The exit code `doveadm` gives for a doveadm server's failure reply
/// `-CODE`: the named codes map back to their exit codes, anything else
/// (`UNKNOWN`, an empty code, codes it does not know) is a temporary failure.
pub fn reply_exit_code(code: &str) -> i32 {
    match code {
        "USAGE" => EX_USAGE,
        "DATAERR" => EX_DATAERR,
        "NOUSER" => EX_NOUSER,
        "NOTFOUND" => EX_NOHOST,
        "PROTOCOL" => EX_PROTOCOL,
        "NOPERM" => EX_NOPERM,
        "NOREPLICATE" => EX_NOREPLICATE,
        _ => EX_TEMPFAIL,
    }
}

/// Why a transport to a dsync peer failed, with where it happened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid destination {destination:?}: {reason}")]
    BadDestination { destination: String, reason: String },
    #[error("resolving {host:?} failed: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("connect({addr}) failed: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("connect({addr}) timed out after {}s", .after.as_secs_f32())]
    ConnectTimeout { addr: String, after: Duration },
    #[error("TLS handshake with {peer} failed: {reason}")]
    Tls { peer: String, reason: String },
    #[error("TLS certificate of {peer} rejected: {reason}")]
    TlsVerification { peer: String, reason: String },
    #[error("TLS trust anchors from {path}: {reason}")]
    TlsCa { path: PathBuf, reason: String },
    #[error("doveadm authentication to {peer} failed (wrong doveadm_password?)")]
    AuthenticationFailed { peer: String },
    #[error("{peer} requires authentication, but no doveadm_password is set")]
    PasswordRequired { peer: String },
    #[error("unknown user {user:?} in remote {peer}{}", detail_suffix(.detail))]
    UnknownUser {
        peer: String,
        user: String,
        detail: Option<String>,
    },
    #[error("user {user:?} is disabled for replication on {peer}")]
    NoReplicate { peer: String, user: String },
    #[error("failed to start remote dsync-server command on {peer}: -{code}{}", detail_suffix(.detail))]
    RemoteCommandRefused {
        peer: String,
        code: String,
        detail: Option<String>,
    },
    #[error("doveadm protocol error from {peer}: {source}")]
    Protocol {
        peer: String,
        #[source]
        source: WireError,
    },
    #[error("{peer} closed the connection {during}")]
    Eof { peer: String, during: &'static str },
    #[error("no data from {peer} for {}s ({during})", .after.as_secs_f32())]
    Timeout {
        peer: String,
        during: &'static str,
        after: Duration,
    },
    #[error("I/O with {peer} failed: {source}")]
    Io {
        peer: String,
        #[source]
        source: io::Error,
    },
    #[error("starting remote command `{command}` failed: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("remote command `{command}` returned error {status}{}", detail_suffix(.stderr_tail))]
    RemoteCommandFailed {
        command: String,
        status: i32,
        stderr_tail: Option<String>,
    },
    #[error("remote command `{command}` died with signal {signal}")]
    RemoteCommandKilled { command: String, signal: i32 },
}

fn detail_suffix(d: &Option<String>) -> String {
    match d {
        Some(d) if !d.is_empty() => format!(" ({d})"),
        _ => String::new(),
    }
}

impl TransportError {
    /// The exit status `doveadm sync` uses for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            TransportError::BadDestination { .. } => EX_USAGE,
            TransportError::UnknownUser { .. } => EX_NOUSER,
            TransportError::NoReplicate { .. } => EX_NOREPLICATE,
            TransportError::RemoteCommandRefused { code, .. } => reply_exit_code(code),
            // Everything else is what doveadm reports as a temporary failure:
            // connection, TLS and authentication problems, timeouts, EOF.
            _ => EX_TEMPFAIL,
        }
    }

    /// Recovers a [`TransportError`] carried inside an `io::Error` returned by
    /// a stream of this module (idle timeouts, demultiplexing errors), or wraps
    /// a plain I/O error.
    pub fn from_io(peer: &str, err: io::Error) -> TransportError {
        if err
            .get_ref()
            .is_some_and(|inner| inner.is::<TransportError>())
        {
            if let Some(inner) = err.into_inner() {
                if let Ok(t) = inner.downcast::<TransportError>() {
                    return *t;
                }
            }
            // Unreachable in practice: the check above saw a TransportError.
            return TransportError::Io {
                peer: peer.to_string(),
                source: io::Error::other("lost error"),
            };
        }
        if err.kind() == io::ErrorKind::UnexpectedEof {
            return TransportError::Eof {
                peer: peer.to_string(),
                during: "during the dsync session",
            };
        }
        TransportError::Io {
            peer: peer.to_string(),
            source: err,
        }
    }

    pub(crate) fn into_io(self) -> io::Error {
        let kind = match &self {
            TransportError::Timeout { .. } => io::ErrorKind::TimedOut,
            TransportError::Eof { .. } => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_doveadm() {
        let peer = "127.0.0.1:1".to_string();
        assert_eq!(
            TransportError::AuthenticationFailed { peer: peer.clone() }.exit_code(),
            75
        );
        assert_eq!(
            TransportError::UnknownUser {
                peer: peer.clone(),
                user: "x".into(),
                detail: None
            }
            .exit_code(),
            67
        );
        assert_eq!(
            TransportError::RemoteCommandRefused {
                peer: peer.clone(),
                code: "USAGE".into(),
                detail: None
            }
            .exit_code(),
            64
        );
        assert_eq!(
            TransportError::RemoteCommandRefused {
                peer,
                code: "UNKNOWN".into(),
                detail: None
            }
            .exit_code(),
            75
        );
    }

    #[test]
    fn reply_codes_map_back_to_doveadm_exit_codes() {
        // Observed with `doveadm sync -S` against a server answering each code.
        for (code, exit) in [
            ("NOUSER", 67),
            ("TEMPFAIL", 75),
            ("UNKNOWN", 75),
            ("", 75),
            ("NOREPLICATE", 1001),
            ("NOTFOUND", 68),
            ("USAGE", 64),
            ("DATAERR", 65),
            ("NOPERM", 77),
            ("PROTOCOL", 76),
            ("FOO", 75),
        ] {
            assert_eq!(reply_exit_code(code), exit, "-{code}");
        }
    }

    #[test]
    fn errors_survive_a_trip_through_io_error() {
        let e = TransportError::Timeout {
            peer: "p".into(),
            during: "reading",
            after: Duration::from_secs(3),
        };
        let io = e.into_io();
        assert_eq!(io.kind(), io::ErrorKind::TimedOut);
        let back = TransportError::from_io("p", io);
        assert!(matches!(back, TransportError::Timeout { .. }), "{back}");
        assert!(back.to_string().contains("no data from p for 3s"));
    }
}
