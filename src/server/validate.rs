//! Names that come from a peer (user names, mailbox names) must never lead
//! outside the user's mail root. Every check here is lexical and total: it
//! rejects, it never rewrites. The storage layer and the session driver call
//! the same functions before turning a name into a path.

use std::path::{Component, Path, PathBuf};

/// Longest user name accepted (bytes).
pub const MAX_USER_NAME: usize = 255;
/// Longest mailbox name accepted (bytes, whole hierarchy).
pub const MAX_MAILBOX_NAME: usize = 4096;
/// Longest single hierarchy level (a file name on disk).
pub const MAX_NAME_COMPONENT: usize = 255;
/// Deepest mailbox hierarchy accepted.
pub const MAX_MAILBOX_DEPTH: usize = 64;

/// Which rule a peer-supplied name broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long, the limit is {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} contains a NUL byte at offset {offset}")]
    Nul { what: &'static str, offset: usize },
    #[error("{what} contains control character 0x{byte:02x} at offset {offset}")]
    Control {
        what: &'static str,
        byte: u8,
        offset: usize,
    },
    #[error("{what} contains a path separator at offset {offset}")]
    PathSeparator { what: &'static str, offset: usize },
    #[error("{what} has a `.` or `..` component")]
    DotComponent { what: &'static str },
    #[error("{what} has an empty hierarchy level (leading, trailing or doubled separator)")]
    EmptyComponent { what: &'static str },
    #[error("{what} is absolute or starts with `~`")]
    Absolute { what: &'static str },
    #[error("{what} is {depth} levels deep, the limit is {max}")]
    TooDeep {
        what: &'static str,
        depth: usize,
        max: usize,
    },
    #[error("{what} starts with `-` (would read as an option)")]
    LeadingDash { what: &'static str },
}

fn check_bytes(what: &'static str, s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { what });
    }
    if s.len() > max {
        return Err(NameError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    for (offset, &byte) in s.as_bytes().iter().enumerate() {
        if byte == 0 {
            return Err(NameError::Nul { what, offset });
        }
        if byte < 0x20 || byte == 0x7f {
            return Err(NameError::Control { what, byte, offset });
        }
    }
    // C1 controls and other invisible code points are refused too.
    if let Some((offset, c)) = s.char_indices().find(|(_, c)| c.is_control()) {
        return Err(NameError::Control {
            what,
            byte: c as u32 as u8,
            offset,
        });
    }
    Ok(())
}

/// A user name as it may be expanded into a path (`%u`): no separators, no
/// dot names, no control characters, no leading `-`, at most
/// [`MAX_USER_NAME`] bytes. `@` and `.` inside the name are fine.
pub fn user_name(name: &str) -> Result<(), NameError> {
    const WHAT: &str = "user name";
    check_bytes(WHAT, name, MAX_USER_NAME)?;
    if let Some(offset) = name.find(['/', '\\']) {
        return Err(NameError::PathSeparator { what: WHAT, offset });
    }
    if name == "." || name == ".." {
        return Err(NameError::DotComponent { what: WHAT });
    }
    if name.starts_with('~') {
        return Err(NameError::Absolute { what: WHAT });
    }
    if name.starts_with('-') {
        return Err(NameError::LeadingDash { what: WHAT });
    }
    Ok(())
}

/// A mailbox name with hierarchy separator `separator` (the virtual name of
/// the dsync protocol). Every level must be usable as one file name: not
/// empty, not `.`/`..`, no `/` or `\` inside a level, no control bytes, no
/// leading `~`; the whole name at most [`MAX_MAILBOX_NAME`] bytes and
/// [`MAX_MAILBOX_DEPTH`] levels.
pub fn mailbox_name(name: &str, separator: char) -> Result<(), NameError> {
    const WHAT: &str = "mailbox name";
    check_bytes(WHAT, name, MAX_MAILBOX_NAME)?;
    if name.starts_with(separator) || name.starts_with('/') {
        return Err(NameError::Absolute { what: WHAT });
    }
    if name.starts_with('~') {
        return Err(NameError::Absolute { what: WHAT });
    }
    let mut depth = 0;
    let mut offset = 0;
    for level in name.split(separator) {
        depth += 1;
        if level.is_empty() {
            return Err(NameError::EmptyComponent { what: WHAT });
        }
        if level == "." || level == ".." {
            return Err(NameError::DotComponent { what: WHAT });
        }
        if level.len() > MAX_NAME_COMPONENT {
            return Err(NameError::TooLong {
                what: "mailbox name level",
                len: level.len(),
                max: MAX_NAME_COMPONENT,
            });
        }
        if let Some(p) = level.find(['/', '\\']) {
            return Err(NameError::PathSeparator {
                what: WHAT,
                offset: offset + p,
            });
        }
        offset += level.len() + separator.len_utf8();
    }
    if depth > MAX_MAILBOX_DEPTH {
        return Err(NameError::TooDeep {
            what: WHAT,
            depth,
            max: MAX_MAILBOX_DEPTH,
        });
    }
    Ok(())
}

/// Joins a relative path made of peer-influenced parts under `root`,
/// refusing anything that could leave it (absolute paths, `..`, `.`, NUL,
/// control characters). The result is always `root` plus normal components.
pub fn path_under(root: &Path, relative: &str) -> Result<PathBuf, NameError> {
    const WHAT: &str = "path";
    check_bytes(WHAT, relative, MAX_MAILBOX_NAME)?;
    let rel = Path::new(relative);
    let mut out = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::Prefix(_) => {
                return Err(NameError::Absolute { what: WHAT })
            }
            Component::CurDir | Component::ParentDir => {
                return Err(NameError::DotComponent { what: WHAT })
            }
        }
    }
    // `components()` drops inner `.`; a literal "./" anywhere is refused too.
    if relative.split('/').any(|p| p == "." || p == "..") {
        return Err(NameError::DotComponent { what: WHAT });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for ok in ["alice", "bob@example.org", "a.b-c_d", "Ünïcode", "x"] {
            assert_eq!(user_name(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(MAX_USER_NAME + 1);
        type Check = fn(&NameError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, NameError::Empty { .. })),
            ("..", |e| matches!(e, NameError::DotComponent { .. })),
            (".", |e| matches!(e, NameError::DotComponent { .. })),
            ("../etc", |e| matches!(e, NameError::PathSeparator { .. })),
            ("/etc/passwd", |e| {
                matches!(e, NameError::PathSeparator { offset: 0, .. })
            }),
            ("a\\b", |e| matches!(e, NameError::PathSeparator { .. })),
            ("a\0b", |e| matches!(e, NameError::Nul { offset: 1, .. })),
            ("a\nb", |e| {
                matches!(e, NameError::Control { byte: b'\n', .. })
            }),
            ("a\tb", |e| matches!(e, NameError::Control { .. })),
            ("a\u{7f}", |e| matches!(e, NameError::Control { .. })),
            ("a\u{85}", |e| matches!(e, NameError::Control { .. })),
            ("~root", |e| matches!(e, NameError::Absolute { .. })),
            ("-oProxyCommand", |e| {
                matches!(e, NameError::LeadingDash { .. })
            }),
            (&long, |e| matches!(e, NameError::TooLong { .. })),
        ];
        for (name, want) in cases {
            let e = user_name(name).unwrap_err();
            assert!(want(&e), "{name:?}: {e}");
        }
    }

    #[test]
    fn mailbox_names() {
        for ok in [
            "INBOX",
            "Work/Reports",
            "a.b",
            "Ärger/..x",
            "x..",
            "dots...in",
        ] {
            assert_eq!(mailbox_name(ok, '/'), Ok(()), "{ok}");
        }
        assert_eq!(mailbox_name("Work.Reports", '.'), Ok(()));
        let deep = vec!["a"; MAX_MAILBOX_DEPTH + 1].join("/");
        let wide = "b".repeat(MAX_NAME_COMPONENT + 1);
        for bad in [
            "", "/abs", "~/x", "a/../b", "..", "a/.", "a//b", "a/", "a\0b", "a\rb", &deep, &wide,
            "a\\b",
        ] {
            assert!(mailbox_name(bad, '/').is_err(), "{bad:?}");
        }
        // With `.` as separator a `/` inside a level would be a directory on disk.
        assert!(mailbox_name("a/b", '.').is_err());
        assert!(mailbox_name("a..b", '.').is_err());
        assert!(mailbox_name(&"c".repeat(MAX_MAILBOX_NAME + 1), '/').is_err());
    }

    #[test]
    fn paths_stay_under_the_root() {
        let root = Path::new("/srv/mail/alice");
        assert_eq!(
            path_under(root, "Maildir/.Work").unwrap(),
            Path::new("/srv/mail/alice/Maildir/.Work")
        );
        for bad in [
            "../bob",
            "/etc/passwd",
            "a/../../x",
            "./a",
            "a/./b",
            "a\0",
            "",
            "a\nb",
        ] {
            assert!(path_under(root, bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Whatever a peer sends, an accepted user name joined under a root
        /// stays a single normal component below that root.
        #[test]
        fn accepted_names_never_escape(name in "\\PC{0,40}|[./~a-z\\\\-]{0,12}") {
            if user_name(&name).is_ok() {
                let root = Path::new("/srv/mail");
                let p = path_under(root, &name).unwrap();
                proptest::prop_assert_eq!(p.parent(), Some(root));
            }
            if mailbox_name(&name, '/').is_ok() {
                let root = Path::new("/srv/mail/u");
                let p = path_under(root, &name).unwrap();
                proptest::prop_assert!(p.starts_with(root));
                proptest::prop_assert!(p.components().all(|c| !matches!(c, Component::ParentDir | Component::CurDir)));
            }
        }
    }
}
