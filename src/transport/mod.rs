//! Byte streams to a dsync peer: a child process's stdio, the doveadm TCP
//! protocol, and the same over TLS. Not yet implemented.
