//! Parsing of option values the way doveadm reads them, and of the few
//! settings homing takes from `-o` and a Dovecot config file.

use std::collections::BTreeMap;
use std::path::Path;

use dsync_protocol::Guid128;

/// Why an option value was refused (doveadm exits 75 for these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("Invalid -g parameter: {0}")]
    Guid(String),
    #[error("-O parameter doesn't support multiple flags currently")]
    MultipleFlags,
    #[error("Invalid system flag given for -O parameter: '{0}'")]
    SystemFlag(String),
    #[error("Invalid -{opt} parameter: {value}")]
    Date { opt: char, value: String },
    #[error("start date is later than end date")]
    DateOrder,
    #[error("Invalid -I parameter '{0}': Invalid size: {0}")]
    Size(String),
    #[error("-o {0}: expected KEY=VALUE")]
    Override(String),
    #[error("reading {path}: {reason}")]
    Config { path: String, reason: String },
}

/// An integer option: doveadm silently ignores a non-numeric value.
pub fn int_or_ignore(v: Option<&str>) -> Option<i64> {
    v.and_then(|s| s.trim().parse::<i64>().ok())
}

/// `-g`: 32 hex digits; `Ok(None)` for the empty value (no mail sync).
pub fn mailbox_guid(v: &str) -> Result<Option<Guid128>, OptionError> {
    if v.is_empty() {
        return Ok(None);
    }
    match Guid128::parse_hex(v.as_bytes()) {
        Some(g) if v.len() == 32 => Ok(Some(g)),
        _ => Err(OptionError::Guid(v.to_string())),
    }
}

/// `-O`: (negated, flag name). Only one flag; a `\` name must be a system flag.
pub fn sync_flag(values: &[String]) -> Result<Option<(bool, Vec<u8>)>, OptionError> {
    let [v] = values else {
        return match values {
            [] => Ok(None),
            _ => Err(OptionError::MultipleFlags),
        };
    };
    if v.split_whitespace().count() > 1 {
        return Err(OptionError::MultipleFlags);
    }
    let (neg, name) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v.as_str()),
    };
    if name.starts_with('\\') && sync_engine::mailbox::system_flag_bit(name.as_bytes()).is_none() {
        return Err(OptionError::SystemFlag(name.to_string()));
    }
    Ok(Some((neg, name.as_bytes().to_vec())))
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Days from 1970-01-01 to a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A search-style date: UNIX seconds, `YYYY-MM-DD`, IMAP `DD-Mon-YYYY`, or
/// an interval back from `now` (`30days`, `2weeks`, `12hours`, `15mins`, `30secs`).
pub fn date(opt: char, v: &str, now: i64) -> Result<i64, OptionError> {
    let bad = || OptionError::Date {
        opt,
        value: v.to_string(),
    };
    let s = v.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| bad());
    }
    let parts: Vec<&str> = s.split('-').collect();
    if let [a, b, c] = parts[..] {
        let (y, m, d) = if a.len() == 4 {
            (a.parse().ok(), b.parse().ok(), c.parse().ok())
        } else {
            let m = MONTHS
                .iter()
                .position(|x| x.eq_ignore_ascii_case(b))
                .map(|i| i as i64 + 1);
            (c.parse().ok(), m, a.parse().ok())
        };
        if let (Some(y), Some(m), Some(d)) = (y, m, d) {
            if (1..=12).contains(&m) && (1..=31).contains(&d) && (1970..=9999).contains(&y) {
                return Ok(days_from_civil(y, m, d) * 86_400);
            }
        }
        return Err(bad());
    }
    let digits = s.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits > 0 {
        let n: i64 = s[..digits].parse().map_err(|_| bad())?;
        let unit = match s[digits..].trim().to_ascii_lowercase().as_str() {
            "sec" | "secs" | "second" | "seconds" => 1,
            "min" | "mins" | "minute" | "minutes" => 60,
            "hour" | "hours" => 3_600,
            "day" | "days" => 86_400,
            "week" | "weeks" => 7 * 86_400,
            _ => return Err(bad()),
        };
        return n.checked_mul(unit).map(|x| now - x).ok_or_else(bad);
    }
    Err(bad())
}

/// `-I`: a size with an optional unit (`B`, `k`, `M`, `G`, `T`).
pub fn size(v: &str) -> Result<u64, OptionError> {
    let bad = || OptionError::Size(v.to_string());
    let s = v.trim();
    let digits = s.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = s[..digits].parse().map_err(|_| bad())?;
    let mult: u64 = match s[digits..].trim() {
        "" | "B" | "b" => 1,
        "k" | "K" | "kB" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        "T" | "TB" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Settings from a Dovecot config file's top level (sections are skipped)
/// overlaid with `-o KEY=VALUE`. `plugin/KEY` and `KEY` are the same key.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    pub values: BTreeMap<String, String>,
}

impl Settings {
    pub fn load(config: Option<&Path>, overrides: &[String]) -> Result<Settings, OptionError> {
        let mut s = Settings::default();
        if let Some(p) = config {
            let text = std::fs::read_to_string(p).map_err(|e| OptionError::Config {
                path: p.display().to_string(),
                reason: e.to_string(),
            })?;
            let mut depth = 0usize;
            let mut in_plugin = false;
            // The first userdb section is kept as `userdb/KEY` (the user's
            // home comes from it).
            let mut in_userdb = false;
            let mut userdb_seen = false;
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.ends_with('{') {
                    depth += 1;
                    in_plugin = depth == 1 && line.starts_with("plugin");
                    in_userdb = depth == 1
                        && !userdb_seen
                        && line.split_whitespace().next() == Some("userdb");
                    userdb_seen |= in_userdb;
                    continue;
                }
                if line == "}" {
                    depth = depth.saturating_sub(1);
                    in_plugin = false;
                    in_userdb = false;
                    continue;
                }
                if in_userdb && depth == 1 {
                    if let Some((k, v)) = line.split_once('=') {
                        s.values
                            .insert(format!("userdb/{}", k.trim()), v.trim().to_string());
                    }
                    continue;
                }
                if depth > 0 && !in_plugin {
                    continue;
                }
                if let Some((k, v)) = line.split_once('=') {
                    s.set(k.trim(), v.trim());
                }
            }
        }
        for o in overrides {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| OptionError::Override(o.clone()))?;
            s.set(k.trim(), v.trim());
        }
        Ok(s)
    }

    fn set(&mut self, k: &str, v: &str) {
        let k = k.strip_prefix("plugin/").unwrap_or(k);
        self.values.insert(k.to_string(), v.to_string());
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.values.get(k).map(|s| s.as_str())
    }

    /// The home directory of `user`: `mail_home`, else the userdb of the
    /// config (a passwd-file's home field, else `home=` of its
    /// `default_fields`, or of a static userdb's args). `None` when none
    /// of them gives one.
    pub fn user_home(&self, user: &str) -> Option<std::path::PathBuf> {
        let (n, d) = user.split_once('@').unwrap_or((user, ""));
        let expand = |t: &str| -> String {
            let mut out = String::new();
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                if c != '%' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('u') => out.push_str(user),
                    Some('n') => out.push_str(n),
                    Some('d') => out.push_str(d),
                    Some(o) => {
                        out.push('%');
                        out.push(o);
                    }
                    None => out.push('%'),
                }
            }
            out
        };
        let absolute = |h: String| Some(h).filter(|h| h.starts_with('/')).map(Into::into);
        if let Some(h) = self.get("mail_home").filter(|h| !h.is_empty()) {
            return absolute(expand(h));
        }
        let field_home = |fields: &str| {
            fields
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("home="))
                .map(&expand)
        };
        match self.get("userdb/driver") {
            Some("passwd-file") => {
                let path = expand(self.get("userdb/args")?.split_whitespace().last()?);
                let text = std::fs::read_to_string(path).ok()?;
                let line = text
                    .lines()
                    .find(|l| !l.starts_with('#') && l.split(':').next() == Some(user))?;
                match line.split(':').nth(5).filter(|h| !h.is_empty()) {
                    Some(h) => absolute(h.to_string()),
                    None => absolute(field_home(self.get("userdb/default_fields")?)?),
                }
            }
            Some("static") => absolute(field_home(self.get("userdb/args")?)?),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_home_from_the_config_userdb() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(
            &passwd,
            "alice:{PLAIN}pw::::::\nbob:{PLAIN}pw:5000:5000::/srv/bob::\n",
        )
        .unwrap();
        let conf = dir.path().join("dovecot.conf");
        std::fs::write(
            &conf,
            format!(
                "mail_location = maildir:~/Maildir\n\
                 passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {p}\n}}\n\
                 userdb {{\n  driver = passwd-file\n  args = {p}\n  default_fields = uid=5000 home=/home/%u\n}}\n\
                 userdb {{\n  driver = static\n  args = home=/elsewhere/%u\n}}\n",
                p = passwd.display()
            ),
        )
        .unwrap();
        let s = Settings::load(Some(&conf), &[]).unwrap();
        assert_eq!(s.user_home("alice"), Some("/home/alice".into()));
        assert_eq!(s.user_home("bob"), Some("/srv/bob".into()));
        assert_eq!(s.user_home("nobody"), None);
        let s = Settings::load(Some(&conf), &["mail_home=/m/%n".into()]).unwrap();
        assert_eq!(s.user_home("carol@example.org"), Some("/m/carol".into()));
        let s = Settings::load(None, &[]).unwrap();
        assert_eq!(s.user_home("alice"), None);
    }
}
