//! Dovecot 2.3's dsync wire protocol as a sans-I/O codec: bytes in, typed
//! items out, and the reverse. No sockets, no async: transports live in
//! `homing`.
//!
//! * [`Decoder`]: feed bytes in any split, take [`Event`]s (VERSION, tables,
//!   [`Item`]s, body chunks of `M`/`A` data blocks).
//! * [`Encoder`]: typed [`Item`]s and body chunks in, Dovecot's exact bytes out.
//! * [`state`]: the `doveadm sync -s` state string.
//! * [`hash`]: mailbox name hash, GUID128 of a message GUID, header hash.
//! * [`dump`]: a JSON view of a captured stream.

pub mod decode;
pub mod dot;
pub mod dump;
pub mod encode;
pub mod error;
pub mod escape;
pub mod hash;
pub mod item;
mod order;
pub mod state;
pub mod table;
pub mod types;

pub use decode::{
    decode_all, Decoder, DecoderConfig, Event, Features, OwnedEvent, ProtocolVersion,
};
pub use encode::{encode_events, Encoder};
pub use error::{DecodeError, EncodeError};
pub use item::*;
pub use table::{ItemKind, TableDef, Tables};
pub use types::*;
