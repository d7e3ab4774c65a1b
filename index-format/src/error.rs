//! Errors of the readers: which file, where in it, and which rule of the format was broken.

use std::fmt;
use std::path::PathBuf;

/// The kind of Dovecot file an error or a dump refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    /// `dovecot.index`, `dovecot.list.index`, `dovecot.map.index`.
    Index,
    /// `dovecot.index.log`, `.log.2` and the list/map index logs.
    Log,
    /// `dovecot.index.cache`.
    Cache,
    /// Maildir `dovecot-uidlist`.
    Uidlist,
    /// Maildir `dovecot-keywords`.
    Keywords,
    /// A Maildir message file name.
    MaildirFilename,
    /// `dovecot-uidvalidity`.
    Uidvalidity,
    /// A dbox mail file (sdbox `u.N`, mdbox `m.N`).
    DboxMail,
    /// `subscriptions`.
    Subscriptions,
    /// `dovecot.mailbox.log`.
    MailboxLog,
    /// A file-dict attribute file (`dovecot-attributes`).
    Attributes,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            FileKind::Index => "index",
            FileKind::Log => "transaction log",
            FileKind::Cache => "cache",
            FileKind::Uidlist => "uidlist",
            FileKind::Keywords => "keywords file",
            FileKind::MaildirFilename => "maildir file name",
            FileKind::Uidvalidity => "uidvalidity file",
            FileKind::DboxMail => "dbox mail file",
            FileKind::Subscriptions => "subscriptions file",
            FileKind::MailboxLog => "mailbox log",
            FileKind::Attributes => "attributes file",
        };
        f.write_str(s)
    }
}

/// An error from one of the readers.
///
/// `Format` errors name the rule of the format that the bytes broke, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, mapped or read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes break a rule of the format.
    #[error("{}{kind} at offset {offset}: {rule}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Format {
        kind: FileKind,
        path: Option<PathBuf>,
        offset: u64,
        rule: FormatRule,
    },
    /// The file is of a kind or version this crate does not read.
    #[error("{}: unsupported: {what}", path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "<input>".into()))]
    Unsupported { path: Option<PathBuf>, what: String },
}

/// The rule of a format that was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatRule {
    /// The file ends before a structure that must be there.
    #[error("truncated: {what} needs {needed} bytes, {available} available")]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    /// A magic number or version that this reader does not know.
    #[error("bad {what}: {found}")]
    BadVersion { what: &'static str, found: String },
    /// A field holds a value the format forbids.
    #[error("invalid {field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    /// A line of a text format could not be parsed.
    #[error("line {line}: {detail}")]
    BadLine { line: u64, detail: String },
}

impl Error {
    /// A format error with no path yet; readers of byte slices use this and
    /// [`Error::with_path`] fills the path in at the file boundary.
    pub fn format(kind: FileKind, offset: u64, rule: FormatRule) -> Self {
        Error::Format {
            kind,
            path: None,
            offset,
            rule,
        }
    }

    /// Shorthand for a [`FormatRule::Truncated`] error.
    pub fn truncated(
        kind: FileKind,
        offset: u64,
        what: &'static str,
        needed: u64,
        available: u64,
    ) -> Self {
        Self::format(
            kind,
            offset,
            FormatRule::Truncated {
                what,
                needed,
                available,
            },
        )
    }

    /// Shorthand for a [`FormatRule::Invalid`] error.
    pub fn invalid(
        kind: FileKind,
        offset: u64,
        field: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self::format(
            kind,
            offset,
            FormatRule::Invalid {
                field,
                detail: detail.into(),
            },
        )
    }

    /// Attaches the file's path to an error that lacks one.
    pub fn with_path(mut self, p: impl Into<PathBuf>) -> Self {
        match &mut self {
            Error::Format { path, .. } | Error::Unsupported { path, .. } if path.is_none() => {
                *path = Some(p.into());
            }
            // A reader's error, made without knowing what it read.
            Error::Io { path, .. } if path.as_os_str().is_empty() => *path = p.into(),
            _ => {}
        }
        self
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
