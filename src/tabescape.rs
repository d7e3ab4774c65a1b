//! Dovecot's tab-escaping of protocol and database fields: `\x01` becomes
//! `\x011`, TAB `\x01t`, LF `\x01n`, CR `\x01r`.

/// Escapes one field.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\u{1}' => out.push_str("\u{1}1"),
            '\t' => out.push_str("\u{1}t"),
            '\n' => out.push_str("\u{1}n"),
            '\r' => out.push_str("\u{1}r"),
            c => out.push(c),
        }
    }
    out
}

/// Unescapes one field. An unknown escape keeps the following character, and
/// a trailing `\x01` is dropped (as Dovecot's unescaper does).
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\u{1}' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('1') => out.push('\u{1}'),
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => {}
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// Splits a line on tabs and unescapes every field.
pub fn split_line(line: &str) -> Vec<String> {
    line.split('\t').map(unescape).collect()
}

/// Joins fields with tabs, escaping each.
pub fn join_line(fields: &[&str]) -> String {
    let v: Vec<String> = fields.iter().map(|f| escape(f)).collect();
    v.join("\t")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = "a\tb\nc\rd\u{1}e";
        assert_eq!(escape(s), "a\u{1}tb\u{1}nc\u{1}rd\u{1}1e");
        assert_eq!(unescape(&escape(s)), s);
        assert_eq!(split_line("x\u{1}ty\tz"), vec!["x\ty", "z"]);
        assert_eq!(join_line(&["a\tb", "c"]), "a\u{1}tb\tc");
        assert_eq!(unescape("tail\u{1}"), "tail");
    }
}
