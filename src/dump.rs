//! `homing dump`: prints the parsed content of a Dovecot file or a captured dsync stream.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// Does this look like one direction of a dsync conversation?
fn looks_like_dsync_stream(head: &[u8]) -> bool {
    head.starts_with(b"VERSION\tdsync\t")
}

/// Parses `path` and returns the JSON value and a heading for the human-readable form.
pub fn dump_value(path: &Path) -> Result<(String, Value)> {
    let mut head = [0u8; 16];
    let n = {
        use std::io::Read;
        let mut f =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        f.read(&mut head)
            .with_context(|| format!("reading {}", path.display()))?
    };
    if looks_like_dsync_stream(&head[..n]) {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let v = dsync_protocol::dump::dump_stream(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok(("dsync stream".into(), v));
    }
    let (kind, v) = index_format::dump::dump(path, None)?;
    Ok((kind.to_string(), v))
}

/// Runs `homing dump PATH [--json]`, writing to `out`.
pub fn run(path: &Path, json: bool, out: &mut dyn std::io::Write) -> Result<()> {
    let (heading, value) = dump_value(path)?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &value)?;
        writeln!(out)?;
    } else {
        let mut s = String::new();
        let _ = writeln!(s, "# {}: {}", heading, path.display());
        render(&value, 0, &mut s);
        out.write_all(s.as_bytes())?;
    }
    Ok(())
}

/// Renders a JSON value as indented `key: value` lines for people.
pub fn render(v: &Value, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                if is_scalar(val) {
                    let _ = writeln!(out, "{pad}{k}: {}", scalar(val));
                } else if is_empty(val) {
                    let _ = writeln!(
                        out,
                        "{pad}{k}: {}",
                        if val.is_array() { "[]" } else { "{}" }
                    );
                } else {
                    let _ = writeln!(out, "{pad}{k}:");
                    render(val, indent + 1, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, val) in items.iter().enumerate() {
                if is_scalar(val) {
                    let _ = writeln!(out, "{pad}- {}", scalar(val));
                } else {
                    let _ = writeln!(out, "{pad}[{i}]");
                    render(val, indent + 1, out);
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "(unset)".into(),
        other => other.to_string(),
    }
}
