//! Dovecot's passwd-file userdb read directly: lines
//! `user:password:uid:gid:gecos:home:shell:extra fields`, where the extra
//! fields are space-separated `userdb_KEY=VALUE` words (others belong to the
//! passdb). The section's `default_fields` come first, the line's fields
//! over them, `override_fields` last.

use std::path::Path;

use super::{expand_vars, UserInfo, UserdbError};
use crate::cli::config::UserdbSection;

/// A passwd-file is refused beyond this size.
const MAX_FILE_SIZE: u64 = 1 << 30;

/// One passwd-file userdb.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswdFile {
    /// The file, with `%u %n %d` for per-domain files.
    pub path: String,
    /// How the user name is written in the file (default `%u`).
    pub username_format: String,
    pub default_fields: String,
    pub override_fields: String,
}

impl PasswdFile {
    /// From a `userdb { driver = passwd-file ... }` section: `args` is
    /// `[username_format=FMT] [other=...] PATH`.
    pub fn from_section(s: &UserdbSection) -> PasswdFile {
        let mut f = PasswdFile {
            username_format: "%u".into(),
            default_fields: s.default_fields.clone(),
            override_fields: s.override_fields.clone(),
            ..PasswdFile::default()
        };
        for w in s.args.split_whitespace() {
            match w.split_once('=') {
                Some(("username_format", v)) => f.username_format = v.to_string(),
                Some((k, _)) if !k.contains('/') => {}
                _ => f.path = w.trim_matches('"').to_string(),
            }
        }
        f
    }

    fn err(&self, reason: impl Into<String>) -> UserdbError {
        UserdbError::PasswdFile {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn read(&self, path: &str) -> Result<String, UserdbError> {
        let md = std::fs::metadata(path).map_err(|e| UserdbError::PasswdFile {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        if md.len() > MAX_FILE_SIZE {
            return Err(self.err("file too large"));
        }
        std::fs::read_to_string(path).map_err(|e| UserdbError::PasswdFile {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    fn apply_fields(
        &self,
        info: &mut UserInfo,
        fields: &str,
        user: &str,
    ) -> Result<(), UserdbError> {
        for w in fields.split_whitespace() {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            let v = expand_vars(v, user, info.home.as_deref())
                .map_err(|e| self.err(format!("field {k}: {e}")))?;
            info.set_field(k, &v)?;
        }
        Ok(())
    }

    /// Looks `user` up; `Ok(None)` when the file has no such line (or, for
    /// a per-domain file, when the file does not exist).
    pub fn lookup(&self, user: &str) -> Result<Option<UserInfo>, UserdbError> {
        let name = expand_vars(&self.username_format, user, None).map_err(|e| self.err(e))?;
        let path = expand_vars(&self.path, user, None).map_err(|e| self.err(e))?;
        if path != self.path && !Path::new(&path).exists() {
            return Ok(None);
        }
        let text = self.read(&path)?;
        let Some(line) = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.split(':').next() == Some(name.as_str()))
        else {
            return Ok(None);
        };
        let mut cols = line.splitn(8, ':');
        let _name = cols.next();
        let _password = cols.next();
        let uid = cols.next().unwrap_or("");
        let gid = cols.next().unwrap_or("");
        let _gecos = cols.next();
        let home = cols.next().unwrap_or("");
        let _shell = cols.next();
        let extra = cols.next().unwrap_or("");
        let mut info = UserInfo {
            user: user.to_string(),
            ..UserInfo::default()
        };
        self.apply_fields(&mut info, &self.default_fields, user)?;
        for (k, v) in [("uid", uid), ("gid", gid), ("home", home)] {
            if !v.is_empty() {
                info.set_field(k, v)?;
            }
        }
        for w in extra.split_whitespace() {
            if let Some(field) = w.strip_prefix("userdb_") {
                let (k, v) = field.split_once('=').unwrap_or((field, ""));
                info.set_field(k, v)?;
            }
        }
        self.apply_fields(&mut info, &self.override_fields, user)?;
        Ok(Some(info))
    }

    /// The user names of the file, in its order.
    pub fn list(&self) -> Result<Vec<String>, UserdbError> {
        if self.path.contains('%') {
            return Err(self.err("cannot list users of a per-user or per-domain file"));
        }
        let text = self.read(&self.path)?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split(':').next())
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_list() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("users");
        std::fs::write(
            &p,
            "# comment\nalice:{PLAIN}x::::::\n\
             bob:{PLAIN}x:1001:1002::/h/bob::userdb_mail=maildir:~/Mail userdb_mail_replica=tcp:b nopassword\n",
        )
        .unwrap();
        let f = PasswdFile::from_section(&UserdbSection {
            driver: "passwd-file".into(),
            args: format!("username_format=%u {}", p.display()),
            default_fields: "uid=7 gid=8 home=/home/%u".into(),
            override_fields: "quota_rule=*:storage=1G".into(),
        });
        let a = f.lookup("alice").unwrap().unwrap();
        assert_eq!((a.uid, a.gid), (Some(7), Some(8)));
        assert_eq!(a.home.as_deref(), Some("/home/alice"));
        assert_eq!(a.mail(), None);
        assert_eq!(a.get("quota_rule"), Some("*:storage=1G"));
        let b = f.lookup("bob").unwrap().unwrap();
        assert_eq!((b.uid, b.gid), (Some(1001), Some(1002)));
        assert_eq!(b.home.as_deref(), Some("/h/bob"));
        assert_eq!(b.mail(), Some("maildir:~/Mail"));
        assert_eq!(b.get("mail_replica"), Some("tcp:b"));
        assert_eq!(b.get("nopassword"), None);
        assert!(f.lookup("carol").unwrap().is_none());
        assert_eq!(f.list().unwrap(), ["alice", "bob"]);
    }

    #[test]
    fn per_domain_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x.org"), "a:p:1:1::/h::\n").unwrap();
        let f = PasswdFile {
            path: format!("{}/%d", d.path().display()),
            username_format: "%n".into(),
            ..PasswdFile::default()
        };
        assert_eq!(f.lookup("a@x.org").unwrap().unwrap().uid, Some(1));
        assert!(f.lookup("a@y.org").unwrap().is_none());
        assert!(f.list().is_err());
    }
}
