//! Decodes a captured dsync stream (one direction) into a JSON value for `homing dump`.

/// Not yet implemented.
pub fn dump_stream(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let _ = bytes;
    Err("dsync stream decoding is not implemented yet".into())
}
