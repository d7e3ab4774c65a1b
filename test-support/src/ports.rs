//! Loopback port allocation for parallel test instances.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

use crate::HarnessError;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Returns a loopback TCP port that was free a moment ago and that this process
/// has never handed out before, so parallel test threads never get the same
/// port. Another process may still take it before Dovecot binds it; instance
/// start-up detects that (`Address already in use`) and retries with new ports.
pub fn free_port() -> Result<u16, HarnessError> {
    for _ in 0..200 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| HarnessError::io("binding a probe socket on 127.0.0.1:0", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| HarnessError::io("reading the probe socket's address", e))?
            .port();
        drop(listener);
        // A poisoned lock only means another test panicked while holding it;
        // the set itself is still consistent.
        let mut set = handed_out().lock().unwrap_or_else(|p| p.into_inner());
        if set.insert(port) {
            return Ok(port);
        }
    }
    Err(HarnessError::io(
        "allocating a loopback port",
        std::io::Error::other("no new free port after 200 attempts"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_across_threads() {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| (0..20).map(|_| free_port().unwrap()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for p in h.join().unwrap() {
                assert!(p > 0);
                assert!(all.insert(p), "port {p} handed out twice");
            }
        }
        assert_eq!(all.len(), 160);
    }
}
