//! `homing server`: the server side of the doveadm-server protocol, as used
//! by `doveadm sync/backup tcp:`/`tcps:` and Dovecot's replicator, running
//! dsync sessions through a [`SessionHandler`].
//!
//! * [`protocol`]: sans-I/O handshake, PLAIN, command line and reply lines.
//! * [`validate`]: checks for peer-supplied user and mailbox names.
//! * [`config`]: settings and the user database.
//! * [`handler`]: the session interface (and a command-delegating handler).
//! * [`output`]: the multiplexed output (channel 0 data, `L` log lines).
//!
//! See `docs/server.md`.

pub mod cli;
pub mod config;
mod conn;
pub mod handler;
pub mod lock;
pub mod output;
pub mod protocol;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

pub use config::{MailUser, ServerConfig, UserDbConfig};
pub use handler::{
    CommandHandler, ReplicatorNotice, SessionFuture, SessionHandler, SessionIo, SessionOutcome,
    SessionRequest, SlaveHandler,
};
pub use output::SessionLog;

/// A problem starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("TLS {what} {path}: {reason}")]
    Tls {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("TLS listener configured without tls_cert and tls_key")]
    TlsMissing,
    #[error("no listener configured (listen / tls_listen)")]
    NoListener,
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Counters of a running server.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub connections: AtomicU64,
    pub auth_failures: AtomicU64,
    pub sessions_started: AtomicU64,
    pub sessions_ok: AtomicU64,
    pub sessions_failed: AtomicU64,
    pub lock_timeouts: AtomicU64,
    /// `NOTIFY`s delivered to the local replicator after `-U` sessions.
    pub replicator_notices: AtomicU64,
    /// Connections aborted at the end of the shutdown grace period.
    pub aborted: AtomicU64,
}

impl ServerStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) handler: Arc<dyn SessionHandler>,
    pub(crate) locks: lock::UserLocks,
    pub(crate) sessions: Arc<Semaphore>,
    pub(crate) stats: Arc<ServerStats>,
    pub(crate) stopping: AtomicBool,
}

/// Loads a certificate chain and private key (PEM) into a TLS acceptor.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ServerError> {
    let err = |what, path: &Path, reason: String| ServerError::Tls {
        what,
        path: path.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err("certificate", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err("certificate", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(err("certificate", cert, "no certificate in file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err("key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("config", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| err("key", key, e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A configured server, not yet listening.
pub struct Server {
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Checks the configuration and loads the TLS material.
    pub fn new(
        config: ServerConfig,
        handler: Arc<dyn SessionHandler>,
    ) -> Result<Server, ServerError> {
        if config.listen.is_empty() && config.tls_listen.is_empty() {
            return Err(ServerError::NoListener);
        }
        let tls = if config.tls_listen.is_empty() {
            None
        } else {
            match (&config.tls_cert, &config.tls_key) {
                (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
                _ => return Err(ServerError::TlsMissing),
            }
        };
        let sessions = Arc::new(Semaphore::new(config.max_sessions));
        Ok(Server {
            shared: Arc::new(Shared {
                config,
                handler,
                locks: lock::UserLocks::new(),
                sessions,
                stats: Arc::new(ServerStats::default()),
                stopping: AtomicBool::new(false),
            }),
            tls,
        })
    }

    /// Binds every listener (port 0 picks a free port; see the addresses).
    pub async fn bind(self) -> Result<BoundServer, ServerError> {
        let mut listeners = Vec::new();
        let cfg = &self.shared.config;
        for (addrs, tls) in [(&cfg.listen, false), (&cfg.tls_listen, true)] {
            for addr in addrs {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind {
                        addr: *addr,
                        source,
                    })?;
                listeners.push((l, tls));
            }
        }
        Ok(BoundServer {
            shared: self.shared,
            tls: self.tls,
            listeners,
        })
    }
}

/// A server with bound listeners.
pub struct BoundServer {
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    listeners: Vec<(TcpListener, bool)>,
}

struct Active {
    count: AtomicUsize,
    idle: Notify,
}

struct ActiveGuard(Arc<Active>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl BoundServer {
    fn addrs(&self, tls: bool) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|(_, t)| *t == tls)
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Addresses of the plain listeners.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(false)
    }

    /// Addresses of the TLS listeners.
    pub fn tls_local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(true)
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.shared.stats.clone()
    }

    /// Serves until `shutdown` completes; then stops accepting, gives running
    /// connections `shutdown_grace` to finish and aborts the rest (their
    /// sockets are closed; a client sees EOF and fails with tempfail).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Arc<ServerStats> {
        let shared = self.shared;
        let active = Arc::new(Active {
            count: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let (abort_tx, abort_rx) = watch::channel(false);
        let conn_slots = Arc::new(Semaphore::new(shared.config.max_connections));
        let mut accept_tasks = Vec::new();
        for (listener, is_tls) in self.listeners {
            let tls = if is_tls { self.tls.clone() } else { None };
            let shared = shared.clone();
            let active = active.clone();
            let mut stop_rx = stop_rx.clone();
            let abort_rx = abort_rx.clone();
            let slots = conn_slots.clone();
            accept_tasks.push(tokio::spawn(async move {
                loop {
                    let permit = tokio::select! {
                        p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                        _ = stop_rx.changed() => return,
                    };
                    let (sock, peer) = tokio::select! {
                        r = listener.accept() => match r {
                            Ok(x) => x,
                            Err(e) => {
                                tracing::warn!("accept failed: {e}");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                        _ = stop_rx.changed() => return,
                    };
                    let _ = sock.set_nodelay(true);
                    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                    active.count.fetch_add(1, Ordering::AcqRel);
                    let guard = ActiveGuard(active.clone());
                    let shared = shared.clone();
                    let tls = tls.clone();
                    let mut abort_rx = abort_rx.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        let _permit = permit;
                        let work = async {
                            match tls {
                                None => conn::serve(sock, peer, shared.clone()).await,
                                Some(acc) => {
                                    let t = shared.config.handshake_timeout;
                                    match tokio::time::timeout(t, acc.accept(sock)).await {
                                        Ok(Ok(s)) => conn::serve(s, peer, shared.clone()).await,
                                        Ok(Err(e)) => Err(conn::ConnError::Io(e)),
                                        Err(_) => Err(conn::ConnError::HandshakeTimeout(t)),
                                    }
                                }
                            }
                        };
                        tokio::select! {
                            r = work => if let Err(e) = r {
                                tracing::info!(%peer, "connection ended: {e}");
                            },
                            _ = abort_rx.wait_for(|a| *a) => {
                                shared.stats.aborted.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(%peer, "connection aborted at shutdown");
                            }
                        }
                    });
                }
            }));
        }
        shutdown.await;
        tracing::info!("shutting down: no new connections");
        shared.stopping.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        for t in accept_tasks {
            let _ = t.await;
        }
        let wait_idle = async {
            loop {
                let notified = active.idle.notified();
                if active.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(shared.config.shutdown_grace, wait_idle)
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace over: aborting running sessions");
            let _ = abort_tx.send(true);
            let wait_idle = async {
                loop {
                    let notified = active.idle.notified();
                    if active.count.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    notified.await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), wait_idle).await;
        }
        shared.stats.clone()
    }
}
