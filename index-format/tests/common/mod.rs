//! Helpers shared by the fixture tests: locating fixtures and reading the
//! text that `doveadm dump` printed for them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository's fixture root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Every `*.dump.txt` under `dir`, sorted.
pub fn dump_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".dump.txt") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The dump's detected file type ("index", "log", ...).
pub fn dump_type(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("Detected file type: "))
        .map(str::trim)
}

/// `key .... = value` → (key, value) with the dot leaders removed.
pub fn kv(line: &str) -> Option<(String, String)> {
    let (k, v) = line.split_once(" = ")?;
    let k = k.trim_end_matches(['.', ' ']).trim().to_string();
    Some((k, v.trim().to_string()))
}

/// Formats a UNIX time as `YYYY-MM-DD HH:MM:SS` in UTC (doveadm ran with TZ=UTC).
pub fn utc(t: u32) -> String {
    let t = i64::from(t);
    let (days, secs) = (t.div_euclid(86400), t.rem_euclid(86400));
    // Civil-from-days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

pub mod index_dump;
pub mod synth;

pub fn hex(b: &[u8]) -> String {
    index_format::hex(b)
}

pub mod gen;
