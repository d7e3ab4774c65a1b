//! Typed errors. Every variant names the broken rule and where it happened.

use thiserror::Error;

/// Why a received stream was rejected. `offset` is the byte offset of the
/// start of the offending line (or body byte) in the whole stream.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("line at offset {offset} exceeds the maximum line length of {max} bytes")]
    LineTooLong { offset: u64, max: usize },

    #[error("line at offset {offset} has more than {max} fields")]
    TooManyFields { offset: u64, max: usize },

    #[error("bad VERSION line at offset {offset}: {reason}")]
    BadVersionLine { offset: u64, reason: &'static str },

    #[error("unsupported dsync protocol major version {major} (only 3 is supported)")]
    UnsupportedVersion { major: u32 },

    #[error("table definition for {item} at offset {offset} lacks the required key {key}")]
    TableMissingRequiredKey {
        offset: u64,
        item: &'static str,
        key: &'static str,
    },

    #[error("table block ended at offset {offset} without a definition for {item}")]
    MissingTable { offset: u64, item: &'static str },

    #[error("too many table definition lines (more than {max}) at offset {offset}")]
    TooManyTables { offset: u64, max: usize },

    #[error("table definition at offset {offset} has more than {max} keys")]
    TooManyKeys { offset: u64, max: usize },

    #[error("bad escape sequence at offset {offset}: 0x01 followed by {next:?} (only 1, t, r, n are written)")]
    BadEscape { offset: u64, next: Option<u8> },

    #[error("unknown item letter {letter:?} at offset {offset}")]
    UnknownItem { offset: u64, letter: char },

    #[error("empty line at offset {offset}")]
    EmptyLine { offset: u64 },

    #[error("{item} at offset {offset} lacks the required field {key}")]
    MissingRequiredField {
        offset: u64,
        item: &'static str,
        key: &'static str,
    },

    #[error("{item} at offset {offset}: invalid {key}: {reason}")]
    InvalidField {
        offset: u64,
        item: &'static str,
        key: &'static str,
        reason: String,
    },

    #[error("{item} at offset {offset}: list {key} has more than {max} elements")]
    TooManyElements {
        offset: u64,
        item: &'static str,
        key: &'static str,
        max: usize,
    },

    #[error("item {got:?} at offset {offset} is out of order (expected one of: {expected})")]
    OutOfOrder {
        offset: u64,
        got: char,
        expected: String,
    },

    #[error("mail change at offset {offset}: uid {uid} does not follow uid {prev} (C lists are strictly ascending)")]
    ChangesNotAscending { offset: u64, prev: u32, uid: u32 },

    #[error("too many items in one list (more than {max}) at offset {offset}")]
    ListTooLong { offset: u64, max: u64 },

    #[error("data block starting at offset {offset} exceeds the maximum body size of {max} bytes")]
    BodyTooLarge { offset: u64, max: u64 },

    #[error("stream ended inside a data block that started at offset {offset} (no terminating '.' line)")]
    UnterminatedBody { offset: u64 },

    #[error("stream ended inside a line at offset {offset}")]
    UnterminatedLine { offset: u64 },

    #[error("data after the done item X at offset {offset}")]
    DataAfterDone { offset: u64 },

    #[error("decoder already failed: {0}")]
    Poisoned(Box<DecodeError>),
}

/// Why an item could not be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    #[error("cannot encode {what} while a data block is open (finish it with end_body first)")]
    BodyOpen { what: &'static str },

    #[error("no data block is open")]
    NoBodyOpen,

    #[error("{item}: field {key} is invalid: {reason}")]
    InvalidValue {
        item: &'static str,
        key: &'static str,
        reason: &'static str,
    },
}
