//! One private Dovecot master with its own configuration, users and mail.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Once};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

use crate::process::{self, CLEAN_PATH};
use crate::tls::TestCa;
use crate::HarnessError;

/// The Dovecot master binary.
pub const DOVECOT: &str = "/usr/sbin/dovecot";
/// The doveadm binary.
pub const DOVEADM: &str = "/usr/bin/doveadm";

const DIR_PREFIX: &str = "homing-dovecot-";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline for one doveadm run; generous because CI machines are busy.
const DOVEADM_TIMEOUT: Duration = Duration::from_secs(300);

/// Mail storage format of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailFormat {
    /// `maildir:~/Maildir`
    Maildir,
    /// `sdbox:~/sdbox`
    Sdbox,
    /// `mdbox:~/mdbox`
    Mdbox,
}

impl MailFormat {
    /// The `mail_location` value used for this format.
    pub fn location(self) -> &'static str {
        match self {
            MailFormat::Maildir => "maildir:~/Maildir",
            MailFormat::Sdbox => "sdbox:~/sdbox",
            MailFormat::Mdbox => "mdbox:~/mdbox",
        }
    }
}

/// How to set up a [`DovecotInstance`]. Build with [`InstanceOptions::new`] and the
/// chained setters.
#[derive(Debug, Clone)]
pub struct InstanceOptions {
    pub format: MailFormat,
    /// Full `mail_location` override (takes precedence over `format`).
    pub mail_location: Option<String>,
    /// Users of the passwd file.
    pub users: Vec<String>,
    /// Password of every user (stored as `{PLAIN}`).
    pub user_password: String,
    /// Start a doveadm TCP listener on a free loopback port.
    pub doveadm_tcp: bool,
    /// `doveadm_password` (both ends of a `tcp:` sync must agree).
    pub doveadm_password: String,
    /// Also start a TLS doveadm listener (implies a CA and a server certificate).
    pub tls: bool,
    /// Use this CA instead of generating one per instance (share it between instances).
    pub ca: Option<Arc<TestCa>>,
    /// `mail_attribute_dict = file:%h/dovecot-attributes` (mailbox METADATA,
    /// synced by dsync as `A` items). On by default.
    pub mail_attributes: bool,
    /// Lines appended verbatim to `dovecot.conf`.
    pub extra_conf: String,
}

impl Default for InstanceOptions {
    fn default() -> Self {
        InstanceOptions {
            format: MailFormat::Maildir,
            mail_location: None,
            users: ["alice", "bob", "carol", "dave"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            user_password: "pw".into(),
            doveadm_tcp: false,
            doveadm_password: "homing-test-secret".into(),
            tls: false,
            ca: None,
            mail_attributes: true,
            extra_conf: String::new(),
        }
    }
}

impl InstanceOptions {
    /// Maildir, users alice/bob/carol/dave with password `pw`, no TCP listener.
    pub fn new() -> Self {
        Self::default()
    }
    pub fn format(mut self, format: MailFormat) -> Self {
        self.format = format;
        self
    }
    pub fn mail_location(mut self, location: impl Into<String>) -> Self {
        self.mail_location = Some(location.into());
        self
    }
    pub fn users(mut self, users: &[&str]) -> Self {
        self.users = users.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn user_password(mut self, password: impl Into<String>) -> Self {
        self.user_password = password.into();
        self
    }
    pub fn doveadm_tcp(mut self, on: bool) -> Self {
        self.doveadm_tcp = on;
        self
    }
    pub fn doveadm_password(mut self, password: impl Into<String>) -> Self {
        self.doveadm_password = password.into();
        self
    }
    /// TLS listener (also turns on the plain TCP listener).
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        if on {
            self.doveadm_tcp = true;
        }
        self
    }
    pub fn ca(mut self, ca: Arc<TestCa>) -> Self {
        self.ca = Some(ca);
        self
    }
    pub fn mail_attributes(mut self, on: bool) -> Self {
        self.mail_attributes = on;
        self
    }
    pub fn extra_conf(mut self, lines: impl Into<String>) -> Self {
        self.extra_conf = lines.into();
        self
    }
}

/// Result of one doveadm run.
#[derive(Debug, Clone)]
pub struct DoveadmOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The command line, for messages.
    pub command: String,
}

impl DoveadmOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
    /// Exit code (None when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// Ok(self) on exit status 0, else a [`HarnessError::CommandFailed`].
    pub fn ok(self) -> Result<DoveadmOutput, HarnessError> {
        if self.success() {
            Ok(self)
        } else {
            Err(HarnessError::CommandFailed {
                command: self.command.clone(),
                status: self.status.to_string(),
                stdout: self.stdout_str(),
                stderr: self.stderr_str(),
            })
        }
    }
}

/// Why Dovecot cannot be used for tests on this machine, or None when it can.
/// Setting `HOMING_NO_DOVECOT` makes Dovecot count as unavailable (to check
/// the skip path).
pub fn dovecot_unavailable_reason() -> Option<String> {
    if std::env::var_os("HOMING_NO_DOVECOT").is_some() {
        return Some("HOMING_NO_DOVECOT is set".into());
    }
    for bin in [DOVECOT, DOVEADM] {
        if !Path::new(bin).exists() {
            return Some(format!(
                "{bin} is not installed (run scripts/install-dovecot)"
            ));
        }
    }
    if !nix::unistd::Uid::effective().is_root() {
        return Some("tests with Dovecot must run as root (mail is owned by `vmail`)".into());
    }
    match User::from_name("vmail") {
        Ok(Some(_)) => None,
        _ => Some("the system user `vmail` is missing (run scripts/install-dovecot)".into()),
    }
}

/// Returns true when Dovecot can be used. Otherwise prints why the test `name`
/// is skipped and returns false, or panics when running under CI (`CI=true`),
/// where a missing Dovecot is a setup failure and must not pass silently.
pub fn require_dovecot(name: &str) -> bool {
    match dovecot_unavailable_reason() {
        None => true,
        Some(reason) => {
            if std::env::var("CI")
                .map(|v| v == "true" || v == "1")
                .unwrap_or(false)
            {
                panic!("{name}: Dovecot is required under CI but unavailable: {reason}");
            }
            // Written to the real stderr, not through eprintln!, which the
            // test harness captures and hides for passing tests.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {name}: Dovecot unavailable: {reason}"
            );
            false
        }
    }
}

/// A private Dovecot master. Stopped (by the pid in its pid file) on [`stop`](Self::stop) or drop.
#[derive(Debug)]
pub struct DovecotInstance {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    config: PathBuf,
    users: Vec<String>,
    user_password: String,
    doveadm_password: String,
    port: Option<u16>,
    tls_port: Option<u16>,
    ca: Option<Arc<TestCa>>,
    vmail_uid: u32,
    vmail_gid: u32,
    mail_location: String,
    stopped: bool,
}

impl DovecotInstance {
    /// Creates a fresh temporary directory with its own configuration and starts
    /// the master, waiting until its auth, doveadm and TCP listeners are ready.
    pub fn start(opts: InstanceOptions) -> Result<DovecotInstance, HarnessError> {
        if let Some(reason) = dovecot_unavailable_reason() {
            return Err(HarnessError::Unavailable(reason));
        }
        sweep_orphans();
        let vmail = User::from_name("vmail")
            .ok()
            .flatten()
            .ok_or_else(|| HarnessError::Unavailable("user vmail missing".into()))?;
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .map_err(|e| HarnessError::io("creating the instance directory", e))?;
        let root = dir.path().to_path_buf();
        let ca = if opts.tls {
            Some(match &opts.ca {
                Some(ca) => Arc::clone(ca),
                None => Arc::new(TestCa::generate("homing test CA")?),
            })
        } else {
            None
        };
        let mail_location = opts
            .mail_location
            .clone()
            .unwrap_or_else(|| opts.format.location().to_string());
        let mut inst = DovecotInstance {
            dir: Some(dir),
            config: root.join("dovecot.conf"),
            root,
            users: opts.users.clone(),
            user_password: opts.user_password.clone(),
            doveadm_password: opts.doveadm_password.clone(),
            port: None,
            tls_port: None,
            ca,
            vmail_uid: vmail.uid.as_raw(),
            vmail_gid: vmail.gid.as_raw(),
            mail_location,
            stopped: true,
        };
        inst.lay_out()?;
        // A port that was free when probed may be taken by another process before
        // the master binds it; then start over with new ports.
        let mut last_err = None;
        for _ in 0..5 {
            inst.port = if opts.doveadm_tcp {
                Some(crate::free_port()?)
            } else {
                None
            };
            inst.tls_port = if opts.tls {
                Some(crate::free_port()?)
            } else {
                None
            };
            inst.write_config(&opts)?;
            match inst.launch() {
                Ok(()) => {
                    inst.stopped = false;
                    return Ok(inst);
                }
                // A port taken between probe and bind, or a master that died
                // at start-up on a loaded machine: start over with new ports.
                Err(e @ HarnessError::StartFailed { .. })
                    if e.to_string().contains("in use")
                        || e.to_string().contains("master exited") =>
                {
                    inst.kill_master();
                    let _ = fs::remove_file(inst.run_dir().join("master.pid"));
                    let _ = fs::remove_file(inst.log_path());
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| HarnessError::Unavailable("no start attempt".into())))
    }

    fn lay_out(&self) -> Result<(), HarnessError> {
        let r = &self.root;
        for d in ["run", "state", "log", "home", "tls"] {
            let p = r.join(d);
            fs::create_dir_all(&p).map_err(|e| HarnessError::file(&p, e))?;
        }
        // The mail processes run as vmail and must reach the homes below the root.
        for p in [r.clone(), r.join("home")] {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                .map_err(|e| HarnessError::file(&p, e))?;
        }
        let mut passwd = String::new();
        for u in &self.users {
            let _ = writeln!(passwd, "{u}:{{PLAIN}}{}::::::", self.user_password);
            self.create_home(u)?;
        }
        let p = r.join("passwd");
        fs::write(&p, passwd).map_err(|e| HarnessError::file(&p, e))?;
        let p = r.join("owner.pid");
        fs::write(&p, std::process::id().to_string()).map_err(|e| HarnessError::file(&p, e))?;
        Ok(())
    }

    fn create_home(&self, user: &str) -> Result<(), HarnessError> {
        let home = self.home(user);
        fs::create_dir_all(&home).map_err(|e| HarnessError::file(&home, e))?;
        std::os::unix::fs::chown(&home, Some(self.vmail_uid), Some(self.vmail_gid))
            .map_err(|e| HarnessError::file(&home, e))?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700))
            .map_err(|e| HarnessError::file(&home, e))
    }

    fn write_config(&self, opts: &InstanceOptions) -> Result<(), HarnessError> {
        let r = self.root.display();
        let login_user = if User::from_name("dovenull").ok().flatten().is_some() {
            "dovenull"
        } else {
            "nobody"
        };
        let name = self
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut c = String::new();
        let _ = write!(
            c,
            "# Private test instance of homing's test-support.\n\
             instance_name = {name}\n\
             base_dir = {r}/run\n\
             state_dir = {r}/state\n\
             log_path = {r}/log/dovecot.log\n\
             info_log_path = {r}/log/dovecot.log\n\
             debug_log_path = {r}/log/dovecot.log\n\
             listen = 127.0.0.1\n\
             protocols =\n\
             default_internal_user = root\n\
             default_internal_group = root\n\
             default_login_user = {login_user}\n\
             first_valid_uid = 1\n\
             mail_location = {loc}\n\
             mail_uid = {uid}\n\
             mail_gid = {gid}\n\
             auth_mechanisms = plain\n\
             disable_plaintext_auth = no\n\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {r}/passwd\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {r}/passwd\n  default_fields = uid={uid} gid={gid} home={r}/home/%u\n}}\n\
             namespace inbox {{\n  inbox = yes\n  separator = /\n\
             \x20 mailbox Drafts {{\n    special_use = \\Drafts\n  }}\n\
             \x20 mailbox Sent {{\n    special_use = \\Sent\n  }}\n\
             \x20 mailbox Trash {{\n    special_use = \\Trash\n  }}\n\
             \x20 mailbox Junk {{\n    special_use = \\Junk\n  }}\n}}\n\
             doveadm_password = {pw}\n",
            loc = self.mail_location,
            uid = self.vmail_uid,
            gid = self.vmail_gid,
            pw = self.doveadm_password,
        );
        if let Some(port) = self.port {
            let _ = write!(
                c,
                "doveadm_port = {port}\nservice doveadm {{\n  inet_listener doveadm {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n"
            );
            if let Some(tls_port) = self.tls_port {
                let _ = write!(
                    c,
                    "  inet_listener doveadm-tls {{\n    address = 127.0.0.1\n    port = {tls_port}\n    ssl = yes\n  }}\n"
                );
            }
            c.push_str("}\n");
        }
        if let Some(ca) = &self.ca {
            let tls = self.root.join("tls");
            ca.write_cert(&tls.join("ca.pem"))?;
            let issued = ca.issue_server_cert(&["127.0.0.1", "localhost"])?;
            for (f, data) in [
                ("server.pem", &issued.cert_pem),
                ("server.key", &issued.key_pem),
            ] {
                let p = tls.join(f);
                fs::write(&p, data).map_err(|e| HarnessError::file(&p, e))?;
            }
            fs::set_permissions(tls.join("server.key"), fs::Permissions::from_mode(0o600))
                .map_err(|e| HarnessError::file(tls.join("server.key"), e))?;
            let _ = write!(
                c,
                "ssl = yes\nssl_cert = <{r}/tls/server.pem\nssl_key = <{r}/tls/server.key\nssl_client_ca_file = {r}/tls/ca.pem\n"
            );
        } else {
            c.push_str("ssl = no\n");
        }
        if opts.mail_attributes {
            c.push_str("mail_attribute_dict = file:%h/dovecot-attributes\n");
        }
        if !opts.extra_conf.is_empty() {
            c.push_str(&opts.extra_conf);
            c.push('\n');
        }
        fs::write(&self.config, c).map_err(|e| HarnessError::file(&self.config, e))
    }

    fn launch(&self) -> Result<(), HarnessError> {
        // The daemonized master keeps the descriptors it inherited, so its
        // stdout/stderr go to a file: a pipe would never reach EOF.
        let startup_log = self.root.join("log").join("startup.err");
        let err_file =
            fs::File::create(&startup_log).map_err(|e| HarnessError::file(&startup_log, e))?;
        let mut cmd = Command::new(DOVECOT);
        cmd.env_clear()
            .env("PATH", CLEAN_PATH)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file);
        let status = cmd
            .status()
            .map_err(|e| HarnessError::io(format!("starting {DOVECOT}"), e))?;
        if !status.success() {
            let err = fs::read_to_string(&startup_log).unwrap_or_default();
            return Err(
                self.start_failed(format!("`dovecot -c` exited with {status}: {}", err.trim()))
            );
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.is_ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill_master();
                return Err(self.start_failed("listeners not ready within 30 s".into()));
            }
            if self.master_pid().is_none() && self.run_dir().join("master.pid").exists() {
                // The pid file may be caught half-written, or the process
                // between fork and exec: only a lasting absence means it died.
                thread::sleep(Duration::from_millis(300));
                if self.master_pid().is_none() {
                    return Err(self.start_failed("master exited".into()));
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn is_ready(&self) -> bool {
        if self.master_pid().is_none() {
            return false;
        }
        let run = self.run_dir();
        if !run.join("auth-userdb").exists() || !run.join("doveadm-server").exists() {
            return false;
        }
        // Probing with a connection would make the server log a failed
        // handshake, so look for the listening socket in /proc instead.
        [self.port, self.tls_port]
            .into_iter()
            .flatten()
            .all(port_listening)
    }

    fn start_failed(&self, reason: String) -> HarnessError {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        HarnessError::StartFailed {
            dir: self.root.clone(),
            reason,
            log_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        }
    }

    /// The master's pid, if its pid file names a live process whose command line
    /// mentions this instance's configuration file.
    pub fn master_pid(&self) -> Option<i32> {
        master_pid_of(&self.run_dir(), &self.config)
    }

    fn kill_master(&self) {
        if let Some(pid) = self.master_pid() {
            stop_pid(pid);
        }
    }

    /// Stops the master (SIGTERM, SIGKILL after 10 s). Idempotent.
    pub fn stop(&mut self) {
        if !self.stopped {
            self.kill_master();
            self.stopped = true;
        }
    }

    /// True while the master runs.
    pub fn is_running(&self) -> bool {
        self.master_pid().is_some()
    }

    /// Starts the master again after [`stop`](Self::stop), with the same configuration and ports.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.launch()?;
        self.stopped = false;
        Ok(())
    }

    // ------------------------------------------------------------- paths

    /// The instance's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Its `dovecot.conf`.
    pub fn config_path(&self) -> &Path {
        &self.config
    }
    /// `base_dir`.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    /// The log file (all levels).
    pub fn log_path(&self) -> PathBuf {
        self.root.join("log").join("dovecot.log")
    }
    /// Home directory of `user`.
    pub fn home(&self, user: &str) -> PathBuf {
        self.root.join("home").join(user)
    }
    /// The configured `mail_location` (with `~`).
    pub fn mail_location(&self) -> &str {
        &self.mail_location
    }
    /// Creates `user`'s mail root directory (see [`mail_dir`](Self::mail_dir))
    /// and gives it and every directory between it and the home to the mail
    /// user, so that files another program writes there belong to it too;
    /// returns the mail root.
    pub fn create_mail_dir(&self, user: &str) -> Result<PathBuf, HarnessError> {
        let dir = self.mail_dir(user);
        fs::create_dir_all(&dir)
            .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))?;
        let (uid, gid) = self.vmail_ids();
        let home = self.home(user);
        let mut p = dir.as_path();
        while p.starts_with(&home) {
            std::os::unix::fs::chown(p, Some(uid), Some(gid))
                .map_err(|e| HarnessError::io(format!("chown {}", p.display()), e))?;
            match p.parent() {
                Some(q) => p = q,
                None => break,
            }
        }
        Ok(dir)
    }
    /// The mail root directory of `user` (`~` of the location expanded; options dropped).
    pub fn mail_dir(&self, user: &str) -> PathBuf {
        let path = self
            .mail_location
            .split_once(':')
            .map(|(_, rest)| rest)
            .unwrap_or(&self.mail_location);
        let path = path.split(':').next().unwrap_or(path);
        match path.strip_prefix("~/") {
            Some(rel) => self.home(user).join(rel),
            None => PathBuf::from(path.replace("%u", user)),
        }
    }
    /// Users of the passwd file.
    pub fn users(&self) -> &[String] {
        &self.users
    }
    /// Password of every user.
    pub fn user_password(&self) -> &str {
        &self.user_password
    }
    /// Plain doveadm TCP port, if enabled.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
    /// TLS doveadm port, if enabled.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }
    /// `127.0.0.1:port` of the plain doveadm listener; panics if it is not enabled.
    pub fn tcp_addr(&self) -> SocketAddr {
        SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            self.port.expect("instance started without doveadm_tcp"),
        ))
    }
    /// `127.0.0.1:port` of the TLS doveadm listener; panics if it is not enabled.
    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            self.tls_port.expect("instance started without tls"),
        ))
    }
    /// `tcp:127.0.0.1:PORT`, a `doveadm sync` destination; panics without `doveadm_tcp`.
    pub fn tcp_destination(&self) -> String {
        format!("tcp:{}", self.tcp_addr())
    }
    /// `tcps:127.0.0.1:PORT`; panics without `tls`. The client must trust
    /// [`ca_path`](Self::ca_path) (`-o ssl_client_ca_file=...` for doveadm).
    pub fn tcps_destination(&self) -> String {
        format!("tcps:{}", self.tls_addr())
    }
    /// `doveadm_password`.
    pub fn doveadm_password(&self) -> &str {
        &self.doveadm_password
    }
    /// The CA certificate (PEM file) that signed the TLS listener's certificate.
    pub fn ca_path(&self) -> Option<PathBuf> {
        self.ca
            .as_ref()
            .map(|_| self.root.join("tls").join("ca.pem"))
    }
    /// The CA itself (to issue more certificates or share it).
    pub fn ca(&self) -> Option<&Arc<TestCa>> {
        self.ca.as_ref()
    }
    /// uid and gid of the mail owner (`vmail`).
    pub fn vmail_ids(&self) -> (u32, u32) {
        (self.vmail_uid, self.vmail_gid)
    }

    // ------------------------------------------------------------- doveadm

    /// A `doveadm -c CONFIG` command with a clean environment, ready for more
    /// arguments (for example to spawn `dsync-server` with piped stdio).
    pub fn doveadm_command(&self) -> Command {
        let mut cmd = Command::new(DOVEADM);
        cmd.env_clear()
            .env("PATH", CLEAN_PATH)
            .arg("-c")
            .arg(&self.config);
        cmd
    }

    /// The argv of a `dsync-server` for `user` of this instance, as a remote
    /// command (clean environment is up to the spawner).
    pub fn dsync_server_argv(&self, user: &str) -> Vec<String> {
        vec![
            DOVEADM.to_string(),
            "-c".into(),
            self.config.display().to_string(),
            "dsync-server".into(),
            format!("-u{user}"),
        ]
    }

    /// Runs `doveadm -c CONFIG ARGS...` and returns its output, whatever its exit status.
    pub fn doveadm<I, S>(&self, args: I) -> Result<DoveadmOutput, HarnessError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.doveadm_with_input(args, None)
    }

    /// Like [`doveadm`](Self::doveadm) with `input` on stdin.
    pub fn doveadm_with_input<I, S>(
        &self,
        args: I,
        input: Option<&[u8]>,
    ) -> Result<DoveadmOutput, HarnessError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.doveadm_command();
        cmd.args(args);
        let command = process::describe(&cmd);
        let out = process::run(&mut cmd, input, DOVEADM_TIMEOUT)?;
        Ok(DoveadmOutput {
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
            command,
        })
    }

    /// Runs a mail command for one user and returns its stdout: `-u USER` is
    /// put right after the command words, so `doveadm_user("bob", &["mailbox",
    /// "status", "messages", "INBOX"])` runs `doveadm mailbox status -u bob
    /// messages INBOX`. Errors on a non-zero exit status.
    pub fn doveadm_user(&self, user: &str, args: &[&str]) -> Result<String, HarnessError> {
        // doveadm takes command options right after the command words; the
        // command words are the leading arguments without '-' that name a
        // command, which for our purposes are the first one or two words.
        let split = command_word_count(args);
        let mut full: Vec<&str> = args[..split].to_vec();
        full.push("-u");
        full.push(user);
        full.extend_from_slice(&args[split..]);
        let out = self.doveadm(&full)?.ok()?;
        Ok(out.stdout_str())
    }

    /// Saves one message into `mailbox` of `user` (`doveadm save`); creates the mailbox if needed.
    pub fn save_message(
        &self,
        user: &str,
        mailbox: &str,
        message: &[u8],
    ) -> Result<(), HarnessError> {
        if mailbox != "INBOX" {
            self.create_mailboxes(user, &[mailbox])?;
        }
        self.doveadm_with_input(["save", "-u", user, "-m", mailbox], Some(message))?
            .ok()
            .map(|_| ())
    }

    /// Creates mailboxes of `user` that do not exist yet.
    pub fn create_mailboxes(&self, user: &str, names: &[&str]) -> Result<(), HarnessError> {
        let existing = self.mailbox_names(user)?;
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| *n != "INBOX" && !existing.iter().any(|e| e == n))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut args = vec!["mailbox", "create", "-u", user];
        args.extend(missing.iter().copied());
        let out = self.doveadm(&args)?;
        if out.success() {
            return Ok(());
        }
        // Something else (a replicator's sync) may create one of them
        // between the listing and the create: what is asked for holds when
        // every name exists now.
        let now = self.mailbox_names(user)?;
        if out.stderr_str().contains("Mailbox already exists")
            && missing.iter().all(|n| now.iter().any(|e| e == n))
        {
            return Ok(());
        }
        out.ok().map(|_| ())
    }

    /// Names of `user`'s mailboxes (`doveadm mailbox list`).
    pub fn mailbox_names(&self, user: &str) -> Result<Vec<String>, HarnessError> {
        let out = self.doveadm(["mailbox", "list", "-u", user])?.ok()?;
        Ok(out.stdout_str().lines().map(str::to_string).collect())
    }

    /// Empties `user` completely: removes the home directory and recreates it
    /// empty (a truly fresh replica; see quirk 5 of the reference harness).
    pub fn reset_user(&self, user: &str) -> Result<(), HarnessError> {
        let home = self.home(user);
        if home.exists() {
            fs::remove_dir_all(&home).map_err(|e| HarnessError::file(&home, e))?;
        }
        self.create_home(user)
    }

    // ------------------------------------------------------------- log

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Log lines with `Error:`, `Warning:`, `Fatal:` or `Panic:`, except the
    /// master's own shutdown notice.
    pub fn log_problems(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                ["Error:", "Warning:", "Fatal:", "Panic:"]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .filter(|l| !(l.contains("master: Warning: Killed with signal")))
            .map(str::to_string)
            .collect()
    }

    /// Panics (listing them) if the log has error, warning, fatal or panic lines.
    pub fn assert_log_clean(&self) {
        self.assert_log_clean_except(&[]);
    }

    /// Like [`assert_log_clean`](Self::assert_log_clean), but lines containing
    /// one of `allowed` are expected and ignored.
    pub fn assert_log_clean_except(&self, allowed: &[&str]) {
        let bad: Vec<String> = self
            .log_problems()
            .into_iter()
            .filter(|l| !allowed.iter().any(|a| l.contains(a)))
            .collect();
        assert!(
            bad.is_empty(),
            "Dovecot log of {} has problems:\n{}",
            self.root.display(),
            bad.join("\n")
        );
    }

    pub(crate) fn check_user(&self, user: &str) -> Result<(), HarnessError> {
        if self.users.iter().any(|u| u == user) {
            Ok(())
        } else {
            Err(HarnessError::UnknownUser(user.to_string()))
        }
    }
}

impl Drop for DovecotInstance {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("HOMING_KEEP_TEST_DIRS").is_some() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("test-support: kept {}", kept.display());
            }
        }
    }
}

/// Number of leading command words in `args` (doveadm commands are one or two words).
fn command_word_count(args: &[&str]) -> usize {
    const TWO_WORD: &[&str] = &[
        "mailbox",
        "flags",
        "acl",
        "quota",
        "fs",
        "dict",
        "director",
        "replicator",
        "sieve",
        "indexer",
        "proxy",
        "instance",
        "mount",
        "penalty",
        "stats",
        "process",
        "kick",
        "oldstats",
        "who",
        "auth",
        "log",
    ];
    match args {
        [] => 0,
        [first, second, ..] if TWO_WORD.contains(first) && !second.starts_with('-') => 2,
        _ => 1,
    }
}

/// True when a socket listens on 127.0.0.1:`port` (or the wildcard address).
fn port_listening(port: u16) -> bool {
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let wanted = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    table.lines().skip(1).any(|line| {
        let mut f = line.split_whitespace();
        let local = f.nth(1).unwrap_or("");
        let state = f.nth(1).unwrap_or("");
        state == "0A" && wanted.iter().any(|w| w == local)
    })
}

fn master_pid_of(run_dir: &Path, config: &Path) -> Option<i32> {
    let text = fs::read_to_string(run_dir.join("master.pid")).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    if pid <= 1 {
        return None;
    }
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let wanted = config.as_os_str().as_encoded_bytes();
    let names_config = cmdline.split(|b| *b == 0).any(|arg| arg == wanted);
    if !names_config || is_zombie(pid) {
        return None;
    }
    Some(pid)
}

fn is_zombie(pid: i32) -> bool {
    // Field 3 of /proc/PID/stat, after the parenthesised command name.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(true)
}

fn stop_pid(pid: i32) {
    let p = Pid::from_raw(pid);
    if kill(p, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if kill(p, None).is_err() || is_zombie(pid) {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = kill(p, Signal::SIGKILL);
}

/// Stops masters of instances whose test process died without cleaning up
/// (recorded in `owner.pid`), and removes their directories. Runs once per process.
fn sweep_orphans() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with(DIR_PREFIX) {
                continue;
            }
            let dir = entry.path();
            let owner: Option<i32> = fs::read_to_string(dir.join("owner.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            let Some(owner) = owner else { continue };
            if owner <= 1 || kill(Pid::from_raw(owner), None).is_ok() && !is_zombie(owner) {
                continue;
            }
            if let Some(pid) = master_pid_of(&dir.join("run"), &dir.join("dovecot.conf")) {
                stop_pid(pid);
            }
            let _ = fs::remove_dir_all(&dir);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_words() {
        assert_eq!(command_word_count(&["mailbox", "list"]), 2);
        assert_eq!(
            command_word_count(&["mailbox", "status", "messages", "*"]),
            2
        );
        assert_eq!(command_word_count(&["fetch", "uid", "all"]), 1);
        assert_eq!(command_word_count(&["sync", "tcp:127.0.0.1:1"]), 1);
        assert_eq!(command_word_count(&[]), 0);
    }

    #[test]
    fn format_locations() {
        assert_eq!(MailFormat::Mdbox.location(), "mdbox:~/mdbox");
        assert_eq!(MailFormat::Maildir.location(), "maildir:~/Maildir");
    }
}
