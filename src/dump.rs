//! `homing dump`: prints the parsed content of a Dovecot file or a captured dsync stream.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// Does this look like one direction of a dsync conversation? A client's
/// side of a doveadm TCP session starts with the doveadm-server handshake,
/// which the stream decoder skips.
fn looks_like_dsync_stream(head: &[u8]) -> bool {
    head.starts_with(b"VERSION\tdsync\t") || head.starts_with(b"VERSION\tdoveadm-server\t")
}

/// Does this look like a doveadm server's reply to a TCP client (plain
/// handshake lines, then multiplexed frames)?
fn looks_like_doveadm_reply(head: &[u8]) -> bool {
    head.starts_with(b"VERSION\tdoveadm-client\t")
}

/// Splits a doveadm server's reply into its handshake lines, the data
/// channel's bytes and the log channel's lines.
fn demultiplex_reply(bytes: &[u8]) -> Result<(Vec<String>, Vec<u8>, Vec<Value>)> {
    use crate::transport::wire::{DemuxEvent, Demuxer};
    // Before multiplexing: the VERSION line, "-" (authenticate) or "+"
    // (pre-authenticated), and "+" after a successful PLAIN.
    let mut pos = 0;
    let mut handshake = Vec::new();
    let mut plus_seen = false;
    while pos < bytes.len() {
        let Some(nl) = bytes[pos..].iter().position(|b| *b == b'\n') else {
            anyhow::bail!("doveadm reply: handshake line without LF at offset {pos}");
        };
        let line = String::from_utf8_lossy(&bytes[pos..pos + nl]).into_owned();
        pos += nl + 1;
        let done = line == "+";
        handshake.push(line);
        if done {
            plus_seen = true;
            break;
        }
    }
    if !plus_seen {
        // Authentication failed: nothing multiplexed follows.
        return Ok((handshake, Vec::new(), Vec::new()));
    }
    let mut demux = Demuxer::new();
    let mut data = Vec::new();
    let mut logs = Vec::new();
    let mut rest = &bytes[pos..];
    while !rest.is_empty() {
        let (used, ev) = demux.next(rest, usize::MAX);
        rest = &rest[used..];
        match ev {
            Some(DemuxEvent::Data(d)) => data.extend_from_slice(d),
            Some(DemuxEvent::Log { level, text }) => logs.push(
                serde_json::json!({ "level": format!("{level:?}").to_lowercase(), "text": text }),
            ),
            None if used == 0 => break,
            None => {}
        }
    }
    Ok((handshake, data, logs))
}

/// Parses `path` and returns the JSON value and a heading for the human-readable form.
pub fn dump_value(path: &Path) -> Result<(String, Value)> {
    let mut head = [0u8; 64];
    let n = {
        use std::io::Read;
        let mut f =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        f.read(&mut head)
            .with_context(|| format!("reading {}", path.display()))?
    };
    if head[..n].starts_with(b"VERSION\tdoveadm-server\t") {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if !contains(&bytes, b"\nVERSION\tdsync\t") {
            return Ok(("doveadm client request".into(), client_request(&bytes)));
        }
    }
    // A demultiplexed data channel: the command's "+" status, then dsync.
    if head[..n].starts_with(b"\n+\nVERSION\tdsync\t") {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let v = dsync_protocol::dump::dump_stream(&bytes[3..])
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok(("dsync stream".into(), v));
    }
    if looks_like_dsync_stream(&head[..n]) {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let v = dsync_protocol::dump::dump_stream(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok(("dsync stream".into(), v));
    }
    if looks_like_doveadm_reply(&head[..n]) {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (handshake, data, logs) = demultiplex_reply(&bytes)?;
        // The data channel starts with the command's reply: output fields,
        // an empty line and a status line ("+" before a dsync stream).
        let (fields, status, stream) = split_reply_status(&data);
        let authenticated = handshake.iter().any(|l| l == "+");
        let mut obj = serde_json::Map::new();
        obj.insert("handshake".into(), handshake.into());
        obj.insert("authenticated".into(), authenticated.into());
        obj.insert(
            "status".into(),
            status.map(Value::from).unwrap_or(Value::Null),
        );
        obj.insert("fields".into(), fields.into());
        obj.insert("log".into(), logs.into());
        if stream.starts_with(b"VERSION\tdsync\t") {
            let v = dsync_protocol::dump::dump_stream(stream)
                .map_err(|e| anyhow::anyhow!("{}: data channel: {e}", path.display()))?;
            obj.insert("dsync".into(), v);
        } else if !stream.is_empty() {
            obj.insert(
                "output".into(),
                String::from_utf8_lossy(stream).into_owned().into(),
            );
        }
        return Ok(("doveadm server reply".into(), Value::Object(obj)));
    }
    let (kind, v) = index_format::dump::dump(path, None)?;
    Ok((kind.to_string(), v))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A doveadm client's lines to the server (handshake, authentication, one
/// command), with the credentials left out.
fn client_request(bytes: &[u8]) -> Value {
    let lines: Vec<Value> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            if l.starts_with(b"PLAIN\t") {
                Value::from("PLAIN (credentials not shown)")
            } else {
                let fields: Vec<String> = l
                    .split(|b| *b == b'\t')
                    .map(|f| {
                        String::from_utf8_lossy(&crate::transport::wire::unescape_field(f))
                            .into_owned()
                    })
                    .collect();
                Value::from(fields)
            }
        })
        .collect();
    serde_json::json!({ "lines": lines })
}

/// Finds the status line (`+` or `-CODE`) that ends a doveadm reply's output
/// fields and returns it with what follows it.
fn split_reply_status(data: &[u8]) -> (Vec<String>, Option<String>, &[u8]) {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let Some(nl) = data[pos..].iter().position(|b| *b == b'\n') else {
            break;
        };
        let line = &data[pos..pos + nl];
        if line.first().is_some_and(|b| *b == b'+' || *b == b'-') {
            return (
                fields,
                Some(String::from_utf8_lossy(line).into_owned()),
                &data[pos + nl + 1..],
            );
        }
        fields.extend(
            line.split(|b| *b == b'\t')
                .filter(|f| !f.is_empty())
                .map(|f| {
                    String::from_utf8_lossy(&crate::transport::wire::unescape_field(f)).into_owned()
                }),
        );
        pos += nl + 1;
    }
    (Vec::new(), None, data)
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
