//! The end-to-end test library: starts the real `onboard` processes against the real
//! PostgreSQL, Kafka-protocol broker and SMTP server that `tests/run` starts, one fresh database,
//! topic and consumer group per test, and reads back what a user would see: HTTP answers, mail
//! in MailDev, records on the Kafka topic. The tests are in `tests/it`, the benchmark in
//! `tests/bench`.
//!
//! One module per real part: [`services`] (what `tests/run` started), [`stack`] (one test's
//! engine and its processes), [`configuration`] (its `onboard.toml`), [`gateway`] (requests to
//! it), [`maildev`] (the mail it sent), [`topic`] (the records it published), and the parts a
//! test starts for itself: [`broker`], [`postgres`], [`smtp_gate`], [`certificates`], and the
//! LDAP directory accounts are provisioned into, [`ldap`].

#![forbid(unsafe_code)]

pub mod broker;
pub mod certificates;
pub mod configuration;
pub mod gateway;
pub mod ldap;
pub mod maildev;
pub mod postgres;
pub mod services;
pub mod smtp_gate;
pub mod stack;
pub mod topic;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use broker::{Broker, BrokerOptions};
pub use certificates::make_certificates;
pub use configuration::Options;
pub use ldap::Slapd;
pub use maildev::Mail;
pub use postgres::Postgres;
pub use services::Services;
pub use smtp_gate::SmtpGate;
pub use stack::Stack;
pub use topic::{headers_of, validate_against_schema, Record};

/// `prefix` followed by ten random hex digits: a name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A finished command's status, stdout and stderr, for an assertion's message.
pub fn describe_output(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The directory under which every test keeps its files (configuration, logs, certificates).
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("onboard-e2e");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits up to 30 s for a test's own service to listen on 127.0.0.1:`port`.
fn wait_for_port(port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listened on port {port} within 30 s; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
