//! Replicator settings: a Dovecot-like `key = value` file (see
//! `docs/replicator.md`), overridable by `key=value` command-line settings.

use std::path::{Path, PathBuf};

use super::queue::QueueSettings;
use super::watch::WatchSettings;

/// A setting that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}:{line}: expected `key = value`: {text}")]
    Syntax {
        path: String,
        line: usize,
        text: String,
    },
    #[error("unknown setting `{0}`")]
    Unknown(String),
    #[error("invalid value for {key}: {value}")]
    Value { key: String, value: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What runs the syncs (`replication_engine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncEngineKind {
    /// Dovecot's `doveadm-server` socket, as Dovecot's replicator does.
    DoveadmServer,
    /// homing's own engine on `replication_mail_location`.
    Homing,
}

/// How the `homing` engine reaches its peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSettings {
    pub doveadm_password: Option<String>,
    pub doveadm_port: Option<u16>,
    pub ca_file: Option<PathBuf>,
    /// Empty = the default `ssh -l%{login} %{host} doveadm dsync-server -u%u -U`.
    pub remote_cmd: String,
}

/// Everything the daemon needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicatorConfig {
    /// Directory for sockets given as relative paths.
    pub base_dir: PathBuf,
    /// Directory of `replicator.db`.
    pub state_dir: PathBuf,
    pub max_conns: usize,
    pub queue: QueueSettings,
    /// How often `replicator.db` is written (besides at exit).
    pub dump_interval: u64,
    /// `replicator-doveadm` socket (admin commands, NOTIFY).
    pub doveadm_socket: PathBuf,
    /// `replicator` socket (aggregator protocol); empty = disabled.
    pub notify_socket: Option<PathBuf>,
    /// `replication-notify-fifo` (mail processes, asynchronous); empty = disabled.
    pub aggregator_fifo: Option<PathBuf>,
    /// `replication-notify` socket (mail processes, sync mode); empty = disabled.
    pub aggregator_socket: Option<PathBuf>,
    /// Mode of the created sockets and FIFO.
    pub socket_mode: u32,
    /// Owner (uid, gid) given to the sockets and FIFO, e.g. the mail user, so
    /// that mail processes can write notifications; `None` = unchanged.
    pub socket_owner: Option<(u32, u32)>,
    /// Dovecot `doveadm-server` socket used to run syncs; empty = none.
    pub doveadm_server_socket: Option<PathBuf>,
    pub dsync_parameters: String,
    /// `replication_dsync_destination`: destination appended to the sync
    /// command (`%u` expanded); empty = none (the peer uses `-d`).
    pub dsync_destination: String,
    /// `replication_engine`: what runs each sync.
    pub engine: SyncEngineKind,
    /// `replication_mail_location`: the local mail location the `homing`
    /// engine syncs (`%u`, `%n`, `%d`, `%h` expanded).
    pub replication_mail_location: String,
    /// Peer connection settings of the `homing` engine: `doveadm_password`,
    /// `doveadm_port`, `ssl_client_ca_file`, `dsync_remote_cmd`.
    pub peer: PeerSettings,
    /// passwd-file to list users from.
    pub userdb_passwd_file: Option<PathBuf>,
    /// Shell command printing one user per line (e.g. `doveadm user '*'`).
    pub userdb_list_command: Option<String>,
    /// `auth_socket_path`: Dovecot's auth-userdb socket, asked for `LIST`
    /// as Dovecot's replicator does. When unset and no other listing is
    /// configured, `<base_dir>/auth-userdb` is used if it exists.
    pub auth_socket_path: Option<PathBuf>,
    /// `host:port` for the OpenMetrics endpoint; `None` = disabled.
    pub metrics_listen: Option<String>,
    /// Filesystem watcher (`watch_*`); disabled while `mail_location` is empty.
    pub watch: WatchSettings,
}

impl Default for ReplicatorConfig {
    fn default() -> Self {
        let base = PathBuf::from("/run/dovecot");
        ReplicatorConfig {
            doveadm_socket: base.join("replicator-doveadm"),
            notify_socket: Some(base.join("replicator")),
            aggregator_fifo: Some(base.join("replication-notify-fifo")),
            aggregator_socket: Some(base.join("replication-notify")),
            doveadm_server_socket: Some(base.join("doveadm-server")),
            base_dir: base,
            state_dir: PathBuf::from("/var/lib/dovecot"),
            max_conns: 10,
            queue: QueueSettings::default(),
            dump_interval: 900,
            socket_mode: 0o600,
            socket_owner: None,
            dsync_parameters: "-d -N -l 30 -U".into(),
            dsync_destination: String::new(),
            engine: SyncEngineKind::DoveadmServer,
            replication_mail_location: String::new(),
            peer: PeerSettings::default(),
            userdb_passwd_file: None,
            userdb_list_command: None,
            auth_socket_path: None,
            metrics_listen: None,
            watch: WatchSettings::default(),
        }
    }
}

/// Parses a Dovecot time value: a number with an optional unit
/// (`s`, `secs`, `m`, `mins`, `h`, `hours`, `d`, `days`, `w`, `weeks`), as
/// in `3 mins` or `1d`. A bare number is seconds.
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let unit = s[digits..].trim();
    let mult = match unit {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86400,
        "w" | "week" | "weeks" => 7 * 86400,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parses a duration that may be given in milliseconds (`500ms`, `500 msecs`)
/// or as a Dovecot time value in seconds.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let t = s.trim();
    for unit in ["msecs", "msec", "ms"] {
        if let Some(n) = t.strip_suffix(unit) {
            return n
                .trim()
                .parse::<u64>()
                .ok()
                .map(std::time::Duration::from_millis);
        }
    }
    parse_time(t).map(std::time::Duration::from_secs)
}

impl ReplicatorConfig {
    /// A configuration with every socket under `base_dir` and the database
    /// in `state_dir`.
    pub fn with_dirs(base_dir: &Path, state_dir: &Path) -> ReplicatorConfig {
        ReplicatorConfig {
            base_dir: base_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            doveadm_socket: base_dir.join("replicator-doveadm"),
            notify_socket: Some(base_dir.join("replicator")),
            aggregator_fifo: Some(base_dir.join("replication-notify-fifo")),
            aggregator_socket: Some(base_dir.join("replication-notify")),
            doveadm_server_socket: Some(base_dir.join("doveadm-server")),
            ..ReplicatorConfig::default()
        }
    }

    /// Path of `replicator.db`.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("replicator.db")
    }

    fn path_in_base(&self, v: &str) -> PathBuf {
        let p = PathBuf::from(v);
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }

    fn opt_path(&self, v: &str) -> Option<PathBuf> {
        (!v.is_empty()).then(|| self.path_in_base(v))
    }

    /// Applies one setting. Paths of sockets are relative to `base_dir` as
    /// it is at that moment, so set `base_dir` first.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let bad = || ConfigError::Value {
            key: key.to_string(),
            value: value.to_string(),
        };
        let num = |v: &str| v.trim().parse::<u64>().map_err(|_| bad());
        let time = |v: &str| parse_time(v).ok_or_else(bad);
        match key {
            "base_dir" => {
                // Keep sockets that still sit at their default place in step.
                let fresh = ReplicatorConfig::with_dirs(Path::new(value), &self.state_dir);
                let old = ReplicatorConfig::with_dirs(&self.base_dir, &self.state_dir);
                if self.doveadm_socket == old.doveadm_socket {
                    self.doveadm_socket = fresh.doveadm_socket;
                }
                if self.notify_socket == old.notify_socket {
                    self.notify_socket = fresh.notify_socket;
                }
                if self.aggregator_fifo == old.aggregator_fifo {
                    self.aggregator_fifo = fresh.aggregator_fifo;
                }
                if self.aggregator_socket == old.aggregator_socket {
                    self.aggregator_socket = fresh.aggregator_socket;
                }
                if self.doveadm_server_socket == old.doveadm_server_socket {
                    self.doveadm_server_socket = fresh.doveadm_server_socket;
                }
                self.base_dir = PathBuf::from(value);
            }
            "state_dir" => self.state_dir = PathBuf::from(value),
            "replication_max_conns" => {
                self.max_conns = usize::try_from(num(value)?).map_err(|_| bad())?
            }
            "replication_full_sync_interval" => self.queue.full_sync_interval = time(value)?,
            "replication_failed_retry_interval" => self.queue.failed_retry_interval = time(value)?,
            "replication_sync_timeout" => self.queue.sync_timeout = time(value)?,
            "replicator_db_dump_interval" => self.dump_interval = time(value)?.max(1),
            "replication_dsync_parameters" => self.dsync_parameters = value.to_string(),
            "replication_dsync_destination" => self.dsync_destination = value.to_string(),
            "replication_engine" => {
                self.engine = match value.trim() {
                    "homing" => SyncEngineKind::Homing,
                    "doveadm-server" => SyncEngineKind::DoveadmServer,
                    _ => return Err(bad()),
                }
            }
            "replication_mail_location" => self.replication_mail_location = value.to_string(),
            "doveadm_password" => self.peer.doveadm_password = Some(value.to_string()),
            "doveadm_port" => {
                self.peer.doveadm_port = Some(value.trim().parse().map_err(|_| bad())?)
            }
            "ssl_client_ca_file" => self.peer.ca_file = (!value.is_empty()).then(|| value.into()),
            "dsync_remote_cmd" => self.peer.remote_cmd = value.to_string(),
            "replicator_doveadm_socket_path" => self.doveadm_socket = self.path_in_base(value),
            "replicator_socket_path" => self.notify_socket = self.opt_path(value),
            "replication_notify_fifo_path" => self.aggregator_fifo = self.opt_path(value),
            "replication_notify_socket_path" => self.aggregator_socket = self.opt_path(value),
            "doveadm_socket_path" => self.doveadm_server_socket = self.opt_path(value),
            "socket_mode" => {
                self.socket_mode = u32::from_str_radix(value.trim(), 8).map_err(|_| bad())?
            }
            "socket_user" => {
                self.socket_owner = if value.is_empty() {
                    None
                } else {
                    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
                    Some(resolve_user(&passwd, value).ok_or_else(bad)?)
                }
            }
            "userdb_passwd_file" => {
                self.userdb_passwd_file = (!value.is_empty()).then(|| PathBuf::from(value))
            }
            "userdb_list_command" => {
                self.userdb_list_command = (!value.is_empty()).then(|| value.to_string())
            }
            "auth_socket_path" => self.auth_socket_path = self.opt_path(value),
            "metrics_listen" => {
                self.metrics_listen = (!value.is_empty()).then(|| value.to_string())
            }
            "watch_mail_location" => {
                if !value.is_empty() {
                    super::watch::parse_location(value).map_err(|_| bad())?;
                }
                self.watch.mail_location = value.to_string()
            }
            "watch_default_home" => self.watch.default_home = value.to_string(),
            "watch_debounce" => self.watch.debounce = parse_duration(value).ok_or_else(bad)?,
            "watch_max_watches" => {
                self.watch.max_watches = usize::try_from(num(value)?).map_err(|_| bad())?
            }
            "watch_scan_interval" => self.watch.scan_interval = time(value)?.max(1),
            _ => return Err(ConfigError::Unknown(key.to_string())),
        }
        Ok(())
    }

    /// Applies a `key = value` text (`#` starts a comment line; values may
    /// be wrapped in double quotes).
    pub fn apply_text(&mut self, name: &str, text: &str) -> Result<(), ConfigError> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(ConfigError::Syntax {
                    path: name.to_string(),
                    line: i + 1,
                    text: raw.to_string(),
                });
            };
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(v);
            self.set(k.trim(), v)?;
        }
        Ok(())
    }

    /// Reads a configuration file on top of the defaults.
    pub fn load(path: &Path) -> Result<ReplicatorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut c = ReplicatorConfig::default();
        c.apply_text(&path.display().to_string(), &text)?;
        Ok(c)
    }
}

/// Finds `user` (a name or a numeric uid) in `/etc/passwd` text and returns
/// its uid and primary gid. A number not in the file is taken as uid = gid.
pub fn resolve_user(passwd: &str, user: &str) -> Option<(u32, u32)> {
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        if f[0] == user || f[2] == user {
            return Some((f[2].parse().ok()?, f[3].parse().ok()?));
        }
    }
    let n: u32 = user.parse().ok()?;
    Some((n, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        let pw = "root:x:0:0:root:/root:/bin/sh\nvmail:x:5000:5001::/var/vmail:/usr/sbin/nologin\n";
        assert_eq!(resolve_user(pw, "vmail"), Some((5000, 5001)));
        assert_eq!(resolve_user(pw, "5000"), Some((5000, 5001)));
        assert_eq!(resolve_user(pw, "1234"), Some((1234, 1234)));
        assert_eq!(resolve_user(pw, "nobody-here"), None);
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("3 mins"), Some(180));
        assert_eq!(parse_time("1d"), Some(86400));
        assert_eq!(parse_time("300"), Some(300));
        assert_eq!(parse_time("2s"), Some(2));
        assert_eq!(parse_time("x"), None);
        assert_eq!(parse_time("5 parsecs"), None);
        use std::time::Duration;
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2 secs"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("x ms"), None);
    }

    #[test]
    fn file_settings() {
        let mut c = ReplicatorConfig::default();
        c.apply_text(
            "t.conf",
            "# comment\nbase_dir = /tmp/b\nreplication_max_conns = 0\n\
             replication_full_sync_interval = 3 mins\nmetrics_listen = \"127.0.0.1:9\"\n\
             replicator_socket_path =\n",
        )
        .unwrap();
        assert_eq!(c.doveadm_socket, PathBuf::from("/tmp/b/replicator-doveadm"));
        assert_eq!(c.max_conns, 0);
        assert_eq!(c.queue.full_sync_interval, 180);
        assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(c.notify_socket, None);
        assert!(c.apply_text("t", "nonsense\n").is_err());
        assert!(c.apply_text("t", "bogus = 1\n").is_err());
        assert!(c.apply_text("t", "replication_max_conns = x\n").is_err());
    }
}
