use std::path::PathBuf;

/// What went wrong while running a private Dovecot instance or one of its tools.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("Dovecot is not usable on this machine: {0}")]
    Unavailable(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Dovecot master of {dir} did not start: {reason}\n--- log tail ---\n{log_tail}")]
    StartFailed {
        dir: PathBuf,
        reason: String,
        log_tail: String,
    },
    #[error("`{command}` exited with {status}:\nstdout: {stdout}\nstderr: {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stdout: String,
        stderr: String,
    },
    #[error("`{command}` did not finish within {seconds} s (killed)")]
    CommandTimeout { command: String, seconds: u64 },
    #[error("unexpected output of `{command}`: {reason}")]
    BadOutput { command: String, reason: String },
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("unknown user {0:?} (not in this instance's passwd file)")]
    UnknownUser(String),
}

impl HarnessError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            what: what.into(),
            source,
        }
    }
    pub(crate) fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HarnessError::File {
            path: path.into(),
            source,
        }
    }
}
