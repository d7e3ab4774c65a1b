//! Data blocks (spec §5): dot-stuffing and the `\r\n.\r\n` terminator.

/// Result of scanning buffered block bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Range of the input that is data (to hand out as-is).
    pub emit: (usize, usize),
    /// How many input bytes are settled (≥ emit end).
    pub consume: usize,
    /// Whether the byte after `consume` starts a line.
    pub line_start: bool,
    /// The terminator was consumed.
    pub end: bool,
}

/// Scans dot-stuffed bytes. At most 4 bytes are ever held back (a possible
/// `\r\n.\r` before the final `\n`), so the caller's buffer stays small.
pub(crate) fn scan(s: &[u8], line_start: bool) -> Scan {
    let need = Scan {
        emit: (0, 0),
        consume: 0,
        line_start,
        end: false,
    };
    if line_start {
        match s.first() {
            None => return need,
            Some(b'.') => {
                return match (s.get(1), s.get(2)) {
                    (None, _) | (Some(b'\r'), None) => need,
                    (Some(b'\n'), _) => end_at(0, 2),
                    (Some(b'\r'), Some(b'\n')) => end_at(0, 3),
                    // A stuffed dot: drop it, the rest of the line is data.
                    _ => Scan {
                        emit: (0, 0),
                        consume: 1,
                        line_start: false,
                        end: false,
                    },
                };
            }
            Some(_) => {}
        }
    }
    let mut from = 0;
    loop {
        let Some(off) = memchr::memchr(b'\n', &s[from..]) else {
            // A trailing CR may be the start of the terminator's line break.
            let end = if s.last() == Some(&b'\r') {
                s.len() - 1
            } else {
                s.len()
            };
            return partial(end);
        };
        let j = from + off;
        // The line break that precedes a final "." belongs to the terminator.
        let lb = if j > 0 && s[j - 1] == b'\r' { j - 1 } else { j };
        match s.get(j + 1) {
            None => return partial(lb),
            Some(&c) if c != b'.' => from = j + 1,
            Some(_) => {
                return match (s.get(j + 2), s.get(j + 3)) {
                    (Some(b'\n'), _) => end_at(lb, j + 3),
                    (Some(b'\r'), Some(b'\n')) => end_at(lb, j + 4),
                    (None, _) | (Some(b'\r'), None) => partial(lb),
                    _ => Scan {
                        emit: (0, j + 1),
                        consume: j + 2,
                        line_start: false,
                        end: false,
                    },
                };
            }
        }
    }
}

fn partial(end: usize) -> Scan {
    Scan {
        emit: (0, end),
        consume: end,
        line_start: false,
        end: false,
    }
}

fn end_at(data_end: usize, consume: usize) -> Scan {
    Scan {
        emit: (0, data_end),
        consume,
        line_start: false,
        end: true,
    }
}

/// Decodes a complete data block at the start of `input`. Returns the data
/// and the number of input bytes used (including the terminator), or `None`
/// if the terminator is missing.
pub fn decode_block(input: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut line_start = true;
    loop {
        let s = scan(&input[pos..], line_start);
        out.extend_from_slice(&input[pos + s.emit.0..pos + s.emit.1]);
        pos += s.consume;
        line_start = s.line_start;
        if s.end {
            return Some((out, pos));
        }
        if s.consume == 0 {
            return None;
        }
    }
}

/// Writes a data block in chunks: doubles every `.` that starts a line
/// (including the very first byte, see spec §5.3) and appends the
/// `\r\n.\r\n` terminator on [`DotEncoder::finish`].
#[derive(Clone, Debug)]
pub struct DotEncoder {
    last: u8,
}

impl Default for DotEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl DotEncoder {
    pub fn new() -> DotEncoder {
        // The start of the data counts as a line start.
        DotEncoder { last: b'\n' }
    }

    /// Appends one chunk of data, stuffed.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if chunk.is_empty() {
            return;
        }
        out.reserve(chunk.len() + 8);
        let mut start = 0;
        if self.last == b'\n' && chunk[0] == b'.' {
            out.push(b'.');
        }
        for j in memchr::memchr_iter(b'\n', chunk) {
            if chunk.get(j + 1) == Some(&b'.') {
                out.extend_from_slice(&chunk[start..=j]);
                out.push(b'.');
                start = j + 1;
            }
        }
        out.extend_from_slice(&chunk[start..]);
        self.last = chunk[chunk.len() - 1];
    }

    /// Appends the terminator.
    pub fn finish(self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n.\r\n");
    }
}

/// Encodes a whole data block (stuffed data + terminator).
pub fn encode_block(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut e = DotEncoder::new();
    e.encode(data, &mut out);
    e.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_body() {
        let wire = b"Hello Bob,\n..leading dot line\n..\n...two dots\nTAB\there\nend\n\r\n.\r\nM";
        let (data, used) = decode_block(wire).unwrap();
        assert_eq!(
            data,
            b"Hello Bob,\n.leading dot line\n.\n..two dots\nTAB\there\nend\n"
        );
        assert_eq!(&wire[used..], b"M");
        assert_eq!(encode_block(&data), &wire[..used]);
    }

    #[test]
    fn edge_cases() {
        for data in [
            &b""[..],
            b".",
            b".\r\n",
            b"..",
            b"\r",
            b"\n",
            b"\r\n",
            b"a\r.x",
            b"x\n.\n",
            b"x\n.\r\n",
            b"x\r\n.\r",
            b"\n\n.\n.\n",
            b".starts-with-dot: x\n",
        ] {
            let wire = encode_block(data);
            let (back, used) = decode_block(&wire).unwrap();
            assert_eq!(back, data, "data {data:?} wire {wire:?}");
            assert_eq!(used, wire.len());
        }
        // A bare CR does not start a line.
        assert_eq!(encode_block(b"line1\r.x"), b"line1\r.x\r\n.\r\n");
        // Leading dot is doubled.
        assert_eq!(encode_block(b".a"), b"..a\r\n.\r\n");
        // LF-only terminator is accepted.
        assert_eq!(decode_block(b"abc\n.\n").unwrap().0, b"abc");
        // Unstuffed leading dot is removed by the receiver, like Dovecot.
        assert_eq!(
            decode_block(b".X-Injected: 1\n\r\n.\r\n").unwrap().0,
            b"X-Injected: 1\n"
        );
        assert_eq!(decode_block(b"abc"), None);
    }
}
