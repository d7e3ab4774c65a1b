//! Hash functions of the protocol (spec §10).

use md5::{Digest, Md5};
use sha1::Sha1;

use crate::types::Guid128;

/// §10.1: name hash of `D.dirs` / `D.unsubscribes`: the first 16 bytes of
/// SHA-1 over the full name as the sender writes it (its separator and
/// escaping).
pub fn mailbox_name_hash(name: &[u8]) -> Guid128 {
    let d = Sha1::digest(name);
    let mut g = [0u8; 16];
    g.copy_from_slice(&d[..16]);
    Guid128(g)
}

/// §10.2: GUID128 of a message GUID: the GUID itself if it is 32 hex
/// digits, otherwise the **last** 16 bytes of SHA-1 over it.
pub fn message_guid_128(guid: &[u8]) -> Guid128 {
    if let Some(g) = Guid128::parse_hex(guid) {
        return g;
    }
    let d = Sha1::digest(guid);
    let mut g = [0u8; 16];
    g.copy_from_slice(&d[4..20]);
    Guid128(g)
}

/// Header hash algorithm version (§10.3), chosen by the remote's minor
/// version ([`crate::Features::hdr_hash_version`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HdrHashVersion {
    /// Plain MD5 of the selected header bytes (remote minor < 4).
    V1,
    /// Spaces dropped, non-printable bytes and `?` collapsed (minor ≥ 4).
    V3,
}

impl HdrHashVersion {
    /// 1 → V1, anything newer → V3 (what 2.3.19.1 uses for minor 4 and 5).
    pub fn from_number(n: u8) -> HdrHashVersion {
        if n <= 1 {
            HdrHashVersion::V1
        } else {
            HdrHashVersion::V3
        }
    }
}

/// The bytes a header hash is computed over: every header field whose name
/// is in `hashed_headers` (ASCII case-insensitive), in message order,
/// duplicates included, with continuation lines, CRLF turned into LF, then
/// one empty line.
pub fn hdr_hash_input(message: &[u8], hashed_headers: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut selected = false;
    for raw_line in lines(message) {
        let line = raw_line.strip_suffix(b"\n").unwrap_or(raw_line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break; // end of header
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // continuation of the previous field
        } else {
            selected = match memchr::memchr(b':', line) {
                Some(colon) => {
                    let name = trim_end(&line[..colon]);
                    hashed_headers.iter().any(|h| h.eq_ignore_ascii_case(name))
                }
                None => false,
            };
        }
        if selected {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    out
}

fn trim_end(s: &[u8]) -> &[u8] {
    let mut e = s.len();
    while e > 0 && (s[e - 1] == b' ' || s[e - 1] == b'\t') {
        e -= 1;
    }
    &s[..e]
}

fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= data.len() {
            return None;
        }
        let end = memchr::memchr(b'\n', &data[pos..])
            .map(|i| pos + i + 1)
            .unwrap_or(data.len());
        let l = &data[pos..end];
        pos = end;
        Some(l)
    })
}

/// The version 3 filter of the hashed bytes.
pub fn hdr_hash_v3_filter(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut prev_replaced = false;
    for &b in input {
        if b == b' ' {
            prev_replaced = false;
            continue;
        }
        let replace = (b < 0x20 && b != b'\t' && b != b'\n') || b >= 0x7f || b == b'?';
        if replace {
            if !prev_replaced {
                out.push(b'?');
            }
            prev_replaced = true;
        } else {
            out.push(b);
            prev_replaced = false;
        }
    }
    out
}

/// §10.3: the MD5 header hash of a message.
pub fn hdr_hash(message: &[u8], hashed_headers: &[&[u8]], version: HdrHashVersion) -> [u8; 16] {
    let input = hdr_hash_input(message, hashed_headers);
    let bytes = match version {
        HdrHashVersion::V1 => input,
        HdrHashVersion::V3 => hdr_hash_v3_filter(&input),
    };
    Md5::digest(&bytes).into()
}

/// [`hdr_hash`] as the 32 lowercase hex digits sent in `C.hdr_hash`.
pub fn hdr_hash_hex(message: &[u8], hashed_headers: &[&[u8]], version: HdrHashVersion) -> String {
    crate::types::hex_lower(&hdr_hash(message, hashed_headers, version))
}

/// MD5 of a lone LF: the hash of a message without any hashed header,
/// which matches anything with `empty_hdr_workaround`.
pub const EMPTY_HDR_HASH: &str = "68b329da9893e34099c7d8ad5cb9c940";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_hash_matches_capture() {
        assert_eq!(
            mailbox_name_hash(b"Work/Reports").to_hex(),
            "02abc3f35ef6dc0a287b750dca2a41a3"
        );
    }

    #[test]
    fn guid128_of_maildir_guid() {
        assert_eq!(
            message_guid_128(b"1795888252.M36558P32387.vm,S=151,W=158").to_hex(),
            "807c0afecea81f449488624cc30e06be"
        );
        assert_eq!(
            message_guid_128(b"7bc420165f33d56ae49209e37e61e6ee").to_hex(),
            "7bc420165f33d56ae49209e37e61e6ee"
        );
    }

    #[test]
    fn empty_header_hash() {
        let h: [&[u8]; 2] = [b"Date", b"Message-ID"];
        assert_eq!(
            hdr_hash_hex(b"Subject: x\n\nbody\n", &h, HdrHashVersion::V3),
            EMPTY_HDR_HASH
        );
    }

    #[test]
    fn v3_filter_runs() {
        assert_eq!(
            hdr_hash_v3_filter(b"a \x01\x02?b\x80 \x81c\td\n"),
            b"a?b??c\td\n"
        );
    }
}
