//! Parsing of option values the way doveadm reads them, and of the few
//! settings homing takes from `-o` and a Dovecot config file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use dsync_protocol::Guid128;

use super::config::{DovecotConfig, UserdbSection};
use crate::userdb::Userdb;

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

/// Where doveadm reads its configuration when `-c` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/dovecot/dovecot.conf";

/// Settings from a Dovecot configuration file (see [`super::config`])
/// overlaid with `-o KEY=VALUE`. `plugin/KEY` and `KEY` are the same key.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    pub values: BTreeMap<String, String>,
    /// The configuration file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Its `userdb { }` sections.
    pub userdbs: Vec<UserdbSection>,
    /// Keys given with `-o`.
    pub overridden: BTreeSet<String>,
}

impl Settings {
    /// Reads `config`; without one, doveadm's default file when it exists,
    /// unless `-o mail_location=` is given (homing then runs without any
    /// Dovecot configuration or userdb).
    pub fn load(config: Option<&Path>, overrides: &[String]) -> Result<Settings, OptionError> {
        let mut s = Settings::default();
        let mut over = Vec::new();
        for o in overrides {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| OptionError::Override(o.clone()))?;
            let k = k.trim();
            let k = k.strip_prefix("plugin/").unwrap_or(k);
            over.push((k.to_string(), v.trim().to_string()));
        }
        let path = match config {
            Some(p) => Some(p.to_path_buf()),
            None if over.iter().any(|(k, _)| k == "mail_location") => None,
            None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        };
        if let Some(p) = path {
            let c = DovecotConfig::read(&p).map_err(|e| OptionError::Config {
                path: p.display().to_string(),
                reason: e.to_string(),
            })?;
            s.values = c.values;
            s.userdbs = c.userdbs;
            s.config_file = Some(p);
        }
        for (k, v) in over {
            s.overridden.insert(k.clone());
            s.values.insert(k, v);
        }
        Ok(s)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.values.get(k).map(|s| s.as_str())
    }

    /// The userdb to ask, when there is one: a configuration was read, or
    /// `-o base_dir=`/`-o auth_socket_path=` points at a running Dovecot.
    pub fn userdb(&self) -> Option<Userdb> {
        let pointed =
            self.overridden.contains("base_dir") || self.overridden.contains("auth_socket_path");
        (self.config_file.is_some() || pointed)
            .then(|| Userdb::from_config(&self.values, &self.userdbs))
    }
}
