//! Dovecot 2.3's dsync wire protocol as a sans-I/O codec: bytes in, typed items
//! out, and the reverse. No sockets, no async: transports live in `homing`.

pub mod dump;
