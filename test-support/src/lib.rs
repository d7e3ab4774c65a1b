//! Test support for homing: private, isolated real Dovecot 2.3 instances.
//!
//! Every [`DovecotInstance`] lives in its own temporary directory with its own
//! `dovecot.conf`, `base_dir`, `state_dir`, log, passwd-file users and mail, so
//! tests may start several instances in parallel threads. The master is started
//! with a clean environment (a parent `doveadm` exports its whole configuration
//! through `DOVECONF_*` variables, which a nested Dovecot would otherwise obey)
//! and stopped by the pid in its own pid file, also when the value is dropped.
//!
//! ```no_run
//! use test_support::{dovecot_or_skip, InstanceOptions, MailFormat};
//! let a = dovecot_or_skip!(InstanceOptions::new().doveadm_tcp(true));
//! a.save_message("bob", "INBOX", b"Subject: hi\n\nhello\n").unwrap();
//! let snap = a.snapshot("bob").unwrap();
//! assert_eq!(snap.mails.len(), 1);
//! ```
//!
//! Skipping: when Dovecot is genuinely unavailable (binaries or the `vmail`
//! user missing, not root), [`dovecot_or_skip!`] prints why and returns from
//! the test, except under CI (`CI=true`), where it fails the test instead.

mod error;
mod instance;
mod mail;
mod ports;
mod process;
pub mod scenarios;
mod snapshot;
mod tls;

pub use error::HarnessError;
pub use instance::{
    dovecot_unavailable_reason, require_dovecot, DoveadmOutput, DovecotInstance, InstanceOptions,
    MailFormat, DOVEADM, DOVECOT,
};
pub use mail::{generate_mails, maildir_file_counts, rfc2822_date, small_message, NewMail};
pub use ports::free_port;
pub use snapshot::{MailRow, MailState, MailboxState, Snapshot, SnapshotOptions};
pub use tls::{IssuedCert, TestCa};

/// Starts a [`DovecotInstance`] with the given [`InstanceOptions`], or returns
/// from the calling test (after printing why) when Dovecot is unavailable on
/// this machine. Under CI (`CI=true`) an unavailable Dovecot fails the test.
/// A failure to start an available Dovecot always panics.
#[macro_export]
macro_rules! dovecot_or_skip {
    ($opts:expr) => {{
        fn __test_name_probe() {}
        let name = ::std::any::type_name_of_val(&__test_name_probe);
        let name = name.strip_suffix("::__test_name_probe").unwrap_or(name);
        if !$crate::require_dovecot(name) {
            return;
        }
        match $crate::DovecotInstance::start($opts) {
            Ok(instance) => instance,
            Err(e) => panic!("starting a private Dovecot instance failed: {e}"),
        }
    }};
}
