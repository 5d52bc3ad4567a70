//! A real SMTP server of one test's own in front of MailDev, which refuses, defers, greylists or
//! holds recipients as real servers do, and reports what it saw in its log.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::services::var;
use crate::{free_port, scratch_dir, wait_for_port, Services};

/// A real SMTP server of one test's own (`tests/e2e/smtp/gate.py`, aiosmtpd) that refuses
/// (`reject…`), defers (`defer…`) or greylists (`grey…`) recipients by their local part and passes
/// accepted mail on to MailDev.
pub struct SmtpGate {
    pub port: u16,
    log: PathBuf,
    /// Where `release` puts the files that let held recipients (`hold…@`) through.
    release_dir: PathBuf,
    child: Child,
}

impl SmtpGate {
    pub fn start(services: &Services) -> Self {
        Self::start_with(services, &[])
    }

    /// A gate started with `env`, e.g. `GATE_TLS_CERT` to require STARTTLS (see gate.py).
    pub fn start_with(services: &Services, env: &[(&str, &str)]) -> Self {
        let dir = scratch_dir();
        let port = free_port();
        let log_path = dir.join(format!("smtp-gate-{port}.log"));
        let log = File::create(&log_path).unwrap();
        let release_dir = dir.join(format!("smtp-gate-{port}.release"));
        let _ = std::fs::remove_dir_all(&release_dir);
        std::fs::create_dir_all(&release_dir).unwrap();
        let child = Command::new(var("TEST_SMTP_GATE_PYTHON"))
            .arg(var("TEST_SMTP_GATE"))
            .arg(port.to_string())
            .arg(&services.smtp_host)
            .arg(services.smtp_port.to_string())
            .arg(&release_dir)
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the SMTP gate");
        wait_for_port(port, &log_path);
        Self {
            port,
            log: log_path,
            release_dir,
            child,
        }
    }

    /// Waits until the gate holds the SMTP transaction for `address` (a `hold…@` recipient).
    pub async fn wait_until_held(&self, address: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.printed("HELD ").iter().any(|held| held == address) {
            assert!(
                Instant::now() < deadline,
                "the gate did not hold {address} within 60 s; its log: {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Lets the held SMTP transaction for `address` go on.
    pub fn release(&self, address: &str) {
        std::fs::write(self.release_dir.join(address), b"").unwrap();
    }

    /// The mails the gate kept itself (quoted local parts): (recipient, Message-ID).
    pub fn stored(&self) -> Vec<(String, String)> {
        self.printed("STORED ")
            .iter()
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(r, id)| (r.to_owned(), id.to_owned()))
            .collect()
    }

    /// The lines the gate printed that start with `prefix` (e.g. `AUTH `, `MAIL `), without it.
    pub fn printed(&self, prefix: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
            .collect()
    }

    /// Every RCPT TO address the gate received, as it came on the wire.
    pub fn recipients(&self) -> Vec<String> {
        self.printed("RCPT ")
    }
}

impl Drop for SmtpGate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
