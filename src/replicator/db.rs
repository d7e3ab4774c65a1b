//! `replicator.db`: Dovecot 2.3's replicator database, one tab-separated line
//! per user:
//!
//! `<user>\t<priority 0-3>\t<last_update>\t<last_fast_sync>\t<last_full_sync>\t<failed 0|1>\t<state>\t<last_successful_sync>\n`
//!
//! Fields use Dovecot's tab-escaping. Reading stops at the first corrupt line
//! (as Dovecot does); the 7-field form without the success time is accepted.
//! Writing is atomic (temporary file, fsync, rename) with mode 0600, unlike
//! Dovecot which rewrites the file in place.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::queue::{Priority, Queue};
use super::tabescape::{escape, split_line};

/// One record as stored in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbRecord {
    pub username: String,
    pub priority: Priority,
    pub last_update: u64,
    pub last_fast_sync: u64,
    pub last_full_sync: u64,
    pub last_sync_failed: bool,
    /// `None` or empty: no state.
    pub state: Option<String>,
    pub last_successful_sync: u64,
}

/// Errors reading or writing the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("Corrupted replicator record in {path}: {line}")]
    Corrupted { path: PathBuf, line: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Result of parsing a database file: the good records before the first
/// corrupt line, and that line if there was one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub records: Vec<DbRecord>,
    pub corrupted: Option<String>,
}

fn parse_record(line: &str) -> Option<DbRecord> {
    let f = split_line(line);
    if f.len() < 7 || f[0].is_empty() {
        return None;
    }
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let priority = Priority::from_number(num(&f[1])?)?;
    let last_successful_sync = match f.get(7) {
        Some(s) => num(s)?,
        None => 0,
    };
    Some(DbRecord {
        username: f[0].clone(),
        priority,
        last_update: num(&f[2])?,
        last_fast_sync: num(&f[3])?,
        last_full_sync: num(&f[4])?,
        // Anything but a leading '0' counts as failed.
        last_sync_failed: !f[5].starts_with('0'),
        state: (!f[6].is_empty()).then(|| f[6].clone()),
        last_successful_sync,
    })
}

/// Parses database text. Parsing stops at the first corrupt line.
pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    for line in text.split('\n') {
        if line.is_empty() {
            continue;
        }
        match parse_record(line) {
            Some(r) => out.records.push(r),
            None => {
                out.corrupted = Some(line.to_string());
                break;
            }
        }
    }
    out
}

/// Formats one record as a database line (with the trailing newline).
pub fn format_record(r: &DbRecord) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
        escape(&r.username),
        r.priority as u8,
        r.last_update,
        r.last_fast_sync,
        r.last_full_sync,
        if r.last_sync_failed { 1 } else { 0 },
        escape(r.state.as_deref().unwrap_or("")),
        r.last_successful_sync
    )
}

/// The records of every user in the queue, sorted by username so that the
/// file is stable between dumps.
pub fn snapshot(queue: &Queue) -> Vec<DbRecord> {
    let mut v: Vec<DbRecord> = queue
        .users()
        .map(|u| DbRecord {
            username: u.username.clone(),
            priority: u.priority,
            last_update: u.last_update,
            last_fast_sync: u.last_fast_sync,
            last_full_sync: u.last_full_sync,
            last_sync_failed: u.last_sync_failed,
            state: u.state.clone(),
            last_successful_sync: u.last_successful_sync,
        })
        .collect();
    v.sort_by(|a, b| a.username.cmp(&b.username));
    v
}

/// Writes the records atomically: a temporary file in the same directory with
/// mode 0600, fsync, then rename over `path`.
pub fn write(path: &Path, records: &[DbRecord]) -> Result<(), DbError> {
    let io = |source| DbError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    for r in records {
        text.push_str(&format_record(r));
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename durable; failure here is not worth failing the dump.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Reads the database (a missing file is an empty database).
pub fn read(path: &Path) -> Result<Parsed, DbError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(parse(&String::from_utf8_lossy(&bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Parsed::default()),
        Err(source) => Err(DbError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Imports the database into the queue using the merge rules. Returns the
/// number of records imported and the corruption error, if any (records
/// before the corrupt line are still imported).
pub fn import(path: &Path, queue: &mut Queue) -> Result<(usize, Option<DbError>), DbError> {
    let parsed = read(path)?;
    let mut n = 0;
    for r in parsed.records {
        if queue.import(r) {
            n += 1;
        }
    }
    let err = parsed.corrupted.map(|line| DbError::Corrupted {
        path: path.to_path_buf(),
        line,
    });
    Ok((n, err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicator::queue::QueueSettings;

    // The lines of a real 2.3.19.1 replicator.db (spec section 2.7).
    const REAL: &str = "alice\t0\t1795886718\t1795886718\t1795886634\t0\tAQAAABlXfS19Dgtr3zIAAIPsw3V9DgtrAQAAAAIAAAAAAAAAAAAAAAAAAAABAAAA4A23zg==\t1795886718\n\
dave\t0\t0\t1795886678\t1795886678\t1\t\t0\n\
carol\t0\t1795887712\t1795887712\t1795887638\t1\t\t1795887638\n\
bob\t2\t1795886859\t0\t0\t0\t\t0\n";

    #[test]
    fn parses_real_lines_and_round_trips_bytes() {
        let p = parse(REAL);
        assert_eq!(p.corrupted, None);
        assert_eq!(p.records.len(), 4);
        let a = &p.records[0];
        assert_eq!(a.username, "alice");
        assert_eq!(a.priority, Priority::None);
        assert_eq!(
            (a.last_update, a.last_fast_sync, a.last_full_sync),
            (1795886718, 1795886718, 1795886634)
        );
        assert!(!a.last_sync_failed);
        assert_eq!(a.last_successful_sync, 1795886718);
        assert!(p.records[1].last_sync_failed);
        assert_eq!(p.records[1].state, None);
        assert_eq!(p.records[3].priority, Priority::High);
        let again: String = p.records.iter().map(format_record).collect();
        assert_eq!(again, REAL);
    }

    #[test]
    fn seven_fields_and_corruption_stop() {
        let p = parse("olduser\t2\t100\t200\t300\t0\tSTATE\nx\t1\t1\t1\t1\t0\t\t1\n");
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.records[0].last_successful_sync, 0);
        assert_eq!(p.records[0].state.as_deref(), Some("STATE"));
        let p = parse("a\t0\t1\t1\t1\t0\t\t1\nbad\tx\t1\t1\t1\t0\t\t1\nc\t0\t1\t1\t1\t0\t\t1\n");
        assert_eq!(p.records.len(), 1);
        assert_eq!(p.corrupted.as_deref(), Some("bad\tx\t1\t1\t1\t0\t\t1"));
        for bad in [
            "a\t0\t1\t1\t1\t0",
            "\t0\t1\t1\t1\t0\t\t1",
            "a\t9\t1\t1\t1\t0\t\t1",
            "a\t0\t-1\t1\t1\t0\t\t1",
        ] {
            assert!(parse(bad).corrupted.is_some(), "{bad:?}");
        }
        // Failed counts as true unless the field starts with '0'.
        assert!(parse("a\t0\t1\t1\t1\tx\t\t1\n").records[0].last_sync_failed);
    }

    #[test]
    fn escaped_usernames_round_trip() {
        let r = DbRecord {
            username: "we\tird\n\u{1}name\r".into(),
            priority: Priority::Sync,
            last_update: 1,
            last_fast_sync: 2,
            last_full_sync: 3,
            last_sync_failed: true,
            state: Some("S".into()),
            last_successful_sync: 4,
        };
        let line = format_record(&r);
        assert_eq!(
            line,
            "we\u{1}tird\u{1}n\u{1}1name\u{1}r\t3\t1\t2\t3\t1\tS\t4\n"
        );
        assert_eq!(parse(&line).records, vec![r]);
    }

    #[test]
    fn write_is_atomic_0600_and_import_merges() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replicator.db");
        let mut q = Queue::new(QueueSettings::default());
        let (n, err) = import(&path, &mut q).unwrap();
        assert_eq!((n, err.is_none()), (0, true), "missing file is empty");
        std::fs::write(&path, REAL).unwrap();
        // Userdb listing first, like at startup: last_update 0.
        q.add("alice", 0);
        q.add("erin", 0);
        // bob was requested high at a later time than the file's record.
        q.request("bob", Priority::High, false, 1795886900);
        let (n, err) = import(&path, &mut q).unwrap();
        assert!(err.is_none());
        assert_eq!(n, 3, "bob's newer in-memory record wins");
        assert_eq!(q.get("alice").unwrap().last_successful_sync, 1795886718);
        assert_eq!(q.get("bob").unwrap().last_update, 1795886900);
        assert_eq!(q.get("erin").unwrap().last_full_sync, 0);
        write(&path, &snapshot(&q)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("alice\t0\t1795886718\t1795886718\t1795886634\t0\tAQAAAB"));
        assert!(text.contains("bob\t2\t1795886900\t0\t0\t0\t\t0\n"));
        assert!(text.contains("erin\t0\t0\t0\t0\t0\t\t0\n"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        // Equal last_update: the higher in-memory priority wins.
        let mut q2 = Queue::new(QueueSettings::default());
        q2.request("bob", Priority::Sync, false, 1795886900);
        import(&path, &mut q2).unwrap();
        assert_eq!(q2.get("bob").unwrap().priority, Priority::Sync);
    }
}
