//! dbox mail files (version 2): sdbox `u.<uid>` (one mail) and mdbox
//! `m.<file_id>` (many mails).
//!
//! Layout: a text file header line, then per mail a fixed message header,
//! the body and a metadata block. Bodies are never copied: a
//! [`DboxMessage`] gives the body's offset and length in the file so it can
//! be streamed from the map or the file.
//!
//! mdbox files grow by appends; a message whose body or metadata runs past
//! the end of the map is reported as truncated, and everything before it
//! stays readable.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, FileKind, FormatRule, Result};
use crate::mmap::MappedFile;

const KIND: FileKind = FileKind::DboxMail;
/// Size of the message header Dovecot 2.3 writes (`M1e`).
pub const MESSAGE_HEADER_SIZE: usize = 30;
/// The 4 bytes that open a metadata block.
pub const METADATA_MAGIC: &[u8; 4] = b"\n\x01\x03\n";
/// The 2 bytes that open a message header.
pub const MESSAGE_MAGIC: &[u8; 2] = b"\x01\x02";
/// Longest file header line accepted.
const MAX_FILE_HEADER: usize = 4096;

/// The file header line: `<version> M<hex> C<hex> ...\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DboxFileHeader<'a> {
    /// 1 or 2.
    pub version: u8,
    /// `M`: size of every message header in this file.
    pub msg_header_size: u32,
    /// `C`: creation time.
    pub create_stamp: Option<u32>,
    /// All `<key><value>` tokens verbatim, including unknown ones.
    pub fields: Vec<(char, &'a str)>,
    /// Bytes of the header line including its LF: where the first message starts.
    pub size: usize,
}

/// A dbox file borrowing its bytes.
#[derive(Debug, Clone)]
pub struct DboxFile<'a> {
    data: &'a [u8],
    header: DboxFileHeader<'a>,
}

/// The metadata block of one message: `<key><value>` lines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DboxMetadata<'a> {
    /// Every line in order, verbatim (unknown keys included).
    pub entries: Vec<(char, &'a str)>,
}

impl<'a> DboxMetadata<'a> {
    /// Raw value of key `k`.
    pub fn get(&self, k: char) -> Option<&'a str> {
        self.entries
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| *v)
    }

    fn hex(&self, k: char) -> Option<u64> {
        self.get(k).and_then(|v| u64::from_str_radix(v, 16).ok())
    }

    /// `G`: message GUID string.
    pub fn guid(&self) -> Option<&'a str> {
        self.get('G')
    }
    /// `R`: received time (hex on disk).
    pub fn received_time(&self) -> Option<u64> {
        self.hex('R')
    }
    /// `S`: save time (hex on disk).
    pub fn save_time(&self) -> Option<u64> {
        self.hex('S')
    }
    /// `V`: virtual size (hex on disk).
    pub fn virtual_size(&self) -> Option<u64> {
        self.hex('V')
    }
    /// `Z`: physical size (hex), only when it differs from the header's size.
    pub fn physical_size(&self) -> Option<u64> {
        self.hex('Z')
    }
    /// `P`: POP3 UIDL.
    pub fn pop3_uidl(&self) -> Option<&'a str> {
        self.get('P')
    }
    /// `O`: POP3 order (decimal on disk).
    pub fn pop3_order(&self) -> Option<u32> {
        self.get('O').and_then(|v| v.parse().ok())
    }
    /// `B`: the mailbox the mail was saved to (mdbox, used by rebuilds).
    pub fn orig_mailbox(&self) -> Option<&'a str> {
        self.get('B')
    }
    /// `X`: external attachment references.
    pub fn ext_ref(&self) -> Option<&'a str> {
        self.get('X')
    }
}

/// One message of a dbox file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DboxMessage<'a> {
    /// Offset of the message header (what the mdbox map's `offset` points at).
    pub offset: u64,
    /// The message header's type byte (`N` = normal).
    pub message_type: u8,
    /// Offset of the body in the file.
    pub body_offset: u64,
    /// Body length from the message header.
    pub body_size: u64,
    /// Offset of the metadata magic.
    pub metadata_offset: u64,
    pub metadata: DboxMetadata<'a>,
    /// Offset just past the metadata block: the next message starts here.
    pub end_offset: u64,
}

impl DboxMessage<'_> {
    /// Bytes from the message header to the end of the metadata (the mdbox map's `size`).
    pub fn total_size(&self) -> u64 {
        self.end_offset - self.offset
    }

    /// The body bytes within `file` (the file the message was read from);
    /// `None` if the range is not inside `file`.
    pub fn body<'f>(&self, file: &DboxFile<'f>) -> Option<&'f [u8]> {
        let start = usize::try_from(self.body_offset).ok()?;
        let end = start.checked_add(usize::try_from(self.body_size).ok()?)?;
        file.data.get(start..end)
    }
}

fn hex_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

impl<'a> DboxFile<'a> {
    /// Parses the file header; messages are read on demand.
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let limit = data.len().min(MAX_FILE_HEADER);
        let lf = data[..limit]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| {
                Error::truncated(
                    KIND,
                    0,
                    "dbox file header line",
                    (limit + 1) as u64,
                    data.len() as u64,
                )
            })?;
        let line = std::str::from_utf8(&data[..lf])
            .map_err(|_| Error::invalid(KIND, 0, "file header", "not UTF-8"))?;
        let mut tokens = line.split(' ');
        let version = match tokens.next() {
            Some("2") => 2,
            Some("1") => 1,
            v => {
                return Err(Error::format(
                    KIND,
                    0,
                    FormatRule::BadVersion {
                        what: "dbox file version",
                        found: v.unwrap_or("").into(),
                    },
                ))
            }
        };
        let mut fields = Vec::new();
        let mut msg_header_size = None;
        let mut create_stamp = None;
        for t in tokens.filter(|t| !t.is_empty()) {
            let mut cs = t.chars();
            let Some(k) = cs.next() else { continue };
            let v = cs.as_str();
            match k {
                'M' => {
                    msg_header_size = Some(
                        hex_u64(v)
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| {
                                Error::invalid(
                                    KIND,
                                    0,
                                    "file header M (message header size)",
                                    format!("{v:?}"),
                                )
                            })?,
                    )
                }
                'C' => create_stamp = hex_u64(v).and_then(|n| u32::try_from(n).ok()),
                _ => {}
            }
            fields.push((k, v));
        }
        let msg_header_size = msg_header_size
            .ok_or_else(|| Error::invalid(KIND, 0, "file header", "no M (message header size)"))?;
        if (msg_header_size as usize) < MESSAGE_HEADER_SIZE {
            return Err(Error::invalid(
                KIND,
                0,
                "file header M (message header size)",
                format!("{msg_header_size} is smaller than {MESSAGE_HEADER_SIZE}"),
            ));
        }
        Ok(DboxFile {
            data,
            header: DboxFileHeader {
                version,
                msg_header_size,
                create_stamp,
                fields,
                size: lf + 1,
            },
        })
    }

    pub fn header(&self) -> &DboxFileHeader<'a> {
        &self.header
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// Reads the message whose header starts at `offset` (the file header's
    /// end for the first one, a map record's `offset` for mdbox).
    pub fn message_at(&self, offset: u64) -> Result<DboxMessage<'a>> {
        let data = self.data;
        let len = data.len() as u64;
        let hsize = self.header.msg_header_size as u64;
        if offset < self.header.size as u64 {
            return Err(Error::invalid(
                KIND,
                offset,
                "message offset",
                "inside the file header",
            ));
        }
        if offset.saturating_add(hsize) > len {
            return Err(Error::truncated(
                KIND,
                offset,
                "dbox message header",
                hsize,
                len.saturating_sub(offset),
            ));
        }
        let off = offset as usize;
        let h = &data[off..off + MESSAGE_HEADER_SIZE];
        if &h[0..2] != MESSAGE_MAGIC {
            return Err(Error::invalid(
                KIND,
                offset,
                "message header magic",
                format!("{:02x}{:02x}", h[0], h[1]),
            ));
        }
        let size_text = std::str::from_utf8(&h[13..29]).ok();
        let body_size = size_text.and_then(hex_u64).ok_or_else(|| {
            Error::invalid(KIND, offset + 13, "message size", "not 16 hex digits")
        })?;
        let body_offset = offset + hsize;
        let metadata_offset = body_offset
            .checked_add(body_size)
            .filter(|&e| e <= len)
            .ok_or_else(|| {
                Error::truncated(
                    KIND,
                    body_offset,
                    "dbox message body",
                    body_size,
                    len - body_offset,
                )
            })?;
        let m = metadata_offset as usize;
        let magic_end = m + METADATA_MAGIC.len();
        if magic_end > data.len() {
            return Err(Error::truncated(
                KIND,
                metadata_offset,
                "metadata magic",
                4,
                len - metadata_offset,
            ));
        }
        if &data[m..magic_end] != METADATA_MAGIC {
            return Err(Error::invalid(
                KIND,
                metadata_offset,
                "metadata magic",
                "missing after the body",
            ));
        }
        let mut metadata = DboxMetadata::default();
        let mut pos = magic_end;
        let end_offset = loop {
            let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') else {
                return Err(Error::truncated(
                    KIND,
                    pos as u64,
                    "metadata line",
                    1,
                    len - pos as u64,
                ));
            };
            let line = &data[pos..pos + nl];
            let line_off = pos;
            pos += nl + 1;
            // An empty line ends the block; so does the v1 space key.
            if line.is_empty() || line[0] == b' ' {
                break pos as u64;
            }
            let line = std::str::from_utf8(line)
                .map_err(|_| Error::invalid(KIND, line_off as u64, "metadata line", "not UTF-8"))?;
            let mut cs = line.chars();
            if let Some(k) = cs.next() {
                metadata.entries.push((k, cs.as_str()));
            }
        };
        Ok(DboxMessage {
            offset,
            message_type: h[2],
            body_offset,
            body_size,
            metadata_offset,
            metadata,
            end_offset,
        })
    }

    /// Every message in file order; an error ends the iteration.
    pub fn messages(&self) -> DboxMessages<'a, '_> {
        DboxMessages {
            file: self,
            next: self.header.size as u64,
            failed: false,
        }
    }
}

/// Iterator over the messages of a dbox file.
pub struct DboxMessages<'a, 'f> {
    file: &'f DboxFile<'a>,
    next: u64,
    failed: bool,
}

impl<'a> Iterator for DboxMessages<'a, '_> {
    type Item = Result<DboxMessage<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.file.data.len() as u64 {
            return None;
        }
        match self.file.message_at(self.next) {
            Ok(m) => {
                self.next = m.end_offset;
                Some(Ok(m))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// JSON for one message (shape in `docs/dump-json.md`).
pub fn message_json(m: &DboxMessage<'_>) -> Value {
    let md = &m.metadata;
    json!({
        "offset": m.offset,
        "type": (m.message_type as char).to_string(),
        "body_offset": m.body_offset,
        "body_size": m.body_size,
        "metadata_offset": m.metadata_offset,
        "end_offset": m.end_offset,
        "guid": md.guid(),
        "received": md.received_time(),
        "save_time": md.save_time(),
        "virtual_size": md.virtual_size(),
        "physical_size": md.physical_size(),
        "pop3_uidl": md.pop3_uidl(),
        "pop3_order": md.pop3_order(),
        "orig_mailbox": md.orig_mailbox(),
        "ext_ref": md.ext_ref(),
        "metadata": md.entries.iter().map(|(k, v)| json!([k.to_string(), v])).collect::<Vec<_>>(),
    })
}

/// Renders a parsed dbox file; fails on the first broken message.
pub fn to_json(file: &DboxFile<'_>) -> Result<Value> {
    let h = file.header();
    let mut messages = Vec::new();
    for m in file.messages() {
        messages.push(message_json(&m?));
    }
    Ok(json!({
        "version": h.version,
        "msg_header_size": h.msg_header_size,
        "create_stamp": h.create_stamp,
        "header_fields": h.fields.iter().map(|(k, v)| json!([k.to_string(), v])).collect::<Vec<_>>(),
        "header_size": h.size,
        "messages": messages,
    }))
}

/// Parses the dbox mail file at `path` for `homing dump`.
pub fn dump(path: &Path) -> Result<Value> {
    let map = MappedFile::open(path)?;
    let file = DboxFile::parse(&map).map_err(|e| e.with_path(path))?;
    to_json(&file).map_err(|e| e.with_path(path))
}
