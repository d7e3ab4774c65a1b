//! Tab escaping of item fields (spec §2.2) and the absent marker (§2.3).

use std::borrow::Cow;

/// Escape byte that introduces an escaped character inside a field.
pub const ESCAPE: u8 = 0x01;
/// A field consisting of only this byte is absent (NULL).
pub const ABSENT: u8 = 0x02;

/// Appends `value` tab-escaped to `out`: 0x01, TAB, CR and LF are written as
/// `\x01` + `1`/`t`/`r`/`n`.
pub fn escape_into(value: &[u8], out: &mut Vec<u8>) {
    let mut start = 0;
    for (i, &b) in value.iter().enumerate() {
        let code = match b {
            0x01 => b'1',
            b'\t' => b't',
            b'\r' => b'r',
            b'\n' => b'n',
            _ => continue,
        };
        out.extend_from_slice(&value[start..i]);
        out.push(ESCAPE);
        out.push(code);
        start = i + 1;
    }
    out.extend_from_slice(&value[start..]);
}

/// Tab-escapes `value` into a new buffer.
pub fn escape(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    escape_into(value, &mut out);
    out
}

/// Reverses [`escape_into`]. `\x01` followed by any byte other than the
/// known codes yields that byte; a lone trailing `\x01` is dropped (this is
/// how Dovecot's reader behaves).
pub fn unescape(value: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr(ESCAPE, value).is_none() {
        return Cow::Borrowed(value);
    }
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if b == ESCAPE {
            match value.get(i + 1) {
                Some(&c) => {
                    out.push(match c {
                        b'0' => 0,
                        b'1' => 0x01,
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'n' => b'\n',
                        other => other,
                    });
                    i += 2;
                }
                None => i += 1,
            }
        } else {
            out.push(b);
            i += 1;
        }
    }
    Cow::Owned(out)
}

/// Decodes one raw field (already split at TABs): unescape, then apply the
/// absent rule of §2.3. `None` = absent.
pub fn decode_field(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    let v = unescape(raw);
    if v.first() == Some(&ABSENT) {
        if v.len() == 1 {
            return None;
        }
        return Some(match v {
            Cow::Borrowed(b) => Cow::Borrowed(&b[1..]),
            Cow::Owned(mut o) => {
                o.remove(0);
                Cow::Owned(o)
            }
        });
    }
    Some(v)
}

/// Appends one field value as the serializer writes it: absent as `\x02`,
/// a value starting with `\x02` with one extra `\x02`, then tab-escaped.
pub fn encode_field_into(value: Option<&[u8]>, out: &mut Vec<u8>) {
    match value {
        None => out.push(ABSENT),
        Some(v) => {
            if v.first() == Some(&ABSENT) {
                out.push(ABSENT);
            }
            escape_into(v, out);
        }
    }
}

/// Splits a tab-escaped list (one field's value after the first unescape)
/// at `sep` and unescapes every element. An empty input is an empty list
/// for TAB-separated lists (Dovecot's tab-escaped split yields no elements).
pub fn split_list(value: &[u8], sep: u8) -> Vec<Vec<u8>> {
    if value.is_empty() {
        return Vec::new();
    }
    value
        .split(|&b| b == sep)
        .map(|e| unescape(e).into_owned())
        .collect()
}

/// Joins elements, each tab-escaped, with `sep`.
pub fn join_list<'a>(elems: impl IntoIterator<Item = &'a [u8]>, sep: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in elems.into_iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        escape_into(e, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trip() {
        let raw = b"a\x01b\tc\rd\ne\x02";
        let e = escape(raw);
        assert_eq!(e, b"a\x011b\x01tc\x01rd\x01ne\x02");
        assert_eq!(&*unescape(&e), raw);
    }

    #[test]
    fn unescape_unknown_and_trailing() {
        assert_eq!(&*unescape(b"a\x01xb"), b"axb");
        assert_eq!(&*unescape(b"ab\x01"), b"ab");
        assert_eq!(&*unescape(b"\x010"), b"\0");
    }

    #[test]
    fn absent_rules() {
        assert_eq!(decode_field(b"\x02"), None);
        assert_eq!(decode_field(b"").as_deref(), Some(&b""[..]));
        assert_eq!(decode_field(b"\x02\x02x").as_deref(), Some(&b"\x02x"[..]));
        // The absent check happens after unescaping.
        assert_eq!(decode_field(b"\x01\x02"), None);
        let mut out = Vec::new();
        encode_field_into(Some(b"\x02x"), &mut out);
        assert_eq!(out, b"\x02\x02x");
    }

    #[test]
    fn double_escaped_lists() {
        let joined = join_list([&b"Work"[..], b"Re\tports"], b'\t');
        let mut wire = Vec::new();
        escape_into(&joined, &mut wire);
        assert_eq!(wire, b"Work\x01tRe\x011tports");
        let once = unescape(&wire);
        assert_eq!(
            split_list(&once, b'\t'),
            vec![b"Work".to_vec(), b"Re\tports".to_vec()]
        );
        assert!(split_list(b"", b'\t').is_empty());
    }
}
