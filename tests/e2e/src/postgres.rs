//! A PostgreSQL cluster of one test's own, which the test can stop and start again (an outage)
//! without touching the shared one that `tests/run` started for every other test.
//!
//! Made as `tests/run` makes the shared one (deploy/lib/services.sh): `initdb` and `pg_ctl` of
//! the installed server (`TEST_PG_BIN`), as user `postgres` when the tests run as root, trust
//! authentication, listening on 127.0.0.1 only, its socket in its data directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::services::var;
use crate::{free_port, scratch_dir, unique};

pub struct Postgres {
    /// The cluster's `postgres` database as its superuser: what [`crate::Options::database`]
    /// takes.
    pub url: String,
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl Postgres {
    /// Makes a cluster in a fresh directory and starts it on a free port.
    pub fn start(name: &str) -> Self {
        let dir = scratch_dir().join(unique(name));
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        if as_root() {
            // The server refuses to run as root: its directory belongs to `postgres`.
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir));
            run(Command::new("chmod").arg("700").arg(&data));
        }
        let bin = PathBuf::from(var("TEST_PG_BIN"));
        run(as_postgres(&bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]));
        let port = free_port();
        let postgres = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            port,
            bin,
        };
        postgres.resume();
        postgres
    }

    /// Stops the server at once, as a crash or a pulled cable would (`pg_ctl -m immediate`):
    /// open connections break, new ones are refused.
    pub fn stop(&self) {
        run(self.pg_ctl().args(["-m", "immediate", "-w", "stop"]));
    }

    /// Starts the stopped server again on the same port and waits until it accepts connections.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.data().display()
        );
        run(self
            .pg_ctl()
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]));
    }

    /// The server's log, for a failed test's output.
    pub fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl(&self) -> Command {
        let mut command = as_postgres(&self.bin.join("pg_ctl"));
        command.arg("-D").arg(self.data());
        command
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Fails harmlessly when the test left it stopped.
        let _ = self
            .pg_ctl()
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `program`, run as user `postgres` when the tests run as root.
fn as_postgres(program: &Path) -> Command {
    if as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
