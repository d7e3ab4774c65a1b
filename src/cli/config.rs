//! A reader for Dovecot's configuration file, as far as homing needs it:
//! top-level settings, `plugin { }`, the `protocol doveadm { }` filter
//! (homing acts as doveadm), and the `userdb { }` sections. Everything else
//! (services, passdbs, namespaces, other protocols) is skipped.
//!
//! Dovecot's syntax kept here: `key = value` (optionally quoted),
//! `#` comments, `\` line continuation, `section [name] {` ... `}`,
//! `!include` and `!include_try` with globs, relative to the including
//! file's directory, and `$key` references to earlier values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Includes nest at most this deep (a loop would otherwise never end).
const MAX_INCLUDE_DEPTH: usize = 20;
/// Files larger than this are refused: a config is a few kilobytes.
const MAX_FILE_SIZE: u64 = 16 << 20;

/// Why a configuration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{path} line {line}: {reason}")]
    Syntax {
        path: String,
        line: usize,
        reason: String,
    },
}

/// One `userdb { }` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserdbSection {
    pub driver: String,
    pub args: String,
    pub default_fields: String,
    pub override_fields: String,
}

/// The settings homing reads from a configuration file.
#[derive(Debug, Clone, Default)]
pub struct DovecotConfig {
    /// Top-level and `plugin { }` values, then `protocol doveadm { }` values
    /// over them. `plugin/KEY` is stored as `KEY`.
    pub values: BTreeMap<String, String>,
    pub userdbs: Vec<UserdbSection>,
}

struct Parser {
    top: BTreeMap<String, String>,
    doveadm: BTreeMap<String, String>,
    userdbs: Vec<UserdbSection>,
    /// Open sections: (kind, name).
    stack: Vec<(String, String)>,
}

impl DovecotConfig {
    /// Reads `path` and everything it includes.
    pub fn read(path: &Path) -> Result<DovecotConfig, ConfigError> {
        let mut p = Parser {
            top: BTreeMap::new(),
            doveadm: BTreeMap::new(),
            userdbs: Vec::new(),
            stack: Vec::new(),
        };
        p.file(path, 0, false)?;
        let mut values = p.top;
        values.extend(p.doveadm);
        Ok(DovecotConfig {
            values,
            userdbs: p.userdbs,
        })
    }
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Removes a comment: `#` at the start or after white space, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted && prev_space => return &line[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        let inner = &v[1..v.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        out
    } else {
        v.to_string()
    }
}

/// Paths an `!include` names: a glob in the last component (`*`, `?`).
fn include_paths(pattern: &Path) -> Vec<PathBuf> {
    let name = pattern
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return if pattern.exists() {
            vec![pattern.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    let dir = pattern.parent().unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| wildcard_match(&name, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// `*` and `?` matching, as Dovecot's wildcard_match (case-sensitive).
pub fn wildcard_match(mask: &str, s: &str) -> bool {
    wildcard(mask.as_bytes(), s.as_bytes(), false)
}

/// `*` and `?` matching ignoring ASCII case (user masks).
pub fn wildcard_match_icase(mask: &str, s: &str) -> bool {
    wildcard(mask.as_bytes(), s.as_bytes(), true)
}

fn wildcard(m: &[u8], s: &[u8], icase: bool) -> bool {
    // Iterative with one backtrack point: linear enough for names.
    let eq = |a: u8, b: u8| {
        if icase {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut mi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if mi < m.len() && (m[mi] == b'?' || (m[mi] != b'*' && eq(m[mi], s[si]))) {
            mi += 1;
            si += 1;
        } else if mi < m.len() && m[mi] == b'*' {
            star = Some((mi, si));
            mi += 1;
        } else if let Some((sm, ss)) = star {
            mi = sm + 1;
            si = ss + 1;
            star = Some((sm, ss + 1));
        } else {
            return false;
        }
    }
    m[mi..].iter().all(|&c| c == b'*')
}

impl Parser {
    fn file(&mut self, path: &Path, depth: usize, optional: bool) -> Result<(), ConfigError> {
        if depth > MAX_INCLUDE_DEPTH {
            return Err(io_error(path, "includes nested too deep (a loop?)"));
        }
        let md = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(path, e)),
        };
        if md.len() > MAX_FILE_SIZE {
            return Err(io_error(path, "file too large for a configuration"));
        }
        let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let syntax = |line: usize, reason: &str| ConfigError::Syntax {
            path: path.display().to_string(),
            line,
            reason: reason.to_string(),
        };
        let mut pending = String::new();
        for (i, raw) in text.lines().enumerate() {
            let lineno = i + 1;
            if let Some(cont) = raw.strip_suffix('\\') {
                pending.push_str(cont);
                pending.push(' ');
                continue;
            }
            pending.push_str(raw);
            let full = std::mem::take(&mut pending);
            let line = strip_comment(&full).trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('!') {
                let (cmd, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let optional = match cmd {
                    "include" => false,
                    "include_try" => true,
                    _ => return Err(syntax(lineno, "unknown ! directive")),
                };
                let arg = unquote(arg);
                let pattern = if Path::new(&arg).is_absolute() {
                    PathBuf::from(&arg)
                } else {
                    dir.join(&arg)
                };
                let paths = include_paths(&pattern);
                if paths.is_empty() && !optional && !arg.contains(['*', '?']) {
                    return Err(io_error(&pattern, "No such file or directory (!include)"));
                }
                for p in paths {
                    self.file(&p, depth + 1, optional)?;
                }
                continue;
            }
            if line == "}" {
                if self.stack.pop().is_none() {
                    return Err(syntax(lineno, "'}' without an open section"));
                }
                continue;
            }
            if let Some(head) = line.strip_suffix('{') {
                let mut words = head.split_whitespace();
                let kind = words.next().unwrap_or("").to_string();
                let name = words.collect::<Vec<_>>().join(" ");
                if kind == "userdb" && self.stack.is_empty() {
                    self.userdbs.push(UserdbSection::default());
                }
                self.stack.push((kind, name));
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                // A section opened on the next line's brace, or a bare
                // word: Dovecot refuses it, homing need not.
                continue;
            };
            let key = k.trim().to_string();
            let value = unquote(v);
            self.set(&key, value);
        }
        Ok(())
    }

    fn expand_refs(&self, v: &str) -> String {
        if !v.contains('$') {
            return v.to_string();
        }
        v.split(' ')
            .map(|w| match w.strip_prefix('$') {
                Some(k) => self
                    .doveadm
                    .get(k)
                    .or_else(|| self.top.get(k))
                    .cloned()
                    .unwrap_or_default(),
                None => w.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn set(&mut self, key: &str, value: String) {
        let value = self.expand_refs(&value);
        let key = key.strip_prefix("plugin/").unwrap_or(key);
        match self.stack.as_slice() {
            [] => {
                self.top.insert(key.to_string(), value);
            }
            [(kind, _)] if kind == "plugin" => {
                self.top.insert(key.to_string(), value);
            }
            [(kind, name)] if kind == "protocol" && protocol_matches(name) => {
                self.doveadm.insert(key.to_string(), value);
            }
            [(kind, name), (inner, _)]
                if kind == "protocol" && inner == "plugin" && protocol_matches(name) =>
            {
                self.doveadm.insert(key.to_string(), value);
            }
            [(kind, _)] if kind == "userdb" => {
                if let Some(u) = self.userdbs.last_mut() {
                    match key {
                        "driver" => u.driver = value,
                        "args" => u.args = value,
                        "default_fields" => u.default_fields = value,
                        "override_fields" => u.override_fields = value,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether a `protocol` filter (`doveadm`, `imap pop3`, `!indexer-worker`)
/// applies to doveadm.
fn protocol_matches(names: &str) -> bool {
    names.split_whitespace().any(|n| match n.strip_prefix('!') {
        Some(not) => not != "doveadm",
        None => n == "doveadm",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.conf", "10-mail.conf"));
        assert!(!wildcard_match("*.conf", "auth-sql.conf.ext"));
        assert!(wildcard_match("a?c*", "abcdef"));
        assert!(wildcard_match_icase("AL*", "alice"));
        assert!(!wildcard_match_icase("b*", "alice"));
        assert!(wildcard_match("*", ""));
    }

    #[test]
    fn sections_includes_and_filters() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("dovecot.conf");
        std::fs::create_dir(d.path().join("conf.d")).unwrap();
        std::fs::write(
            &conf,
            "# main\n!include_try /nonexistent/*.protocol\nmail_plugins = a\n\
             !include conf.d/*.conf\n!include_try local.conf\n\
             protocol doveadm {\n  mail_location = maildir:/d/%u\n}\n\
             protocol imap {\n  mail_location = maildir:/imap\n}\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("conf.d/10-mail.conf"),
            "mail_location = maildir:~/Maildir # trailing\nmail_plugins = $mail_plugins b\n\
             namespace inbox {\n  inbox = yes\n  mailbox Sent {\n    special_use = \\Sent\n  }\n}\n\
             service doveadm {\n  inet_listener {\n    port = 12345\n  }\n}\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("conf.d/10-auth.conf"),
            "!include auth-passwdfile.conf.ext\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("conf.d/auth-passwdfile.conf.ext"),
            "passdb {\n  driver = passwd-file\n  args = scheme=CRYPT /etc/x\n}\n\
             userdb {\n  driver = passwd-file\n  args = username_format=%u \"/etc/dovecot/users\"\n  \
             default_fields = uid=vmail home=/h/%u\n}\nplugin {\n  mail_replica = tcp:peer\n}\n",
        )
        .unwrap();
        let c = DovecotConfig::read(&conf).unwrap();
        assert_eq!(c.values["mail_location"], "maildir:/d/%u");
        assert_eq!(c.values["mail_plugins"], "a b");
        assert_eq!(c.values["mail_replica"], "tcp:peer");
        assert!(!c.values.contains_key("port"));
        assert!(!c.values.contains_key("inbox"));
        assert_eq!(c.userdbs.len(), 1);
        assert_eq!(c.userdbs[0].driver, "passwd-file");
        assert_eq!(
            c.userdbs[0].args,
            "username_format=%u \"/etc/dovecot/users\""
        );
        assert_eq!(c.userdbs[0].default_fields, "uid=vmail home=/h/%u");
    }

    #[test]
    fn missing_include_and_bad_nesting_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("c.conf");
        std::fs::write(&conf, "!include nothere.conf\n").unwrap();
        assert!(matches!(
            DovecotConfig::read(&conf),
            Err(ConfigError::Io { .. })
        ));
        std::fs::write(&conf, "a = 1\n}\n").unwrap();
        assert!(matches!(
            DovecotConfig::read(&conf),
            Err(ConfigError::Syntax { line: 2, .. })
        ));
        // A file including itself stops at the depth limit.
        std::fs::write(&conf, "!include c.conf\n").unwrap();
        assert!(DovecotConfig::read(&conf).is_err());
    }
}
