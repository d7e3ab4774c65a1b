//! User lookups and user listings, as doveadm does them: through the
//! running Dovecot's `auth-userdb` socket (the auth-master protocol), or,
//! when Dovecot's auth is not reachable, straight from the passwd-file
//! userdbs named in the configuration.
//!
//! ```no_run
//! use homing::userdb::Userdb;
//! let db = Userdb::socket("/var/run/dovecot/auth-userdb");
//! if let Some(u) = db.lookup("alice").unwrap() {
//!     println!("{} home={:?} mail={:?}", u.user, u.home, u.mail());
//! }
//! for name in db.list().unwrap() {
//!     println!("{}", name.unwrap());
//! }
//! ```
//!
//! Both calls are blocking and bounded by an I/O timeout; async callers run
//! them with `tokio::task::spawn_blocking`.

mod passwd_file;
mod socket;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use passwd_file::PasswdFile;

use crate::cli::config::UserdbSection;

/// The default directory of Dovecot's sockets (`base_dir`).
pub const DEFAULT_BASE_DIR: &str = "/var/run/dovecot";
/// Default wait for an answer of Dovecot's auth process.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the userdb says about a user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// The user name as the userdb returned it (it may rewrite it).
    pub user: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub home: Option<String>,
    /// Every other field (`mail`, `mail_replica`, `noreplicate`, quota
    /// rules, ...), as returned.
    pub fields: BTreeMap<String, String>,
}

impl UserInfo {
    /// The user's own mail location (userdb field `mail`).
    pub fn mail(&self) -> Option<&str> {
        self.fields
            .get("mail")
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// Sets a field from a `key=value` of a userdb answer; `uid`, `gid`
    /// and `home` go to their own members (user and group names resolved
    /// to numbers, as Dovecot's auth does).
    pub(crate) fn set_field(&mut self, key: &str, value: &str) -> Result<(), UserdbError> {
        let key = key.strip_prefix("userdb_").unwrap_or(key);
        match key {
            "uid" => self.uid = Some(resolve_uid(value)?),
            "gid" => self.gid = Some(resolve_gid(value)?),
            "home" => self.home = Some(value.to_string()).filter(|h| !h.is_empty()),
            "user" => self.user = value.to_string(),
            _ => {
                self.fields.insert(key.to_string(), value.to_string());
            }
        }
        Ok(())
    }
}

fn resolve_uid(v: &str) -> Result<u32, UserdbError> {
    if let Ok(n) = v.parse() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(v) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(UserdbError::Field(format!("uid: unknown user name '{v}'"))),
    }
}

fn resolve_gid(v: &str) -> Result<u32, UserdbError> {
    if let Ok(n) = v.parse() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(v) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(UserdbError::Field(format!("gid: unknown group name '{v}'"))),
    }
}

/// Why a lookup or a listing failed.
#[derive(Debug, thiserror::Error)]
pub enum UserdbError {
    /// Dovecot's auth is not there (no socket, or nobody listening).
    #[error("connect({path}) failed: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The peer broke the auth-master protocol.
    #[error("{path}: {reason}")]
    Protocol { path: PathBuf, reason: String },
    /// The userdb answered FAIL (its backend failed).
    #[error("userdb lookup failed: {0}")]
    Failed(String),
    #[error("user listing failed")]
    ListFailed,
    #[error("invalid userdb field {0}")]
    Field(String),
    #[error("passwd-file {path}: {reason}")]
    PasswdFile { path: String, reason: String },
    /// Neither a reachable auth socket nor a passwd-file userdb.
    #[error("no userdb reachable: {0}")]
    Unavailable(String),
}

impl UserdbError {
    /// Dovecot's auth is not running and nothing else could answer.
    pub fn is_unavailable(&self) -> bool {
        match self {
            UserdbError::Unavailable(_) => true,
            UserdbError::Connect { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ),
            _ => false,
        }
    }
}

/// Where users are looked up.
#[derive(Debug, Clone, Default)]
pub struct Userdb {
    /// Dovecot's `auth-userdb` socket; asked first.
    pub socket: Option<PathBuf>,
    /// Used when the socket is absent or refuses connections.
    pub passwd_files: Vec<PasswdFile>,
    /// Default [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// The `service=` of requests on the socket (default `doveadm`; the
    /// replicator lists users as `replicator`).
    pub service: Option<String>,
}

impl Userdb {
    /// Only Dovecot's auth socket at `path`.
    pub fn socket(path: impl Into<PathBuf>) -> Userdb {
        Userdb {
            socket: Some(path.into()),
            ..Userdb::default()
        }
    }

    /// The userdb a configuration names: the auth socket (`auth_socket_path`,
    /// relative to `base_dir`), then its `passwd-file` userdbs.
    pub fn from_config(values: &BTreeMap<String, String>, userdbs: &[UserdbSection]) -> Userdb {
        let base = values
            .get("base_dir")
            .filter(|s| !s.is_empty())
            .map(String::as_str)
            .unwrap_or(DEFAULT_BASE_DIR);
        let sock = values
            .get("auth_socket_path")
            .filter(|s| !s.is_empty())
            .map(String::as_str)
            .unwrap_or("auth-userdb");
        let socket = if sock.starts_with('/') {
            PathBuf::from(sock)
        } else {
            PathBuf::from(base).join(sock)
        };
        Userdb {
            socket: Some(socket),
            passwd_files: userdbs
                .iter()
                .filter(|u| u.driver == "passwd-file")
                .map(PasswdFile::from_section)
                .collect(),
            timeout: None,
            service: None,
        }
    }

    fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    fn service(&self) -> &str {
        self.service.as_deref().unwrap_or("doveadm")
    }

    /// Looks `user` up: `Ok(None)` when no userdb knows it.
    pub fn lookup(&self, user: &str) -> Result<Option<UserInfo>, UserdbError> {
        let mut unavailable = None;
        if let Some(path) = &self.socket {
            match socket::lookup(path, user, self.service(), self.timeout()) {
                Err(e) if e.is_unavailable() && !self.passwd_files.is_empty() => {
                    tracing::debug!("{e}; reading the passwd-file userdb instead");
                }
                Err(e) if e.is_unavailable() => unavailable = Some(e.to_string()),
                other => return other,
            }
        }
        if self.passwd_files.is_empty() {
            return Err(UserdbError::Unavailable(
                unavailable.unwrap_or_else(|| "no userdb configured".into()),
            ));
        }
        for f in &self.passwd_files {
            if let Some(u) = f.lookup(user)? {
                return Ok(Some(u));
            }
        }
        Ok(None)
    }

    /// Every user the userdb lists (what `doveadm user '*'` shows), in the
    /// userdb's order.
    pub fn list(&self) -> Result<UserList, UserdbError> {
        let mut unavailable = None;
        if let Some(path) = &self.socket {
            match socket::list(path, self.service(), self.timeout()) {
                Ok(l) => return Ok(UserList(ListInner::Socket(l))),
                Err(e) if e.is_unavailable() => unavailable = Some(e),
                Err(e) => return Err(e),
            }
        }
        if self.passwd_files.is_empty() {
            return Err(match unavailable {
                Some(e) => UserdbError::Unavailable(e.to_string()),
                None => UserdbError::Unavailable("no userdb configured".into()),
            });
        }
        let mut names = Vec::new();
        for f in &self.passwd_files {
            for n in f.list()? {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        Ok(UserList(ListInner::Names(names.into_iter())))
    }
}

/// The users of a listing, read as they arrive.
pub struct UserList(ListInner);

enum ListInner {
    Socket(socket::SocketList),
    Names(std::vec::IntoIter<String>),
}

impl Iterator for UserList {
    type Item = Result<String, UserdbError>;
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            ListInner::Socket(s) => s.next(),
            ListInner::Names(n) => n.next().map(Ok),
        }
    }
}

/// Expands `%u %n %d` (and `%Lu %Ln %Ld`, `%{user}`, `%{username}`,
/// `%{domain}`, `%h`/`%{home}` when a home is given) in `template`.
pub fn expand_vars(template: &str, user: &str, home: Option<&str>) -> Result<String, String> {
    let (n, d) = user.split_once('@').unwrap_or((user, ""));
    let mut out = String::with_capacity(template.len() + user.len());
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut lower = false;
        let mut name = String::new();
        loop {
            match chars.next() {
                Some('L') if name.is_empty() && !lower => lower = true,
                Some('{') => {
                    for c in chars.by_ref() {
                        if c == '}' {
                            break;
                        }
                        name.push(c);
                    }
                    break;
                }
                Some(c) => {
                    name.push(c);
                    break;
                }
                None => return Err("% at the end".into()),
            }
        }
        let value = match name.as_str() {
            "u" | "user" => user,
            "n" | "username" => n,
            "d" | "domain" => d,
            "%" => "%",
            "h" | "home" => home.ok_or("%h needs a home directory and the user has none")?,
            other => return Err(format!("%{other} is not supported")),
        };
        if lower {
            out.push_str(&value.to_lowercase());
        } else {
            out.push_str(value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables() {
        assert_eq!(
            expand_vars("/m/%d/%n/%u", "a@x.org", None).unwrap(),
            "/m/x.org/a/a@x.org"
        );
        assert_eq!(
            expand_vars("%h/Maildir:%{user}:%Lu:%%", "Bob", Some("/h/b")).unwrap(),
            "/h/b/Maildir:Bob:bob:%"
        );
        assert!(expand_vars("%h/x", "a", None).is_err());
        assert!(expand_vars("%z", "a", None).is_err());
        assert!(expand_vars("x%", "a", None).is_err());
    }

    #[test]
    fn fields_resolve_names() {
        let mut u = UserInfo::default();
        u.set_field("uid", "root").unwrap();
        u.set_field("gid", "0").unwrap();
        u.set_field("userdb_home", "/h").unwrap();
        u.set_field("mail", "maildir:~/M").unwrap();
        assert_eq!((u.uid, u.gid), (Some(0), Some(0)));
        assert_eq!(u.home.as_deref(), Some("/h"));
        assert_eq!(u.mail(), Some("maildir:~/M"));
        assert!(u.set_field("uid", "no-such-user-here").is_err());
    }

    #[test]
    fn unavailable_without_any_userdb() {
        let d = tempfile::tempdir().unwrap();
        let db = Userdb::socket(d.path().join("auth-userdb"));
        let e = db.lookup("alice").unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        assert!(db.list().err().is_some_and(|e| e.is_unavailable()));
    }
}
