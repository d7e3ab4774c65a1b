//! The client side of Dovecot's auth-master protocol on the `auth-userdb`
//! socket: `VERSION\t1\t0`, then `USER\t<id>\t<name>\tservice=doveadm`
//! (answered by `USER\t<id>\t<name>\tkey=value...`, `NOTFOUND\t<id>` or
//! `FAIL\t<id>\t...`) or `LIST\t<id>\tuser=*\tservice=doveadm` (answered by
//! `LIST\t<id>\t<name>` lines and `DONE\t<id>\t[fail]`). Values are
//! tab-escaped with \001.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{UserInfo, UserdbError};
use crate::tabescape::{escape, unescape};

/// An answer line longer than this is refused (a userdb reply is small).
const MAX_LINE: u64 = 1 << 20;
/// A listing longer than this many users is cut with an error.
const MAX_USERS: usize = 50_000_000;

struct Conn {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Conn {
    fn open(path: &Path, timeout: Duration, request: &str) -> Result<Conn, UserdbError> {
        let stream = UnixStream::connect(path).map_err(|source| UserdbError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let io = |source| UserdbError::Io {
            path: path.to_path_buf(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        (&stream)
            .write_all(format!("VERSION\t1\t0\n{request}\n").as_bytes())
            .map_err(io)?;
        let mut c = Conn {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
        };
        // The server's handshake: VERSION, then SPID; requests are
        // answered after it.
        let v = c
            .line()?
            .ok_or_else(|| c.protocol("closed before VERSION"))?;
        let mut f = v.split('\t');
        if f.next() != Some("VERSION") || f.next() != Some("1") {
            return Err(c.protocol(&format!("unsupported handshake '{v}'")));
        }
        Ok(c)
    }

    fn protocol(&self, reason: &str) -> UserdbError {
        UserdbError::Protocol {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// The next line without its newline; `None` at EOF.
    fn line(&mut self) -> Result<Option<String>, UserdbError> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .map_err(|source| UserdbError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        if buf.last() != Some(&b'\n') {
            return Err(if n as u64 >= MAX_LINE {
                self.protocol("answer line too long")
            } else {
                self.protocol("connection closed in the middle of a line")
            });
        }
        buf.pop();
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }
}

/// One `USER` lookup.
pub(super) fn lookup(
    path: &Path,
    user: &str,
    service: &str,
    timeout: Duration,
) -> Result<Option<UserInfo>, UserdbError> {
    let mut c = Conn::open(
        path,
        timeout,
        &format!("USER\t1\t{}\tservice={}", escape(user), escape(service)),
    )?;
    loop {
        let Some(line) = c.line()? else {
            return Err(c.protocol("closed before answering the lookup"));
        };
        let mut f = line.split('\t');
        let cmd = f.next().unwrap_or("");
        if matches!(cmd, "SPID" | "VERSION" | "CUID" | "") {
            continue;
        }
        if f.next() != Some("1") {
            return Err(c.protocol(&format!("answer for another request: '{line}'")));
        }
        match cmd {
            "USER" => {
                let mut info = UserInfo {
                    user: f.next().map(unescape).unwrap_or_else(|| user.to_string()),
                    ..UserInfo::default()
                };
                for field in f {
                    let field = unescape(field);
                    let (k, v) = field.split_once('=').unwrap_or((&field, ""));
                    info.set_field(k, v)?;
                }
                return Ok(Some(info));
            }
            "NOTFOUND" => return Ok(None),
            "FAIL" => {
                let reason = f
                    .map(unescape)
                    .find_map(|x| x.strip_prefix("reason=").map(String::from))
                    .unwrap_or_else(|| "Internal error occurred".into());
                return Err(UserdbError::Failed(reason));
            }
            _ => return Err(c.protocol(&format!("unexpected answer '{line}'"))),
        }
    }
}

/// The users of a `LIST` request, read as they arrive.
pub(super) struct SocketList {
    conn: Conn,
    done: bool,
    count: usize,
}

pub(super) fn list(
    path: &Path,
    service: &str,
    timeout: Duration,
) -> Result<SocketList, UserdbError> {
    let conn = Conn::open(
        path,
        timeout,
        &format!("LIST\t1\tuser=*\tservice={}", escape(service)),
    )?;
    Ok(SocketList {
        conn,
        done: false,
        count: 0,
    })
}

impl SocketList {
    fn step(&mut self) -> Result<Option<String>, UserdbError> {
        loop {
            let Some(line) = self.conn.line()? else {
                return Err(self.conn.protocol("closed before the end of the listing"));
            };
            let mut f = line.split('\t');
            match (f.next(), f.next()) {
                (Some("SPID" | "VERSION" | "CUID"), _) => continue,
                (Some("LIST"), Some("1")) => {
                    self.count += 1;
                    if self.count > MAX_USERS {
                        return Err(self.conn.protocol("too many users in the listing"));
                    }
                    return Ok(Some(f.next().map(unescape).unwrap_or_default()));
                }
                (Some("DONE"), Some("1")) => {
                    return match f.next() {
                        Some("fail") => Err(UserdbError::ListFailed),
                        _ => Ok(None),
                    };
                }
                _ => {
                    return Err(self
                        .conn
                        .protocol(&format!("unexpected listing line '{line}'")))
                }
            }
        }
    }
}

impl Iterator for SocketList {
    type Item = Result<String, UserdbError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(u)) => Some(Ok(u)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn escaping_round_trips() {
        let s = "a\tb\nc\x01d\re";
        assert_eq!(unescape(&escape(s)), s);
        assert!(!escape(s).contains(['\t', '\n']));
    }

    /// A fake auth process answering with `reply` after the handshake.
    fn serve(reply: &'static str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("auth-userdb");
        let l = UnixListener::bind(&p).unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let _ = s.write_all(b"VERSION\t1\t1\nSPID\t42\n");
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let _ = s.write_all(reply.as_bytes());
            }
        });
        (d, p)
    }

    #[test]
    fn answers() {
        let t = Duration::from_secs(5);
        let (_d, p) = serve(
            "USER\t1\tal\x01tice\tuid=5000\tgid=5000\thome=/h/a\tmail=maildir:~/M\tnoreplicate\n",
        );
        let u = lookup(&p, "alice", "doveadm", t).unwrap().unwrap();
        assert_eq!(u.user, "al\tice");
        assert_eq!(
            (u.uid, u.gid, u.home.as_deref()),
            (Some(5000), Some(5000), Some("/h/a"))
        );
        assert_eq!(u.mail(), Some("maildir:~/M"));
        assert_eq!(u.get("noreplicate"), Some(""));
        let (_d, p) = serve("NOTFOUND\t1\n");
        assert!(lookup(&p, "x", "doveadm", t).unwrap().is_none());
        let (_d, p) = serve("FAIL\t1\treason=db down\n");
        assert!(
            matches!(lookup(&p, "x", "doveadm", t), Err(UserdbError::Failed(r)) if r == "db down")
        );
        let (_d, p) = serve("USER\t2\tx\n");
        assert!(matches!(
            lookup(&p, "x", "doveadm", t),
            Err(UserdbError::Protocol { .. })
        ));
        let (_d, p) = serve("");
        assert!(matches!(
            lookup(&p, "x", "doveadm", t),
            Err(UserdbError::Protocol { .. })
        ));
        let (_d, p) = serve("LIST\t1\ta\nLIST\t1\tb\nDONE\t1\t\n");
        let l: Vec<_> = list(&p, "doveadm", t)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(l, ["a", "b"]);
        let (_d, p) = serve("LIST\t1\ta\nDONE\t1\tfail\n");
        let l: Vec<_> = list(&p, "doveadm", t).unwrap().collect();
        assert!(matches!(l[..], [Ok(_), Err(UserdbError::ListFailed)]));
        let (_d, p) = serve("LIST\t1\ta\n");
        assert!(list(&p, "doveadm", t).unwrap().any(|r| r.is_err()));
    }

    #[test]
    fn silent_peer_times_out() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("auth-userdb");
        let l = UnixListener::bind(&p).unwrap();
        let h = std::thread::spawn(move || {
            let s = l.accept();
            std::thread::sleep(Duration::from_millis(800));
            drop(s);
        });
        let e = lookup(&p, "x", "doveadm", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, UserdbError::Io { .. }), "{e}");
        h.join().unwrap();
    }
}
