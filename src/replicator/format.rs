//! doveadm's output formatters (`table`, `flow`, `tab`, `json`, `pager`), so
//! that `homing replicator ...` prints the same bytes as
//! `doveadm replicator ...`.

/// One output column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    pub title: &'static str,
    /// The title is not printed by `table`, `flow` and `pager`.
    pub hide_title: bool,
    /// `table` gives this column the spare width.
    pub expand: bool,
}

impl Column {
    pub const fn new(title: &'static str) -> Column {
        Column {
            title,
            hide_title: false,
            expand: false,
        }
    }
    pub const fn hidden(title: &'static str) -> Column {
        Column {
            title,
            hide_title: true,
            expand: false,
        }
    }
    pub const fn expanding(title: &'static str) -> Column {
        Column {
            title,
            hide_title: false,
            expand: true,
        }
    }
}

/// A doveadm formatter name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Formatter {
    Table,
    Flow,
    Tab,
    Json,
    Pager,
}

impl Formatter {
    pub fn from_name(s: &str) -> Option<Formatter> {
        match s {
            "table" => Some(Formatter::Table),
            "flow" => Some(Formatter::Flow),
            "tab" => Some(Formatter::Tab),
            "json" => Some(Formatter::Json),
            "pager" => Some(Formatter::Pager),
            _ => None,
        }
    }
}

/// Terminal width used by `table` when stdout is not a terminal.
pub const DEFAULT_WIDTH: usize = 80;
/// doveadm's table formatter lays out this many rows at a time.
const TABLE_BATCH: usize = 100;

/// Renders rows (each as many values as there are columns).
pub fn render(fmt: Formatter, columns: &[Column], rows: &[Vec<String>], width: usize) -> String {
    match fmt {
        Formatter::Table => table(columns, rows, width),
        Formatter::Flow => flow(columns, rows),
        Formatter::Tab => tab(columns, rows),
        Formatter::Json => json(columns, rows),
        Formatter::Pager => pager(columns, rows),
    }
}

fn cell(row: &[String], i: usize) -> &str {
    row.get(i).map(String::as_str).unwrap_or("")
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

fn table_widths(columns: &[Column], rows: &[Vec<String>], term_width: usize) -> Vec<usize> {
    // Each column starts at its title length; the minimum is the shortest
    // value (or the title), the width the longest.
    let mut widths: Vec<usize> = columns.iter().map(|c| char_len(c.title)).collect();
    let mut mins = widths.clone();
    for row in rows {
        for i in 0..widths.len() {
            let len = char_len(cell(row, i));
            mins[i] = mins[i].min(len);
            widths[i] = widths[i].max(len);
        }
    }
    let mut total = widths.iter().sum::<usize>() + widths.len().saturating_sub(1);
    // Too wide: one pass from the last column backwards. A column whose
    // slack covers the excess takes all of it; others give up half their
    // slack (which, as in doveadm, does not count towards the total).
    while total > term_width {
        let before = total;
        for i in (0..widths.len()).rev() {
            let slack = widths[i] - mins[i];
            if total - slack <= term_width {
                let cut = total - term_width;
                widths[i] -= cut;
                total -= cut;
                break;
            }
            if slack > 0 {
                widths[i] -= if slack == 1 { 1 } else { slack / 2 };
            }
        }
        if total == before {
            break;
        }
    }
    if total < term_width && !widths.is_empty() {
        let extra = (term_width - total) / 2;
        let idx = columns
            .iter()
            .position(|c| c.expand)
            .unwrap_or(widths.len() - 1);
        widths[idx] += extra;
    }
    widths
}

fn table_row(out: &mut String, values: &[&str], widths: &[usize]) {
    for (i, w) in widths.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        // Values are padded but never cut, even when the column shrank.
        let v = values.get(i).copied().unwrap_or("");
        out.push_str(v);
        out.extend(std::iter::repeat_n(' ', w.saturating_sub(char_len(v))));
    }
    out.push('\n');
}

fn table(columns: &[Column], rows: &[Vec<String>], term_width: usize) -> String {
    let mut out = String::new();
    let first = &rows[..rows.len().min(TABLE_BATCH)];
    let widths = table_widths(columns, first, term_width);
    if !columns.iter().all(|c| c.hide_title) {
        let titles: Vec<&str> = columns.iter().map(|c| c.title).collect();
        table_row(&mut out, &titles, &widths);
    }
    for row in rows {
        let values: Vec<&str> = (0..columns.len()).map(|i| cell(row, i)).collect();
        table_row(&mut out, &values, &widths);
    }
    out
}

fn flow(columns: &[Column], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    for row in rows {
        let parts: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if c.hide_title {
                    cell(row, i).to_string()
                } else {
                    format!("{}={}", c.title, cell(row, i))
                }
            })
            .collect();
        out.push_str(&parts.join(" "));
        out.push('\n');
    }
    out
}

fn tab(columns: &[Column], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let titles: Vec<&str> = columns.iter().map(|c| c.title).collect();
    out.push_str(&titles.join("\t"));
    out.push('\n');
    for row in rows {
        let values: Vec<&str> = (0..columns.len()).map(|i| cell(row, i)).collect();
        out.push_str(&values.join("\t"));
        out.push('\n');
    }
    out
}

/// JSON string escaping as doveadm's json formatter does it.
pub fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn json(columns: &[Column], rows: &[Vec<String>]) -> String {
    let mut out = String::from("[");
    for (r, row) in rows.iter().enumerate() {
        if r > 0 {
            out.push(',');
        }
        out.push('{');
        for (i, c) in columns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!(
                "\"{}\":\"{}\"",
                json_escape(c.title),
                json_escape(cell(row, i))
            ));
        }
        out.push('}');
    }
    out.push(']');
    out
}

fn pager(columns: &[Column], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    for (r, row) in rows.iter().enumerate() {
        if r > 0 {
            out.push_str("\u{c}\n");
        }
        for (i, c) in columns.iter().enumerate() {
            if !c.hide_title {
                out.push_str(c.title);
                out.push_str(": ");
            }
            out.push_str(cell(row, i));
            out.push('\n');
        }
    }
    out
}

/// Renders a time as doveadm's "time ago" `HH:MM:SS` (hours not capped), or
/// `-` for 0 (never).
pub fn time_ago(t: u64, now: u64) -> String {
    if t == 0 {
        return "-".to_string();
    }
    let d = now.saturating_sub(t);
    format!("{:02}:{:02}:{:02}", d / 3600, (d / 60) % 60, d % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[&[&str]]) -> Vec<Vec<String>> {
        v.iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    // Expected strings below are outputs of real doveadm 2.3.19.1.
    #[test]
    fn overview_table_matches_doveadm() {
        let cols = [Column::hidden("field"), Column::hidden("value")];
        let r = rows(&[
            &["Queued 'full resync' requests", "4"],
            &["Total number of known users", "5"],
        ]);
        assert_eq!(
            render(Formatter::Table, &cols, &r, 80),
            "Queued 'full resync' requests 4                          \n\
             Total number of known users   5                          \n"
        );
        let r = rows(&[
            &["Queued 'sync' requests", "0"],
            &["Total number of known users", "5"],
        ]);
        assert_eq!(
            render(Formatter::Flow, &cols, &r, 80),
            "Queued 'sync' requests 0\nTotal number of known users 5\n"
        );
        assert_eq!(
            render(Formatter::Tab, &cols, &r, 80),
            "field\tvalue\nQueued 'sync' requests\t0\nTotal number of known users\t5\n"
        );
        assert_eq!(
            render(Formatter::Json, &cols, &r, 80),
            "[{\"field\":\"Queued 'sync' requests\",\"value\":\"0\"},{\"field\":\"Total number of known users\",\"value\":\"5\"}]"
        );
        assert_eq!(
            render(Formatter::Pager, &cols, &r, 80),
            "Queued 'sync' requests\n0\n\u{c}\nTotal number of known users\n5\n"
        );
    }

    #[test]
    fn user_and_dsync_tables_match_doveadm() {
        let cols = [
            Column::expanding("username"),
            Column::new("priority"),
            Column::new("fast sync"),
            Column::new("full sync"),
            Column::new("success sync"),
            Column::new("failed"),
        ];
        let r = rows(&[&["bob", "low", "-", "-", "-", "-"]]);
        assert_eq!(
            render(Formatter::Table, &cols, &r, 80),
            "username            priority fast sync full sync success sync failed\n\
             bob                 low      -         -         -            -     \n"
        );
        assert_eq!(
            render(Formatter::Flow, &cols, &r, 80),
            "username=bob priority=low fast sync=- full sync=- success sync=- failed=-\n"
        );
        let d = [
            Column::expanding("username"),
            Column::new("type"),
            Column::new("status"),
        ];
        assert_eq!(
            render(Formatter::Table, &d, &[], 80),
            "username                               type status\n"
        );
        assert_eq!(render(Formatter::Json, &d, &[], 80), "[]");
        assert_eq!(render(Formatter::Flow, &d, &[], 80), "");
        let r = rows(&[&["alice", "full", "Waiting for dsync to finish"]]);
        assert_eq!(
            render(Formatter::Table, &d, &r, 80).lines().nth(1).unwrap(),
            "alice                       full Waiting for dsync to finish"
        );
        let res = [Column::hidden("result")];
        assert_eq!(
            render(Formatter::Table, &res, &rows(&[&["1 users updated"]]), 80),
            "1 users updated                                \n"
        );
    }

    #[test]
    fn narrow_terminal_shrinks_from_the_end() {
        let cols = [Column::new("a"), Column::new("b")];
        let long = "x".repeat(50);
        let r = rows(&[&[&long, &long], &["y", "y"]]);
        let out = render(Formatter::Table, &cols, &r, 80);
        let mut lines = out.lines();
        // Column b (slack 49) absorbs the whole excess of 21: width 29; the
        // long value is not cut.
        assert_eq!(
            lines.next().unwrap(),
            format!("a{} b{}", " ".repeat(49), " ".repeat(28))
        );
        assert_eq!(lines.next().unwrap(), format!("{long} {long}"));
        assert_eq!(
            lines.next().unwrap(),
            format!("y{} y{}", " ".repeat(49), " ".repeat(28))
        );
    }

    #[test]
    fn time_ago_renders() {
        assert_eq!(time_ago(0, 100), "-");
        assert_eq!(time_ago(100, 100 + 3 * 3600 + 61), "03:01:01");
        assert_eq!(
            time_ago(100, 100 + 498857 * 3600 + 34 * 60 + 5),
            "498857:34:05"
        );
    }
}
