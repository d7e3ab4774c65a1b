//! How `doveadm sync`/`backup` destinations are classified, and the
//! `dsync_remote_cmd` expansion used for `remote:`, `remoteprefix:` and `[user@]host`.

use super::TransportError;

/// Dovecot's default `dsync_remote_cmd`.
pub const DEFAULT_REMOTE_CMD: &str = "ssh -l%{login} %{host} doveadm dsync-server -u%u -U";

/// A classified destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A command whose stdin/stdout carry the dsync stream (argv, with
    /// `dsync-server` appended unless it already was the last word).
    Command(Vec<String>),
    /// Through `dsync_remote_cmd`: `remote:[login@]host`, `remoteprefix:[login@]host`
    /// or `[user@]host` (where the part before `@` is the mail user, not the login).
    Remote {
        login: Option<String>,
        host: String,
        /// From the `[user@]host` form: this user replaces the `-u` user.
        mail_user: Option<String>,
        /// `remoteprefix:`: write `USER\n` before any dsync byte.
        prefix_user: bool,
    },
    /// `tcp:host[:port]` or `tcps:host[:port]`.
    Tcp {
        host: String,
        port: Option<u16>,
        tls: bool,
    },
    /// A second local mail storage (e.g. `maildir:~/Maildir`): no wire protocol.
    Location(String),
}

fn with_dsync_server(mut words: Vec<String>) -> Vec<String> {
    if words.last().map(String::as_str) != Some("dsync-server") {
        words.push("dsync-server".into());
    }
    words
}

impl Destination {
    /// Classifies the positional destination words as doveadm does.
    pub fn parse(words: &[String]) -> Result<Destination, TransportError> {
        let bad = |reason: &str| TransportError::BadDestination {
            destination: words.join(" "),
            reason: reason.to_string(),
        };
        match words {
            [] => Err(bad("missing destination")),
            [_, _, ..] => Ok(Destination::Command(with_dsync_server(words.to_vec()))),
            [word] => {
                let scheme_len = word
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric())
                    .count();
                if scheme_len > 0 && word.as_bytes().get(scheme_len) == Some(&b':') {
                    let (scheme, rest) = (&word[..scheme_len], &word[scheme_len + 1..]);
                    return match scheme {
                        "tcp" | "tcps" => {
                            let (host, port) = split_host_port(rest).map_err(|r| bad(&r))?;
                            Ok(Destination::Tcp {
                                host,
                                port,
                                tls: scheme == "tcps",
                            })
                        }
                        "remote" | "remoteprefix" => {
                            let (login, host) = match rest.rsplit_once('@') {
                                Some((l, h)) => (Some(l.to_string()), h.to_string()),
                                None => (None, rest.to_string()),
                            };
                            if host.is_empty() {
                                return Err(bad("empty host"));
                            }
                            Ok(Destination::Remote {
                                login,
                                host,
                                mail_user: None,
                                prefix_user: scheme == "remoteprefix",
                            })
                        }
                        _ => Ok(Destination::Location(word.clone())),
                    };
                }
                if word.contains(' ') || word.contains('/') {
                    let argv = word.split(' ').map(str::to_string).collect();
                    return Ok(Destination::Command(with_dsync_server(argv)));
                }
                let (mail_user, host) = match word.split_once('@') {
                    Some((u, h)) => (Some(u.to_string()), h.to_string()),
                    None => (None, word.clone()),
                };
                if host.is_empty() {
                    return Err(bad("empty host"));
                }
                Ok(Destination::Remote {
                    login: None,
                    host,
                    mail_user,
                    prefix_user: false,
                })
            }
        }
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
pub fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let parse_port = |p: &str| p.parse::<u16>().map_err(|_| format!("invalid port {p:?}"));
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unterminated [".to_string())?;
        return match after {
            "" => Ok((host.to_string(), None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host.to_string(), Some(parse_port(p)?))),
                None => Err(format!("unexpected {after:?} after ]")),
            },
        };
    }
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(parse_port(p)?)),
        None => (s, None),
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    Ok((host.to_string(), port))
}

/// Expands one word of `dsync_remote_cmd`.
fn expand_word(word: &str, vars: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let name: String = match chars.next() {
            Some('%') => {
                out.push('%');
                continue;
            }
            Some('{') => {
                let mut n = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(ch) => n.push(ch),
                        None => return Err(format!("unterminated %{{ in {word:?}")),
                    }
                }
                n
            }
            Some(ch) => ch.to_string(),
            None => return Err(format!("lone % at the end of {word:?}")),
        };
        let value = vars
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("unknown variable %{{{name}}} in {word:?}"))?;
        out.push_str(value);
    }
    Ok(out)
}

/// Builds the argv of `dsync_remote_cmd` (`template`) for a login, host and
/// mail user: split at single spaces; `%{login}`, `%{host}`, `%u`/`%{user}`
/// expanded; a word whose variables all expanded to nothing but which still
/// has other text (like `-l%{login}` without a login) is dropped.
pub fn expand_remote_cmd(
    template: &str,
    login: Option<&str>,
    host: &str,
    user: Option<&str>,
) -> Result<Vec<String>, TransportError> {
    let user = user.unwrap_or("");
    let login = login.unwrap_or("");
    let vars = [
        ("u", user),
        ("user", user),
        ("login", login),
        ("host", host),
    ];
    let empty = [("u", ""), ("user", ""), ("login", ""), ("host", "")];
    let mut argv = Vec::new();
    for word in template.split(' ') {
        if !word.contains('%') {
            argv.push(word.to_string());
            continue;
        }
        let bad = |reason: String| TransportError::BadDestination {
            destination: template.to_string(),
            reason: format!("failed to expand dsync_remote_cmd: {reason}"),
        };
        let full = expand_word(word, &vars).map_err(bad)?;
        let blank = expand_word(word, &empty).map_err(bad)?;
        if full == blank && !full.is_empty() {
            continue;
        }
        argv.push(full);
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn remote_cmd_expansion_matches_observed_argv() {
        let t = DEFAULT_REMOTE_CMD;
        assert_eq!(
            expand_remote_cmd(t, Some("bob"), "example.org", Some("alice")).unwrap(),
            w(&[
                "ssh",
                "-lbob",
                "example.org",
                "doveadm",
                "dsync-server",
                "-ualice",
                "-U"
            ])
        );
        assert_eq!(
            expand_remote_cmd(t, None, "example.org", Some("alice")).unwrap(),
            w(&[
                "ssh",
                "example.org",
                "doveadm",
                "dsync-server",
                "-ualice",
                "-U"
            ])
        );
        // Without a user lookup %u is empty and -u%u disappears.
        assert_eq!(
            expand_remote_cmd(t, None, "h", None).unwrap(),
            w(&["ssh", "h", "doveadm", "dsync-server", "-U"])
        );
        // A word that is only a variable expanding to nothing stays, empty;
        // a word with `%` but no variable text of its own is dropped by the rule.
        assert_eq!(
            expand_remote_cmd("x %{login} y%%", None, "h", None).unwrap(),
            w(&["x", ""])
        );
        assert_eq!(
            expand_remote_cmd("x %{user}-%% y", None, "h", Some("a")).unwrap(),
            w(&["x", "a-%", "y"])
        );
        assert!(matches!(
            expand_remote_cmd("x %{nope}", None, "h", None),
            Err(TransportError::BadDestination { .. })
        ));
    }

    #[test]
    fn destinations_are_classified_like_doveadm() {
        assert_eq!(
            Destination::parse(&w(&["tcp:127.0.0.1:24100"])).unwrap(),
            Destination::Tcp {
                host: "127.0.0.1".into(),
                port: Some(24100),
                tls: false
            }
        );
        assert_eq!(
            Destination::parse(&w(&["tcps:localhost"])).unwrap(),
            Destination::Tcp {
                host: "localhost".into(),
                port: None,
                tls: true
            }
        );
        assert_eq!(
            Destination::parse(&w(&["tcp:[::1]:5"])).unwrap(),
            Destination::Tcp {
                host: "::1".into(),
                port: Some(5),
                tls: false
            }
        );
        assert!(Destination::parse(&w(&["tcp:host:x"])).is_err());
        assert_eq!(
            Destination::parse(&w(&["remote:vm@ail@host1.example"])).unwrap(),
            Destination::Remote {
                login: Some("vm@ail".into()),
                host: "host1.example".into(),
                mail_user: None,
                prefix_user: false
            }
        );
        assert_eq!(
            Destination::parse(&w(&["remoteprefix:host2"])).unwrap(),
            Destination::Remote {
                login: None,
                host: "host2".into(),
                mail_user: None,
                prefix_user: true
            }
        );
        assert_eq!(
            Destination::parse(&w(&["bob@host3"])).unwrap(),
            Destination::Remote {
                login: None,
                host: "host3".into(),
                mail_user: Some("bob".into()),
                prefix_user: false
            }
        );
        assert_eq!(
            Destination::parse(&w(&["maildir:~/Maildir"])).unwrap(),
            Destination::Location("maildir:~/Maildir".into())
        );
        assert_eq!(
            Destination::parse(&w(&["/usr/local/bin/wrapper -x"])).unwrap(),
            Destination::Command(w(&["/usr/local/bin/wrapper", "-x", "dsync-server"]))
        );
        assert_eq!(
            Destination::parse(&w(&["ssh", "h", "doveadm", "dsync-server"])).unwrap(),
            Destination::Command(w(&["ssh", "h", "doveadm", "dsync-server"]))
        );
        assert_eq!(
            Destination::parse(&w(&["maildir:/x", "-f"])).unwrap(),
            Destination::Command(w(&["maildir:/x", "-f", "dsync-server"]))
        );
        assert!(Destination::parse(&[]).is_err());
    }
}
