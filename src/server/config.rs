//! Server settings: a `key = value` file (Dovecot-like, `#` comments) plus
//! command-line overrides, and the user database (a passwd-file, or
//! "static": every valid name whose home directory exists).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::validate::{self, NameError};

/// A configuration problem, naming the file/line or setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {reason}")]
    Syntax {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("setting {key}: {reason}")]
    Value { key: String, reason: String },
}

/// Where users come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserDbConfig {
    /// `user:password:uid:gid:gecos:home:shell:extra` lines; `extra` may hold
    /// `userdb_mail=LOCATION` and `userdb_noreplicate`.
    PasswdFile(PathBuf),
    /// Any valid user name whose home (from `home_template`) is a directory.
    Static,
}

/// Everything `homing server` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Plain TCP listeners.
    pub listen: Vec<SocketAddr>,
    /// TLS listeners (TLS from the first byte, like `tcps:`).
    pub tls_listen: Vec<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `doveadm_password`. None: every login fails (remote auth disabled).
    pub password: Option<String>,
    pub userdb: UserDbConfig,
    /// Home directory template: `%u` user, `%n` local part, `%d` domain.
    pub home_template: String,
    /// Mail location template (`%h` home plus the above), e.g. `maildir:%h/Maildir`.
    pub mail_location: String,
    /// Mailbox attribute dict template (`mail_attribute_dict`, e.g.
    /// `file:%h/dovecot-attributes`); `None`: attributes not enabled.
    pub mail_attribute_dict: Option<String>,
    /// Name announced in the dsync handshake.
    pub hostname: String,
    /// Connections handled at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// dsync sessions running at once; more wait (up to `lock_timeout`).
    pub max_sessions: usize,
    /// How long a session waits for another session of the same user (and
    /// for a free session slot) before failing with TEMPFAIL.
    pub lock_timeout: Duration,
    /// Time allowed from connect to the command line (TLS, VERSION, PLAIN).
    pub handshake_timeout: Duration,
    /// Idle I/O timeout during a session (Dovecot's default is 600 s).
    pub io_timeout: Duration,
    /// Delay before answering a failed login.
    pub auth_failure_delay: Duration,
    /// On SIGTERM: time running sessions get to finish before they are cut.
    pub shutdown_grace: Duration,
    /// Longest handshake/command line.
    pub max_line: usize,
    /// Most fields on a command line.
    pub max_command_fields: usize,
    /// Largest mail (data block) accepted from a peer.
    pub max_mail_size: u64,
    /// Most items in one dsync list.
    pub max_list_items: u64,
    /// Longest dsync line.
    pub max_dsync_line: usize,
    /// Delegate sessions to this command (`%u` user, `%h` home, `%m` mail
    /// location), e.g. `doveadm -c /etc/dovecot/dovecot.conf dsync-server -u%u`.
    pub dsync_command: Option<String>,
    /// The local replicator's `replicator-doveadm` socket: after a
    /// successful session run with `-U`, the user is reported there with
    /// `NOTIFY` (as Dovecot's `dsync-server -U` does). None: no notice.
    pub replicator_socket: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: Vec::new(),
            tls_listen: Vec::new(),
            tls_cert: None,
            tls_key: None,
            password: None,
            userdb: UserDbConfig::Static,
            home_template: "/var/vmail/%u".into(),
            mail_location: "maildir:%h/Maildir".into(),
            mail_attribute_dict: None,
            hostname: default_hostname(),
            max_connections: 256,
            max_sessions: 64,
            lock_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(600),
            auth_failure_delay: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            max_line: 64 * 1024,
            max_command_fields: 256,
            max_mail_size: 256 << 20,
            max_list_items: 10_000_000,
            max_dsync_line: 1 << 20,
            dsync_command: None,
            replicator_socket: Some(PathBuf::from(DEFAULT_REPLICATOR_SOCKET)),
        }
    }
}

/// Where homing's and Dovecot's replicator put `replicator-doveadm` by
/// default (`base_dir` = `/run/dovecot`).
pub const DEFAULT_REPLICATOR_SOCKET: &str = "/run/dovecot/replicator-doveadm";

fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Parses `30`, `30s`, `5m`, `1h`, `250ms`.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let n: u64 = v[..split].parse().ok()?;
    let unit = v[split..].trim();
    Some(match unit {
        "" | "s" | "sec" | "secs" => Duration::from_secs(n),
        "ms" | "msec" | "msecs" => Duration::from_millis(n),
        "m" | "min" | "mins" => Duration::from_secs(n.checked_mul(60)?),
        "h" | "hour" | "hours" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

/// Parses `1024`, `64k`, `10M`, `1G`.
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let n: u64 = v[..split].parse().ok()?;
    let mul: u64 = match v[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

impl ServerConfig {
    /// Sets one setting by name (file keys and `--set key=value` share this).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let bad = |reason: &str| ConfigError::Value {
            key: key.to_string(),
            reason: format!("{reason}: {value:?}"),
        };
        let addrs = |v: &str| -> Result<Vec<SocketAddr>, ConfigError> {
            v.split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().map_err(|_| bad("not an address:port")))
                .collect()
        };
        let dur = |v: &str| parse_duration(v).ok_or_else(|| bad("not a duration"));
        let count = |v: &str| -> Result<usize, ConfigError> {
            v.trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad("not a positive number"))
        };
        let opt_path = |v: &str| (!v.is_empty()).then(|| PathBuf::from(v));
        match key {
            "listen" => self.listen = addrs(value)?,
            "tls_listen" => self.tls_listen = addrs(value)?,
            "tls_cert" => self.tls_cert = opt_path(value),
            "tls_key" => self.tls_key = opt_path(value),
            "doveadm_password" => self.password = (!value.is_empty()).then(|| value.to_string()),
            "doveadm_password_file" => {
                let path = Path::new(value);
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                let pw = text.lines().next().unwrap_or_default().to_string();
                self.password = (!pw.is_empty()).then_some(pw);
            }
            "userdb" => {
                self.userdb = match value.split_once(':') {
                    Some(("passwd-file", p)) if !p.is_empty() => UserDbConfig::PasswdFile(p.into()),
                    None if value == "static" => UserDbConfig::Static,
                    _ => return Err(bad("expected `static` or `passwd-file:PATH`")),
                }
            }
            "home" => self.home_template = value.to_string(),
            "mail_location" => self.mail_location = value.to_string(),
            "mail_attribute_dict" => {
                self.mail_attribute_dict = (!value.is_empty()).then(|| value.to_string())
            }
            "hostname" if !value.is_empty() => self.hostname = value.to_string(),
            "max_connections" => self.max_connections = count(value)?,
            "max_sessions" => self.max_sessions = count(value)?,
            "lock_timeout" => self.lock_timeout = dur(value)?,
            "handshake_timeout" => self.handshake_timeout = dur(value)?,
            "io_timeout" => self.io_timeout = dur(value)?,
            "auth_failure_delay" => self.auth_failure_delay = dur(value)?,
            "shutdown_grace" => self.shutdown_grace = dur(value)?,
            "max_line" => self.max_line = count(value)?,
            "max_command_fields" => self.max_command_fields = count(value)?,
            "max_mail_size" => {
                self.max_mail_size = parse_size(value).ok_or_else(|| bad("not a size"))?
            }
            "max_list_items" => {
                self.max_list_items = parse_size(value).ok_or_else(|| bad("not a number"))?
            }
            "max_dsync_line" => {
                self.max_dsync_line = parse_size(value)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| bad("not a size"))?
            }
            "dsync_command" => self.dsync_command = (!value.is_empty()).then(|| value.to_string()),
            "replicator_socket" => self.replicator_socket = opt_path(value),
            _ => {
                return Err(ConfigError::Value {
                    key: key.to_string(),
                    reason: "unknown setting".into(),
                })
            }
        }
        Ok(())
    }

    /// Applies `key = value` lines.
    pub fn apply_text(&mut self, file: &str, text: &str) -> Result<(), ConfigError> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(ConfigError::Syntax {
                    file: file.to_string(),
                    line: i + 1,
                    reason: "expected `key = value`".into(),
                });
            };
            self.set(k.trim(), v.trim())
                .map_err(|e| ConfigError::Syntax {
                    file: file.to_string(),
                    line: i + 1,
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Reads a configuration file on top of the defaults.
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = ServerConfig::default();
        c.apply_text(&path.display().to_string(), &text)?;
        Ok(c)
    }

    /// The codec limits for a peer's dsync stream.
    pub fn decoder_config(&self) -> dsync_protocol::DecoderConfig {
        dsync_protocol::DecoderConfig {
            max_line_len: self.max_dsync_line,
            max_body_size: self.max_mail_size,
            max_list_items: self.max_list_items,
            ..dsync_protocol::DecoderConfig::default()
        }
    }
}

/// A user found in the user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailUser {
    /// The validated user name.
    pub name: String,
    /// The user's home directory (its mail root).
    pub home: PathBuf,
    /// The expanded mail location (e.g. `maildir:/var/vmail/alice/Maildir`).
    pub mail_location: String,
    /// The expanded attribute dict (`file:/var/vmail/alice/dovecot-attributes`).
    pub attribute_dict: Option<String>,
    /// passwd-file uid/gid, if given.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `userdb_noreplicate`.
    pub noreplicate: bool,
}

/// Why a user lookup failed (other than "no such user").
#[derive(Debug, thiserror::Error)]
pub enum UserLookupError {
    #[error("invalid user name: {0}")]
    InvalidName(#[from] NameError),
    #[error("userdb {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("home of {user} ({home}) is not an absolute path")]
    BadHome { user: String, home: String },
}

/// Expands `%u` `%n` `%d` `%h` `%%` in a template. The user name must be valid
/// already, so the result cannot leave the template's directory.
pub fn expand_template(template: &str, user: &str, home: Option<&Path>) -> String {
    let (local, domain) = user.split_once('@').unwrap_or((user, ""));
    let mut out = String::with_capacity(template.len() + user.len());
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => out.push_str(user),
            Some('n') => out.push_str(local),
            Some('d') => out.push_str(domain),
            Some('h') => out.push_str(&home.map(|h| h.display().to_string()).unwrap_or_default()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ServerConfig {
    /// Looks a user up. `Ok(None)` is "User doesn't exist".
    pub fn lookup_user(&self, name: &str) -> Result<Option<MailUser>, UserLookupError> {
        validate::user_name(name)?;
        let template_home = PathBuf::from(expand_template(&self.home_template, name, None));
        let mut user = MailUser {
            name: name.to_string(),
            home: template_home.clone(),
            mail_location: String::new(),
            attribute_dict: None,
            uid: None,
            gid: None,
            noreplicate: false,
        };
        let mut mail_override = None;
        match &self.userdb {
            UserDbConfig::Static => {
                if !template_home.is_dir() {
                    return Ok(None);
                }
            }
            UserDbConfig::PasswdFile(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| UserLookupError::Io {
                    path: path.clone(),
                    source,
                })?;
                let Some(line) = text
                    .lines()
                    .find(|l| !l.starts_with('#') && l.split(':').next() == Some(name))
                else {
                    return Ok(None);
                };
                let f: Vec<&str> = line.splitn(8, ':').collect();
                user.uid = f.get(2).and_then(|v| v.parse().ok());
                user.gid = f.get(3).and_then(|v| v.parse().ok());
                if let Some(h) = f.get(5).filter(|h| !h.is_empty()) {
                    user.home = PathBuf::from(h);
                }
                for kv in f.get(7).copied().unwrap_or_default().split_whitespace() {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    match k.strip_prefix("userdb_").unwrap_or(k) {
                        "noreplicate" => {
                            user.noreplicate =
                                v.is_empty() || v.starts_with(['y', 'Y', 't', 'T', '1'])
                        }
                        "mail" if !v.is_empty() => mail_override = Some(v.to_string()),
                        _ => {}
                    }
                }
            }
        }
        if !user.home.is_absolute() {
            return Err(UserLookupError::BadHome {
                user: name.to_string(),
                home: user.home.display().to_string(),
            });
        }
        let template = mail_override.unwrap_or_else(|| self.mail_location.clone());
        user.mail_location = expand_template(&template, name, Some(&user.home));
        user.attribute_dict = self
            .mail_attribute_dict
            .as_deref()
            .map(|t| expand_template(t, name, Some(&user.home)));
        Ok(Some(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_settings_and_errors() {
        let mut c = ServerConfig::default();
        c.apply_text(
            "t.conf",
            "# comment\nlisten = 127.0.0.1:1234, [::1]:1234\nmax_sessions = 5\nlock_timeout = 250ms\n\
             max_mail_size = 10M\ndoveadm_password = pw\nuserdb = passwd-file:/x/passwd\n",
        )
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.max_sessions, 5);
        assert_eq!(c.lock_timeout, Duration::from_millis(250));
        assert_eq!(c.max_mail_size, 10 << 20);
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert_eq!(c.userdb, UserDbConfig::PasswdFile("/x/passwd".into()));
        assert_eq!(c.decoder_config().max_body_size, 10 << 20);
        let e = c.apply_text("t.conf", "\n\nnope = 1\n").unwrap_err();
        assert!(e.to_string().starts_with("t.conf:3:"), "{e}");
        assert!(c.apply_text("t.conf", "max_sessions = 0").is_err());
        assert!(c.apply_text("t.conf", "listen = nowhere").is_err());
        assert!(c.apply_text("t.conf", "just words").is_err());
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn users_from_passwd_file_and_static_homes() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("passwd");
        std::fs::write(
            &pw,
            "alice:{PLAIN}x:5000:5000::/srv/alice::\n\
             dave:x:::::: userdb_noreplicate=y userdb_mail=mdbox:%h/mdbox\n",
        )
        .unwrap();
        let mut c = ServerConfig {
            userdb: UserDbConfig::PasswdFile(pw),
            home_template: format!("{}/%d/%n", dir.path().display()),
            ..ServerConfig::default()
        };
        let a = c.lookup_user("alice").unwrap().unwrap();
        assert_eq!(a.home, Path::new("/srv/alice"));
        assert_eq!(a.mail_location, "maildir:/srv/alice/Maildir");
        assert_eq!(a.uid, Some(5000));
        assert_eq!(a.attribute_dict, None);
        c.mail_attribute_dict = Some("file:%h/dovecot-attributes".into());
        let a = c.lookup_user("alice").unwrap().unwrap();
        assert_eq!(
            a.attribute_dict.as_deref(),
            Some("file:/srv/alice/dovecot-attributes")
        );
        let d = c.lookup_user("dave").unwrap().unwrap();
        assert!(d.noreplicate);
        assert_eq!(d.home, dir.path().join("dave"));
        assert!(d.mail_location.starts_with("mdbox:/") && d.mail_location.ends_with("/dave/mdbox"));
        assert_eq!(c.lookup_user("nosuchuser").unwrap(), None);
        assert!(matches!(
            c.lookup_user("../alice"),
            Err(UserLookupError::InvalidName(_))
        ));
        // A prefix of an existing name is not that user.
        assert_eq!(c.lookup_user("ali").unwrap(), None);

        c.userdb = UserDbConfig::Static;
        std::fs::create_dir_all(dir.path().join("example.org/zoe")).unwrap();
        let z = c.lookup_user("zoe@example.org").unwrap().unwrap();
        assert_eq!(z.home, dir.path().join("example.org/zoe"));
        assert_eq!(c.lookup_user("yan@example.org").unwrap(), None);
    }
}
