//! User discovery: the users to replicate, from a passwd-file or from a
//! command printing one username per line (like `doveadm user '*'`).

use std::collections::HashMap;
use std::path::Path;

/// What the userdb says about one user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// `noreplicate`: never replicate this user.
    pub noreplicate: bool,
    /// `mail_replica`, if the userdb sets it per user.
    pub mail_replica: Option<String>,
    /// Home directory (passwd-file field 6, or `userdb_home=`), if given.
    pub home: Option<String>,
}

/// Users by name.
pub type UserDb = HashMap<String, UserInfo>;

/// Errors listing users.
#[derive(Debug, thiserror::Error)]
pub enum UserListError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("user list command `{command}` failed: {status}")]
    Command { command: String, status: String },
}

/// A userdb boolean: present and empty, or starting with y/Y/t/T/1.
fn truthy(v: &str) -> bool {
    v.is_empty() || matches!(v.as_bytes()[0], b'y' | b'Y' | b't' | b'T' | b'1')
}

/// Parses passwd-file text: `user:password:uid:gid:gecos:home:shell:extra`,
/// where extra fields are space-separated `key=value`; userdb fields carry
/// the `userdb_` prefix.
pub fn parse_passwd_file(text: &str) -> UserDb {
    let mut db = UserDb::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.splitn(8, ':').collect();
        let user = fields[0].trim();
        if user.is_empty() {
            continue;
        }
        let mut info = UserInfo {
            home: fields
                .get(5)
                .filter(|h| !h.is_empty())
                .map(|h| h.to_string()),
            ..UserInfo::default()
        };
        if let Some(extra) = fields.get(7) {
            for kv in extra.split_whitespace() {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                match k.strip_prefix("userdb_").unwrap_or(k) {
                    "noreplicate" => info.noreplicate = truthy(v),
                    "mail_replica" => info.mail_replica = (!v.is_empty()).then(|| v.to_string()),
                    "home" if !v.is_empty() => info.home = Some(v.to_string()),
                    _ => {}
                }
            }
        }
        db.insert(user.to_string(), info);
    }
    db
}

/// Parses one-user-per-line output; the first tab- or space-separated word
/// of each line is the user.
pub fn parse_user_list(text: &str) -> UserDb {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|u| (u.to_string(), UserInfo::default()))
        .collect()
}

pub fn read_passwd_file(path: &Path) -> Result<UserDb, UserListError> {
    let text = std::fs::read_to_string(path).map_err(|source| UserListError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse_passwd_file(&text))
}

/// Runs `command` with `sh -c` and reads its output.
pub async fn run_list_command(command: &str) -> Result<UserDb, UserListError> {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| UserListError::Io {
            path: command.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(UserListError::Command {
            command: command.to_string(),
            status: out.status.to_string(),
        });
    }
    Ok(parse_user_list(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_file_fields() {
        let db = parse_passwd_file(
            "alice:{PLAIN}pw:5000:5000::/home/alice::\n\
             dave:{PLAIN}pw:5000:5000::/home/dave::userdb_noreplicate=y\n\
             erin:x:::::: userdb_mail_replica=tcp:peer:12345 userdb_quota_rule=*:storage=1G\n\
             # comment\n\nfrank\n",
        );
        assert_eq!(db.len(), 4);
        assert!(!db["alice"].noreplicate);
        assert!(db["dave"].noreplicate);
        assert_eq!(db["erin"].mail_replica.as_deref(), Some("tcp:peer:12345"));
        assert!(db.contains_key("frank"));
        assert_eq!(db["alice"].home.as_deref(), Some("/home/alice"));
        assert_eq!(db["erin"].home, None);
        assert!(!parse_passwd_file("x:::::::userdb_noreplicate=no\n")["x"].noreplicate);
    }

    #[tokio::test]
    async fn list_command() {
        let db = run_list_command("printf 'alice\\nbob\\n\\n'")
            .await
            .unwrap();
        assert_eq!(db.len(), 2);
        assert!(run_list_command("exit 3").await.is_err());
    }
}
