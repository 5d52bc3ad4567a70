//! A Kafka-protocol broker (tansu) of one test's own, optionally behind TLS (socat) or with
//! SASL required, which the test can restart empty.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::services::var;
use crate::{free_port, scratch_dir, unique, wait_for_port};

/// How a test's own broker is reached.
#[derive(Default)]
pub struct BrokerOptions {
    /// tansu's `--authentication`: every request but the SASL handshake needs a logged-in client.
    pub authentication: bool,
    /// TLS with this certificate and key, terminated by socat in front of tansu (tansu 0.6
    /// cannot terminate TLS itself; see docs/operations.md). `addr` is then socat's address,
    /// and tansu advertises it, so every connection goes through TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A Kafka-protocol broker (tansu, in memory) of one test's own, so the test can restart it.
pub struct Broker {
    pub addr: String,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
    authentication: bool,
    /// socat terminating TLS on `addr`, and its port.
    tls: Option<(Child, u16)>,
}

impl Broker {
    pub fn start(dir_name: &str) -> Self {
        Self::start_with(dir_name, BrokerOptions::default())
    }

    pub fn start_with(dir_name: &str, options: BrokerOptions) -> Self {
        let port = free_port();
        let dir = scratch_dir().join(unique(dir_name));
        std::fs::create_dir_all(&dir).unwrap();
        let tls = options.tls.map(|(cert, key)| {
            let tls_port = free_port();
            let log = File::create(dir.join("socat.log")).unwrap();
            let child = Command::new(var("TEST_SOCAT_BIN"))
                .arg(format!(
                    "OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                    cert.display(),
                    key.display()
                ))
                .arg(format!("TCP:127.0.0.1:{port}"))
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("start socat");
            (child, tls_port)
        });
        let public_port = tls.as_ref().map_or(port, |(_, p)| *p);
        let mut broker = Self {
            addr: format!("127.0.0.1:{public_port}"),
            port,
            log: dir.join("tansu.log"),
            child: None,
            authentication: options.authentication,
            tls,
        };
        broker.launch();
        if let Some((_, tls_port)) = &broker.tls {
            wait_for_port(*tls_port, &dir.join("socat.log"));
        }
        broker
    }

    fn launch(&mut self) {
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://{}", self.addr);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(var("TEST_TANSU_BIN"))
            .args([
                "broker",
                "--cluster-id",
                "onboard-e2e",
                "--listener-url",
                &listener,
            ])
            .args([
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                "memory://tansu/",
            ])
            .args(self.authentication.then_some("--authentication"))
            .env_remove("CLUSTER_ID")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        wait_for_port(self.port, &self.log);
    }

    /// Kills the broker (losing everything it held in memory) and starts an empty one on the same port.
    pub fn restart_empty(&mut self) {
        self.stop();
        self.launch();
    }

    /// Kills the broker: nothing answers on its port until [`Broker::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts an empty broker on the same port after [`Broker::stop`].
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        self.launch();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let socat = self.tls.take().map(|(child, _)| child);
        for mut child in self.child.take().into_iter().chain(socat) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
