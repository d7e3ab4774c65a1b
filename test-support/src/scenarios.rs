//! The scenarios recorded with real Dovecot 2.3.19.1
//! (`fixtures/scenarios/expected.json`): loading them, the small parsers
//! their operation lines need, and the end state of one side (A or B) as a
//! comparable model, for every replay of them to compare against.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

/// The recorded file.
pub const EXPECTED_JSON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/scenarios/expected.json"
);

/// Every recorded scenario, in file order (each an object with `name`,
/// `setup`, `operations`, `A` and `B`).
pub fn load() -> Vec<Value> {
    let text = std::fs::read_to_string(EXPECTED_JSON).expect("fixtures/scenarios/expected.json");
    let json: Value = serde_json::from_str(&text).expect("valid JSON");
    json["scenarios"].as_array().cloned().expect("scenarios")
}

/// Unix time of "YYYY-MM-DD HH:MM:SS" (UTC); None with fewer than six numbers.
pub fn parse_date(s: &str) -> Option<i64> {
    let p: Vec<i64> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|x| !x.is_empty())
        .take(6)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if p.len() < 6 {
        return None;
    }
    let (y, m, d) = (p[0], p[1], p[2]);
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + p[3] * 3600 + p[4] * 60 + p[5])
}

/// The text of `s` after the first `a` up to the next `b` (from the start
/// when `a` is absent, to the end when `b` is).
pub fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
    let i = s.find(a).map(|i| i + a.len()).unwrap_or(0);
    let j = s[i..].find(b).map(|j| i + j).unwrap_or(s.len());
    &s[i..j]
}

/// One side's end state: mailboxes by name, and subscriptions.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct SideState {
    pub boxes: BTreeMap<String, BoxState>,
    pub subs: BTreeSet<String>,
}

/// One mailbox's end state.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxState {
    pub guid: String,
    pub uidvalidity: String,
    pub uidnext: String,
    pub mails: Vec<MailEnd>,
}

/// One mail's end state.
#[derive(Debug, Clone, PartialEq)]
pub struct MailEnd {
    pub uid: u32,
    pub guid: String,
    /// The Message-ID without `<`, `@test>`.
    pub mid: String,
    /// System flags and keywords, sorted, without `\Recent`.
    pub flags: Vec<String>,
}

impl SideState {
    /// A copy without mail GUIDs, for replays that pick their own.
    pub fn without_mail_guids(&self) -> SideState {
        let mut s = self.clone();
        for mb in s.boxes.values_mut() {
            for m in &mut mb.mails {
                m.guid.clear();
            }
        }
        s
    }
}

/// The recorded end state of one side (`scenario["A"]` or `scenario["B"]`).
pub fn expected_side(v: &Value) -> SideState {
    let mut st = SideState::default();
    for mb in v["mailboxes"].as_array().into_iter().flatten() {
        let mails = mb["mails"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                let mut flags: Vec<String> = m["flags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(m["keywords"].as_array().into_iter().flatten())
                    .filter_map(|x| x.as_str().map(String::from))
                    .filter(|x| x != "\\Recent")
                    .collect();
                flags.sort();
                MailEnd {
                    uid: m["uid"].as_u64().unwrap_or(0) as u32,
                    guid: m["guid"].as_str().unwrap_or("").to_string(),
                    mid: m["message_id"].as_str().unwrap_or("").to_string(),
                    flags,
                }
            })
            .collect();
        let num = |k: &str| mb[k].as_u64().map(|x| x.to_string()).unwrap_or_default();
        st.boxes.insert(
            mb["name"].as_str().unwrap_or("").to_string(),
            BoxState {
                guid: mb["mailbox_guid"].as_str().unwrap_or("").to_string(),
                uidvalidity: num("uidvalidity"),
                uidnext: num("uidnext"),
                mails,
            },
        );
    }
    st.subs = v["subscriptions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    st
}

/// Every difference of `got` from `want` (Dovecot's), one line each.
pub fn diff_side(side: &str, want: &SideState, got: &SideState) -> Vec<String> {
    let mut d = Vec::new();
    let names: BTreeSet<&String> = want.boxes.keys().chain(got.boxes.keys()).collect();
    for n in names {
        match (want.boxes.get(n), got.boxes.get(n)) {
            (Some(w), Some(g)) if w == g => {}
            (w, g) => d.push(format!(
                "{side}:{n}: Dovecot {}, got {}",
                OptBox(w),
                OptBox(g)
            )),
        }
    }
    if want.subs != got.subs {
        d.push(format!(
            "{side} subscriptions: Dovecot {:?}, got {:?}",
            want.subs, got.subs
        ));
    }
    d
}

/// A mailbox in a difference line (`NONE` when absent).
struct OptBox<'a>(Option<&'a BoxState>);

impl fmt::Display for OptBox<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(b) = self.0 else {
            return f.write_str("NONE");
        };
        write!(
            f,
            "[guid {} uv {} next {}:",
            b.guid, b.uidvalidity, b.uidnext
        )?;
        for m in &b.mails {
            write!(f, " {}={}({})[{}]", m.uid, m.mid, m.guid, m.flags.join(" "))?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_fields() {
        assert_eq!(parse_date("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_date("2023-11-14 22:13:20"), Some(1_700_000_000));
        assert_eq!(parse_date("2023-11-14"), None);
        assert_eq!(between("(guid=g1 uidvalidity=5)", "guid=", " "), "g1");
        assert_eq!(between("a b", "x=", " "), "a");
        assert_eq!(between("x=tail", "x=", " "), "tail");
    }

    #[test]
    fn every_recorded_side_parses() {
        let all = load();
        assert!(!all.is_empty());
        for s in &all {
            for side in ["A", "B"] {
                let st = expected_side(&s[side]);
                for mb in st.boxes.values() {
                    assert!(!mb.uidvalidity.is_empty() && !mb.uidnext.is_empty());
                }
            }
        }
    }
}
