//! A canonical, comparable dump of one user's whole mail state, read through doveadm.

use std::collections::BTreeSet;
use std::fmt;
use std::io::BufReader;
use std::process::Stdio;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::process::describe;
use crate::{DovecotInstance, HarnessError};

/// What to include in a [`Snapshot`].
#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions {
    /// Skip the message text (no sha256; about ten times faster).
    pub no_body: bool,
    /// Snapshot this mail location instead of the user's configured one
    /// (e.g. the target of a local `doveadm sync -u U maildir:/path`).
    pub location: Option<String>,
    /// Only these mailboxes.
    pub mailboxes: Option<Vec<String>>,
}

/// One mailbox.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MailboxState {
    pub name: String,
    pub guid: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub messages: u32,
    pub subscribed: bool,
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MailState {
    pub mailbox: String,
    pub uid: u32,
    /// Message GUID (maildir: base file name; dbox: 128-bit hex).
    pub guid: String,
    pub message_id: String,
    /// System flags without `\Recent`, sorted.
    pub flags: Vec<String>,
    /// Keywords, sorted.
    pub keywords: Vec<String>,
    pub size: u64,
    pub vsize: u64,
    /// `date.received` as doveadm prints it.
    pub received: String,
    /// sha256 (hex) of the full message text; None with `no_body`.
    pub sha256: Option<String>,
}

/// A user's mailboxes (sorted by name) and mails (sorted by mailbox, uid).
/// `Display` prints one line per mailbox and per mail, like the reference
/// `snapshot.sh`, so two snapshots diff line by line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub mailboxes: Vec<MailboxState>,
    pub mails: Vec<MailState>,
}

fn esc(v: &str) -> String {
    v.replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

impl fmt::Display for MailboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mailbox\tname={}\tmailbox_guid={}\tuidvalidity={}\tuidnext={}\tmessages={}\tsubscribed={}",
            esc(&self.name),
            self.guid,
            self.uidvalidity,
            self.uidnext,
            self.messages,
            u8::from(self.subscribed)
        )
    }
}

impl fmt::Display for MailState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mail\t{}\tuid={}\tguid={}\tmessage-id={}\tflags={}\tkeywords={}\tsize={}\tvsize={}\treceived={}",
            esc(&self.mailbox),
            self.uid,
            esc(&self.guid),
            esc(&self.message_id),
            self.flags.join(","),
            esc(&self.keywords.join(",")),
            self.size,
            self.vsize,
            esc(&self.received)
        )?;
        if let Some(h) = &self.sha256 {
            write!(f, "\tsha256={h}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.mailboxes {
            writeln!(f, "{m}")?;
        }
        for m in &self.mails {
            writeln!(f, "{m}")?;
        }
        Ok(())
    }
}

/// One mail as replicas must agree on it: (mailbox, UID, GUID, system flags
/// and keywords together, sorted).
pub type MailRow = (String, u32, String, Vec<String>);

impl MailState {
    /// System flags and keywords in one sorted list, without `\Recent`.
    pub fn flags_and_keywords(&self) -> Vec<String> {
        let mut f = self.flags.clone();
        f.extend(self.keywords.iter().cloned());
        f.retain(|x| x != "\\Recent");
        f.sort();
        f
    }
}

impl Snapshot {
    /// Every mail as a [`MailRow`], sorted.
    pub fn mail_rows(&self) -> Vec<MailRow> {
        let mut v: Vec<MailRow> = self
            .mails
            .iter()
            .map(|m| {
                (
                    m.mailbox.clone(),
                    m.uid,
                    m.guid.clone(),
                    m.flags_and_keywords(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Every mailbox as (name, mailbox GUID, UIDVALIDITY), sorted.
    pub fn mailbox_rows(&self) -> Vec<(String, String, u32)> {
        let mut v: Vec<_> = self
            .mailboxes
            .iter()
            .map(|m| (m.name.clone(), m.guid.clone(), m.uidvalidity))
            .collect();
        v.sort();
        v
    }

    /// Total number of messages.
    pub fn message_count(&self) -> usize {
        self.mails.len()
    }

    /// The mailbox called `name`.
    pub fn mailbox(&self, name: &str) -> Option<&MailboxState> {
        self.mailboxes.iter().find(|m| m.name == name)
    }

    /// The mails of mailbox `name`, by uid.
    pub fn mails_in<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a MailState> + 'a {
        self.mails.iter().filter(move |m| m.mailbox == name)
    }

    /// A copy without message GUIDs, to compare replicas in different storage
    /// formats: dbox stores 128-bit GUIDs, so a maildir GUID (the file name)
    /// is hashed into a new one on the way.
    pub fn without_mail_guids(&self) -> Snapshot {
        let mut s = self.clone();
        for m in &mut s.mails {
            m.guid.clear();
        }
        s
    }

    /// A copy without mailbox GUIDs and UIDVALIDITY, to compare replicas that
    /// were filled independently rather than by dsync.
    pub fn without_mailbox_identity(&self) -> Snapshot {
        let mut s = self.clone();
        for m in &mut s.mailboxes {
            m.guid.clear();
            m.uidvalidity = 0;
        }
        s
    }

    /// Lines only in `self` (`-`) and only in `other` (`+`), or None when equal.
    pub fn diff(&self, other: &Snapshot) -> Option<String> {
        let a = self.to_string();
        let b = other.to_string();
        if a == b {
            return None;
        }
        let la: BTreeSet<&str> = a.lines().collect();
        let lb: BTreeSet<&str> = b.lines().collect();
        let mut out = String::new();
        for l in a.lines().filter(|l| !lb.contains(l)) {
            out.push_str("- ");
            out.push_str(l);
            out.push('\n');
        }
        for l in b.lines().filter(|l| !la.contains(l)) {
            out.push_str("+ ");
            out.push_str(l);
            out.push('\n');
        }
        if out.is_empty() {
            out.push_str("(same lines, different order or multiplicity)\n");
        }
        Some(out)
    }

    /// Panics with a line diff unless `self == other`.
    pub fn assert_same(&self, other: &Snapshot, what: &str) {
        if let Some(d) = self.diff(other) {
            panic!("snapshots differ ({what}):\n{d}");
        }
    }
}

#[derive(Deserialize)]
struct FetchRow {
    uid: String,
    #[serde(default)]
    guid: String,
    #[serde(default)]
    flags: String,
    #[serde(default, rename = "hdr.message-id")]
    message_id: String,
    #[serde(default, rename = "size.physical")]
    size: String,
    #[serde(default, rename = "size.virtual")]
    vsize: String,
    #[serde(default, rename = "date.received")]
    received: String,
    #[serde(default)]
    text: Option<String>,
}

/// Consumes a JSON array of fetch rows one element at a time, so message
/// bodies are hashed and dropped instead of all held in memory.
struct RowsVisitor<'a> {
    mailbox: &'a str,
    out: &'a mut Vec<MailState>,
}

impl<'de> Visitor<'de> for RowsVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of doveadm fetch rows")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(row) = seq.next_element::<FetchRow>()? {
            let uid = row
                .uid
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("bad uid {:?}", row.uid)))?;
            let mut flags = Vec::new();
            let mut keywords = Vec::new();
            for f in row.flags.split_whitespace() {
                if f == "\\Recent" {
                    continue;
                }
                if f.starts_with('\\') {
                    flags.push(f.to_string());
                } else {
                    keywords.push(f.to_string());
                }
            }
            flags.sort();
            keywords.sort();
            self.out.push(MailState {
                mailbox: self.mailbox.to_string(),
                uid,
                guid: row.guid,
                message_id: row.message_id.trim().to_string(),
                flags,
                keywords,
                size: row.size.parse().unwrap_or(0),
                vsize: row.vsize.parse().unwrap_or(0),
                received: row.received,
                sha256: row.text.map(|t| hex(&Sha256::digest(t.as_bytes()))),
            });
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_u32(v: Option<&&str>, field: &str, cmd: &str) -> Result<u32, HarnessError> {
    v.and_then(|s| s.parse().ok())
        .ok_or_else(|| HarnessError::BadOutput {
            command: cmd.to_string(),
            reason: format!("missing or bad {field}: {v:?}"),
        })
}

impl DovecotInstance {
    /// The full snapshot of `user` (with message bodies hashed).
    pub fn snapshot(&self, user: &str) -> Result<Snapshot, HarnessError> {
        self.snapshot_with(user, &SnapshotOptions::default())
    }

    /// A snapshot of `user` with options.
    pub fn snapshot_with(
        &self,
        user: &str,
        opts: &SnapshotOptions,
    ) -> Result<Snapshot, HarnessError> {
        let global: Vec<String> = match &opts.location {
            Some(loc) => vec!["-o".into(), format!("mail_location={loc}")],
            None => Vec::new(),
        };
        let mut args: Vec<String> = global.clone();
        args.extend(
            [
                "-f",
                "tab",
                "mailbox",
                "status",
                "-u",
                user,
                "guid uidvalidity uidnext messages",
                "*",
            ]
            .map(String::from),
        );
        let status = self.doveadm(&args)?.ok()?;
        let cmd = status.command.clone();
        let text = status.stdout_str();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(c_name), Some(c_guid), Some(c_uv), Some(c_next), Some(c_msgs)) = (
            col("mailbox"),
            col("guid"),
            col("uidvalidity"),
            col("uidnext"),
            col("messages"),
        ) else {
            // No mail directory yet prints nothing at all (not even a header).
            if text.trim().is_empty() {
                return Ok(Snapshot {
                    mailboxes: Vec::new(),
                    mails: Vec::new(),
                });
            }
            return Err(HarnessError::BadOutput {
                command: cmd,
                reason: format!("unexpected header {header:?}"),
            });
        };
        let mut args = global.clone();
        args.extend(["mailbox", "list", "-s", "-u", user].map(String::from));
        let subscribed: BTreeSet<String> = self
            .doveadm(&args)?
            .ok()?
            .stdout_str()
            .lines()
            .map(str::to_string)
            .collect();
        let mut mailboxes = Vec::new();
        for line in lines {
            let v: Vec<&str> = line.split('\t').collect();
            let name = v.get(c_name).copied().unwrap_or_default().to_string();
            if let Some(only) = &opts.mailboxes {
                if !only.contains(&name) {
                    continue;
                }
            }
            mailboxes.push(MailboxState {
                subscribed: subscribed.contains(&name),
                guid: v.get(c_guid).copied().unwrap_or_default().to_string(),
                uidvalidity: parse_u32(v.get(c_uv), "uidvalidity", &cmd)?,
                uidnext: parse_u32(v.get(c_next), "uidnext", &cmd)?,
                messages: parse_u32(v.get(c_msgs), "messages", &cmd)?,
                name,
            });
        }
        mailboxes.sort();

        let mut fields =
            String::from("uid guid flags hdr.message-id size.physical size.virtual date.received");
        if !opts.no_body {
            fields.push_str(" text");
        }
        let mut mails = Vec::new();
        for mb in mailboxes.iter().filter(|m| m.messages > 0) {
            let mut c = self.doveadm_command();
            c.args(&global)
                .args(["-f", "json", "fetch", "-u", user, &fields, "mailbox"])
                .arg(&mb.name)
                .arg("all")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let what = describe(&c);
            let mut child = c
                .spawn()
                .map_err(|e| HarnessError::io(format!("starting `{what}`"), e))?;
            let stdout = child.stdout.take().ok_or_else(|| HarnessError::BadOutput {
                command: what.clone(),
                reason: "no stdout pipe".into(),
            })?;
            let stderr = child.stderr.take();
            let err_reader = std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut e) = stderr {
                    let _ = std::io::Read::read_to_end(&mut e, &mut buf);
                }
                buf
            });
            let mut de = serde_json::Deserializer::from_reader(BufReader::new(stdout));
            let parsed = de.deserialize_seq(RowsVisitor {
                mailbox: &mb.name,
                out: &mut mails,
            });
            let status = child
                .wait()
                .map_err(|e| HarnessError::io(format!("waiting for `{what}`"), e))?;
            let stderr = err_reader.join().unwrap_or_default();
            if !status.success() {
                return Err(HarnessError::CommandFailed {
                    command: what,
                    status: status.to_string(),
                    stdout: String::new(),
                    stderr: String::from_utf8_lossy(&stderr).into_owned(),
                });
            }
            parsed.map_err(|e| HarnessError::BadOutput {
                command: what,
                reason: format!("fetch JSON: {e}"),
            })?;
        }
        mails.sort();
        Ok(Snapshot { mailboxes, mails })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_parsed_and_hashed() {
        let json = br#"[{"uid":"2","guid":"g2","flags":"\\Recent \\Seen work","hdr.message-id":" <a@b> ","size.physical":"5","size.virtual":"6","date.received":"2020-01-01 00:00:00","text":"hello"},
{"uid":"1","guid":"g1","flags":"","hdr.message-id":"","size.physical":"1","size.virtual":"1","date.received":"x","text":""}]"#;
        let mut out = Vec::new();
        let mut de = serde_json::Deserializer::from_slice(json);
        de.deserialize_seq(RowsVisitor {
            mailbox: "INBOX",
            out: &mut out,
        })
        .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].flags, vec!["\\Seen"]);
        assert_eq!(out[0].keywords, vec!["work"]);
        assert_eq!(out[0].message_id, "<a@b>");
        assert_eq!(
            out[0].sha256.as_deref(),
            Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
        let snap = Snapshot {
            mailboxes: vec![],
            mails: out,
        };
        let other = snap.without_mail_guids();
        let d = snap.diff(&other).unwrap();
        assert!(d.contains("- mail\tINBOX\tuid=2\tguid=g2"), "{d}");
        assert!(d.contains("+ mail\tINBOX\tuid=2\tguid=\t"), "{d}");
    }
}
